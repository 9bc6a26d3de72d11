"""Shared simulator fixtures: building a LIBERO environment costs 10-20 s on a CPU,
so the default tests share one (libero_goal task 0, 64x64 cameras); and ``ray_cluster``, a
real Ray cluster on the loopback interface for the tests of the Ray pool and the policy actors."""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator

import numpy as np
import pytest

GOAL_SUITE, GOAL_TASK = "libero_goal", 0  # "open the middle drawer of the cabinet"
DRAWER_JOINT = "wooden_cabinet_1_middle_level"
DRAWER_OPEN = -0.15  # inside the object's default_open_ranges [-0.16, -0.14]


@pytest.fixture(scope="session")
def goal_env() -> Iterator["object"]:
    from envs.libero.env import make_env

    env = make_env(GOAL_SUITE, GOAL_TASK, resolution=64)
    yield env
    env.close()


@pytest.fixture(scope="session")
def goal_state(goal_env) -> np.ndarray:
    """Official init state 0 of libero_goal task 0 with the middle drawer pulled open:
    the BDDL goal (Open wooden_cabinet_1_middle_region) holds in it."""
    from envs.libero.suites import get_init_states

    state = get_init_states(GOAL_SUITE, GOAL_TASK)[0].copy()
    addr = goal_env.sim.model.get_joint_qpos_addr(DRAWER_JOINT)
    state[1 + addr] = DRAWER_OPEN  # flattened MuJoCo state = [time, qpos, qvel]
    return state


@pytest.fixture
def make_planner() -> Iterator[Callable[..., tuple]]:
    """``make(suite, index, seed=0, rng_seed=None) -> (planning env, ScriptedPlanner)``: the
    camera-less env of the task reset to the layout of ``seed`` and settled by the protocol's
    no-op steps, with a planner drawing from ``rng_seed`` (default ``seed``); the envs are
    closed when the test ends."""
    from envs.libero.suites import NOOP_ACTION, NUM_WAIT_STEPS, get_task
    from envs.scripted.planner import ScriptedPlanner
    from envs.libero.bddl import parse_goal
    from envs.scripted.demos import make_planning_env

    made = []

    def make(suite: str, index: int, seed: int = 0, rng_seed: int | None = None) -> tuple:
        task = get_task(suite, index)
        env = make_planning_env(task)
        made.append(env)
        env.seed(seed)
        env.reset()
        for _ in range(NUM_WAIT_STEPS):
            env.step(NOOP_ACTION.astype(np.float64))
        rng = np.random.default_rng(seed if rng_seed is None else rng_seed)
        return env, ScriptedPlanner(env.env, parse_goal(task.bddl_file), rng)

    yield make
    for env in made:
        env.close()


@pytest.fixture
def ray_cluster() -> Iterator[Callable[..., Any]]:
    """``start(cpus=(1, 1), system=None)``: a LocalCluster of those nodes, this process connected
    to it as its driver; everything is stopped and this process's settings restored at the end."""
    import ray

    from envs.evaluation.ray_local import LocalCluster, prepare_driver

    saved = dict(os.environ)
    from ray._private import ray_constants

    enable = ray_constants.ENABLE_RAY_CLUSTER
    clusters: list[LocalCluster] = []

    def start(cpus: tuple[int, ...] = (1, 1), system: dict | None = None) -> LocalCluster:
        cluster = LocalCluster(cpus, system=system)
        clusters.append(cluster)
        cluster.start()
        prepare_driver(cluster.env)
        ray.init(address=cluster.address, log_to_driver=False)
        return cluster

    yield start
    ray.shutdown()
    for c in clusters:
        c.stop()
    os.environ.clear()
    os.environ.update(saved)
    prepare_driver({})  # Ray's settings read again from the restored environment
    ray_constants.ENABLE_RAY_CLUSTER = enable
