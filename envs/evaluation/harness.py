"""The rollout harness: N episodes per task over LIBERO suites, in parallel workers,
with one batched policy call per step.

Common protocol (openpi / OpenVLA / LeRobot; ARCHITECTURE.md section 4): episode i
starts from official init state i; the first 10 steps are the no-op
[0,0,0,0,0,0,-1] (success is not checked while waiting); then the policy acts for
at most ``MAX_STEPS[suite]`` steps; success is the BDDL goal check. A simulator
exception, a non-finite action or a policy exception ends the episode as a failure
with the error recorded. Each ``predict`` returns an (B, 8, 7) chunk; the first
``replan_every`` actions (default: all 8) are executed before the next call.

Parallelism: ``workers`` spawned processes, each with one environment
(LP_NUM_THREADS=1). The parent waits until every worker that is executing a chunk
has reported, then serves all workers waiting for a chunk with ONE
``policy.predict`` call; workers busy resetting do not hold the batch back. A
worker that dies or hangs is restarted and its episode counted as failed with the
reason. Every finished episode is appended to ``<out>/episodes.jsonl`` at once; a
rerun with the same ``out`` resumes and skips finished episodes. ``<out>/eval_config.json``
records what made the episodes (``EvalConfig.producer``: the weights' identity, see
:func:`envs.evaluation.results.weights_identity`; steps, churn, protocol, seed): a rerun that
differs in any of them is refused, never mixed in.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Callable

import numpy as np

from envs.evaluation.results import (EPISODES_FILE, RESUME_KEYS, RUN_CONFIG_FILE, append_episode, check_resume_record,
                               episode_key, load_episodes, repair_episode_log, summarize, write_results)
from envs.evaluation.worker import EpisodeSpec, worker_main
from envs.libero.env import MAX_STEPS, NUM_INIT_STATES, NUM_WAIT_STEPS, check_suite, get_init_states, list_tasks, stack_observations
from policy.utils import atomic_write_text


@dataclass
class EvalConfig:
    """What to evaluate and how. ``tasks`` maps a suite to task indices (missing suite:
    all its tasks); ``max_steps`` overrides the per-suite cap (tests use a short cap)."""

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
    wait_steps: int = NUM_WAIT_STEPS
    seed: int = 0
    video: int = 0
    policy: str = ""
    producer: dict[str, Any] = field(default_factory=dict)
    """What makes the actions, recorded and checked on resume: for a trained policy
    :func:`envs.evaluation.results.weights_identity` of its dir (train_step, weights sha256)."""
    worker_timeout_s: float = 900.0
    progress: bool = True


InitStateFn = Callable[[str, int, int], np.ndarray]
"""(suite, task_index, episode) -> flattened MuJoCo state the episode starts from."""


def _default_init_state(suite: str, task_index: int, episode: int) -> np.ndarray:
    return get_init_states(suite, task_index)[episode % NUM_INIT_STATES]


class _Worker:
    def __init__(self, ctx: Any, cfg: EvalConfig, wid: int) -> None:
        self.wid = wid
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, args=(child, cfg.resolution, cfg.fast_render), daemon=True)
        self.proc.start()
        child.close()
        self.spec: EpisodeSpec | None = None
        self.state = "idle"  # idle | resetting | acting | waiting
        self.t = 0  # policy steps taken in the current episode
        self.deadline = float("inf")
        self.obs: dict[str, Any] | None = None
        self.last_task: tuple[str, int] | None = None  # the task whose env the worker holds

    def send(self, msg: tuple[str, Any], timeout: float) -> None:
        self.conn.send(msg)
        self.deadline = time.time() + timeout

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


def _validate(cfg: EvalConfig) -> None:
    for s in cfg.suites:
        check_suite(s)
    for s, idx in cfg.tasks.items():
        n = len(list_tasks(check_suite(s)))
        bad = [i for i in idx if not 0 <= i < n]
        if bad:
            raise ValueError(f"task index {bad[0]} out of range for {s} (0..{n - 1})")
    if cfg.episodes < 1 or cfg.workers < 1 or cfg.steps < 1:
        raise ValueError("episodes, workers and steps must be >= 1")
    if not 1 <= cfg.replan_every <= 8:
        raise ValueError(f"replan_every must be in 1..8, got {cfg.replan_every}")


def record_run(cfg: EvalConfig) -> None:
    """Refuse to mix: the episodes already in ``cfg.out_dir`` must come from the same producer,
    steps, churn, protocol and seed (one-line ValueError naming the folder and the fix); then
    record this run in its ``eval_config.json`` (what the study's aggregation reads)."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = out / EPISODES_FILE
    recs = load_episodes(log)
    check_resume_record(out, {k: getattr(cfg, k) for k in RESUME_KEYS}, bool(recs))
    for r in recs:  # the log itself: a record rewritten by hand cannot hide other episodes
        got = {k: r[k] for k in ("steps", "churn") if k in r and r[k] != getattr(cfg, k)}
        if got:
            k, v = next(iter(got.items()))
            raise ValueError(f"{out} holds episodes made with {k}={v!r} (now {getattr(cfg, k)!r}) in {EPISODES_FILE}; "
                             f"use a new --out or delete {out}")
    atomic_write_text(out / RUN_CONFIG_FILE, json.dumps({**asdict(cfg), "tasks": cfg.tasks}, indent=2) + "\n")


def run_evaluation(policy: Any, cfg: EvalConfig, init_state_fn: InitStateFn | None = None) -> dict[str, Any]:
    """Run (or resume) an evaluation; returns the summary (see
    :func:`envs.evaluation.results.summarize`) plus ``wall_time_s``, ``policy_time_s``,
    ``env_steps`` and ``new_episodes``, and writes results.{json,md,png} to ``cfg.out_dir``."""
    from tqdm import tqdm

    _validate(cfg)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record_run(cfg)
    init_state_fn = init_state_fn or _default_init_state
    names = {(s, t.index): t.name for s in cfg.suites for t in list_tasks(s)}
    todo: list[tuple[str, int, int]] = []
    for s in cfg.suites:
        for ti in cfg.tasks.get(s, range(len(list_tasks(s)))):
            todo += [(s, ti, e) for e in range(cfg.episodes)]
    wanted = set(todo)
    log = out / EPISODES_FILE
    repair_episode_log(log)
    done = {episode_key(r) for r in load_episodes(log)}
    queue = [k for k in todo if k not in done]

    np.random.seed(cfg.seed)
    try:
        import torch

        torch.manual_seed(cfg.seed)
    except ImportError:
        pass
    if hasattr(policy, "reset"):
        policy.reset()
    use_info = bool(getattr(policy, "uses_episode_info", False))

    t_start = time.time()
    policy_time = 0.0
    t_loop = 0.0  # time of the first policy call: start-up (spawn, env builds) ends there
    env_steps = 0
    ctx = mp.get_context("spawn")
    workers = [_Worker(ctx, cfg, i) for i in range(min(cfg.workers, len(queue)))]
    bar = tqdm(total=len(todo), initial=len(todo) - len(queue), desc="episodes", unit="ep", disable=not cfg.progress)
    n_success = sum(bool(r["success"]) for r in load_episodes(log) if episode_key(r) in wanted)

    def finish(w: _Worker, result: dict[str, Any]) -> None:
        nonlocal env_steps, n_success
        assert w.spec is not None
        rec = {**result, "suite": w.spec.suite, "task_index": w.spec.task_index, "episode": w.spec.episode,
               "task": names[(w.spec.suite, w.spec.task_index)], "worker": w.wid, "steps": cfg.steps,
               "churn": cfg.churn, "policy": cfg.policy}
        append_episode(log, rec)
        env_steps += int(result.get("env_steps", 0))
        n_success += bool(rec["success"])
        bar.update(1)
        bar.set_postfix(success=f"{n_success}/{bar.n}")
        w.spec, w.state, w.obs, w.deadline = None, "idle", None, float("inf")

    def assign(w: _Worker) -> None:
        if not queue:
            return
        # prefer the worker's current task: environments are slow to build
        pick = next((i for i, k in enumerate(queue) if k[:2] == w.last_task), 0)
        s, ti, e = queue.pop(pick)
        video = None
        if e < cfg.video:
            video = str(out / "videos" / s / f"task{ti:02d}_ep{e:03d}.mp4")
        w.spec = EpisodeSpec(s, ti, e, np.asarray(init_state_fn(s, ti, e), dtype=np.float64),
                             cfg.max_steps or MAX_STEPS[s], cfg.wait_steps, cfg.seed + e, video)
        w.last_task = (s, ti)
        w.t, w.state = 0, "resetting"
        w.send(("start", w.spec), cfg.worker_timeout_s)

    def fail_and_restart(w: _Worker, reason: str) -> _Worker:
        if w.spec is not None:
            finish(w, {"success": False, "length": w.t, "env_steps": 0, "error": reason, "video": None,
                       "outcome": "error"})
        w.kill()
        nw = _Worker(ctx, cfg, w.wid)
        assign(nw)
        return nw

    try:
        for w in workers:
            assign(w)
        while any(w.state != "idle" for w in workers):
            busy = [w for w in workers if w.state in ("resetting", "acting")]
            if busy:
                ready = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=5.0)
                for i, w in enumerate(workers):
                    if w.state not in ("resetting", "acting"):
                        continue
                    if w.conn in ready:
                        try:
                            kind, payload = w.conn.recv()
                        except (EOFError, OSError):
                            workers[i] = fail_and_restart(w, f"worker process died (exit code {w.proc.exitcode})")
                            continue
                        if kind == "done":
                            finish(w, payload)
                            assign(w)
                        else:
                            w.state, w.obs = "waiting", payload
                    elif w.proc.sentinel in ready or not w.proc.is_alive():
                        w.proc.join(1)
                        workers[i] = fail_and_restart(w, f"worker process died (exit code {w.proc.exitcode})")
                    elif time.time() > w.deadline:
                        workers[i] = fail_and_restart(w, f"worker timed out after {cfg.worker_timeout_s:.0f} s")
            waiting = [w for w in workers if w.state == "waiting"]
            if not waiting or any(w.state == "acting" for w in workers):
                continue
            batch = stack_observations([w.obs for w in waiting])  # type: ignore[misc]
            if use_info:
                batch["episode_info"] = [{"suite": w.spec.suite, "task_index": w.spec.task_index,  # type: ignore[union-attr]
                                          "episode": w.spec.episode, "t": w.t} for w in waiting]  # type: ignore[union-attr]
            t0 = time.perf_counter()
            t_loop = t_loop or time.time()
            try:
                chunks = np.asarray(policy.predict(batch, steps=cfg.steps, churn=cfg.churn), dtype=np.float32)
                if chunks.ndim != 3 or chunks.shape[0] != len(waiting) or chunks.shape[2] != 7:
                    raise ValueError(f"policy returned shape {chunks.shape}; expected ({len(waiting)}, 8, 7)")
                error = None
            except Exception as exc:  # the policy failed: these episodes fail, the run goes on
                error = f"policy raised {type(exc).__name__}: {exc}".replace("\n", " ")[:500]
            policy_time += time.perf_counter() - t0
            for b, w in enumerate(waiting):
                if error is not None:
                    try:
                        w.conn.send(("abort", error))
                    except (BrokenPipeError, OSError):
                        pass
                    finish(w, {"success": False, "length": w.t, "env_steps": 0, "error": error, "video": None,
                               "outcome": "error"})
                    assign(w)
                    continue
                chunk = chunks[b, : cfg.replan_every]
                w.t += len(chunk)
                w.state, w.obs = "acting", None
                try:
                    w.send(("act", chunk), cfg.worker_timeout_s)
                except (BrokenPipeError, OSError):
                    w.proc.join(1)
                    workers[workers.index(w)] = fail_and_restart(w, f"worker process died (exit code {w.proc.exitcode})")
    finally:
        bar.close()
        for w in workers:
            try:
                w.conn.send(("close", None))
            except (OSError, BrokenPipeError):
                pass
        for w in workers:
            w.proc.join(10)
            w.kill()

    records = [r for r in load_episodes(log) if episode_key(r) in wanted]
    summary = summarize(records, names)
    wall = time.time() - t_start
    summary.update(
        wall_time_s=round(wall, 2),
        policy_time_s=round(policy_time, 3),
        policy_time_share=round(policy_time / wall, 4) if wall > 0 else 0.0,
        loop_time_s=round(time.time() - t_loop, 2) if t_loop else 0.0,
        policy_time_share_loop=round(policy_time / (time.time() - t_loop), 4) if t_loop else 0.0,
        env_steps=env_steps,
        new_episodes=len(records) - len(done & wanted),
        protocol=f"common (wait {cfg.wait_steps} no-op steps, cap {cfg.max_steps or 'per-suite MAX_STEPS'}, "
                 f"execute {cfg.replan_every}/8 actions per chunk)",
        config={k: getattr(cfg, k) for k in ("steps", "churn", "episodes", "workers", "resolution", "fast_render", "seed",
                                             "policy", "replan_every", "max_steps", "wait_steps", "producer")},
    )
    write_results(out, summary, title=f"{cfg.policy or 'policy'} steps={cfg.steps} churn={cfg.churn}")
    return summary
