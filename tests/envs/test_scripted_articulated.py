"""Scripted drawers and doors: sub-goal order, hand orientations, and one planned drawer opening."""
from __future__ import annotations

import numpy as np
import pytest

from envs.libero.suites import get_task
from envs.libero.bddl import Atom, order_subgoals, parse_goal


def test_every_in_gets_an_open_of_its_region_first() -> None:
    atoms = parse_goal(get_task("libero_goal", 3).bddl_file)  # only (In bowl top_region)
    assert order_subgoals(atoms) == [Atom("open", ("wooden_cabinet_1_top_region",)), *atoms]
    explicit = [Atom("open", ("r",)), Atom("in", ("a", "r"))]
    assert order_subgoals(explicit) == explicit  # no duplicate open


class _Hand:
    """Stands in for a SceneView: only the current hand rotation is needed."""

    def __init__(self, mat: np.ndarray) -> None:
        self.mat = mat

    def eef_mat(self) -> np.ndarray:
        return self.mat


def test_hand_rotation_points_the_fingers_and_picks_the_nearer_finger_sign() -> None:
    from envs.scripted.pose import hand_rotation

    down = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])  # fingers along +y, pointing down
    pointing = np.array([0.0, -np.cos(0.3), -np.sin(0.3)])
    rot = hand_rotation(_Hand(down), pointing, np.array([0.0, 0.0, 1.0]))
    np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-9)
    assert np.linalg.det(rot) == pytest.approx(1.0)
    np.testing.assert_allclose(rot[:, 2], pointing, atol=1e-9)
    assert abs(rot[:, 0] @ pointing) < 1e-9 and rot[:, 0] @ np.array([0.0, 1.0, 0.0]) > 0  # the smaller turn


@pytest.mark.sim
def test_planner_opens_the_middle_drawer() -> None:
    from envs.scripted.demos import make_planning_env, plan_attempt

    task = get_task("libero_goal", 0)
    env = make_planning_env(task)
    try:
        attempt = plan_attempt(env, task, seed=500_000)
    finally:
        env.close()
    assert attempt.success, attempt.failure
    assert attempt.steps < 200


@pytest.mark.sim
def test_drawer_place_xy_keeps_the_far_rim_clear_of_the_handle_above(make_planner) -> None:
    from envs.scripted.door import _geoms, _slide_dir, drawer_place_xy, find_joint

    # libero_10 task 3: the bottom drawer starts open, under the middle drawer's handle
    _, planner = make_planner("libero_10", 3, seed=500_000, rng_seed=0)
    region, bowl = "white_cabinet_1_bottom_region", "akita_black_bowl_1"
    xy = drawer_place_xy(planner, bowl, region)
    out = _slide_dir(find_joint(planner, region))
    handle = max(_geoms(planner.view, find_joint(planner, "white_cabinet_1_middle_region").body),
                 key=lambda g: float((g @ out).min()))
    radius = 0.5 * float(planner.view.object_box(bowl).size[:2].max())
    centre = planner.view.site_pos(region)[:2]
    under = float((handle @ out).max()) - (float(centre @ out[:2]) - radius)  # rim under the handle (m)
    assert under > 0.02  # the region's centre is a bad spot: the rim would land on the handle
    assert float(xy @ out[:2]) - radius > float((handle @ out).max()) - 0.005  # (nearly) clear of it
    assert np.all(np.abs(xy - centre) <= planner.view.region_half_size(region)[:2])  # still In
    assert drawer_place_xy(planner, bowl, "kitchen_table_akita_black_bowl_init_region") is None
