"""What a study is: presets, the models it compares, and its ``key=value`` overrides
(:func:`parse_overrides`); the stages that act on it are in :mod:`envs.study.runner`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from envs.libero.suites import SUITES
from envs.study.report import StudyError

MODEL_PRESETS = ("small", "paper", "objects")  # policy/configs/model/<name>.yaml
DEFAULT_ENERGY: tuple[tuple[float, float], ...] = ((1.0, 1.0), (0.5, 1.0), (1.0, 0.1))

# The CPU study as measured (docs/study.md): one task, 50 demos, 16k steps of the small model
# at lr 3e-4, energy (1, 1) and (0.5, 1) against MSE, 50 episodes per step count; two jobs at a time.
_CPU_STUDY: dict[str, Any] = dict(
    tasks=[0], demos=50, resolution=64, fast_render=True, model="small", train_steps=16000, checkpoint_every=2000,
    energy=[(1.0, 1.0), (0.5, 1.0)], eval_steps=[1, 2, 4, 8, 16], episodes=50, workers=1, jobs=2,
    train_overrides=["train.lr=3e-4"], data_root="data/study_cpu", results="benchmarks/results/libero.json", threads=1)

# The cpu study on demonstrations with route modes (every reach and transfer first steps 12 cm
# left or right, 50/50): a discrete multimodality whose average action stands still.
_BIMODAL_STUDY: dict[str, Any] = {**_CPU_STUDY, "detour": 0.12, "energy": [(1.0, 1.0), (1.0, 0.1)],
                                  "data_root": "data/study_cpu_bimodal", "results": "benchmarks/results/libero_bimodal.json"}

# The cpu study on demonstrations with grasp-yaw modes on libero_object task 1 (cream cheese,
# 8.1 cm wide, 4.3 cm narrow): the hand travels turned a quarter turn off the grasp axis and turns
# back one way or the other above the box; the average of the two closes the fingers across the
# wide side, which fails (the mean action is not a way of acting). 8k training steps (CPU budget).
_YAW_STUDY: dict[str, Any] = {**_CPU_STUDY, "tasks": [1], "yaw_modes": True, "energy": [(1.0, 0.1)],
                              "train_steps": 8000, "checkpoint_every": 1000, "eval_steps": [1, 2, 16],
                              "data_root": "data/study_cpu_yaw", "results": "benchmarks/results/libero_yaw_task1.json"}

PRESETS: dict[str, dict[str, Any]] = {
    # CPU quickstart: 1 task, a handful of 64x64 demos, a few hundred steps, 2 models, steps 2.
    # the README's main command: ~9 minutes on 2 cores, demos included (measured 2026-12-01: energy
    # 18/20, MSE 15/20 at 2 steps); both models train, then evaluate, side by side
    "quick": dict(tasks=[0], demos=10, resolution=64, fast_render=True, model="small", train_steps=1500,
                  checkpoint_every=100, energy=[(1.0, 1.0)], eval_steps=[2], episodes=20, jobs=2,
                  data_root="data/study_quick", results="eval/study/quick/libero.json", threads=1),
    "cpu": _CPU_STUDY,
    # The same on every task of the suite, 20 demos and 10 episodes per task, three energy models (not yet run).
    "cpu_suite": {**_CPU_STUDY, "tasks": None, "demos": 20, "energy": list(DEFAULT_ENERGY), "episodes": 10},
    "cpu_bimodal": _BIMODAL_STUDY,
    # Its replication on a second task (cream cheese): the best energy model of task 0 against MSE
    # at every step count (the demos go into the same data_root).
    "cpu_bimodal_task1": {**_BIMODAL_STUDY, "tasks": [1], "energy": [(1.0, 0.1)],
                          "results": "benchmarks/results/libero_bimodal_task1.json"},
    "cpu_yaw_task1": _YAW_STUDY,
    # Object-token policies (model=objects: no cameras, evaluation renders nothing) on the plain
    # demonstrations of task 0: energy (1, 1) and (1, 0.1) against MSE at 1, 2 and 16 steps.
    "objects": {**_CPU_STUDY, "model": "objects", "train_steps": 6000, "checkpoint_every": 1000,
                "energy": [(1.0, 1.0), (1.0, 0.1)], "eval_steps": [1, 2, 16], "train_overrides": [],
                "data_root": "data/study_objects", "results": "benchmarks/results/libero_objects.json"},
    # The suite-scale comparison (the paper's robotics claim): object-token policies on all 10
    # libero_object tasks, demonstrations whose average fails where it can (grasp-yaw modes on the
    # boxes wider than the gripper, tasks 1, 6, 8) and route forks elsewhere; 3 seeds per model.
    "objects_suite": {**_CPU_STUDY, "tasks": None, "model": "objects", "detour": 0.12, "yaw_tasks": [1, 6, 8],
                      "train_steps": 12000, "checkpoint_every": 1000, "energy": [(1.0, 1.0), (1.0, 0.1)], "seeds": 3,
                      "record_chunks": True, "probe_steps": [1, 2],
                      "eval_steps": [1, 2, 4, 8, 16], "train_overrides": [], "data_root": "data/study_objects_suite",
                      "results": "benchmarks/results/libero_objects_suite.json"},
    # Image policies on the grasp-yaw tasks of objects_suite, from the very same demonstrations
    # re-rendered at 64 px (demos_from): the observation type is the only change. One seed and 8k
    # steps of the small model fit 2 CPU cores; the same command with seeds=3 device=cuda is the GPU run.
    "images_yaw": {**_CPU_STUDY, "tasks": [1, 6, 8], "yaw_tasks": [1, 6, 8], "energy": [(1.0, 1.0), (1.0, 0.1)],
                   "train_steps": 8000, "checkpoint_every": 1000, "eval_steps": [1, 2, 16], "record_chunks": True,
                   "train_overrides": ["train.lr=3e-4", "model.proprio=eef"],  # the object policies' proprio
                   "demos_from": "data/study_objects_suite", "data_root": "data/study_images_yaw",
                   "results": "benchmarks/results/libero_images_yaw.json"},
    # The paper's configuration, for a GPU: 50 demos/task at 128 px, 250k steps, 50 episodes/task.
    "paper": dict(tasks=None, demos=50, resolution=128, fast_render=False, model="paper", train_steps=250_000,
                  checkpoint_every=10_000, energy=list(DEFAULT_ENERGY), eval_steps=[1, 2, 4, 8, 16], episodes=50,
                  data_root="data", results="benchmarks/results/libero.json", device="cuda"),
}


@dataclass(frozen=True)
class ModelSpec:
    """One trained run of the study: the model's name (starts with ``energy`` or ``mse``; the
    table's row), its loss, its training seed and ``run``, the name of its run and evaluation
    folders (the model's name; ``<name>_seed<k>`` for the extra seeds of a several-seed study),
    and the generator's noise dimensions per action when they differ from the model preset's."""

    name: str
    loss: str  # "energy" | "mse"
    lam: float
    beta: float
    population: int
    seed: int = 0
    run: str = ""
    noise_dim: int = 0  # noise dimensions concatenated per action (0: the model preset's)

    def __post_init__(self) -> None:
        if not self.run:
            object.__setattr__(self, "run", self.name)

    def overrides(self) -> list[str]:
        """train_policy.py overrides selecting this loss."""
        if self.loss == "mse":
            return ["loss=mse"]
        return ["loss=energy", f"loss.lam={self.lam:g}", f"loss.beta={self.beta:g}", f"loss.population={self.population}",
                *([f"model.noise_dim={self.noise_dim}"] if self.noise_dim else [])]


@dataclass
class StudyConfig:
    """All options of one study run (see ``scripts/run_study.py --help``)."""

    suite: str = "libero_object"
    preset: str = "cpu"
    tasks: list[int] | None = None  # None = every task of the suite
    demos: int = 20
    resolution: int = 64
    fast_render: bool = True
    detour: float = 0.0  # route modes of the scripted demonstrations (m, 0 = off; generate_demos.py --detour)
    yaw_modes: bool = False  # grasp-yaw modes of the scripted demonstrations (generate_demos.py --yaw-modes)
    yaw_tasks: list[int] = field(default_factory=list)  # tasks demonstrated with yaw modes and no route modes
    model: str = "small"
    train_steps: int = 5000
    checkpoint_every: int = 500
    seed: int = 0
    seeds: int = 1  # training seeds per model: seed, seed + 1, ... (the table reports their mean and spread)
    # (lambda, beta) per energy model, or (lambda, beta, population, noise_dim) for the sweep's
    # variants (0: the study's population, the model preset's noise_dim); see parse_energy
    energy: list[tuple] = field(default_factory=lambda: list(DEFAULT_ENERGY))
    population: int = 16
    mse: bool = True
    eval_steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    episodes: int = 50
    workers: int = 2
    device: str = "cpu"
    data_root: str = "data"
    runs_root: str = "runs/study"
    eval_root: str = "eval/study"
    results: str = "benchmarks/results/libero.json"
    dry_run: bool = False
    threads: int = 0  # > 0: OMP_NUM_THREADS for the subprocesses unless exported (0 = torch's default)
    jobs: int = 1  # training / evaluation subprocesses run at a time (> 1: each logs to a file)
    train_overrides: list[str] = field(default_factory=list)  # extra train.*/data.*/model.* overrides
    ray: str = ""  # "" = this machine; auto | host:port: training and evaluation jobs as Ray tasks (envs/study/cluster.py)
    record_chunks: bool = False  # evaluations save every episode's chunks (envs.study.switching reads them)
    noise: str = "shared"  # the evaluations' sampler noise (eval_rollouts.py --noise shared|episode|fixed)
    xi_scale: float = 1.0  # the evaluations' generator-noise scale (eval_rollouts.py --xi-scale; 1 = as trained)
    probe_steps: list[int] = field(default_factory=list)  # fork probe of the first seed's runs at these steps
    init_states: str = "official"  # the evaluations' starts (eval_rollouts.py --init-states official|fresh)
    eval_tasks: list[int] | None = None  # evaluate only these of the trained tasks (None: all of them)
    demos_from: str = ""  # a data_root whose demo files are re-rendered at this resolution instead of planned anew

    def variant(self) -> str:
        """"" for the protocol's evaluation; else what sets its table apart ("fresh", "noise_fixed",
        "tasks1-6-8", ...)."""
        return "_".join(filter(None, [self.episode_variant()]
                               + ([f"tasks{'-'.join(map(str, self.eval_tasks))}"] if self.eval_tasks is not None else [])))

    def episode_variant(self) -> str:
        """The part of :meth:`variant` that changes the episodes themselves (the sampler noise, the
        starts), so their folders too; a subset of tasks runs the protocol's very episodes."""
        return "_".join(([f"noise_{self.noise}"] if self.noise != "shared" else [])
                        + ([f"xiscale{self.xi_scale:g}"] if self.xi_scale != 1.0 else [])
                        + (["fresh"] if self.init_states == "fresh" else []))

    def evaluated_tasks(self) -> list[int]:
        """The tasks the evaluations, the probe and the reports cover (``eval_tasks``, else every trained task)."""
        return list(self.eval_tasks) if self.eval_tasks is not None else self.task_indices()

    def models(self) -> list[ModelSpec]:
        """The runs: the energy models (one per (lambda, beta)) then the MSE model, each once per
        seed (the first seed's folders carry the model's name alone, as single-seed studies do).
        Seed-major, so that a study stopped part-way has every model at its first seeds."""
        losses = []
        for lam, beta, m, xi in ((*e, 0, 0)[:4] for e in self.energy):
            name = f"energy_lam{lam:g}_beta{beta:g}" + (f"_m{m}" if m else "") + (f"_xi{xi}" if xi else "")
            losses.append((name, "energy", lam, beta, m or self.population, xi))
        losses += [("mse", "mse", 0.0, 2.0, 1, 0)] if self.mse else []
        return [ModelSpec(*loss[:5], seed=k, run=loss[0] if k == self.seed else f"{loss[0]}_seed{k}", noise_dim=loss[5])
                for k in range(self.seed, self.seed + self.seeds) for loss in losses]

    def run_dir(self, m: ModelSpec) -> Path:
        return Path(self.runs_root) / self.preset / self.suite / m.run

    def eval_dir(self, m: ModelSpec, steps: int) -> Path:
        return Path(self.eval_root) / self.preset / self.suite / m.run / f"steps_{steps}"

    def task_indices(self) -> list[int]:
        return list(self.tasks) if self.tasks is not None else list(range(SUITES[self.suite].num_tasks))

    def demo_modes(self, task: int) -> tuple[float, bool]:
        """(detour, yaw_modes) of a task's demonstrations: a task of ``yaw_tasks`` has grasp-yaw
        modes and no route modes; the others ``detour`` and ``yaw_modes``."""
        return (0.0, True) if task in self.yaw_tasks else (self.detour, self.yaw_modes)


# ---------------------------------------------------------------- options


def _parse_bool(key: str, text: str) -> bool:
    value = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}.get(text.lower())
    if value is None:
        raise StudyError(f"{key}={text!r} is not a boolean; use {key}=true or {key}=false")
    return value


def _parse_ints(key: str, text: str, low: int = 0) -> list[int]:
    try:
        values = [int(x) for x in text.strip("[]").split(",") if x.strip()]
    except ValueError:
        raise StudyError(f"{key}={text!r}: expected comma-separated integers such as 1,2,4") from None
    if not values or any(v < low for v in values):
        raise StudyError(f"{key}={text!r}: expected a non-empty list of integers >= {low}")
    return values


def parse_energy(text: str) -> list[tuple]:
    """``"1:1,0.5:1,1:0.1"`` -> [(1, 1), (0.5, 1), (1, 0.1)] as (lambda, beta) pairs; ``""`` or
    ``none`` -> []. lambda must lie in [0, 1] and beta in (0, 2] (eq. 14-16). A pair may name the
    population and the noise dimensions per action of its model (the sweep over what the paper says
    matters): ``1:0.1:m4`` -> (1, 0.1, 4, 0), ``1:0.1:xi2`` -> (1, 0.1, 0, 2), ``1:0.1:m4:xi2`` -> (1, 0.1, 4, 2)
    (0: the study's ``population``, the model preset's ``noise_dim``)."""
    if text.strip().lower() in ("", "none", "[]"):
        return []
    fix = "write lambda:beta pairs such as energy=1:1,0.5:1,1:0.1, optionally with :m<population> and :xi<noise dims>"
    entries: list[tuple] = []
    for item in text.strip("[]").split(","):
        parts = item.strip().strip("()").split(":")
        extra = {"m": 0, "xi": 0}
        for part in parts[2:]:
            key = part.rstrip("0123456789")
            if key not in extra or key == part or extra[key]:
                raise StudyError(f"energy={text!r}: bad option {part!r} in {item.strip()!r}; {fix}")
            extra[key] = int(part[len(key):])
            if extra[key] < {"m": 2, "xi": 1}[key]:
                raise StudyError(f"energy pair {item.strip()!r}: need a population m >= 2 and noise dims xi >= 1")
        try:
            lam, beta = (float(p) for p in parts[:2])
        except ValueError:
            raise StudyError(f"energy={text!r}: bad pair {item.strip()!r}; {fix}") from None
        if not (0.0 <= lam <= 1.0 and 0.0 < beta <= 2.0):
            raise StudyError(f"energy pair {item.strip()!r}: need lambda in [0, 1] and beta in (0, 2]")
        entries.append((lam, beta, extra["m"], extra["xi"]) if parts[2:] else (lam, beta))
    normal = [(*e, 0, 0)[:4] for e in entries]
    if len(set(normal)) != len(normal):
        raise StudyError(f"energy={text!r} lists a model twice")
    return entries


def default_preset() -> str:
    """``paper`` where CUDA is visible, ``cpu`` otherwise."""
    try:
        import torch

        return "paper" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def parse_overrides(argv: list[str]) -> StudyConfig:
    """``["suite=libero_object", "preset=quick", "episodes=2", ...]`` -> a validated StudyConfig.

    The preset (default :func:`default_preset`) sets the defaults; every other key overrides
    one field. ``train.*``, ``data.*`` and ``model.*`` keys are passed on to train_policy.py.
    Raises :class:`StudyError` (one line) on an unknown key, suite or preset or a bad value.
    """
    kv: dict[str, str] = {}
    extra: list[str] = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise StudyError(f"bad argument {arg!r}; write key=value, e.g. suite=libero_object (see --help)")
        if key.split(".")[0] in ("train", "data", "model") and "." in key:
            extra.append(arg)
        else:
            kv[key] = value
    if kv.get("suite", "libero_object") not in SUITES:
        raise StudyError(f"unknown suite {kv['suite']!r}; choose one of {', '.join(SUITES)}")
    preset = kv.pop("preset", None) or default_preset()
    if preset not in PRESETS:
        raise StudyError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    defaults = dict(PRESETS[preset])
    cfg = StudyConfig(preset=preset, **{**defaults, "train_overrides": defaults.get("train_overrides", []) + extra})
    ints = {"seeds": 1, "demos": 1, "resolution": 8, "train_steps": 1, "checkpoint_every": 1, "seed": 0, "population": 2,
            "episodes": 1, "workers": 1, "threads": 0, "jobs": 1}
    for key, value in kv.items():
        if key in ints:
            cfg = replace(cfg, **{key: _parse_ints(key, value, ints[key])[0]})
        elif key in ("fast_render", "mse", "dry_run", "yaw_modes", "record_chunks"):
            cfg = replace(cfg, **{key: _parse_bool(key, value)})
        elif key == "xi_scale":
            try:
                cfg = replace(cfg, xi_scale=float(value))
            except ValueError:
                cfg = replace(cfg, xi_scale=-1.0)
            if not cfg.xi_scale >= 0.0:
                raise StudyError(f"xi_scale must be a number >= 0 (1 = as trained), got {value!r}")
        elif key == "detour":
            try:
                cfg = replace(cfg, detour=float(value))
            except ValueError:
                raise StudyError(f"detour must be a number of metres (0 = off), got {value!r}") from None
        elif key == "energy":
            cfg = replace(cfg, energy=parse_energy(value))
        elif key == "eval_steps":
            cfg = replace(cfg, eval_steps=_parse_ints(key, value, 1))
        elif key == "probe_steps":
            cfg = replace(cfg, probe_steps=[] if value.lower() in ("none", "") else _parse_ints(key, value, 1))
        elif key == "eval_tasks":
            cfg = replace(cfg, eval_tasks=None if value == "all" else _parse_ints(key, value, 0))
        elif key == "tasks":
            cfg = replace(cfg, tasks=None if value == "all" else _parse_ints(key, value, 0))
        elif key == "yaw_tasks":
            cfg = replace(cfg, yaw_tasks=[] if value.lower() in ("none", "[]", "") else _parse_ints(key, value, 0))
        elif key == "noise":
            if value not in ("shared", "episode", "fixed"):
                raise StudyError(f"noise must be shared, episode or fixed (eval_rollouts.py --noise), got {value!r}")
            cfg = replace(cfg, noise=value)
        elif key == "init_states":
            if value not in ("official", "fresh"):
                raise StudyError(f"init_states must be official or fresh (eval_rollouts.py --init-states), got {value!r}")
            cfg = replace(cfg, init_states=value)
        elif key == "ray":
            cfg = replace(cfg, ray="" if value.lower() in ("", "none", "off", "false") else value)
        elif key in ("suite", "model", "device", "data_root", "runs_root", "eval_root", "results", "demos_from"):
            cfg = replace(cfg, **{key: value})
        else:
            raise StudyError(f"unknown option {key!r}; see scripts/run_study.py --help for the keys")
    if cfg.variant():  # another evaluation of the same runs: its own table, no second probe, and its own
        results = Path(cfg.results)  # folders unless it only narrows the tasks (the protocol's episodes)
        episodes = cfg.episode_variant()
        cfg = replace(cfg, **{"eval_root": kv.get("eval_root", f"{cfg.eval_root}_{episodes}" if episodes else cfg.eval_root),
                              "results": kv.get("results", str(results.with_name(f"{results.stem}_{cfg.variant()}.json"))),
                              "probe_steps": cfg.probe_steps if "probe_steps" in kv else []})
    if cfg.model not in MODEL_PRESETS:
        raise StudyError(f"unknown model {cfg.model!r}; choose {', '.join(MODEL_PRESETS)}")
    bad = [t for t in cfg.task_indices() if t >= SUITES[cfg.suite].num_tasks]
    if bad:
        raise StudyError(f"tasks {bad} out of range for {cfg.suite} (0..{SUITES[cfg.suite].num_tasks - 1})")
    untrained = [t for t in cfg.evaluated_tasks() if t not in cfg.task_indices()]
    if untrained:
        raise StudyError(f"eval_tasks {untrained} are not among the trained tasks {cfg.task_indices()}; "
                         "evaluate a subset of tasks=")
    if not cfg.models():
        raise StudyError("no model to train: give energy=lambda:beta pairs or mse=true")
    return cfg


# ---------------------------------------------------------------- planning
