"""Hydra configuration of a training run -> validated dataclasses, and the run dir.

``compose_config(overrides)`` composes ``configs/train_policy.yaml`` with its groups
(suite/, loss/, model/; all in ``CONFIG_DIR``, the package's own ``policy/configs/``)
and command-line style overrides, then type-checks every key against the structured
schema ``RunConfig`` (built from the ``PolicyConfig`` and ``TrainConfig`` dataclasses
plus the suite/loss/data/eval dataclasses below) and merges it into that schema
(OmegaConf structured merge), so the result is typed and closed. A value of the wrong
type is one ``ValueError`` line naming the key, the value, the expected type and the
YAML file that documents the key. ``split_config`` turns the result into (PolicyConfig,
TrainConfig, LossConfig, bandwidth, multiplier), each validated. ``make_run_dir``
creates ``runs/<suite>/<timestamp>/``; ``train(latest_in=runs_root)`` points
``runs/latest`` at it from its first checkpoint on.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException, MissingConfigException
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from policy.model.config import PolicyConfig, TrainConfig, find_type_error, is_float
from policy.scoring import LossConfig

# The YAML tree ships inside the package (policy/configs/, package data; the repository's
# top-level configs/ is a symlink to it), so an installed wheel finds it without a checkout.
CONFIG_DIR = Path(str(importlib.resources.files("policy") / "configs"))


# ---------------------------------------------------------------- typed schema of a run

@dataclass
class SuiteFileConfig:
    """configs/suite/<name>.yaml: which demonstrations, which simulator suites."""

    name: str = MISSING
    suites: List[str] = MISSING
    data_dirs: List[str] = MISSING
    max_steps: Dict[str, int] = field(default_factory=dict)


@dataclass
class LossFileConfig:
    """configs/loss/<name>.yaml: the scoring rule (policy.scoring.LossConfig + bandwidth rule)."""

    kind: str = "energy"
    lam: Optional[float] = None
    beta: Optional[float] = None
    population: int = 16
    bandwidth: Any = 1.0  # a float or 'auto' (see _SPECIAL)
    bandwidth_multiplier: float = 1.0
    delta: float = 1e-6


@dataclass
class DataFileConfig:
    augment: bool = True
    shift: int = 4
    image_size: Optional[int] = None
    reader: str = "ram"  # ram | bounded (envs.libero.data_sources)
    cache_dir: Optional[str] = None
    fps: Optional[float] = 20.0
    lerobot_features: Dict[str, Optional[str]] = field(default_factory=dict)
    lerobot_stats: str = "recompute"  # recompute | dataset


@dataclass
class EvalFileConfig:
    workers: int = 2
    steps: int = 2
    max_steps: Optional[int] = None
    tasks: Optional[List[int]] = None


def _model_schema() -> type:
    """PolicyConfig without `suites` (that comes from the suite group): the `model:` node."""
    hints = typing.get_type_hints(PolicyConfig)
    fields = [(f.name, hints[f.name], field(default=f.default)) for f in dataclasses.fields(PolicyConfig) if f.name != "suites"]
    cls = dataclasses.make_dataclass("ModelFileConfig", fields)
    cls.__module__ = __name__
    cls.__doc__ = "configs/model/<name>.yaml: the PolicyConfig fields except suites."
    return cls


ModelFileConfig = _model_schema()


@dataclass
class RunConfig:
    """The whole composed train_policy config; every leaf has a type."""

    runs_root: str = "runs"
    run_dir: Optional[str] = None
    resume: bool = False
    data: DataFileConfig = field(default_factory=DataFileConfig)
    eval: EvalFileConfig = field(default_factory=EvalFileConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    suite: SuiteFileConfig = field(default_factory=SuiteFileConfig)
    loss: LossFileConfig = field(default_factory=LossFileConfig)
    model: ModelFileConfig = field(default_factory=ModelFileConfig)  # type: ignore[valid-type]


_SPECIAL = {"loss.bandwidth": ("a float or 'auto'", lambda v: v == "auto" or is_float(v, numeric_strings=True))}


def _source(key: str, choices: dict[str, str], config_dir: Path | None, saved: Path | None) -> str:
    """The file that documents `key`: the run's config.yaml on resume, else the group's YAML."""
    if saved is not None:
        return f"{saved}: {key}"
    top = key.split(".", 1)[0].split("[", 1)[0]
    rel = f"{top}/{choices[top]}.yaml" if top in ("suite", "loss", "model") and top in choices else "train_policy.yaml"
    path = (config_dir or CONFIG_DIR) / rel
    try:
        shown = path.relative_to(CONFIG_DIR.parent)
    except ValueError:
        shown = path
    return f"{shown}: {key}"


def typed_config(cfg: DictConfig, choices: dict[str, str] | None = None, config_dir: Path | None = None,
                 saved: Path | None = None) -> DictConfig:
    """Type-check every key of a composed config against RunConfig and merge it into that
    structured schema (the result refuses wrongly typed assignments and new keys).

    Raises ValueError (one line): ``train.steps='abc' is not an int (configs/train_policy.yaml: train.steps)``.
    """
    try:
        data = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        raise ValueError(f"bad config: {str(exc).strip().splitlines()[0]}") from None
    found = find_type_error(data, RunConfig, "", numeric_strings=True, special=_SPECIAL)
    if found:
        key, value, expected = found
        where = _source(key, choices or {}, config_dir, saved)
        if expected.startswith("unknown field"):
            raise ValueError(f"{key or 'config'}: {expected} ({where.rsplit(':', 1)[0]})")
        raise ValueError(f"{key}={value!r} is not {expected} ({where})")
    try:
        return OmegaConf.merge(OmegaConf.structured(RunConfig), data)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:  # not expected after the check above; still one line
        key = getattr(exc, "full_key", "") or "config"
        raise ValueError(f"{key}: {str(exc).strip().splitlines()[0]} ({_source(key, choices or {}, config_dir, saved)})") from None


# ---------------------------------------------------------------- composition

def _compose(overrides: list[str], config_dir: Path) -> DictConfig:
    """Hydra compose with the hydra node (for choices and --cfg hydra); one-line errors."""
    if not (config_dir / "train_policy.yaml").is_file():
        raise FileNotFoundError(f"{config_dir}/train_policy.yaml not found; run from the repository or pass the configs folder")
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            return compose(config_name="train_policy", overrides=list(overrides), return_hydra_config=True)
    except MissingConfigException as exc:
        group, _, name = str(exc.missing_cfg_file or "").rpartition("/")
        if group and exc.options:
            raise ValueError(f"bad config override: {group}={name} is not a {group} config; available: "
                             f"{', '.join(exc.options)} (configs/{group}/*.yaml)") from None
        raise ValueError(f"bad config override: {str(exc).strip().splitlines()[0]}") from None
    except (HydraException, OmegaConfBaseException) as exc:
        lines = [x.strip() for x in str(exc).strip().splitlines() if x.strip()]
        hint = ""
        if lines and lines[0].startswith("Ambiguous value"):
            hint = "; to sweep over the values add -m (--multirun), for a list write key=[a,b]"
        elif len(lines) > 1 and lines[1].startswith("To append"):
            hint = f"; {lines[1][0].lower()}{lines[1][1:]}"
        first = lines[0].rstrip(".") if hint else (lines[0] if lines else str(exc))
        raise ValueError(f"bad config override: {first}{hint}") from None


def compose_config(overrides: list[str] | None = None, config_dir: str | Path = CONFIG_DIR) -> DictConfig:
    """Compose train_policy.yaml with overrides such as ``suite=libero_goal loss.lam=0.5``,
    type-checked and merged into the ``RunConfig`` schema.

    Raises ValueError (one line) on an unknown group option (listing all available ones),
    an unknown key, or a value of the wrong type.
    """
    config_dir = Path(config_dir).resolve()
    full = _compose(list(overrides or []), config_dir)
    choices = {k: v for k, v in full.hydra.runtime.choices.items() if not k.startswith("hydra/")}
    with open_dict(full):
        del full["hydra"]
    return typed_config(full, choices, config_dir)


def compose_hydra_config(overrides: list[str] | None = None, config_dir: str | Path = CONFIG_DIR) -> DictConfig:
    """The `hydra:` node Hydra would use for these overrides (what ``--cfg hydra`` prints)."""
    full = _compose(list(overrides or []), Path(config_dir).resolve())
    return OmegaConf.create({"hydra": full.hydra})


def split_config(cfg: DictConfig) -> tuple[PolicyConfig, TrainConfig, LossConfig, float | str, float]:
    """DictConfig -> (PolicyConfig, TrainConfig, LossConfig, bandwidth, bandwidth_multiplier)."""
    if OmegaConf.get_type(cfg) is not RunConfig:  # built by hand, not by compose_config/resume_config
        cfg = typed_config(cfg)
    model: dict[str, Any] = OmegaConf.to_container(cfg.model, resolve=True)  # type: ignore[assignment]
    policy_cfg = PolicyConfig.from_dict({**model, "suites": list(cfg.suite.suites)})
    train_cfg = TrainConfig.from_dict(OmegaConf.to_container(cfg.train, resolve=True))  # type: ignore[arg-type]
    loss: dict[str, Any] = OmegaConf.to_container(cfg.loss, resolve=True)  # type: ignore[assignment]
    bandwidth = loss.pop("bandwidth", 1.0)
    multiplier = float(loss.pop("bandwidth_multiplier", 1.0))
    if bandwidth != "auto":
        bandwidth = float(bandwidth)
    unknown = set(loss) - {"kind", "lam", "beta", "population", "delta"}
    if unknown:
        raise ValueError(f"loss config: unknown field(s) {sorted(unknown)}")
    loss_cfg = LossConfig(**loss, bandwidth=1.0 if bandwidth == "auto" else bandwidth)
    return policy_cfg, train_cfg, loss_cfg, bandwidth, multiplier


def data_dirs(cfg: DictConfig, root: str | Path = ".") -> list[Path]:
    """The suite's demonstration folders, relative paths taken from `root`."""
    return [Path(d) if Path(d).is_absolute() else Path(root) / d for d in cfg.suite.data_dirs]


def make_run_dir(runs_root: str | Path, suite: str) -> Path:
    """Create runs/<suite>/<timestamp>/ (``train(latest_in=runs_root)`` points runs/latest at
    it once it holds a checkpoint)."""
    root = Path(runs_root)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    run = root / suite / stamp
    n = 1
    while run.exists():
        run = root / suite / f"{stamp}_{n}"
        n += 1
    run.mkdir(parents=True)
    return run


def link_latest(runs_root: Path, run: Path) -> None:
    """runs/latest -> run (relative symlink, replaced atomically)."""
    latest = runs_root / "latest"
    tmp = runs_root / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(run, runs_root), tmp)
    os.replace(tmp, latest)


def resume_run_dir(cfg: DictConfig) -> Path:
    """The run to resume: cfg.run_dir or <runs_root>/latest."""
    run = Path(cfg.run_dir) if cfg.run_dir else Path(cfg.runs_root) / "latest"
    if not run.is_dir():
        raise FileNotFoundError(f"resume=true but {run} is not a run dir; pass run_dir=runs/<suite>/<timestamp>")
    return run.resolve()


def resume_config(run: Path, overrides: list[str]) -> DictConfig:
    """The saved config.yaml of a run, with dotted overrides (e.g. train.steps=5000) applied.

    Group choices (suite=..., loss=..., model=...) cannot change on resume: one-line error.
    """
    saved = run / "config.yaml"
    if not saved.is_file():
        raise FileNotFoundError(f"{saved} not found; {run} is not a training run dir")
    dotted = [o for o in overrides if o.split("=", 1)[0].lstrip("+") not in ("resume", "run_dir", "runs_root")]
    groups = [o for o in dotted if "." not in o.split("=", 1)[0]]
    if groups:
        raise ValueError(f"resume=true keeps the run's suite/loss/model; drop {groups} or start a new run")
    cfg = OmegaConf.load(saved)
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([o.lstrip("+") for o in dotted]))
    except OmegaConfBaseException as exc:
        raise ValueError(f"bad config override: {str(exc).strip().splitlines()[0]}") from None
    cfg = typed_config(cfg, saved=saved)  # type: ignore[arg-type]
    cfg.resume = True
    cfg.run_dir = str(run)
    return cfg
