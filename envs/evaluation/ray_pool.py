"""Evaluation workers as Ray actors, on any node of a Ray cluster: :class:`RayPool`, the
:class:`~envs.evaluation.pool.WorkerPool` behind ``eval_rollouts.py --ray auto|<address>``.

Each worker is one actor (``num_cpus=1``, scheduling strategy SPREAD: across the nodes) holding an
:class:`~envs.evaluation.worker.EpisodeRunner`; the benchmark is pickled to it. The policy is not
here: it runs batched in the driver process, in the harness's loop, one ``predict`` per round for
every waiting worker (on the driver's GPU with ``--device cuda``). Messages are
``actor.handle.remote(kind, payload)``; their ObjectRefs wait in per-worker order and
:meth:`RayPool.poll` is ``ray.wait`` on them. An actor lost with its node (Ray says the node died, was
terminated or preempted) is ("node_lost", one-line reason): the loop runs that worker's episode again
(the harness bounds how often) and calls :meth:`RayPool.restart` (``ray.kill`` + a new actor, wherever
Ray has a free CPU). An actor Ray cannot reach but does not call dead yet (``ActorUnavailableError``:
a node whose loss its health checks have not confirmed, or a network cut) is probed every
:data:`PROBE_S` s until Ray knows: its node dead -> "node_lost"; the actor dead for another reason ->
"lost"; the actor answering again -> "node_lost" too (its episode's messages may be gone). Any other
dead actor (killed, out of memory, a crash) or Ray error of a call is ("lost", reason): the loop
records that episode as failed with the reason and restarts the worker.

Videos are written by the actor on its own node, then sent back with the episode's result and
written on the driver, at the path the harness asked for (nodes need not share a file system).

``import ray`` happens only when a pool is used (joining the cluster: :mod:`envs.evaluation.ray_cluster`):
the default local pool needs no Ray (``pip install -e ".[cluster]"`` adds it).
"""

from __future__ import annotations

import collections
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from envs.benchmark import Benchmark
from envs.evaluation.pool import Event, WorkerLost, WorkerPool
from envs.evaluation.ray_cluster import (ClusterError, connect, disconnect, import_ray, kill_actor, one_line,
                                         started_local)
from envs.evaluation.worker import EpisodeRunner, EpisodeSpec

PROBE_S = 1.0  # seconds between two probes of an unreachable actor


class RunnerActor:
    """The actor class: one :class:`EpisodeRunner`, plus the videos' round trip (written here in a
    temp folder, returned as bytes with the "done" reply)."""

    def __init__(self, benchmark: Benchmark, resolution: int, fast_render: bool) -> None:
        self.runner = EpisodeRunner(benchmark, resolution, fast_render)
        self.tmp = tempfile.mkdtemp(prefix="ddl-ray-video-")
        self.video: tuple[str, str] | None = None  # (path here, path on the driver)

    def where(self) -> str:
        import ray  # inside an actor: Ray is there

        return f"{socket.gethostname()} node {ray.get_runtime_context().get_node_id()[:12]} pid {os.getpid()}"

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def handle(self, kind: str, payload: Any) -> tuple[Any, ...] | None:
        if kind == "start" and isinstance(payload, EpisodeSpec):
            self._drop_video()
            if payload.video_path is not None:
                local = os.path.join(self.tmp, f"episode{payload.episode}.mp4")
                self.video = (local, payload.video_path)
                payload.video_path = local
        reply = self.runner.handle(kind, payload)
        if reply is not None and reply[0] == "done" and self.video is not None:
            local, remote = self.video
            result = dict(reply[1])
            data = None
            if result.get("video") == local:
                data = Path(local).read_bytes()
                result["video"] = remote
            self._drop_video()
            return "done", result, data
        if kind == "abort":
            self._drop_video()
        return reply

    def _drop_video(self) -> None:
        if self.video is not None:
            Path(self.video[0]).unlink(missing_ok=True)
            self.video = None

    def close(self) -> None:
        self.runner.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _lost_reason(wid: int, where: str | None, exc: BaseException) -> str:
    """One line naming the worker, its actor, where it ran and why Ray says it is gone."""
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    fields = dict(ln.split(": ", 1) for ln in lines if ": " in ln and ln.split(": ", 1)[0] in ("actor_id", "pid", "ip"))
    keys = ("class_name", "actor_id", "pid", "namespace", "ip")
    why = next((ln for ln in reversed(lines) if ln.split(": ", 1)[0] not in keys), type(exc).__name__)
    if not where and "pid" in fields and "ip" in fields:
        where = f"{fields['ip']} pid {fields['pid']}"
    at = f" on {where}" if where else ""
    actor = f" {fields['actor_id'][:12]}" if "actor_id" in fields else ""
    return one_line(f"Ray actor{actor} of worker {wid}{at} lost ({type(exc).__name__}): {why}", 500)


def _node_lost(exc: BaseException) -> bool:
    """Whether Ray says the actor went with its node (dead, terminated or preempted by the autoscaler)."""
    text = str(exc)
    return (bool(getattr(exc, "preempted", False)) or type(exc).__name__ == "NodeDiedError"
            or "node has died" in text or "node was terminated" in text)


class RayPool(WorkerPool):
    """Workers 0..n-1 as Ray actors (see the module docstring). ``address``: where to connect when
    this process is not connected yet (:func:`connect`; a local instance it starts ends at
    :meth:`close`). ``cpus_per_worker``: the CPUs each actor reserves. ``log``: where the one line
    of :func:`connect` goes (None: nowhere)."""

    def __init__(self, benchmark: Benchmark, resolution: int, fast_render: bool, address: str | None = "auto",
                 cpus_per_worker: float = 1.0, log: Any = print) -> None:
        self.benchmark, self.resolution, self.fast_render = benchmark, resolution, fast_render
        self.address, self.cpus_per_worker, self.log = address, cpus_per_worker, log
        self._ray: Any = None
        self._owns_ray = False
        self._actor_cls: Any = None
        self._actors: list[Any] = []
        self._where: list[Any] = []  # per worker: ObjectRef of "<host> node <id> pid <pid>", or its value once read
        self._pending: list[collections.deque] = []
        self._suspect: dict[int, tuple[str, float]] = {}  # unreachable worker -> (reason, next probe time)
        self.actors_started = 0

    def start(self, n: int) -> None:
        ray = self._ray = import_ray()
        if not ray.is_initialized():
            line = connect(self.address, num_cpus=max(n, 1) if self.address in (None, "auto") else None)
            self._owns_ray = started_local()
            if self.log:
                self.log(line)
        cpus = ray.cluster_resources().get("CPU", 0)
        if n * self.cpus_per_worker > cpus:
            raise ClusterError(f"{n} workers need {n * self.cpus_per_worker:g} CPUs and the Ray cluster has {cpus:g}; "
                               f"lower --workers or add nodes")
        self._actor_cls = ray.remote(num_cpus=self.cpus_per_worker, max_restarts=0, max_task_retries=0,
                                     scheduling_strategy="SPREAD")(RunnerActor)
        self._actors, self._where, self._pending = [], [], []
        for _ in range(n):
            self._actors.append(None)
            self._where.append(None)
            self._pending.append(collections.deque())
            self._spawn(len(self._actors) - 1)

    def _spawn(self, wid: int) -> None:
        actor = self._actor_cls.remote(self.benchmark, self.resolution, self.fast_render)
        self._actors[wid] = actor
        self._where[wid] = actor.where.remote()
        self._pending[wid].clear()
        self._suspect.pop(wid, None)
        self.actors_started += 1

    def actor(self, wid: int) -> Any:
        """The actor handle of worker ``wid`` (None while it is being replaced)."""
        return self._actors[wid]

    def where(self, wid: int) -> str | None:
        """"<host> node <node id> pid <pid>" of worker ``wid``'s actor, once it has said so (None
        before, or if it died first)."""
        w = self._where[wid]
        if isinstance(w, str) or w is None:
            return w
        ready, _ = self._ray.wait([w], timeout=0)
        if not ready:
            return None
        try:
            self._where[wid] = str(self._ray.get(w))
        except Exception:  # the actor died before it said where it runs
            self._where[wid] = None
        return self._where[wid]

    def send(self, wid: int, msg: tuple[str, Any]) -> None:
        actor = self._actors[wid]
        if actor is None:
            raise WorkerLost(f"Ray actor of worker {wid} is gone")
        kind, payload = msg
        self._pending[wid].append(actor.handle.remote(kind, payload))

    def _reply(self, wid: int) -> Event | None:
        """The first reply of ``wid`` among its finished calls, or its loss; None: nothing yet."""
        ray, queue = self._ray, self._pending[wid]
        while queue:
            ready, _ = ray.wait([queue[0]], timeout=0)
            if not ready:
                return None
            ref = queue.popleft()
            try:
                reply = ray.get(ref)
            except Exception as exc:  # RayActorError (ActorDiedError, node lost), RayTaskError, ...
                queue.clear()
                return self._loss(wid, exc)
            if wid in self._suspect:  # the probe's answer: the actor is reachable again
                reason = self._suspect.pop(wid)[0]
                return wid, "node_lost", f"{reason}; it answered again, its episode's messages may be lost"
            if reply is None:  # "abort" (and anything else the runner does not answer)
                continue
            if len(reply) == 3:
                return wid, "done", self._save_video(reply[1], reply[2])
            return wid, reply[0], reply[1]
        return None

    def _loss(self, wid: int, exc: BaseException) -> Event | None:
        """A failed call: the node lost -> "node_lost"; the actor unreachable without Ray knowing why
        yet -> probed again after PROBE_S (None until Ray knows); anything else -> "lost"."""
        reason = _lost_reason(wid, self.where(wid), exc)
        first = self._suspect.pop(wid, (reason,))[0]
        if _node_lost(exc):
            return wid, "node_lost", reason
        if type(exc).__name__ == "ActorUnavailableError":
            self._suspect[wid] = (first, time.time() + PROBE_S)
            return None
        return wid, "lost", reason

    def _probe(self, wids: Sequence[int]) -> float:
        """Send the due probes (``where``) to unreachable workers; the seconds until the next is due."""
        now, wait = time.time(), float("inf")
        for w in wids:
            if w in self._suspect and not self._pending[w]:
                due = self._suspect[w][1]
                if due <= now:
                    self._pending[w].append(self._actors[w].where.remote())
                else:
                    wait = min(wait, due - now)
        return wait

    def _save_video(self, result: dict[str, Any], data: bytes | None) -> dict[str, Any]:
        if data is None:
            return result
        from policy.utils import atomic_write_bytes

        try:
            Path(result["video"]).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(result["video"], data)
        except OSError as exc:  # a video problem must not turn a success into a failure
            result = {**result, "video": f"video failed: {one_line(exc, 200)}"}
        return result

    def poll(self, wids: Sequence[int], timeout: float) -> list[Event]:
        ray = self._ray
        timeout = min(timeout, self._probe(wids))
        heads = [(w, self._pending[w][0]) for w in wids if self._pending[w]]
        if not heads:
            time.sleep(timeout if timeout < float("inf") else 0)
            return []
        refs = [ref for _, ref in heads]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        if not ready:
            ray.wait(refs, num_returns=1, timeout=timeout)
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        done = set(ready)
        return [e for w, ref in heads if ref in done and (e := self._reply(w)) is not None]

    def restart(self, wid: int) -> None:
        self._kill(wid)
        self._spawn(wid)

    def _kill(self, wid: int) -> None:
        actor, self._actors[wid] = self._actors[wid], None
        kill_actor(self._ray, actor)

    def close(self) -> None:
        ray = self._ray
        if ray is None:
            return
        try:
            if ray.is_initialized():
                refs = []
                for actor in self._actors:
                    if actor is not None:
                        try:
                            refs.append(actor.close.remote())
                        except Exception:
                            pass
                if refs:
                    ray.wait(refs, num_returns=len(refs), timeout=10)
                for wid in range(len(self._actors)):
                    self._kill(wid)
        finally:
            self._actors, self._pending = [], []
            if self._owns_ray:
                disconnect()
                self._owns_ray = False
