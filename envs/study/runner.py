"""The LIBERO study (issue 8): distributional (energy loss) against classical (MSE)
diffusion policies, success rate against sampler steps (paper Section 6.3, Fig. 9).

``scripts/run_study.py`` parses ``key=value`` overrides into a :class:`StudyConfig`
(:func:`parse_overrides`), plans three stages of subprocess commands whose outputs
decide what is already done (:func:`plan_demos`, :func:`plan_training`,
:func:`plan_eval`), runs them, and aggregates the evaluation results
(:func:`aggregate`) into ``libero.json`` + a markdown table + a PNG plot. Everything
here reads and writes files only: no simulator run, no training. Evaluation folders are
checked through the record every evaluation keeps (``eval_config.json``, see
:mod:`envs.evaluation.results`): rollouts of another checkpoint, step count, churn, resolution or
protocol are refused in one line, never mixed or relabelled.

Folders (``<p>`` = preset): demos ``<data_root>/<suite>/``, runs
``<runs_root>/<p>/<suite>/<model>/``, evaluations ``<eval_root>/<p>/<suite>/<model>/steps_<k>/``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from envs.evaluation.results import describe_producer, differing_keys, read_run_record, same_producer, weights_identity
from envs.libero.env import NUM_WAIT_STEPS, SUITES, list_tasks
from envs.study.report import StudyError, collect_results, write_study_results
from policy.utils import atomic_write_text

DEFAULT_ENERGY: tuple[tuple[float, float], ...] = ((1.0, 1.0), (0.5, 1.0), (1.0, 0.1))
SPEC_FILE = "study_spec.json"  # written into a run dir before its training starts
LEGACY_EVAL_MARKER = "study_eval.json"  # the checkpoint step, written by studies before eval_config.json had it (read only)

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
    "quick": dict(tasks=[0], demos=5, resolution=64, fast_render=True, model="small", train_steps=300,
                  checkpoint_every=100, energy=[(1.0, 1.0)], eval_steps=[2], episodes=4,
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
    # The paper's configuration, for a GPU: 50 demos/task at 128 px, 250k steps, 50 episodes/task.
    "paper": dict(tasks=None, demos=50, resolution=128, fast_render=False, model="paper", train_steps=250_000,
                  checkpoint_every=10_000, energy=list(DEFAULT_ENERGY), eval_steps=[1, 2, 4, 8, 16], episodes=50,
                  data_root="data", results="benchmarks/results/libero.json", device="cuda"),
}


@dataclass(frozen=True)
class ModelSpec:
    """One model of the study: its name (starts with ``energy`` or ``mse``) and its loss."""

    name: str
    loss: str  # "energy" | "mse"
    lam: float
    beta: float
    population: int

    def overrides(self) -> list[str]:
        """train_policy.py overrides selecting this loss."""
        if self.loss == "mse":
            return ["loss=mse"]
        return ["loss=energy", f"loss.lam={self.lam:g}", f"loss.beta={self.beta:g}", f"loss.population={self.population}"]


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
    model: str = "small"
    train_steps: int = 5000
    checkpoint_every: int = 500
    seed: int = 0
    energy: list[tuple[float, float]] = field(default_factory=lambda: list(DEFAULT_ENERGY))
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

    def models(self) -> list[ModelSpec]:
        """The energy models (one per (lambda, beta)) then the MSE model."""
        out = [ModelSpec(f"energy_lam{lam:g}_beta{beta:g}", "energy", lam, beta, self.population) for lam, beta in self.energy]
        return out + ([ModelSpec("mse", "mse", 0.0, 2.0, 1)] if self.mse else [])

    def run_dir(self, m: ModelSpec) -> Path:
        return Path(self.runs_root) / self.preset / self.suite / m.name

    def eval_dir(self, m: ModelSpec, steps: int) -> Path:
        return Path(self.eval_root) / self.preset / self.suite / m.name / f"steps_{steps}"

    def task_indices(self) -> list[int]:
        return list(self.tasks) if self.tasks is not None else list(range(SUITES[self.suite].num_tasks))


@dataclass
class Job:
    """One planned subprocess: ``state`` is done (skipped), run, resume, or wait (needs an earlier stage)."""

    stage: str
    name: str
    cmd: list[str]
    state: str
    detail: str = ""
    key: tuple[str, int] | None = None  # eval jobs: (model name, steps)
    log: Path | None = None  # where the job's output goes when jobs run in parallel


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


def parse_energy(text: str) -> list[tuple[float, float]]:
    """``"1:1,0.5:1,1:0.1"`` -> [(1, 1), (0.5, 1), (1, 0.1)] as (lambda, beta) pairs; ``""`` or
    ``none`` -> []. lambda must lie in [0, 1] and beta in (0, 2] (eq. 14-16)."""
    if text.strip().lower() in ("", "none", "[]"):
        return []
    pairs = []
    for item in text.strip("[]").split(","):
        parts = item.strip().strip("()").split(":")
        try:
            lam, beta = (float(p) for p in parts)
        except ValueError:
            raise StudyError(f"energy={text!r}: bad pair {item.strip()!r}; write lambda:beta pairs such as energy=1:1,0.5:1,1:0.1") from None
        if not (0.0 <= lam <= 1.0 and 0.0 < beta <= 2.0):
            raise StudyError(f"energy pair {item.strip()!r}: need lambda in [0, 1] and beta in (0, 2]")
        pairs.append((lam, beta))
    if len(set(pairs)) != len(pairs):
        raise StudyError(f"energy={text!r} lists a (lambda, beta) pair twice")
    return pairs


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
    ints = {"demos": 1, "resolution": 8, "train_steps": 1, "checkpoint_every": 1, "seed": 0, "population": 2,
            "episodes": 1, "workers": 1, "threads": 0, "jobs": 1}
    for key, value in kv.items():
        if key in ints:
            cfg = replace(cfg, **{key: _parse_ints(key, value, ints[key])[0]})
        elif key in ("fast_render", "mse", "dry_run", "yaw_modes"):
            cfg = replace(cfg, **{key: _parse_bool(key, value)})
        elif key == "detour":
            try:
                cfg = replace(cfg, detour=float(value))
            except ValueError:
                raise StudyError(f"detour must be a number of metres (0 = off), got {value!r}") from None
        elif key == "energy":
            cfg = replace(cfg, energy=parse_energy(value))
        elif key == "eval_steps":
            cfg = replace(cfg, eval_steps=_parse_ints(key, value, 1))
        elif key == "tasks":
            cfg = replace(cfg, tasks=None if value == "all" else _parse_ints(key, value, 0))
        elif key in ("suite", "model", "device", "data_root", "runs_root", "eval_root", "results"):
            cfg = replace(cfg, **{key: value})
        else:
            raise StudyError(f"unknown option {key!r}; see scripts/run_study.py --help for the keys")
    if cfg.model not in ("small", "paper"):
        raise StudyError(f"unknown model {cfg.model!r}; choose small or paper")
    bad = [t for t in cfg.task_indices() if t >= SUITES[cfg.suite].num_tasks]
    if bad:
        raise StudyError(f"tasks {bad} out of range for {cfg.suite} (0..{SUITES[cfg.suite].num_tasks - 1})")
    if not cfg.models():
        raise StudyError("no model to train: give energy=lambda:beta pairs or mse=true")
    return cfg


# ---------------------------------------------------------------- planning


def _py(script: str) -> list[str]:
    """[python, scripts/<script>] with the script path relative to the working directory."""
    return [sys.executable, os.path.relpath(Path(__file__).resolve().parents[2] / "scripts" / script)]


def count_demos(cfg: StudyConfig) -> dict[str, int]:
    """Demonstrations already in ``<data_root>/<suite>/`` per selected task name; raises
    StudyError if a file was rendered at another resolution or rendering mode than ``cfg``."""
    import h5py

    from envs.libero.hdf5_writer import scripted_modes
    from envs.scripted.demos import task_file_name

    tasks = list_tasks(cfg.suite)
    out = {}
    for i in cfg.task_indices():
        path = Path(cfg.data_root) / cfg.suite / task_file_name(tasks[i].name)
        n = 0
        if path.is_file():
            with h5py.File(path, "r") as f:
                n = sum(k.startswith("demo_") for k in f["data"])
                env = json.loads(f["data"].attrs.get("env_args", "{}")).get("env_kwargs", {})
                detour, yaw_modes = scripted_modes(f["data"].attrs)
            seen = (env.get("camera_heights", cfg.resolution), bool(env.get("fast_render", cfg.fast_render)))
            if abs(detour - cfg.detour) > 1e-9:
                raise StudyError(f"{path} holds demos made with route modes detour={detour:g} but the study wants "
                                 f"detour={cfg.detour:g}; use another data_root")
            if yaw_modes != cfg.yaw_modes:
                raise StudyError(f"{path} holds demos made with yaw_modes={yaw_modes} but the study wants "
                                 f"yaw_modes={cfg.yaw_modes}; use another data_root")
            if seen != (cfg.resolution, cfg.fast_render):
                raise StudyError(f"{path} holds demos at {seen[0]} px, fast_render={seen[1]} but the study wants "
                                 f"{cfg.resolution} px, fast_render={cfg.fast_render}; use another data_root")
        out[tasks[i].name] = n
    return out


def plan_demos(cfg: StudyConfig) -> list[Job]:
    """Stage 1: scripts/generate_demos.py for the tasks still short of ``cfg.demos`` demos."""
    counts = count_demos(cfg)
    short = {k: v for k, v in counts.items() if v < cfg.demos}
    cmd = _py("generate_demos.py") + [
        "--suite", cfg.suite, "--tasks", "all" if cfg.tasks is None else ",".join(map(str, cfg.tasks)),
        "--demos-per-task", str(cfg.demos), "--workers", str(cfg.workers), "--out", cfg.data_root,
        "--resolution", str(cfg.resolution)] + (["--fast-render"] if cfg.fast_render else []) + (
        ["--detour", f"{cfg.detour:g}"] if cfg.detour else []) + (["--yaw-modes"] if cfg.yaw_modes else [])
    have = sum(min(v, cfg.demos) for v in counts.values())
    detail = f"{have}/{cfg.demos * len(counts)} demos in {Path(cfg.data_root) / cfg.suite}"
    return [Job("demos", cfg.suite, cmd, "run" if short else "done", detail)]


def training_spec(cfg: StudyConfig, m: ModelSpec) -> dict[str, Any]:
    """What must stay fixed for a run dir to be resumed or reused (steps may grow)."""
    return {"suite": cfg.suite, "model": cfg.model, "seed": cfg.seed, "loss": asdict(m), "data_root": cfg.data_root,
            "tasks": cfg.task_indices(), "demos": cfg.demos, "resolution": cfg.resolution,
            "fast_render": cfg.fast_render, "train_overrides": cfg.train_overrides,
            **({"detour": cfg.detour} if cfg.detour else {}),  # absent when off: older run dirs stay valid
            **({"yaw_modes": True} if cfg.yaw_modes else {})}


def checkpoint_step(run: Path) -> int:
    """Step of the newest complete checkpoint in ``run/checkpoints`` (0 if none)."""
    ckpts = run / "checkpoints"
    steps = [json.loads((p / "trainer_state.json").read_text())["step"]
             for p in ckpts.glob("step_*") if (p / "trainer_state.json").is_file()] if ckpts.is_dir() else []
    return max(steps, default=0)


def plan_training(cfg: StudyConfig) -> list[Job]:
    """Stage 2: one train_policy.py run per model in its fixed run dir: done when the newest
    checkpoint reached ``train_steps`` and ``policy/`` exists, resume when a checkpoint exists."""
    jobs = []
    for m in cfg.models():
        run = cfg.run_dir(m)
        spec_path = run / SPEC_FILE
        if spec_path.is_file():
            now = training_spec(cfg, m)
            diff = sorted(differing_keys(json.loads(spec_path.read_text()).get("spec") or {}, now, now))
            if diff:
                raise StudyError(f"{run} was trained with other settings ({', '.join(diff)}); "
                                 f"use another runs_root or delete that run dir")
        step = checkpoint_step(run)
        if step >= cfg.train_steps and (run / "policy" / "config.json").is_file():
            jobs.append(Job("train", m.name, [], "done", f"{step} steps in {run}"))
            continue
        if step > 0:
            cmd = _py("train_policy.py") + ["resume=true", f"run_dir={run}", f"train.steps={cfg.train_steps}"]
            jobs.append(Job("train", m.name, cmd, "resume", f"from step {step} in {run}", log=run / "study_train.log"))
            continue
        cmd = _py("train_policy.py") + [
            f"suite={cfg.suite}", f"model={cfg.model}", *m.overrides(), f"train.steps={cfg.train_steps}",
            f"train.seed={cfg.seed}", f"train.checkpoint_every={cfg.checkpoint_every}",
            f"suite.data_dirs=[{Path(cfg.data_root) / cfg.suite}]", f"run_dir={run}", *cfg.train_overrides]
        jobs.append(Job("train", m.name, cmd, "run", f"-> {run}", log=run / "study_train.log"))
    return jobs


def eval_finished(cfg: StudyConfig, m: ModelSpec, steps: int) -> bool:
    """True when ``steps_<k>/results.json`` covers every planned episode."""
    path = cfg.eval_dir(m, steps) / "results.json"
    if not path.is_file():
        return False
    res = json.loads(path.read_text())
    return int(res.get("config", {}).get("steps", steps)) == steps and \
        int(res["suites"].get(cfg.suite, {}).get("episodes", 0)) >= len(cfg.task_indices()) * cfg.episodes


def recorded_producer(out: Path) -> dict[str, Any] | None:
    """What made an evaluation folder's rollouts, from its eval_config.json (the record every
    evaluation keeps, :func:`envs.evaluation.results.check_resume_record`); folders of older studies
    only have the checkpoint step in study_eval.json. None when nothing is recorded."""
    try:
        rec = read_run_record(out)
    except ValueError as exc:
        raise StudyError(str(exc)) from None
    if rec and rec.get("producer"):
        return rec["producer"]
    legacy = out / LEGACY_EVAL_MARKER
    if legacy.is_file():
        return {"kind": "checkpoint", "train_step": json.loads(legacy.read_text()).get("train_step")}
    return None


def run_producer(cfg: StudyConfig, m: ModelSpec) -> dict[str, Any] | None:
    """The weights' identity of the model's run dir now (None before its first checkpoint)."""
    run = cfg.run_dir(m)
    return weights_identity(run) if (run / "policy" / "model.safetensors").is_file() else None


def check_eval_producer(cfg: StudyConfig, m: ModelSpec, out: Path, now: dict[str, Any] | None) -> None:
    """Refuse an evaluation folder whose rollouts come from another checkpoint than ``now``
    (:func:`run_producer`: the model's run dir was trained further): never mixed or reported."""
    old = recorded_producer(out)
    run = cfg.run_dir(m)
    if old is None or now is None:
        return
    stale = (not same_producer(old, now)) if "weights_sha256" in old else old.get("train_step") != checkpoint_step(run)
    if stale:
        raise StudyError(f"{out} holds rollouts of another checkpoint of {m.name} ({describe_producer(old)}; its run dir "
                         f"now holds {describe_producer(now)}): delete that folder to evaluate the new one")


def plan_eval(cfg: StudyConfig, trained: set[str] | None = None) -> list[Job]:
    """Stage 3: eval_rollouts.py per (model, steps). ``trained``: models whose training is
    done (default: read from the run dirs); the others wait. Refuses a folder holding rollouts
    of another checkpoint (:func:`check_eval_producer`)."""
    if trained is None:
        trained = {j.name for j in plan_training(cfg) if j.state == "done"}
    jobs = []
    for m in cfg.models():
        now = run_producer(cfg, m)
        for k in cfg.eval_steps:
            out = cfg.eval_dir(m, k)
            cmd = _py("eval_rollouts.py") + [
                "--checkpoint", str(cfg.run_dir(m)), "--steps", str(k), "--suites", cfg.suite,
                "--episodes", str(cfg.episodes), "--workers", str(cfg.workers), "--out", str(out),
                "--device", cfg.device] + (["--tasks", ",".join(map(str, cfg.tasks))] if cfg.tasks is not None else []) \
                + (["--fast-render"] if cfg.fast_render else [])
            check_eval_producer(cfg, m, out, now)
            if eval_finished(cfg, m, k):
                state = "done"
            else:
                state = "run" if m.name in trained else "wait"
            jobs.append(Job("eval", f"{m.name} steps={k}", cmd, state, str(out), (m.name, k), out / "study_eval.log"))
    return jobs


def write_spec(cfg: StudyConfig, m: ModelSpec, machine: str) -> None:
    """Record the training spec and the machine in the run dir before its training starts."""
    run = cfg.run_dir(m)
    run.mkdir(parents=True, exist_ok=True)
    if not (run / SPEC_FILE).is_file():
        text = json.dumps({"spec": training_spec(cfg, m), "machine": machine, "preset": cfg.preset}, indent=2)
        atomic_write_text(run / SPEC_FILE, text + "\n")


# ---------------------------------------------------------------- aggregation

def study_protocol(cfg: StudyConfig) -> dict[str, Any]:
    """The protocol of the study's evaluations (what :func:`plan_eval`'s commands set): every
    aggregated folder must have been evaluated with it."""
    return {"churn": 0.0, "fast_render": cfg.fast_render, "replan_every": 8, "max_steps": None,
            "wait_steps": NUM_WAIT_STEPS}


def aggregate(cfg: StudyConfig) -> dict[str, Path] | None:
    """Stage 4: collect the study's evaluations and write libero.json, the table and the plot
    (None when no evaluation has finished yet)."""
    table, protocol = collect_results(cfg.suite, {m.name: cfg.eval_dir(m, 1).parent for m in cfg.models()},
                                      expect=study_protocol(cfg))
    if not table:
        return None
    machines = set()
    for m in cfg.models():
        spec = cfg.run_dir(m) / SPEC_FILE
        if spec.is_file():
            machines.add(json.loads(spec.read_text()).get("machine", "unknown"))
    tasks = "all tasks" if cfg.tasks is None else f"tasks {','.join(map(str, cfg.tasks))}"
    notes = (f"preset={cfg.preset}: model={cfg.model}, {cfg.train_steps} training steps, seed {cfg.seed}, "
             f"{cfg.demos} scripted demos per task at {cfg.resolution} px "
             f"({'fast' if cfg.fast_render else 'official'} rendering, same for evaluation)"
             + (f" with route modes (every reach and transfer first steps {cfg.detour:g} m left or right, 50/50)"
                if cfg.detour else "")
             + (" with grasp-yaw modes (the hand travels a quarter turn off the grasp axis and turns back "
                "one way or the other above the object, 50/50)" if cfg.yaw_modes else "") + f", {tasks}, "
             f"up to {cfg.episodes} episodes per task"
             + (f", training overrides {' '.join(cfg.train_overrides)}" if cfg.train_overrides else "")
             + f"; trained on {'; '.join(sorted(machines)) or 'unknown machine'}")
    protocol = (f"{protocol}; episode i starts from official init state i; success = successes / episodes "
                f"pooled over the evaluated tasks") if protocol else ""
    return write_study_results(cfg.suite, table, cfg.results, protocol, notes)
