"""The rollout harness: N episodes per task over the suites of a benchmark (LIBERO by default,
:mod:`envs.benchmark`), in parallel workers, with one batched policy call per step.

Common protocol (openpi / OpenVLA / LeRobot; docs/reference.md, the evaluation protocol): episode i
starts from official init state i; the first 10 steps are the no-op
[0,0,0,0,0,0,-1] (success is not checked while waiting); then the policy acts for
at most ``benchmark.max_steps(suite)`` steps (LIBERO: ``MAX_STEPS[suite]``); success is
the BDDL goal check. A simulator exception, a non-finite action or a policy exception ends
the episode as a failure with the error recorded. Each ``predict`` returns an (B, 8, 7) chunk; the first
``replan_every`` actions (default: all 8) are executed before the next call.

Three parts: (a) planning and resume (:func:`plan_episodes`, :func:`record_run`: which
episodes are left, the folder's record), (b) where workers run (a
:class:`envs.evaluation.pool.WorkerPool`; by default :class:`~envs.evaluation.pool.LocalProcessPool`),
(c) :class:`BatchingLoop`, which feeds the workers.

Parallelism: ``workers`` workers (by default spawned processes), each with one environment
(LP_NUM_THREADS=1). The parent waits until every worker that is executing a chunk
has reported, then serves all workers waiting for a chunk with ONE
``policy.predict`` call; workers busy resetting do not hold the batch back. A
worker that dies or hangs is restarted and its episode counted as failed with the
reason; one lost with its node (a cluster's) runs its episode again elsewhere. Every
finished episode is appended to ``<out>/episodes.jsonl`` at once; a rerun with the
same ``out`` resumes and skips finished episodes. ``<out>/eval_config.json``
records what made the episodes (``EvalConfig.producer``: the weights' identity, see
:func:`envs.evaluation.results.weights_identity`; steps, churn, protocol, seed): a rerun that
differs in any of them is refused, never mixed in.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from envs.benchmark import Benchmark, stack_observations
from envs.evaluation.pool import LocalProcessPool, WorkerLost, WorkerPool
from envs.evaluation.results import (EPISODES_FILE, RESUME_KEYS, RUN_CONFIG_FILE, append_episode, check_resume_record,
                                     episode_key, load_episodes, read_run_record, repair_episode_log, summarize,
                                     write_results)
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
    if cfg.noise not in NOISE_MODES:
        raise ValueError(f"noise={cfg.noise!r} is unknown; use one of {', '.join(NOISE_MODES)}")


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
    old_noise = (read_run_record(out) or {}).get("noise", "shared")
    if recs and old_noise != cfg.noise:
        raise ValueError(f"{out} holds episodes made with noise={old_noise!r} (now {cfg.noise!r}); "
                         f"use a new --out or delete {out}")
    bench = cfg.benchmark.name
    old = (read_run_record(out) or {}).get("benchmark", DEFAULT_BENCHMARK)
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
    if cfg.noise == "shared":  # recorded only when not the default: older folders read as they always did
        del record["noise"]
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


# ----------------------------------------------------------------------------- (c) the batching loop
class _Slot:
    """The loop's view of one worker."""

    def __init__(self, wid: int) -> None:
        self.wid = wid
        self.spec: EpisodeSpec | None = None
        self.state = "idle"  # idle | resetting | acting | waiting
        self.t = 0  # policy steps taken in the current episode
        self.deadline = float("inf")
        self.obs: dict[str, Any] | None = None
        self.last_task: tuple[str, int] | None = None  # the task whose env the worker holds


class BatchingLoop:
    """Runs ``queue`` on the workers of ``pool`` with ONE ``policy.predict`` call per round.

    A round: wait until no worker is executing a chunk (workers resetting do not hold the batch
    back), then stack the observations of all waiting workers and call the policy once; each
    gets its row (the first ``replan_every`` actions). A worker that is lost or passes its
    deadline (``worker_timeout_s`` after the last message sent to it) is restarted and its
    episode finished as an error; a worker lost with its node ("node_lost") is restarted and its
    episode queued again, up to ``max_reschedules`` times (then finished as an error); a policy that
    raises or returns a wrong shape fails the episodes of that batch. ``finish(spec, worker id,
    result)`` receives every finished episode.
    """

    max_reschedules = 2

    def __init__(self, policy: Any, pool: WorkerPool, cfg: EvalConfig, queue: list[EpisodeKey],
                 make_spec: Callable[[EpisodeKey], EpisodeSpec],
                 finish: Callable[[EpisodeSpec, int, dict[str, Any]], None]) -> None:
        self.policy, self.pool, self.cfg, self.queue = policy, pool, cfg, queue
        self.make_spec, self.on_finish = make_spec, finish
        self.use_info = bool(getattr(policy, "uses_episode_info", False))
        self.obs_spec = cfg.benchmark.observation_spec(cfg.resolution)
        self.policy_time = 0.0
        self.t_loop = 0.0  # time of the first policy call: start-up (spawn, env builds) ends there
        self.slots: list[_Slot] = []
        self.rescheduled: dict[EpisodeKey, int] = {}  # episodes run again after a node loss: how often

    def run(self) -> None:
        """Start min(workers, episodes) workers and run until the queue is empty and all are idle."""
        n = min(self.cfg.workers, len(self.queue))
        self.pool.start(n)
        self.slots = [_Slot(i) for i in range(n)]
        for s in self.slots:
            self._assign(s)
        while any(s.state != "idle" for s in self.slots):
            self._collect()
            waiting = [s for s in self.slots if s.state == "waiting"]
            if waiting and not any(s.state == "acting" for s in self.slots):
                self._serve(waiting)

    def _collect(self) -> None:
        """One poll of the busy workers: replies, lost workers, deadlines."""
        busy = [s for s in self.slots if s.state in ("resetting", "acting")]
        if not busy:
            return
        events = {wid: (kind, payload) for wid, kind, payload in self.pool.poll([s.wid for s in busy], timeout=5.0)}
        for s in busy:
            if s.wid not in events:
                if time.time() > s.deadline:
                    self._fail_and_restart(s, f"worker timed out after {self.cfg.worker_timeout_s:.0f} s")
                continue
            kind, payload = events[s.wid]
            if kind == "lost":
                self._fail_and_restart(s, str(payload))
            elif kind == "node_lost":
                self._reschedule(s, str(payload))
            elif kind == "done":
                self._finish(s, payload)
                self._assign(s)
            else:
                s.state, s.obs = "waiting", payload

    def _serve(self, waiting: list[_Slot]) -> None:
        """The one policy call for all waiting workers, and each its chunk."""
        batch = stack_observations([s.obs for s in waiting], self.obs_spec)  # type: ignore[misc]
        if self.use_info:
            batch["episode_info"] = [{"suite": s.spec.suite, "task_index": s.spec.task_index,  # type: ignore[union-attr]
                                      "episode": s.spec.episode, "t": s.t} for s in waiting]  # type: ignore[union-attr]
        t0 = time.perf_counter()
        self.t_loop = self.t_loop or time.time()
        chunks, error = self._predict(batch, len(waiting), self._generators(waiting))
        self.policy_time += time.perf_counter() - t0
        for b, s in enumerate(waiting):
            if error is not None:
                try:
                    self.pool.send(s.wid, ("abort", error))
                except WorkerLost:
                    pass
                self._finish(s, {"success": False, "length": s.t, "env_steps": 0, "error": error, "video": None,
                                 "outcome": "error"})
                self._assign(s)
                continue
            chunk = chunks[b, : self.cfg.replan_every]  # type: ignore[index]
            s.t += len(chunk)
            s.state, s.obs = "acting", None
            try:
                self._send(s, ("act", chunk))
            except WorkerLost as lost:
                self._fail_and_restart(s, lost.reason)

    def _generators(self, waiting: list[_Slot]) -> list[Any] | None:
        """One torch generator per waiting episode (``noise`` episode or fixed), else None."""
        if self.cfg.noise == "shared":
            return None
        import torch

        out = []
        for s in waiting:
            spec = s.spec
            assert spec is not None
            step = s.t if self.cfg.noise == "episode" else 0
            out.append(torch.Generator().manual_seed(noise_seed(self.cfg.seed, spec.suite, spec.task_index,
                                                                spec.episode, step)))
        return out

    def _predict(self, batch: dict[str, Any], n: int, generators: list[Any] | None = None) -> tuple[np.ndarray | None, str | None]:
        """(B, chunk, action_dim) float32 actions, or the one-line error of a failed call."""
        dim = self.cfg.benchmark.action_dim
        kw = {} if generators is None else {"generator": generators}
        try:
            chunks = np.asarray(self.policy.predict(batch, steps=self.cfg.steps, churn=self.cfg.churn, **kw),
                                dtype=np.float32)
            if chunks.ndim != 3 or chunks.shape[0] != n or chunks.shape[2] != dim:
                raise ValueError(f"policy returned shape {chunks.shape}; expected ({n}, 8, {dim})")
            return chunks, None
        except Exception as exc:  # the policy failed: these episodes fail, the run goes on
            return None, f"policy raised {type(exc).__name__}: {exc}".replace("\n", " ")[:500]

    def _send(self, s: _Slot, msg: tuple[str, Any]) -> None:
        self.pool.send(s.wid, msg)
        s.deadline = time.time() + self.cfg.worker_timeout_s

    def _assign(self, s: _Slot) -> None:
        if not self.queue:
            return
        # prefer the worker's current task: environments are slow to build
        pick = next((i for i, k in enumerate(self.queue) if k[:2] == s.last_task), 0)
        key = self.queue.pop(pick)
        s.spec = self.make_spec(key)
        s.last_task = key[:2]
        s.t, s.state = 0, "resetting"
        self._send(s, ("start", s.spec))

    def _finish(self, s: _Slot, result: dict[str, Any]) -> None:
        assert s.spec is not None
        self.on_finish(s.spec, s.wid, result)
        s.spec, s.state, s.obs, s.deadline = None, "idle", None, float("inf")

    def _reschedule(self, s: _Slot, reason: str) -> None:
        """The worker's node is lost: its episode goes back to the front of the queue, recording
        nothing, unless it was already rescheduled ``max_reschedules`` times (then it fails)."""
        if s.spec is not None:
            key = (s.spec.suite, s.spec.task_index, s.spec.episode)
            n = self.rescheduled[key] = self.rescheduled.get(key, 0) + 1
            if n > self.max_reschedules:
                reason += f" (its worker was lost with its node {n} times; not run again)"
            else:
                from tqdm import tqdm

                tqdm.write(f"{key[0]} task {key[1]} episode {key[2]}: {reason}; run again ({n}/{self.max_reschedules})",
                           file=sys.stderr)
                self.queue.insert(0, key)
                s.spec = None
        self._fail_and_restart(s, reason)

    def _fail_and_restart(self, s: _Slot, reason: str) -> None:
        if s.spec is not None:
            self._finish(s, {"success": False, "length": s.t, "env_steps": 0, "error": reason, "video": None,
                             "outcome": "error"})
        self.pool.restart(s.wid)
        fresh = self.slots[s.wid] = _Slot(s.wid)
        self._assign(fresh)


# ----------------------------------------------------------------------------- the whole run
def _seed(cfg: EvalConfig, policy: Any) -> None:
    np.random.seed(cfg.seed)
    try:
        import torch

        torch.manual_seed(cfg.seed)
    except ImportError:
        pass
    if hasattr(policy, "reset"):
        policy.reset()


def run_evaluation(policy: Any, cfg: EvalConfig, init_state_fn: InitStateFn | None = None,
                   pool: WorkerPool | None = None) -> dict[str, Any]:
    """Run (or resume) an evaluation; returns the summary (see
    :func:`envs.evaluation.results.summarize`) plus ``wall_time_s``, ``policy_time_s``,
    ``env_steps`` and ``new_episodes``, and writes results.{json,md,png} to ``cfg.out_dir``.
    ``init_state_fn`` (default: the benchmark's init states) picks each episode's first state;
    ``pool`` (default: a :class:`LocalProcessPool` of ``cfg.benchmark``) runs the workers and is
    closed at the end."""
    _validate(cfg)
    if cfg.noise != "shared" and "generator" not in inspect.signature(policy.predict).parameters:
        raise ValueError(f"noise={cfg.noise} needs a policy whose predict takes generator= (one per observation); "
                         f"{type(policy).__name__} does not: use noise=shared")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record_run(cfg)
    plan = plan_episodes(cfg)
    _seed(cfg, policy)
    t_start = time.time()
    pool = pool if pool is not None else LocalProcessPool(cfg.benchmark, cfg.resolution, cfg.fast_render)
    recorder = _Recorder(cfg, plan)
    loop = BatchingLoop(policy, pool, cfg, plan.queue, episode_spec_fn(cfg, init_state_fn), recorder.finish)
    try:
        loop.run()
    finally:
        recorder.bar.close()
        pool.close()
    return _summary(cfg, plan, loop, recorder.env_steps, t_start)


def _summary(cfg: EvalConfig, plan: Plan, loop: BatchingLoop, env_steps: int, t_start: float) -> dict[str, Any]:
    """results.{json,md,png} of every wanted episode in the log, with this run's timings."""
    wanted = plan.wanted
    records = [r for r in load_episodes(plan.log) if episode_key(r) in wanted]
    summary = summarize(records, plan.names)
    wall = time.time() - t_start
    policy_time, t_loop = loop.policy_time, loop.t_loop
    summary.update(
        wall_time_s=round(wall, 2),
        policy_time_s=round(policy_time, 3),
        policy_time_share=round(policy_time / wall, 4) if wall > 0 else 0.0,
        loop_time_s=round(time.time() - t_loop, 2) if t_loop else 0.0,
        policy_time_share_loop=round(policy_time / (time.time() - t_loop), 4) if t_loop else 0.0,
        env_steps=env_steps,
        new_episodes=len(records) - len(plan.done & wanted),
        protocol=f"common (wait {cfg.wait_steps} no-op steps, cap {cfg.max_steps or 'per-suite MAX_STEPS'}, "
                 f"execute {cfg.replan_every}/8 actions per chunk)",
        config={k: getattr(cfg, k) for k in ("steps", "churn", "episodes", "workers", "resolution", "fast_render", "seed",
                                             "policy", "replan_every", "max_steps", "wait_steps", "producer", "noise")},
    )
    if cfg.benchmark.name != DEFAULT_BENCHMARK:
        summary["config"]["benchmark"] = cfg.benchmark.name
    write_results(Path(cfg.out_dir), summary, title=f"{cfg.policy or 'policy'} steps={cfg.steps} churn={cfg.churn}")
    return summary
