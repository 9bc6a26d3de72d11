"""envs/study/probe_cli.py (scripts/probe_route_modes.py): the fork axis, side and strength statistics, and its one-line errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from envs.study import probe_cli as probe

REPO = Path(__file__).resolve().parents[2]


def _chunks(lateral: np.ndarray, forward: float = -0.3) -> np.ndarray:
    """Chunks (N, 8, 7) moving ``lateral`` (N,) along x and ``forward`` along y."""
    out = np.zeros((len(lateral), 8, 7), np.float32)
    out[:, :, 0] = lateral[:, None]
    out[:, :, 1] = forward
    return out


def test_axis_sides_and_strength_tell_averaging_from_committing() -> None:
    rng = np.random.default_rng(0)
    demo_side = rng.choice([-1.0, 1.0], size=40)
    first = np.stack([0.8 * demo_side + rng.normal(0, 0.02, 40), -0.3 + rng.normal(0, 0.02, 40)], axis=1)
    axis = probe.fork_axis(first)
    assert abs(abs(axis[0]) - 1.0) < 1e-3  # the fork is across x, whatever the sign convention
    coord = first @ axis
    scale = float(np.abs(coord).mean())
    # a mean-predicting policy: every draw stands still sideways
    mean = probe.summarise(np.stack([probe.sides(_chunks(np.zeros(40)), axis)] * 4), scale)
    assert mean["strength"] < 0.01 and mean["weak"] == 1.0 and mean["observations"] == 40 and mean["samples"] == 4
    # a policy that picks either side at the same observation, at the demonstrations' speed
    draws = np.stack([probe.sides(_chunks(0.8 * rng.choice([-1.0, 1.0], size=40)), axis) for _ in range(8)])
    both = probe.summarise(draws, scale)
    assert abs(both["strength"] - 1.0) < 0.05 and both["both_sides"] > 0.9 and 0.3 < both["p_left"] < 0.7
    assert both["weak"] == 0.0
    # strength 0.7 two ways: 30% averaged draws among committed ones, or every draw turning 70%
    mixed = np.where(np.arange(10)[:, None] < 3, 0.0, draws[:1].repeat(10, axis=0)[:, :40])
    partial = 0.7 * draws
    assert abs(probe.summarise(mixed, scale)["strength"] - 0.7) < 0.05 and probe.summarise(mixed, scale)["weak"] == 0.3
    assert abs(probe.summarise(partial, scale)["strength"] - 0.7) < 0.05 and probe.summarise(partial, scale)["weak"] == 0.0
    # a policy that always goes one way: committed, but never both sides
    one = probe.summarise(np.stack([probe.sides(_chunks(np.full(40, 0.8)), axis)] * 8), scale)
    assert one["both_sides"] == 0.0 and one["p_left"] in (0.0, 1.0)


def test_bad_paths_give_one_line(tmp_path: Path) -> None:
    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(REPO / "scripts" / "probe_route_modes.py"), *argv],
                              capture_output=True, text=True, timeout=120)

    out = run("--checkpoint", str(tmp_path), "--data", str(tmp_path))
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert out.stderr.startswith(f"error: demonstration folder {tmp_path} has no *.hdf5 files")
    (tmp_path / "other_task_demo.hdf5").write_bytes(b"")  # a file, but of another task
    out = run("--checkpoint", str(tmp_path), "--data", str(tmp_path))
    assert out.returncode == 2 and out.stderr.startswith("error: no demonstration file of 'pick_up_the_alphabet_soup")


def test_yaw_fork_step_is_the_turn_back_after_the_calm() -> None:
    # turn to the travel yaw (20 strong steps), a calm of 4, then the turn back (either way)
    for sign in (1.0, -1.0):
        yaw = np.concatenate([np.full(20, 1.0), np.full(4, 0.1), np.full(20, sign), np.zeros(60)])
        assert probe.yaw_fork_step(yaw) == 24
    # a pause of one weak step inside the first turn is not the calm
    yaw = np.concatenate([np.full(10, 1.0), [0.2], np.full(10, 1.0), np.full(3, 0.0), np.full(20, -1.0)])
    assert probe.yaw_fork_step(yaw) == 24
    for bad in (np.zeros(50), np.concatenate([np.full(20, 1.0), np.zeros(30)])):
        try:
            probe.yaw_fork_step(bad)
        except ValueError as err:
            assert "--yaw-modes" in str(err)
        else:
            raise AssertionError("no fork must raise")


def test_training_starts_come_from_the_recorded_states_for_any_policy_kind(tmp_path: Path) -> None:
    """demo_observations sets each demo's recorded state at its fork step: the observation has the
    object poses an object-token policy reads, and equals the env's own observation of that state."""
    import argparse

    import h5py

    from envs.libero.suites import get_init_states
    from envs.libero.env import make_env

    suite, task = "libero_object", 0
    states = get_init_states(suite, task)[:2]
    path = tmp_path / "demo.hdf5"
    with h5py.File(path, "w") as f:
        for i in range(2):  # demo_0 holds state 0 at step 1, demo_1 state 1 at step 0
            f.create_dataset(f"data/demo_{i}/states", data=np.stack([states[i]] * 2))
    args = argparse.Namespace(suite=suite, task=task, fast_render=False)
    obs = probe.demo_observations(args, path, [1, 0], resolution=0)
    assert len(obs) == 2 and obs[0]["object_poses"].shape[1] == 10 and len(obs[0]["object_names"]) >= 1
    env = make_env(suite, task, resolution=0)
    try:
        env.reset(seed=0)
        direct = env.set_init_state(states[1])
    finally:
        env.close()
    np.testing.assert_array_equal(obs[1]["object_poses"], direct["object_poses"])
    assert not np.array_equal(obs[0]["object_poses"], obs[1]["object_poses"])
