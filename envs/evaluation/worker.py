"""The evaluation worker: one process, one LIBERO environment, one episode at a time.

Protocol over a ``multiprocessing`` pipe (the parent is :mod:`envs.evaluation.harness`)::

    parent -> ("start", EpisodeSpec)    reset, load the init state, run the wait steps
    parent -> ("act", (n, 7) array)     execute the n actions (stop early on success / cap)
    parent -> ("abort", error str)      end the current episode as a failure (no reply)
    parent -> ("close", None)           exit
    worker -> ("obs", policy obs)       waiting for an action chunk
    worker -> ("done", result dict)     the episode ended (success, failure or error)

An exception inside the simulator ends the episode as a failure with the error
recorded, and the worker drops its environment (it may be broken) and carries on.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from envs.evaluation.outcome import OutcomeTracker, classify


@dataclass
class EpisodeSpec:
    """Everything a worker needs to run one episode (sent through the pipe)."""

    suite: str
    task_index: int
    episode: int
    init_state: np.ndarray  # (state_dim,) float64 flattened MuJoCo state
    max_steps: int  # policy steps after the wait steps (the per-suite cap)
    wait_steps: int
    seed: int
    video_path: str | None = None  # write an mp4 of this episode here


def _error_line(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" at {Path(last[0].filename).name}:{last[0].lineno}" if last else ""
    return f"{type(exc).__name__}: {exc}{where}".replace("\n", " ")[:500]


class _Episode:
    def __init__(self, spec: EpisodeSpec) -> None:
        self.spec = spec
        self.steps = 0  # policy steps taken (after the wait steps)
        self.env_steps = 0
        self.env_time = 0.0
        self.t0 = time.time()
        self.frames: list[np.ndarray] = []
        self.tracker: OutcomeTracker | None = None  # built after the wait steps

    def record(self, obs: dict[str, Any]) -> None:
        if self.spec.video_path is not None:
            self.frames.append(np.concatenate([obs["agentview_rgb"], obs["eye_in_hand_rgb"]], axis=1))

    def result(self, success: bool, error: str | None) -> dict[str, Any]:
        video = None
        if self.spec.video_path is not None and self.frames:
            try:
                write_video(self.spec.video_path, self.frames)
                video = self.spec.video_path
            except Exception as exc:  # a video problem must not turn a success into a failure
                video = f"video failed: {_error_line(exc)}"
        if self.tracker is not None:
            outcome = self.tracker.summary(success, error)
        else:  # the episode ended before it started (reset failure, abort)
            outcome = {"grasps": 0, "lift_m": None, "outcome": classify(success, error, 0, None, False)}
        return {
            **outcome,
            "suite": self.spec.suite,
            "task_index": self.spec.task_index,
            "episode": self.spec.episode,
            "success": bool(success),
            "length": self.steps,
            "env_steps": self.env_steps,
            "env_time_s": round(self.env_time, 4),
            "wall_s": round(time.time() - self.t0, 3),
            "error": error,
            "video": video,
        }


def write_video(path: str, frames: list[np.ndarray], fps: int = 20) -> None:
    """Write (H, W, 3) uint8 frames to an mp4 (imageio-ffmpeg), atomically (the temp file
    of :func:`policy.utils.atomic_write` keeps the .mp4 suffix the writer picks the format by)."""
    import imageio.v2 as imageio

    from policy.utils import atomic_write  # here, not at the top: a worker imports torch only to write a video

    def write(tmp: str) -> None:
        with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=7, macro_block_size=1) as w:
            for f in frames:
                w.append_data(f)

    atomic_write(path, write)


def worker_main(conn: Connection, resolution: int, fast_render: bool) -> None:
    """Entry point of a worker process (spawn context). Serves episodes until "close"."""
    from envs.libero.env import NOOP_ACTION, get_task, make_env

    env = None
    env_key: tuple[str, int] | None = None
    ep: _Episode | None = None

    def drop_env() -> None:
        nonlocal env, env_key
        if env is not None:
            try:
                env.close()
            except Exception:
                pass
        env, env_key = None, None

    def step(action: np.ndarray) -> tuple[dict[str, Any], bool]:
        assert env is not None and ep is not None
        t = time.perf_counter()
        obs, _, terminated, _, _ = env.step(action)
        ep.env_time += time.perf_counter() - t
        ep.env_steps += 1
        ep.record(obs)
        if ep.tracker is not None:
            ep.tracker.step(action)
        return obs, terminated

    try:
        while True:
            kind, payload = conn.recv()
            if kind == "close":
                break
            if kind == "abort":
                if ep is not None:
                    ep.result(False, str(payload))  # writes the video, if any
                ep = None
                continue
            if kind == "start":
                spec: EpisodeSpec = payload
                ep = _Episode(spec)
                try:
                    if env_key != (spec.suite, spec.task_index):
                        drop_env()
                        env = make_env(spec.suite, spec.task_index, resolution, fast_render)
                        env_key = (spec.suite, spec.task_index)
                    env.reset(seed=spec.seed)
                    obs = env.set_init_state(spec.init_state)
                    ep.record(obs)
                    for _ in range(spec.wait_steps):  # success is not checked while waiting
                        obs, _ = step(NOOP_ACTION)
                    ep.tracker = OutcomeTracker(env.robosuite_env, get_task(spec.suite, spec.task_index).bddl_file)
                    conn.send(("obs", obs))
                except Exception as exc:
                    conn.send(("done", ep.result(False, f"env reset failed: {_error_line(exc)}")))
                    drop_env()
                    ep = None
                continue
            if kind == "act":
                if ep is None:
                    continue
                chunk = np.asarray(payload, dtype=np.float64)
                result = None
                try:
                    obs = None
                    for action in chunk:
                        if not np.all(np.isfinite(action)):
                            result = ep.result(False, "policy returned a non-finite action (NaN/inf)")
                            break
                        obs, success = step(action)
                        ep.steps += 1
                        if success:
                            result = ep.result(True, None)
                            break
                        if ep.steps >= ep.spec.max_steps:
                            result = ep.result(False, None)
                            break
                except Exception as exc:
                    result = ep.result(False, f"env step failed: {_error_line(exc)}")
                    drop_env()
                if result is not None:
                    conn.send(("done", result))
                    ep = None
                else:
                    conn.send(("obs", obs))
    except (EOFError, KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        drop_env()

