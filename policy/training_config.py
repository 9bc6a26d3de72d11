"""Hydra configuration of a training run -> validated dataclasses, and the run dir.

``compose_config(overrides)`` composes ``configs/train_policy.yaml`` with its groups
(suite/, loss/, model/) and command-line style overrides. ``split_config`` turns the
result into (PolicyConfig, TrainConfig, LossConfig, bandwidth, multiplier), each
validated. ``make_run_dir`` creates ``runs/<suite>/<timestamp>/`` and points
``runs/latest`` at it (atomically: symlink to a temp name, then rename).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from policy.config import PolicyConfig, TrainConfig
from policy.scoring import LossConfig

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def compose_config(overrides: list[str] | None = None, config_dir: str | Path = REPO_CONFIGS) -> DictConfig:
    """Compose train_policy.yaml with overrides such as ``suite=libero_goal loss.lam=0.5``.

    Raises ValueError (one line) on an unknown group option or key.
    """
    config_dir = Path(config_dir).resolve()
    if not (config_dir / "train_policy.yaml").is_file():
        raise FileNotFoundError(f"{config_dir}/train_policy.yaml not found; run from the repository or pass the configs folder")
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            return compose(config_name="train_policy", overrides=list(overrides or []))
    except (HydraException, OmegaConfBaseException) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(f"bad config override: {first}") from None


def split_config(cfg: DictConfig) -> tuple[PolicyConfig, TrainConfig, LossConfig, float | str, float]:
    """DictConfig -> (PolicyConfig, TrainConfig, LossConfig, bandwidth, bandwidth_multiplier)."""
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
    cfg.resume = True
    cfg.run_dir = str(run)
    return cfg  # type: ignore[return-value]
