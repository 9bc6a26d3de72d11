"""The evaluation worker: one environment of a :class:`envs.benchmark.Benchmark` (LIBERO by
default), one episode at a time.

:class:`EpisodeRunner` is the worker's logic without transport: it answers the messages
below. :func:`worker_main` serves it over a ``multiprocessing`` pipe in a spawned process
(the local pool of :mod:`envs.evaluation.pool`); another pool backend hosts the same runner
elsewhere. Messages (the parent is :mod:`envs.evaluation.harness`)::

    parent -> ("start", EpisodeSpec)    reset, load the init state, run the wait steps
    parent -> ("act", (n, 7) array)     execute the n actions (stop early on success / cap)
    parent -> ("abort", error str)      end the current episode as a failure (no reply)
    parent -> ("close", None)           exit (the pipe loop's business, not the runner's)
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
from typing import Any, Callable

import numpy as np

from envs.benchmark import Benchmark, EpisodeTracker, image_keys


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
    def __init__(self, spec: EpisodeSpec, frame_of: Callable[[dict[str, Any]], np.ndarray] | None) -> None:
        self.spec = spec
        self.frame_of = frame_of  # obs -> the video's frame (None: no video, or nothing to draw it with)
        self.steps = 0  # policy steps taken (after the wait steps)
        self.env_steps = 0
        self.env_time = 0.0
        self.t0 = time.time()
        self.frames: list[np.ndarray] = []
        self.tracker: EpisodeTracker | None = None  # built after the wait steps (None: the benchmark has none)

    def record(self, obs: dict[str, Any]) -> None:
        if self.spec.video_path is not None and self.frame_of is not None:
            self.frames.append(self.frame_of(obs))

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
        else:  # the episode ended before it started (reset failure, abort: an error), or the benchmark has no tracker
            label = "error" if error is not None else "success" if success else "failed"  # classify without a tracker
            outcome = {"grasps": 0, "lift_m": None, "outcome": label}
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


class EpisodeRunner:
    """One worker's environment and episode: :meth:`handle` answers one message of the
    protocol above ("start", "act", "abort"; anything else is ignored) with its reply, or
    None when it sends none. Simulator exceptions never escape: they end the episode as a
    failure and drop the environment (it may be broken)."""

    def __init__(self, benchmark: Benchmark, resolution: int, fast_render: bool) -> None:
        self.benchmark = benchmark
        self.resolution = resolution
        self.fast_render = fast_render
        self.frame_keys = image_keys(benchmark.observation_spec(resolution))
        self.env: Any = None
        self.env_key: tuple[str, int] | None = None
        self.ep: _Episode | None = None

    def handle(self, kind: str, payload: Any) -> tuple[str, Any] | None:
        if kind == "abort":
            if self.ep is not None:
                self.ep.result(False, str(payload))  # writes the video, if any
            self.ep = None
            return None
        if kind == "start":
            return self._start(payload)
        if kind == "act" and self.ep is not None:
            return self._act(np.asarray(payload, dtype=np.float64))
        return None

    def close(self) -> None:
        """Drop the environment (the runner stays usable: the next start builds one)."""
        if self.env is not None:
            try:
                self.env.close()
            except Exception:
                pass
        self.env, self.env_key = None, None

    def _step(self, action: np.ndarray) -> tuple[dict[str, Any], bool]:
        ep = self.ep
        assert self.env is not None and ep is not None
        t = time.perf_counter()
        obs, _, terminated, _, _ = self.env.step(action)
        ep.env_time += time.perf_counter() - t
        ep.env_steps += 1
        ep.record(obs)
        if ep.tracker is not None:
            ep.tracker.step(action)
        return obs, terminated

    def _frame_of(self) -> Callable[[dict[str, Any]], np.ndarray] | None:
        """The cameras of the policy's observation side by side; without any (a camera-less
        policy), the environment's own ``render_frame`` where it has one."""
        keys = self.frame_keys
        if keys:
            return lambda obs: np.concatenate([obs[k] for k in keys], axis=1)
        render = getattr(self.env, "render_frame", None)
        return (lambda obs: render()) if render is not None else None

    def _start(self, spec: EpisodeSpec) -> tuple[str, Any]:
        ep = self.ep = _Episode(spec, None)
        try:
            if self.env_key != (spec.suite, spec.task_index):
                self.close()
                self.env = self.benchmark.make_env(spec.suite, spec.task_index, self.resolution, self.fast_render)
                self.env_key = (spec.suite, spec.task_index)
            ep.frame_of = self._frame_of()
            self.env.reset(seed=spec.seed)
            obs = self.env.set_init_state(spec.init_state)
            ep.record(obs)
            for _ in range(spec.wait_steps):  # success is not checked while waiting
                obs, _ = self._step(self.benchmark.noop_action)
            ep.tracker = self.benchmark.episode_tracker(self.env, spec.suite, spec.task_index)
            return "obs", obs
        except Exception as exc:
            result = ep.result(False, f"env reset failed: {_error_line(exc)}")
            self.close()
            self.ep = None
            return "done", result

    def _act(self, chunk: np.ndarray) -> tuple[str, Any]:
        ep = self.ep
        assert ep is not None
        result = None
        try:
            obs = None
            for action in chunk:
                if not np.all(np.isfinite(action)):
                    result = ep.result(False, "policy returned a non-finite action (NaN/inf)")
                    break
                obs, success = self._step(action)
                ep.steps += 1
                if success:
                    result = ep.result(True, None)
                    break
                if ep.steps >= ep.spec.max_steps:
                    result = ep.result(False, None)
                    break
        except Exception as exc:
            result = ep.result(False, f"env step failed: {_error_line(exc)}")
            self.close()
        if result is not None:
            self.ep = None
            return "done", result
        return "obs", obs


def worker_main(conn: Connection, benchmark: Benchmark, resolution: int, fast_render: bool) -> None:
    """Entry point of a worker process (spawn context): an :class:`EpisodeRunner` served over
    ``conn`` until "close" (or the parent goes away)."""
    runner = EpisodeRunner(benchmark, resolution, fast_render)
    try:
        while True:
            kind, payload = conn.recv()
            if kind == "close":
                break
            reply = runner.handle(kind, payload)
            if reply is not None:
                conn.send(reply)
    except (EOFError, KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        runner.close()
