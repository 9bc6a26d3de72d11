"""Where the policy runs in a Ray evaluation (envs/evaluation/ray_policy.py), on a real Ray cluster
of two nodes on the loopback interface: a trained-format policy (object tokens, camera-less envs)
in one actor or in one actor per node gives the episodes and the actions of the same policy in the
driver; a policy actor killed mid-run is replaced and nothing fails; bad combinations are one line."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from envs.evaluation.harness import EvalConfig, run_evaluation
from envs.evaluation.results import EPISODES_FILE, load_episodes
from envs.libero.benchmark import LIBERO

GOAL_SUITE, GOAL_TASK = "libero_goal", 0
KEYS = ("success", "length", "outcome", "grasps", "lift_m", "env_steps", "error")
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason='ray is not installed (pip install -e ".[cluster]"); the policy actors are not tested')


def _cfg(out: Path) -> EvalConfig:
    return EvalConfig(suites=[GOAL_SUITE], tasks={GOAL_SUITE: [GOAL_TASK]}, out_dir=str(out), episodes=3, workers=2,
                      max_steps=24, resolution=0, progress=False, policy="test", producer={"kind": "test"},
                      noise="episode")


class _Recording:
    """Wraps a policy; records each row's chunk by (episode, t) (from the worker ids' slots)."""

    def __init__(self, inner: Any, on_call: Any = None) -> None:
        self.inner, self.on_call, self.calls = inner, on_call, 0
        self.uses_worker_ids = getattr(inner, "uses_worker_ids", False)
        self.config = inner.config
        self.chunks: list[np.ndarray] = []

    def reset(self) -> None:
        self.inner.reset()

    def predict(self, obs, steps: int = 2, churn: float = 0.0, generator=None):
        self.calls += 1
        if self.on_call is not None:
            self.on_call(self.calls)
        out = self.inner.predict(obs, steps=steps, churn=churn, generator=generator)
        self.chunks.extend(out.copy())
        return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from policy.model.config import PolicyConfig
    from policy.model.policy import DiffusionPolicy

    torch.manual_seed(0)
    cfg = PolicyConfig(suites=(GOAL_SUITE,), cameras=(), objects=True, proprio="eef", d_model=64, n_heads=4,
                       encoder_layers=1, decoder_layers=2, dropout=0.0)
    path = tmp_path_factory.mktemp("ckpt") / "policy"
    DiffusionPolicy(cfg).save_pretrained(path)
    return path


def _records(out: Path) -> dict[int, dict]:
    return {r["episode"]: {k: r[k] for k in KEYS} for r in load_episodes(out / EPISODES_FILE)}


@needs_ray
@pytest.mark.sim
@pytest.mark.timeout(900)
def test_policy_actors_give_the_driver_policys_episodes(tmp_path, ray_cluster, checkpoint) -> None:
    """Driver (local pool) vs one policy actor vs one actor per node (two nodes, a worker on
    each): the same episodes and the same set of chunks; per node, the actors sit on both nodes
    and each round's rows go to their worker's node. A policy actor killed at the third call is
    replaced and its part predicted again: the episodes stay the same, no errors."""
    import ray

    from envs.evaluation.policies import load_policy
    from envs.evaluation.ray_policy import RemotePolicy
    from envs.evaluation.ray_pool import RayPool

    local = _Recording(load_policy("checkpoint", str(checkpoint)))
    run_evaluation(local, _cfg(tmp_path / "driver"))
    expected = _records(tmp_path / "driver")
    assert len(expected) == 3 and all(r["error"] is None for r in expected.values())

    ray_cluster((1, 1))
    for placement in ("actor", "node"):
        remote = RemotePolicy(load_policy("checkpoint", str(checkpoint)), checkpoint, placement, seed=0)
        try:
            pool = RayPool(LIBERO, 0, False, log=None)
            remote.bind(pool)
            rec = _Recording(remote)
            run_evaluation(rec, _cfg(tmp_path / placement), pool=pool)
            assert _records(tmp_path / placement) == expected, placement
            got = sorted(c.tobytes() for c in rec.chunks)
            assert got == sorted(c.tobytes() for c in local.chunks), placement  # bit-identical actions
            where = remote.where()
            assert len(where) == (1 if placement == "actor" else 2) and all(w.endswith(" cpu") for w in where.values())
            if placement == "node":  # each actor pinned to its node
                assert all(w.split(" node ")[1].split()[0] == node[:12] for node, w in where.items())
        finally:
            remote.close()

    remote = RemotePolicy(load_policy("checkpoint", str(checkpoint)), checkpoint, "node", seed=0)

    def kill_one(call: int) -> None:
        if call == 3:
            ray.kill(next(iter(remote.actors.values())), no_restart=True)

    try:
        pool = RayPool(LIBERO, 0, False, log=None)
        remote.bind(pool)
        run_evaluation(_Recording(remote, kill_one), _cfg(tmp_path / "killed"), pool=pool)
        assert remote.replaced == 1
        assert _records(tmp_path / "killed") == expected
    finally:
        remote.close()

    from envs.evaluation import cli  # the command line: the same episodes (it leaves the cluster at the end)

    assert cli.main(["--checkpoint", str(checkpoint), "--suites", GOAL_SUITE, "--tasks", str(GOAL_TASK), "--episodes",
                     "3", "--max-steps", "24", "--noise", "episode", "--ray", "auto", "--ray-policy", "node",
                     "--out", str(tmp_path / "cli")]) == 0
    assert _records(tmp_path / "cli") == expected


def test_ray_policy_needs_ray_and_a_checkpoint(capsys) -> None:
    from envs.evaluation import cli

    assert cli.main(["--policy", "noop", "--ray-policy", "node", "--suites", GOAL_SUITE, "--episodes", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --ray-policy node runs a checkpoint on a Ray cluster") and "\n" not in err
