"""Where the policy runs in a Ray evaluation: ``eval_rollouts.py --ray ... --ray-policy driver|actor|node``.

- ``driver`` (the default): in the process running eval_rollouts, one ``predict`` per round for
  every waiting worker (:class:`~envs.evaluation.ray_pool.RayPool` alone; nothing here).
- ``actor``: one Ray actor holds the policy, on a GPU when the cluster has one (``num_gpus=1``);
  each round's batch goes to it and the chunks come back. For a driver without a GPU.
- ``node``: one policy actor on every node that runs workers (pinned there, on the node's GPU when
  it has one); each round's batch is split by the node of each row's worker and the parts are
  predicted concurrently, so inference spreads over the nodes' devices.

:class:`RemotePolicy` is the driver's stand-in: the harness calls its ``predict`` like a local
policy's (with ``worker_ids`` in the batch, :attr:`RemotePolicy.uses_worker_ids`). The weights
travel with the actor (config.json, model.safetensors and the other files of the pretrained folder,
as bytes; the sha256 of the weights is checked where they are loaded), so the nodes need no shared
file system. The per-chunk generators of ``--noise episode|fixed`` travel as their states, so a row's
actions do not depend on where it is predicted. Policy actors reserve no CPU: the workers of a
round wait while it predicts. A policy actor that dies (its node lost, killed) is replaced, without
node affinity, and its part predicted again once; a second failure fails that part's episodes, as a
local policy that raises does. Measured in BENCHMARKS.md, "Cluster".
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from envs.evaluation.ray_cluster import ClusterError, import_ray, kill_actor

PLACEMENTS = ("driver", "actor", "node")
WEIGHTS = "model.safetensors"


def pretrained_files(root: str | os.PathLike[str]) -> dict[str, bytes]:
    """The files of a pretrained policy folder (or a run dir's ``policy/``), name -> bytes."""
    path = Path(root)
    if not (path / WEIGHTS).is_file() and (path / "policy" / WEIGHTS).is_file():
        path = path / "policy"
    if not (path / WEIGHTS).is_file():
        raise FileNotFoundError(f"{root}: no pretrained policy here (need config.json + {WEIGHTS})")
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".")}


def split_batch(batch: Mapping[str, Any], rows: Sequence[int]) -> dict[str, Any]:
    """Rows ``rows`` of a stacked observation batch (arrays indexed, lists picked)."""
    idx = np.asarray(rows, dtype=np.int64)
    return {k: (v[idx] if isinstance(v, np.ndarray) else [v[i] for i in rows]) for k, v in batch.items()}


class PolicyActor:
    """The actor class: a :class:`~policy.model.policy.DiffusionPolicy` loaded from the shipped
    files on ``device`` ("auto": cuda where this node has a GPU, else cpu)."""

    def __init__(self, files: dict[str, bytes], sha256: str | None, device: str, seed: int) -> None:
        import torch

        from policy.model.policy import DiffusionPolicy

        got = hashlib.sha256(files.get(WEIGHTS, b"")).hexdigest()
        if sha256 is not None and got != sha256:
            raise ValueError(f"the weights arrived with sha256 {got[:12]}, not {sha256[:12]}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        torch.manual_seed(seed)
        with tempfile.TemporaryDirectory(prefix="ddl-ray-policy-") as tmp:
            for name, data in files.items():
                Path(tmp, name).write_bytes(data)
            self.policy = DiffusionPolicy.from_pretrained(tmp, device=device)
        self.device = device

    def where(self) -> str:
        import ray  # inside an actor: Ray is there

        return f"{socket.gethostname()} node {ray.get_runtime_context().get_node_id()[:12]} pid {os.getpid()} {self.device}"

    def reset(self) -> None:
        self.policy.reset()

    def predict(self, batch: dict[str, Any], steps: int, churn: float, states: list[Any] | None) -> np.ndarray:
        kw: dict[str, Any] = {}
        if states is not None:
            import torch

            gens = []
            for s in states:
                g = torch.Generator()
                g.set_state(s)
                gens.append(g)
            kw["generator"] = gens
        return np.asarray(self.policy.predict(batch, steps=steps, churn=churn, **kw), dtype=np.float32)


class RemotePolicy:
    """The driver's stand-in for a policy run by Ray actors (see the module docstring).

    ``policy``: the policy loaded in the driver (on the CPU: its config and features serve the
    harness, its ``predict`` is never called); ``checkpoint``: its pretrained folder or run dir;
    ``placement``: "actor" | "node"; ``device``: the actors' torch device ("auto": cuda where there
    is a GPU; "cuda" needs one: a one-line :class:`ClusterError` otherwise). :meth:`bind` the
    :class:`~envs.evaluation.ray_pool.RayPool` of each evaluation before it runs."""

    uses_worker_ids = True

    def __init__(self, policy: Any, checkpoint: str | os.PathLike[str], placement: str, device: str = "auto",
                 seed: int = 0) -> None:
        if placement not in ("actor", "node"):
            raise ValueError(f"unknown policy placement {placement!r}; use one of {', '.join(PLACEMENTS)}")
        self.ray = import_ray()
        if not self.ray.is_initialized():
            raise ClusterError("RemotePolicy needs a connected Ray cluster (envs.evaluation.ray_cluster.connect)")
        self.config = getattr(policy, "config", None)
        self.placement, self.device, self.seed = placement, device, seed
        self.files = pretrained_files(checkpoint)
        self.sha256 = hashlib.sha256(self.files[WEIGHTS]).hexdigest()
        self.files_ref = self.ray.put(self.files)
        self.pool: Any = None
        self.actors: dict[str | None, Any] = {}  # node id (None: the one actor) -> actor handle
        self.worker_nodes: dict[int, tuple[Any, str]] = {}  # worker id -> (its actor handle, its node id)
        self.replaced = 0
        if device == "cuda" and not self.ray.cluster_resources().get("GPU", 0):
            raise ClusterError("--device cuda with --ray-policy needs a GPU in the Ray cluster and it has none; "
                               "drop --device (auto: cuda where there is one) or add a GPU node")

    def bind(self, pool: Any) -> None:
        """The worker pool whose workers' observations come in the batches (their nodes)."""
        self.pool, self.worker_nodes = pool, {}

    def reset(self) -> None:
        """Stateless between episodes (as :class:`DiffusionPolicy`); the actors seed on creation."""

    # --------------------------------------------------------------- actors
    def _node_gpus(self, node: str | None) -> float:
        if node is None:
            return 1.0 if self.ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        for n in self.ray.nodes():
            if n.get("NodeID") == node and n.get("Alive"):
                return 1.0 if n.get("Resources", {}).get("GPU", 0) >= 1 else 0.0
        return 0.0

    def _spawn(self, node: str | None, pinned: bool = True) -> Any:
        opts: dict[str, Any] = {"num_cpus": 0, "num_gpus": self._node_gpus(node if pinned else None),
                                "max_restarts": 0, "max_task_retries": 0}
        if node is not None and pinned:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
        device = self.device if self.device != "auto" or opts["num_gpus"] else "cpu"
        actor = self.ray.remote(**opts)(PolicyActor).remote(self.files_ref, self.sha256, device, self.seed)
        self.actors[node] = actor
        return actor

    def _node_of(self, wid: int) -> str | None:
        """The node of worker ``wid``'s actor; None (any policy actor) when it cannot say (gone since
        its observation came: the pool reports it on its next poll)."""
        handle = self.pool.actor(wid)
        known = self.worker_nodes.get(wid)
        if known is None or known[0] is not handle:
            try:
                known = (handle, self.ray.get(handle.node_id.remote(), timeout=60))
            except Exception:
                return None
            self.worker_nodes[wid] = known
        return known[1]

    def where(self) -> dict[str, str]:
        """Node id (or "actor") -> "<host> node <id> pid <pid> <device>" of each policy actor."""
        return {str(k or "actor"): self.ray.get(a.where.remote(), timeout=60) for k, a in self.actors.items()}

    # --------------------------------------------------------------- predict
    def predict(self, obs: Mapping[str, Any], steps: int = 2, churn: float = 0.0,
                generator: Sequence[Any] | None = None) -> np.ndarray:
        batch = dict(obs)
        wids = list(batch.pop("worker_ids"))
        groups: dict[str | None, list[int]] = {}
        for row, wid in enumerate(wids):
            groups.setdefault(self._node_of(wid) if self.placement == "node" else None, []).append(row)
        states = None if generator is None else [g.get_state() for g in generator]
        calls = {}
        for node, rows in groups.items():
            part = (split_batch(batch, rows) if len(groups) > 1 else batch,
                    None if states is None else [states[r] for r in rows])
            actor = self.actors.get(node) or self._spawn(node)
            calls[node] = (rows, part, actor.predict.remote(part[0], steps, churn, part[1]))
        out: np.ndarray | None = None
        for node, (rows, part, ref) in calls.items():
            chunk = self._get(node, ref, part, steps, churn)
            if out is None:
                out = np.empty((len(wids),) + chunk.shape[1:], np.float32)
            out[rows] = chunk
        assert out is not None
        return out

    def _get(self, node: str | None, ref: Any, part: tuple[Any, Any], steps: int, churn: float) -> np.ndarray:
        """The part's chunks; a dead policy actor is replaced (anywhere) and the part predicted again."""
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayActorError:
            self._kill(node)
            self.replaced += 1
            actor = self._spawn(node, pinned=False)
            return self.ray.get(actor.predict.remote(part[0], steps, churn, part[1]))

    def _kill(self, node: str | None) -> None:
        kill_actor(self.ray, self.actors.pop(node, None))

    def close(self) -> None:
        for node in list(self.actors):
            self._kill(node)
