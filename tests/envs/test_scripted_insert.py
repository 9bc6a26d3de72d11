"""Scripted insertion into an enclosed container (the microwave): detection and one planned episode."""
from __future__ import annotations

import numpy as np
import pytest

from envs.libero import get_task


def _planner(suite: str, index: int, seed: int = 0):
    from envs.libero import NOOP_ACTION, NUM_WAIT_STEPS
    from envs.scripted import ScriptedPlanner
    from envs.scripted_bddl import parse_goal
    from envs.scripted_demos import make_planning_env

    task = get_task(suite, index)
    env = make_planning_env(task)
    env.seed(seed)
    env.reset()
    for _ in range(NUM_WAIT_STEPS):
        env.step(NOOP_ACTION.astype(np.float64))
    return env, ScriptedPlanner(env.env, parse_goal(task.bddl_file), np.random.default_rng(seed))


@pytest.mark.sim
def test_microwave_is_enclosed_and_a_drawer_is_not() -> None:
    from envs.scripted_insert import cavity, enclosing_container, handle_bar

    env, planner = _planner("libero_10", 9)
    try:
        region = "microwave_1_heating_region"
        assert enclosing_container(planner, "white_yellow_mug_1", region) == "microwave_1"
        floor, ceiling = cavity(planner.view, region, "microwave_1")
        assert 0.1 < ceiling - floor < 0.2
        bar = handle_bar(planner.view, "white_yellow_mug_1")
        assert bar is not None and bar[1][1] < -0.9  # the mug's handle faces the robot's side (-y)
    finally:
        env.close()
    env, planner = _planner("libero_goal", 3)  # bowl into the cabinet's top drawer
    try:
        assert enclosing_container(planner, "akita_black_bowl_1", "wooden_cabinet_1_top_region") is None
    finally:
        env.close()


@pytest.mark.sim
def test_planner_puts_the_mug_in_the_microwave_and_closes_it() -> None:
    from envs.scripted_demos import SEED_STRIDE, make_planning_env, plan_attempt

    task = get_task("libero_10", 9)
    env = make_planning_env(task)
    try:
        attempt = plan_attempt(env, task, seed=9 * SEED_STRIDE)
    finally:
        env.close()
    assert attempt.success, attempt.failure
