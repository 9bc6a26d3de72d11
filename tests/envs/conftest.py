"""Shared simulator fixtures: building a LIBERO environment costs 10-20 s on a CPU,
so the default tests share one (libero_goal task 0, 64x64 cameras)."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pytest

GOAL_SUITE, GOAL_TASK = "libero_goal", 0  # "open the middle drawer of the cabinet"
DRAWER_JOINT = "wooden_cabinet_1_middle_level"
DRAWER_OPEN = -0.15  # inside the object's default_open_ranges [-0.16, -0.14]


@pytest.fixture(scope="session")
def goal_env() -> Iterator["object"]:
    from envs.libero import make_env

    env = make_env(GOAL_SUITE, GOAL_TASK, resolution=64)
    yield env
    env.close()


@pytest.fixture(scope="session")
def goal_state(goal_env) -> np.ndarray:
    """Official init state 0 of libero_goal task 0 with the middle drawer pulled open:
    the BDDL goal (Open wooden_cabinet_1_middle_region) holds in it."""
    from envs.libero import get_init_states

    state = get_init_states(GOAL_SUITE, GOAL_TASK)[0].copy()
    addr = goal_env.sim.model.get_joint_qpos_addr(DRAWER_JOINT)
    state[1 + addr] = DRAWER_OPEN  # flattened MuJoCo state = [time, qpos, qvel]
    return state
