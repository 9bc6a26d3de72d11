"""Planning and resume of an evaluation run (part (a) of :mod:`envs.evaluation.harness`): what a
run is (:class:`EvalConfig`), which episodes are left (:func:`plan_episodes`), the folder's record
of what made them (:func:`record_run`), each episode's spec for a worker, and the recorder that
appends every finished episode to the log at once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from envs.benchmark import Benchmark
from envs.evaluation.results import (EPISODES_FILE, RESUME_KEYS, RUN_CONFIG_FILE, append_episode, check_resume_record,
                                     episode_key, load_episodes, read_run_record, repair_episode_log)
from envs.evaluation.worker import EpisodeSpec
from envs.libero.benchmark import LIBERO
from policy.utils import atomic_write_text

DEFAULT_BENCHMARK = LIBERO.name  # folders of the default benchmark do not name it in eval_config.json


@dataclass
class EvalConfig:
    """What to evaluate and how. ``tasks`` maps a suite to task indices (missing suite:
    all its tasks); ``max_steps`` overrides the per-suite cap (tests use a short cap);
    ``wait_steps`` None: the benchmark's (LIBERO: 10). ``benchmark``: where the suites come from."""

    suites: list[str]
    out_dir: str
    tasks: dict[str, list[int]] = field(default_factory=dict)
    episodes: int = 50
    workers: int = 2
    steps: int = 2
    churn: float = 0.0
    replan_every: int = 8
    resolution: int = 128
    fast_render: bool = False
    max_steps: int | None = None
    wait_steps: int | None = None
    seed: int = 0
    video: int = 0
    policy: str = ""
    producer: dict[str, Any] = field(default_factory=dict)
    """What makes the actions, recorded and checked on resume: for a trained policy
    :func:`envs.evaluation.results.weights_identity` of its dir (train_step, weights sha256)."""
    worker_timeout_s: float = 900.0
    progress: bool = True
    benchmark: Benchmark = field(default_factory=lambda: LIBERO)
    noise: str = "shared"
    """The sampler's noise (:data:`NOISE_MODES`): ``shared`` (one generator for all policy calls:
    an episode's noise depends on which episodes its chunks were batched with), ``episode`` (each
    chunk from its own generator seeded by (seed, suite, task, episode, step): an episode is the
    same whatever the batching or the worker count) or ``fixed`` (the same initial x and xi for
    every chunk of an episode: a distributional policy keeps its mode). The last two need a
    policy whose ``predict`` takes ``generator=`` (one per observation)."""

    xi_scale: float = 1.0
    """Multiplies the generator noise xi of a distributional policy (1: as trained; below 1 a
    temperature that narrows each draw, :func:`policy.diffusion.sample`). Needs a policy whose
    ``predict`` takes ``xi_scale=``; a folder holds one value."""

    init_states: str = "official"
    """Where episodes start: ``official`` (episode i from the task's official init state i) or
    ``fresh`` (from fresh layouts, :mod:`envs.scripted.fresh_states`, written to ``init_states/``
    of the folder: states no policy was tuned to). A folder holds one kind."""
    record_chunks: bool = False
    """Save every episode's action chunks, as predicted (``chunks/<suite>/task<k>_ep<i>.npz``:
    ``t`` (K,) the policy step of each, ``chunks`` (K, 8, action_dim) float32; written when the
    episode ends): what :mod:`envs.study.switching` reads. It changes no episode."""

    def __post_init__(self) -> None:
        if self.wait_steps is None:
            self.wait_steps = self.benchmark.wait_steps


NOISE_MODES = ("shared", "episode", "fixed")


def noise_seed(seed: int, suite: str, task_index: int, episode: int, step: int) -> int:
    """A 63-bit seed for one chunk's noise, from the run seed and the chunk's place."""
    digest = hashlib.sha256(f"{seed}|{suite}|{task_index}|{episode}|{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


InitStateFn = Callable[[str, int, int], np.ndarray]
"""(suite, task_index, episode) -> flattened MuJoCo state the episode starts from."""
EpisodeKey = tuple[str, int, int]  # (suite, task_index, episode)


# ----------------------------------------------------------------------------- (a) planning and resume
def _validate(cfg: EvalConfig) -> None:
    bench = cfg.benchmark
    for s in cfg.suites:
        bench.check_suite(s)
    for s, idx in cfg.tasks.items():
        n = len(bench.task_names(bench.check_suite(s)))
        bad = [i for i in idx if not 0 <= i < n]
        if bad:
            raise ValueError(f"task index {bad[0]} out of range for {s} (0..{n - 1})")
    if cfg.episodes < 1 or cfg.workers < 1 or cfg.steps < 1:
        raise ValueError("episodes, workers and steps must be >= 1")
    if not 1 <= cfg.replan_every <= 8:
        raise ValueError(f"replan_every must be in 1..8, got {cfg.replan_every}")
    if cfg.init_states not in ("official", "fresh"):
        raise ValueError(f"init_states={cfg.init_states!r} is unknown; use official or fresh")
    if cfg.init_states == "fresh" and cfg.benchmark.name != DEFAULT_BENCHMARK:
        raise ValueError(f"fresh init states are LIBERO layouts; {cfg.benchmark.name} has its own: use official")
    if cfg.noise not in NOISE_MODES:
        raise ValueError(f"noise={cfg.noise!r} is unknown; use one of {', '.join(NOISE_MODES)}")
    if not cfg.xi_scale >= 0.0:
        raise ValueError(f"xi_scale must be >= 0 (1 = as trained), got {cfg.xi_scale}")


def record_run(cfg: EvalConfig) -> None:
    """Refuse to mix: the episodes already in ``cfg.out_dir`` must come from the same producer,
    steps, churn, protocol, seed and benchmark (one-line ValueError naming the folder and the fix);
    then record this run in its ``eval_config.json`` (what the study's aggregation reads). The
    record is ``asdict(cfg)`` less the benchmark, which is named (``"benchmark"``, last) only when
    it is not LIBERO: LIBERO folders read as they always did."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = out / EPISODES_FILE
    recs = load_episodes(log)
    check_resume_record(out, {k: getattr(cfg, k) for k in RESUME_KEYS}, bool(recs))
    recorded = read_run_record(out) or {}
    old_noise = recorded.get("noise", "shared")
    if recs and old_noise != cfg.noise:
        raise ValueError(f"{out} holds episodes made with noise={old_noise!r} (now {cfg.noise!r}); "
                         f"use a new --out or delete {out}")
    old_starts = recorded.get("init_states", "official")
    if recs and old_starts != cfg.init_states:
        raise ValueError(f"{out} holds episodes started from {old_starts} init states (now {cfg.init_states}); "
                         f"use a new --out or delete {out}")
    old_scale = float(recorded.get("xi_scale", 1.0))
    if recs and old_scale != cfg.xi_scale:
        raise ValueError(f"{out} holds episodes made with xi_scale={old_scale:g} (now {cfg.xi_scale:g}); "
                         f"use a new --out or delete {out}")
    bench = cfg.benchmark.name
    old = recorded.get("benchmark", DEFAULT_BENCHMARK)
    if recs and old != bench:
        raise ValueError(f"{out} holds episodes made with benchmark={old!r} (now {bench!r}); "
                         f"use a new --out or delete {out}")
    for r in recs:  # the log itself: a record rewritten by hand cannot hide other episodes
        got = {k: r[k] for k in ("steps", "churn") if k in r and r[k] != getattr(cfg, k)}
        if got:
            k, v = next(iter(got.items()))
            raise ValueError(f"{out} holds episodes made with {k}={v!r} (now {getattr(cfg, k)!r}) in {EPISODES_FILE}; "
                             f"use a new --out or delete {out}")
    record = {**asdict(cfg), "tasks": cfg.tasks}
    del record["benchmark"]
    for key, default in (("noise", "shared"), ("record_chunks", False), ("init_states", "official"), ("xi_scale", 1.0)):
        if record[key] == default:  # recorded only when not the default: older folders read as they always did
            del record[key]
    if bench != DEFAULT_BENCHMARK:
        record["benchmark"] = bench
    atomic_write_text(out / RUN_CONFIG_FILE, json.dumps(record, indent=2) + "\n")


@dataclass
class Plan:
    """The episodes of a run: all it asks for (``todo``, in suite/task/episode order), those the
    folder's log already holds (``done``, any run's) and those left to run (``queue``)."""

    log: Path
    names: dict[tuple[str, int], str]  # (suite, task index) -> task name
    todo: list[EpisodeKey]
    done: set[EpisodeKey]
    queue: list[EpisodeKey]

    wanted = property(lambda self: set(self.todo))


def plan_episodes(cfg: EvalConfig) -> Plan:
    """What is left to run in ``cfg.out_dir`` (repairs a log torn by a kill first)."""
    bench = cfg.benchmark
    task_names = {s: bench.task_names(s) for s in cfg.suites}
    names = {(s, i): n for s in cfg.suites for i, n in enumerate(task_names[s])}
    todo: list[EpisodeKey] = []
    for s in cfg.suites:
        for ti in cfg.tasks.get(s, range(len(task_names[s]))):
            todo += [(s, ti, e) for e in range(cfg.episodes)]
    log = Path(cfg.out_dir) / EPISODES_FILE
    repair_episode_log(log)
    done = {episode_key(r) for r in load_episodes(log)}
    return Plan(log, names, todo, done, [k for k in todo if k not in done])


def episode_spec_fn(cfg: EvalConfig, init_state_fn: InitStateFn | None = None) -> Callable[[EpisodeKey], EpisodeSpec]:
    """key -> the EpisodeSpec a worker runs (init state, cap, wait steps, seed, video path)."""
    init_state_fn = init_state_fn or cfg.benchmark.init_state
    out = Path(cfg.out_dir)

    def make(key: EpisodeKey) -> EpisodeSpec:
        s, ti, e = key
        video = str(out / "videos" / s / f"task{ti:02d}_ep{e:03d}.mp4") if e < cfg.video else None
        return EpisodeSpec(s, ti, e, np.asarray(init_state_fn(s, ti, e), dtype=np.float64),
                           cfg.max_steps or cfg.benchmark.max_steps(s), int(cfg.wait_steps or 0), cfg.seed + e, video)

    return make


class _Recorder:
    """Appends every finished episode to the log at once and keeps the progress bar."""

    def __init__(self, cfg: EvalConfig, plan: Plan) -> None:
        from tqdm import tqdm

        self.cfg, self.plan = cfg, plan
        self.env_steps = 0
        self.bar = tqdm(total=len(plan.todo), initial=len(plan.todo) - len(plan.queue), desc="episodes", unit="ep",
                        disable=not cfg.progress)
        wanted = plan.wanted
        self.n_success = sum(bool(r["success"]) for r in load_episodes(plan.log) if episode_key(r) in wanted)

    def finish(self, spec: EpisodeSpec, wid: int, result: dict[str, Any]) -> None:
        cfg = self.cfg
        rec = {**result, "suite": spec.suite, "task_index": spec.task_index, "episode": spec.episode,
               "task": self.plan.names[(spec.suite, spec.task_index)], "worker": wid, "steps": cfg.steps,
               "churn": cfg.churn, "policy": cfg.policy}
        append_episode(self.plan.log, rec)
        self.env_steps += int(result.get("env_steps", 0))
        self.n_success += bool(rec["success"])
        self.bar.update(1)
        self.bar.set_postfix(success=f"{self.n_success}/{self.bar.n}")
