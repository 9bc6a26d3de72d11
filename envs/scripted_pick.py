"""Pick and place primitives of the scripted demonstrator (reach, grasp, lift, transport, place).

Heights come from the collision geometry: grasp depth from the object's bounding
box, travel height from the tallest geom under the transport path, release
height from the support surface under the target. Offsets, grasp yaw (where the
object's footprint allows), speeds and pauses are drawn from the episode's
:class:`~envs.scripted_primitives.Style` and random generator.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import logging

import numpy as np

from envs.scripted_primitives import (CLOSE, OPEN, Primitive, Style, close_gripper,
                                      maybe_pause, move_to, open_gripper, servo)
from envs.scripted_scene import SceneView, clearance_height, xy_clearance

GRIPPER_MAX_OPEN = 0.075  # m, widest object the Panda fingers close around comfortably
LOG = logging.getLogger(__name__)
MAX_REACH_Z = 0.55  # m above the table: keep travel heights inside the arm's comfortable range


@dataclass
class Grasp:
    """What the hand holds: object name, yaw (rad) and the eef offset (3,) from the object's body
    origin (x, y) and its lowest point (z)."""

    name: str
    yaw: float
    hang: np.ndarray


def choose_grasp_yaw(view: SceneView, name: str, rng: np.random.Generator) -> float:
    """Yaw (rad) closing the fingers across the object's narrow side; free for round objects."""
    widths = view.horizontal_widths(name)
    if not widths:
        return float(rng.uniform(-np.pi / 2, np.pi / 2))
    widths.sort(key=lambda aw: aw[1])
    angle, narrow = widths[0]
    wide = widths[-1][1]
    if wide - narrow < 0.006 and wide < GRIPPER_MAX_OPEN:  # round (or square): any yaw will do
        return float(rng.uniform(-np.pi / 3, np.pi / 3))
    return view.yaw_for_finger_axis(angle + float(rng.normal(0.0, 0.08)))


def is_wide(view: SceneView, name: str) -> bool:
    """True when even the narrow side of ``name`` does not fit between the open fingers (bowls, plates)."""
    widths = view.horizontal_widths(name)
    narrow = min(w for _, w in widths) if widths else float(min(view.object_box(name).size[:2]))
    return narrow > GRIPPER_MAX_OPEN - 0.008


def rim_grasp(view: SceneView, name: str, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Grasp point (3,) on the rim of a wide open object (one finger in, one out) and its yaw.

    The rim point faces the robot base (-x) give or take 70 degrees, picked at random among
    the candidates with the most room around them; fingers close radially.
    """
    box = view.object_box(name)
    radius = 0.5 * float(min(box.size[0], box.size[1]))
    c = box.center
    thetas = np.pi + np.linspace(-1.2, 1.2, 9) + rng.normal(0.0, 0.08, 9)
    body = view.body_id(name)
    room = np.array([xy_clearance(view, c[:2] + (radius - 0.012) * np.array([np.cos(t), np.sin(t)]), {body})
                     for t in thetas])
    roomy = np.nonzero(room > 0.045)[0]
    theta = float(thetas[rng.choice(roomy)] if len(roomy) else thetas[int(np.argmax(room))])
    point = np.array([c[0] + (radius - 0.012) * np.cos(theta), c[1] + (radius - 0.012) * np.sin(theta),
                      max(box.hi[2] - 0.018, view.table_z + 0.012)])
    return point, view.yaw_for_finger_axis(theta)


def handle_grasp(view: SceneView, name: str) -> tuple[np.ndarray, float] | None:
    """Grasp point (3,) and yaw on a tall wide object's handle (moka pot), or None if it has none.

    A handle is the collision geom farthest from the object's centre line that is thin (< 3 cm)
    across one horizontal axis; the fingers close across that thin axis.
    """
    box = view.object_box(name)
    if box.size[2] < 0.1:
        return None
    centre = view.body_pos(name)[:2]
    best, best_d = None, 0.03
    for g in view.geom_corners(name).reshape(-1, 8, 3):
        lo, hi = g.min(axis=0), g.max(axis=0)
        size = hi - lo
        d = float(np.linalg.norm(0.5 * (lo[:2] + hi[:2]) - centre))
        if min(size[0], size[1]) < 0.03 and size[2] > 0.015 and d > best_d:
            best, best_d = (lo, hi), d
    if best is None:
        return None
    lo, hi = best
    axis = 0 if hi[0] - lo[0] < hi[1] - lo[1] else 1
    point = np.array([0.5 * (lo[0] + hi[0]), 0.5 * (lo[1] + hi[1]), hi[2] - 0.015])
    return point, view.yaw_for_finger_axis(0.0 if axis == 0 else np.pi / 2)


def grasp_point(view: SceneView, name: str, grip_point: np.ndarray | None = None) -> np.ndarray:
    """Where the grip site goes to grasp ``name`` (3,): centre of the footprint, near the top."""
    box = view.object_box(name)
    height = box.size[2]
    depth = min(0.035, 0.5 * height) if height > 0.05 else 0.5 * height
    z = max(box.hi[2] - depth, view.table_z + 0.012)
    xy = box.center[:2] if grip_point is None else grip_point[:2]
    return np.array([xy[0], xy[1], z])


def travel_z(view: SceneView, start_xy: np.ndarray, end_xy: np.ndarray, hang: float,
             radius: float, exclude: set[int], style: Style) -> float:
    """Grip-site height (m) at which a load hanging ``hang`` m below the hand clears the path."""
    pts = np.linspace(start_xy, end_xy, 12)
    top = clearance_height(view, pts, radius, exclude)
    return min(max(top, view.table_z) + hang + 0.04 + style.travel_lift, view.table_z + MAX_REACH_Z)


def pick(view: SceneView, name: str, style: Style, rng: np.random.Generator,
         grip_point: np.ndarray | None = None) -> Primitive:
    """Reach above ``name``, descend, close, lift; returns a :class:`Grasp` or ``None``."""
    handle = handle_grasp(view, name) if is_wide(view, name) and grip_point is None else None
    if handle is not None:
        target, yaw = handle
    elif is_wide(view, name) and grip_point is None:
        target, yaw = rim_grasp(view, name, rng)
    else:
        yaw = choose_grasp_yaw(view, name, rng)
        target = grasp_point(view, name, grip_point)
    target[:2] += rng.normal(0.0, style.jitter, 2)
    body = view.body_id(name)
    above = target + np.array([0.0, 0.0, rng.uniform(0.07, 0.11)])
    here = view.eef_pos()
    z = max(travel_z(view, here[:2], above[:2], 0.02, 0.06, {body}, style), above[2])
    if here[2] < z - 0.03:
        ok = yield from move_to(view, np.array([here[0], here[1], z]), yaw, OPEN, style, tol=0.03, rot_tol=0.5)
    ok = yield from move_to(view, np.array([above[0], above[1], max(z, above[2])]), yaw, OPEN, style, tol=0.02)
    if not ok:
        return None
    ok = yield from move_to(view, above, yaw, OPEN, style, tol=0.015, rot_tol=0.06)
    yield from maybe_pause(view, yaw, OPEN, style, rng)
    ok = yield from move_to(view, target, yaw, OPEN, style, tol=0.008, rot_tol=0.06, max_steps=60,
                            vmax=min(style.vmax, 0.6))
    if not ok:
        LOG.debug("could not reach grasp point %s of %s (eef %s)", target.round(3), name, view.eef_pos().round(3))
        return None
    yield from close_gripper(view, yaw, style)
    LOG.debug("grasp %s at %s (eef %s), fingers %.4f", name, target.round(3), view.eef_pos().round(3),
              view.finger_opening())
    if view.finger_opening() < 0.004:  # closed on nothing
        return None
    obj_z0, eef_z0 = view.body_pos(name)[2], view.eef_pos()[2]
    lift = view.eef_pos() + np.array([0.0, 0.0, 0.06])
    yield from move_to(view, lift, yaw, CLOSE, style, tol=0.01, max_steps=40)
    rise_obj, rise_eef = view.body_pos(name)[2] - obj_z0, view.eef_pos()[2] - eef_z0
    if rise_obj < 0.5 * rise_eef or view.finger_opening() < 0.003:  # slipped out
        LOG.debug("%s slipped: object rose %.3f, hand %.3f", name, rise_obj, rise_eef)
        return None
    box = view.object_box(name)
    pos = view.body_pos(name)
    hang = view.eef_pos() - np.array([pos[0], pos[1], box.lo[2]])
    return Grasp(name, yaw, hang)


def support_z(view: SceneView, xy: np.ndarray, exclude: set[int], radius: float = 0.015) -> float:
    """Top (m) of the highest collision geom whose footprint covers ``xy`` (2,)."""
    return clearance_height(view, xy[None], radius, exclude)


def place(view: SceneView, grasp: Grasp, target_xy: np.ndarray, style: Style,
          rng: np.random.Generator, release_above: float = 0.015,
          surface: float | None = None) -> Primitive:
    """Carry the held object over ``target_xy`` (2,), lower it onto the surface there, let go."""
    body = view.body_id(grasp.name)
    box = view.object_box(grasp.name)
    radius = 0.5 * float(max(box.size[0], box.size[1])) + 0.01
    here = view.eef_pos()
    hang = float(grasp.hang[2])
    goal_xy = target_xy + grasp.hang[:2] + rng.normal(0.0, style.jitter * 0.5, 2)
    z = travel_z(view, here[:2], goal_xy, hang, radius, {body}, style)
    ok = yield from move_to(view, np.array([here[0], here[1], max(z, here[2])]), grasp.yaw, CLOSE, style,
                            tol=0.03, rot_tol=0.3)
    ok = yield from move_to(view, np.array([goal_xy[0], goal_xy[1], z]), grasp.yaw, CLOSE, style,
                            tol=0.012, rot_tol=0.08, max_steps=150)
    if not ok:
        return False
    yield from maybe_pause(view, grasp.yaw, CLOSE, style, rng)
    floor = support_z(view, target_xy, {body}) if surface is None else surface
    release = np.array([goal_xy[0], goal_xy[1], floor + hang + release_above + rng.uniform(0.0, 0.01)])
    ok = yield from move_to(view, release, grasp.yaw, CLOSE, style, tol=0.01, max_steps=80,
                            vmax=min(style.vmax, 0.7))
    yield from open_gripper(view, grasp.yaw, style, steps=int(rng.integers(5, 9)))
    up = view.eef_pos() + np.array([0.0, 0.0, rng.uniform(0.05, 0.09)])
    yield from move_to(view, up, grasp.yaw, OPEN, style, tol=0.02, max_steps=30)
    return True


def is_flat_and_wide(view: SceneView, name: str) -> bool:
    """Plates and trays: too wide to grasp across and too low to grasp by the rim."""
    return is_wide(view, name) and float(view.object_box(name).size[2]) < 0.03


def push(view: SceneView, name: str, target_xy: np.ndarray, style: Style, rng: np.random.Generator,
         done: Callable[[], bool], tol: float = 0.01) -> Primitive:
    """Slide a flat object (plate) over the table until its origin is at ``target_xy`` (2,).

    The fingers pinch the rim on the side facing the robot (in reach), then the hand drags
    the object along the table, re-aiming every step from the object's current position.
    """
    for _ in range(3):  # re-grasp when the rim slips out of the fingers
        point, yaw = rim_grasp(view, name, rng)
        point[2] = view.table_z + 0.012 + float(rng.uniform(0.0, 0.004))
        here = view.eef_pos()
        above = point + np.array([0.0, 0.0, 0.08])
        ok = yield from move_to(view, np.array([above[0], above[1], max(above[2], here[2] - 0.1)]), yaw, OPEN,
                                style, tol=0.02)
        ok = ok and (yield from move_to(view, above, yaw, OPEN, style, tol=0.015))
        ok = ok and (yield from move_to(view, point, yaw, OPEN, style, tol=0.01, max_steps=60, vmax=0.6))
        if not ok:
            LOG.debug("drag start %s of %s not reached (eef %s)", point.round(3), name, view.eef_pos().round(3))
            return False
        yield from close_gripper(view, yaw, style)
        offset = view.eef_pos()[:2] - view.body_pos(name)[:2]
        slipped = False
        for _ in range(120):
            obj = view.body_pos(name)[:2]
            if done() or np.linalg.norm(obj - target_xy) < tol:
                break
            if np.linalg.norm(view.eef_pos()[:2] - obj - offset) > 0.025:
                slipped = True
                break
            goal = np.array([*(obj + offset + np.clip(target_xy - obj, -0.03, 0.03)), point[2]])
            yield servo(view, goal, yaw, CLOSE, style, vmax=min(style.vmax, 0.4))
        yield from open_gripper(view, yaw, style, steps=5)
        up = view.eef_pos() + np.array([0.0, 0.0, 0.06])
        yield from move_to(view, up, yaw, OPEN, style, tol=0.02, max_steps=30)
        if not slipped:
            break
    return bool(done())
