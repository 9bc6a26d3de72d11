"""Policies the harness can run: built-in references (no-op, HDF5 replay) and the
trained :class:`policy.model.policy.DiffusionPolicy` loaded from a checkpoint.

A policy has ``reset() -> None`` and ``predict(obs, steps=2, churn=0.0) -> (B, 8, 7)``
float32 actions in environment units, where ``obs`` is a batch of policy
observations. A policy that sets ``uses_episode_info = True`` also receives
``obs["episode_info"]``: a list of B dicts {suite, task_index, episode, t}
(t = policy steps already taken in that episode).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from envs.libero.suites import NOOP_ACTION
from policy.protocol import Policy as Policy  # re-exported: the one protocol (harness and server)

CHUNK = 8


class NoopPolicy:
    """Reference policy that never moves: every action is [0,0,0,0,0,0,-1]. It must fail
    every task (a harness that reports success for it is broken)."""

    def reset(self) -> None:
        """Stateless."""

    def predict(self, obs: Mapping[str, Any], steps: int = 2, churn: float = 0.0) -> np.ndarray:
        """Returns (B, 8, 7) float32 no-op chunks."""
        b = len(obs["language"])
        return np.broadcast_to(NOOP_ACTION, (b, CHUNK, 7)).astype(np.float32)


class ReplayPolicy:
    """Reference policy that replays the recorded actions of an HDF5 demonstration file
    (official LIBERO layout ``data/demo_N/actions``) open loop: episode i replays demo
    i mod N, chunk by chunk, then holds still. It succeeds when demo i was recorded
    from init state i under the same protocol (e.g. demonstrations written by
    ``envs.scripted.planner``); on other files it checks that the harness runs."""

    uses_episode_info = True

    def __init__(self, hdf5_path: str | os.PathLike) -> None:
        import h5py

        p = Path(hdf5_path)
        if not p.is_file():
            raise FileNotFoundError(f"replay file {p} does not exist; pass --policy replay:<path to a LIBERO .hdf5>")
        with h5py.File(p, "r") as f:
            if "data" not in f:
                raise ValueError(f"{p} has no 'data' group; expected the official LIBERO HDF5 layout")
            names = sorted(f["data"].keys(), key=lambda s: int(s.split("_")[-1]) if s.split("_")[-1].isdigit() else 0)
            self.actions = [np.asarray(f["data"][n]["actions"], dtype=np.float32) for n in names]
            info = f["data"].attrs.get("problem_info")
            self.language = json.loads(info).get("language_instruction") if info is not None else None
        if not self.actions:
            raise ValueError(f"{p} holds no demonstrations")
        self.path = p

    def reset(self) -> None:
        """Stateless (the step index comes with ``episode_info``)."""

    def predict(self, obs: Mapping[str, Any], steps: int = 2, churn: float = 0.0) -> np.ndarray:
        """Returns (B, 8, 7): actions[t:t+8] of the episode's demo, padded with no-ops."""
        out = np.broadcast_to(NOOP_ACTION, (len(obs["language"]), CHUNK, 7)).copy()
        for b, info in enumerate(obs["episode_info"]):
            acts = self.actions[int(info["episode"]) % len(self.actions)]
            seg = acts[int(info["t"]) : int(info["t"]) + CHUNK]
            out[b, : len(seg)] = seg
        return out


def resolve_checkpoint(checkpoint: str | None) -> Path:
    """``checkpoint`` or ``runs/latest``; one-line FileNotFoundError when nothing is there."""
    path = Path(checkpoint) if checkpoint else Path("runs") / "latest"
    if not path.exists():
        if checkpoint:
            raise FileNotFoundError(f"checkpoint {checkpoint} does not exist; pass a run dir or a pretrained policy dir")
        raise FileNotFoundError(
            "no checkpoint: runs/latest does not exist; train one with "
            "`python scripts/train_policy.py suite=libero_10` or pass --checkpoint <dir>"
        )
    return path.resolve()


def load_policy(spec: str, checkpoint: str | None = None, device: str = "cpu") -> Any:
    """Build the policy named by ``spec``: "checkpoint" (the trained DiffusionPolicy at
    ``checkpoint`` or runs/latest), "noop", or "replay:<hdf5>"."""
    if spec == "noop":
        return NoopPolicy()
    if spec.startswith("replay:"):
        return ReplayPolicy(spec.split(":", 1)[1])
    if spec != "checkpoint":
        raise ValueError(f"unknown policy {spec!r}; use checkpoint (default), noop or replay:<hdf5>")
    path = resolve_checkpoint(checkpoint)
    from policy.model.policy import DiffusionPolicy  # lazy: torch only when a trained model is evaluated

    return DiffusionPolicy.from_pretrained(path, device=device)


def policy_producer(spec: str, checkpoint: str | None = None) -> dict[str, Any]:
    """What makes the actions of the policy ``spec`` names (recorded by every evaluation folder
    and checked on resume, see :func:`envs.evaluation.results.check_resume_record`): the weights'
    identity of a checkpoint (train_step, sha256 of model.safetensors), the sha256 of a replay
    file, or ``{"kind": "noop"}``."""
    from envs.evaluation.results import file_sha256, weights_identity

    if spec == "noop":
        return {"kind": "noop"}
    if spec.startswith("replay:"):
        path = Path(spec.split(":", 1)[1])
        if not path.is_file():
            raise FileNotFoundError(f"replay file {path} does not exist; pass --policy replay:<path to a LIBERO .hdf5>")
        return {"kind": "replay", "path": str(path.resolve()), "sha256": file_sha256(path)}
    if spec != "checkpoint":
        raise ValueError(f"unknown policy {spec!r}; use checkpoint (default), noop or replay:<hdf5>")
    return weights_identity(resolve_checkpoint(checkpoint))


def load_policy_and_producer(spec: str, checkpoint: str | None = None, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """:func:`load_policy` and :func:`policy_producer` of the loaded weights; one-line
    ValueError when the files changed while they were loaded (a training run writing them)."""
    before = policy_producer(spec, checkpoint)
    policy = load_policy(spec, checkpoint, device)
    if policy_producer(spec, checkpoint) != before:
        where = resolve_checkpoint(checkpoint) if spec == "checkpoint" else spec.split(":", 1)[1]
        raise ValueError(f"{where} changed while it was being loaded (a training run is writing it); rerun the command")
    return policy, before
