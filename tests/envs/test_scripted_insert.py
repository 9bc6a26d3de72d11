"""Scripted insertion into an enclosed container (the microwave): detection and one planned episode."""
from __future__ import annotations

import pytest

from envs.libero.suites import get_task


@pytest.mark.sim
def test_microwave_is_enclosed_and_a_drawer_is_not(make_planner) -> None:
    from envs.scripted.insert import cavity, enclosing_container, handle_bar

    _, planner = make_planner("libero_10", 9)
    region = "microwave_1_heating_region"
    assert enclosing_container(planner, "white_yellow_mug_1", region) == "microwave_1"
    floor, ceiling = cavity(planner.view, region, "microwave_1")
    assert 0.1 < ceiling - floor < 0.2
    bar = handle_bar(planner.view, "white_yellow_mug_1")
    assert bar is not None and bar[1][1] < -0.9  # the mug's handle faces the robot's side (-y)
    _, planner = make_planner("libero_goal", 3)  # bowl into the cabinet's top drawer
    assert enclosing_container(planner, "akita_black_bowl_1", "wooden_cabinet_1_top_region") is None


@pytest.mark.sim
def test_planner_puts_the_mug_in_the_microwave_and_closes_it() -> None:
    from envs.scripted.demos import SEED_STRIDE, make_planning_env, plan_attempt

    task = get_task("libero_10", 9)
    env = make_planning_env(task)
    try:
        attempt = plan_attempt(env, task, seed=9 * SEED_STRIDE)
    finally:
        env.close()
    assert attempt.success, attempt.failure
