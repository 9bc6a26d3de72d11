"""Where evaluation workers run: the :class:`WorkerPool` interface the harness's batching loop
talks to, and :class:`LocalProcessPool`, spawned processes on this machine (the one backend).

A worker is an :class:`envs.evaluation.worker.EpisodeRunner` (one environment of the
benchmark, one episode at a time) somewhere; the pool moves the runner's messages. The loop
(:class:`envs.evaluation.harness.BatchingLoop`) decides what to send, when a worker has hung
(it keeps the deadlines) and what a lost worker's episode becomes; a pool only delivers,
reports and replaces workers.
"""

from __future__ import annotations

import multiprocessing as mp
from abc import ABC, abstractmethod
from multiprocessing.connection import wait
from typing import Any, Sequence

from envs.benchmark import Benchmark
from envs.evaluation.worker import worker_main

Event = tuple[int, str, Any]
"""(worker id, kind, payload): kind "obs" or "done" (the runner's reply, as sent), "lost" (payload:
a one-line reason, recorded as the episode's error) or "node_lost" (the worker went with its machine,
not by its episode's doing: the loop runs the episode again, at most ``BatchingLoop.max_reschedules``
times, and records nothing for it; only a cluster backend reports it)."""


class WorkerLost(ConnectionError):
    """:meth:`WorkerPool.send` could not deliver: the worker is gone. ``reason`` is one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WorkerPool(ABC):
    """Workers with ids 0..n-1, each an :class:`~envs.evaluation.worker.EpisodeRunner` of one
    benchmark (built with the benchmark, resolution and fast_render the pool was made with).

    What an implementation (a Ray pool, say) must do, and all the loop relies on:

    - :meth:`start` ``(n)``: make workers 0..n-1, ready for messages; called once, n may be 0.
    - :meth:`send` ``(wid, msg)``: deliver ``msg`` (a (kind, payload) tuple of the worker protocol,
      :mod:`envs.evaluation.worker`) to worker ``wid`` without waiting for the reply, in send order
      per worker; the runner's ``handle(kind, payload)`` must see exactly that message (numpy arrays
      and the EpisodeSpec by value). Raise :class:`WorkerLost` if the worker is known to be gone.
    - :meth:`poll` ``(wids, timeout)``: wait at most ``timeout`` s (less once something is there) for
      the workers ``wids`` and return their :data:`Event` s, at most one per worker, in the order of
      ``wids``: a reply the runner returned (non-None; "start" and "act" always get one, "abort" none),
      or ("lost", reason) for a worker that ended or became unreachable (report its replies that
      arrived first), or ("node_lost", reason) where the backend knows its machine was lost. An
      empty list means nothing happened in time; the loop then checks its deadlines.
    - :meth:`restart` ``(wid)``: end worker ``wid`` whatever its state (it may hang: kill, do not ask)
      and put a fresh one, holding no environment, under the same id.
    - :meth:`close`: ask every worker to exit ("close"), give each a moment, end those that did not;
      never raises on dead workers; called once, in a ``finally``, also after a failed start.

    A Ray backend: one actor per worker holding an EpisodeRunner; send = ``actor.handle.remote``
    (keep the ObjectRef), poll = ``ray.wait`` on the pending refs (a ``RayActorError`` is "lost"),
    restart = ``ray.kill`` + a new actor, close = ``ray.kill`` all.
    """

    @abstractmethod
    def start(self, n: int) -> None: ...

    @abstractmethod
    def send(self, wid: int, msg: tuple[str, Any]) -> None: ...

    @abstractmethod
    def poll(self, wids: Sequence[int], timeout: float) -> list[Event]: ...

    @abstractmethod
    def restart(self, wid: int) -> None: ...

    @abstractmethod
    def close(self) -> None: ...


class _Process:
    """One spawned worker process and the parent's end of its pipe."""

    def __init__(self, ctx: Any, benchmark: Benchmark, resolution: int, fast_render: bool) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, args=(child, benchmark, resolution, fast_render), daemon=True)
        self.proc.start()
        child.close()

    def died(self) -> str:
        return f"worker process died (exit code {self.proc.exitcode})"

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


class LocalProcessPool(WorkerPool):
    """Each worker a spawned process (``multiprocessing`` spawn context) running
    :func:`envs.evaluation.worker.worker_main` with one environment; the benchmark is pickled to it."""

    def __init__(self, benchmark: Benchmark, resolution: int, fast_render: bool) -> None:
        self.benchmark, self.resolution, self.fast_render = benchmark, resolution, fast_render
        self._ctx = mp.get_context("spawn")
        self._procs: list[_Process] = []

    def _spawn(self) -> _Process:
        return _Process(self._ctx, self.benchmark, self.resolution, self.fast_render)

    def start(self, n: int) -> None:
        self._procs = [self._spawn() for _ in range(n)]

    def send(self, wid: int, msg: tuple[str, Any]) -> None:
        p = self._procs[wid]
        try:
            p.conn.send(msg)
        except (BrokenPipeError, OSError):
            p.proc.join(1)
            raise WorkerLost(p.died()) from None

    def poll(self, wids: Sequence[int], timeout: float) -> list[Event]:
        procs = [(w, self._procs[w]) for w in wids]
        ready = wait([p.conn for _, p in procs] + [p.proc.sentinel for _, p in procs], timeout=timeout)
        events: list[Event] = []
        for w, p in procs:
            if p.conn in ready:  # a reply sent just before dying still arrives
                try:
                    kind, payload = p.conn.recv()
                except (EOFError, OSError):
                    events.append((w, "lost", p.died()))
                    continue
                events.append((w, kind, payload))
            elif p.proc.sentinel in ready or not p.proc.is_alive():
                p.proc.join(1)
                events.append((w, "lost", p.died()))
        return events

    def restart(self, wid: int) -> None:
        self._procs[wid].kill()
        self._procs[wid] = self._spawn()

    def close(self) -> None:
        for p in self._procs:
            try:
                p.conn.send(("close", None))
            except (OSError, BrokenPipeError):
                pass
        for p in self._procs:
            p.proc.join(10)
            p.kill()
        self._procs = []
