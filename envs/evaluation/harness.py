"""The rollout harness: N episodes per task over the suites of a benchmark (LIBERO by default,
:mod:`envs.benchmark`), in parallel workers, with one batched policy call per step.

Common protocol (openpi / OpenVLA / LeRobot; docs/reference.md, the evaluation protocol): episode i
starts from official init state i; the first 10 steps are the no-op
[0,0,0,0,0,0,-1] (success is not checked while waiting); then the policy acts for
at most ``benchmark.max_steps(suite)`` steps (LIBERO: ``MAX_STEPS[suite]``); success is
the BDDL goal check. A simulator exception, a non-finite action or a policy exception ends
the episode as a failure with the error recorded. Each ``predict`` returns an (B, 8, 7) chunk; the first
``replan_every`` actions (default: all 8) are executed before the next call.

Three parts: (a) planning and resume (:mod:`envs.evaluation.plan`: :func:`plan_episodes`,
:func:`record_run`: which episodes are left, the folder's record), (b) where workers run (a
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

import inspect
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from envs.benchmark import stack_observations
# part (a), planning and resume, lives in envs/evaluation/plan.py; its names are re-exported here
from envs.evaluation.plan import (DEFAULT_BENCHMARK, NOISE_MODES, EpisodeKey, EvalConfig, InitStateFn,  # noqa: F401
                                  Plan, _Recorder, _validate, episode_spec_fn, noise_seed, plan_episodes, record_run)
from envs.evaluation.pool import LocalProcessPool, WorkerLost, WorkerPool
from envs.evaluation.results import episode_key, load_episodes, summarize, write_results
from envs.evaluation.worker import EpisodeSpec
from policy.utils import FolderBusyError, folder_lock


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
        self.chunks: list[tuple[int, np.ndarray]] = []  # (t, chunk) of the episode, with record_chunks


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
        self.use_wids = bool(getattr(policy, "uses_worker_ids", False))
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
        if self.use_wids:  # a policy run on the workers' nodes (envs.evaluation.ray_policy)
            batch["worker_ids"] = [s.wid for s in waiting]
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
            if self.cfg.record_chunks:
                s.chunks.append((s.t, chunks[b].copy()))  # type: ignore[index]
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
        kw: dict[str, Any] = {} if generators is None else {"generator": generators}
        if self.cfg.xi_scale != 1.0:
            kw["xi_scale"] = self.cfg.xi_scale
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
        s.t, s.state, s.chunks = 0, "resetting", []
        self._send(s, ("start", s.spec))

    def _finish(self, s: _Slot, result: dict[str, Any]) -> None:
        assert s.spec is not None
        if self.cfg.record_chunks and s.chunks:
            save_chunks(Path(self.cfg.out_dir), s.spec, s.chunks)
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


def chunk_file(out: Path, suite: str, task_index: int, episode: int) -> Path:
    """Where ``record_chunks`` puts an episode's chunks."""
    return out / "chunks" / suite / f"task{task_index}_ep{episode}.npz"


def save_chunks(out: Path, spec: EpisodeSpec, chunks: list[tuple[int, np.ndarray]]) -> None:
    """An episode's (t, chunk) list as ``t`` (K,) and ``chunks`` (K, chunk, action_dim), atomically."""
    import io

    from policy.utils import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, t=np.array([t for t, _ in chunks], np.int64), chunks=np.stack([c for _, c in chunks]).astype(np.float32))
    path = chunk_file(out, spec.suite, spec.task_index, spec.episode)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


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
    if cfg.xi_scale != 1.0 and "xi_scale" not in inspect.signature(policy.predict).parameters:
        raise ValueError(f"xi_scale={cfg.xi_scale:g} needs a policy whose predict takes xi_scale= (a trained "
                         f"DiffusionPolicy run in this process); {type(policy).__name__} does not: use xi_scale=1")
    try:
        with folder_lock(cfg.out_dir, "evaluation folder"):
            return _run_locked(policy, cfg, init_state_fn, pool)
    except FolderBusyError:
        if pool is not None:
            pool.close()
        raise


def _run_locked(policy: Any, cfg: EvalConfig, init_state_fn: InitStateFn | None, pool: WorkerPool | None) -> dict[str, Any]:
    """:func:`run_evaluation` once it holds the out folder."""
    record_run(cfg)
    plan = plan_episodes(cfg)
    if cfg.init_states == "fresh" and init_state_fn is None:
        init_state_fn = fresh_state_fn(cfg, plan)
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


def fresh_state_fn(cfg: EvalConfig, plan: Plan) -> InitStateFn:
    """The fresh layouts of every task the plan still runs (made once, kept in ``init_states/``)."""
    from envs.scripted.fresh_states import fresh_init_states

    tasks = sorted({(k[0], k[1]) for k in plan.queue})
    states = {(s, t): fresh_init_states(s, t, cfg.episodes, cfg.seed, Path(cfg.out_dir) / "init_states") for s, t in tasks}
    return lambda suite, task, episode: states[(suite, task)][episode]


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
                 f"execute {cfg.replan_every}/8 actions per chunk"
                 + (", fresh layouts instead of the official init states)" if cfg.init_states == "fresh" else ")"),
        config={k: getattr(cfg, k) for k in ("steps", "churn", "episodes", "workers", "resolution", "fast_render", "seed",
                                             "policy", "replan_every", "max_steps", "wait_steps", "producer", "noise",
                                             "init_states", "xi_scale")},
    )
    if cfg.benchmark.name != DEFAULT_BENCHMARK:
        summary["config"]["benchmark"] = cfg.benchmark.name
    write_results(Path(cfg.out_dir), summary, title=f"{cfg.policy or 'policy'} steps={cfg.steps} churn={cfg.churn}")
    return summary
