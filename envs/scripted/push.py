"""Dragging primitive of the scripted demonstrator: slide a flat object (plate) over the table.

A plate is too wide to grasp across and too low to grasp by the rim from above, so the
fingers pinch its rim at table level and drag it, along a route that keeps its footprint
clear of the other objects standing on the table.
"""
from __future__ import annotations

from typing import Callable

import logging

import numpy as np

from envs.scripted.pick import is_wide, rim_grasp
from envs.scripted.primitives import CLOSE, OPEN, Primitive, Style, close_gripper, move_to, open_gripper, servo
from envs.scripted.scene import SceneView, box_distance, object_footprints

LOG = logging.getLogger(__name__)


def drag_route(view: SceneView, name: str, target_xy: np.ndarray) -> list[np.ndarray]:
    """Waypoints (2,) for ``name``'s origin to ``target_xy``: straight, or an L around obstacles.

    Among the straight line and the two axis-aligned L-shaped routes, the one whose swept
    footprint keeps the most room to the other movable objects' bounding boxes.
    """
    start = view.body_pos(name)[:2]
    radius = 0.5 * float(max(view.object_box(name).size[:2]))
    others = object_footprints(view, {name})
    if others is None:
        return [target_xy]
    routes = [[target_xy], [np.array([start[0], target_xy[1]]), target_xy],
              [np.array([target_xy[0], start[1]]), target_xy]]

    def room(route: list[np.ndarray]) -> float:
        legs = [start] + route
        pts = np.concatenate([np.linspace(a, b, 10) for a, b in zip(legs[:-1], legs[1:])])
        return float(box_distance(pts, *others).min()) - radius

    scores = [room(r) - 0.002 * k for k, r in enumerate(routes)]  # ties: the straight line
    return list(routes[int(np.argmax(scores))])


def is_flat_and_wide(view: SceneView, name: str) -> bool:
    """Plates and trays: too wide to grasp across and too low to grasp by the rim."""
    return is_wide(view, name) and float(view.object_box(name).size[2]) < 0.03


def push(view: SceneView, name: str, target_xy: np.ndarray, style: Style, rng: np.random.Generator,
         done: Callable[[], bool], tol: float = 0.01) -> Primitive:
    """Slide a flat object (plate) over the table until its origin is at ``target_xy`` (2,).

    The fingers pinch the rim on the side facing the robot (in reach), then the hand drags
    the object along the table (around what stands in the way, :func:`drag_route`),
    re-aiming every step from the object's current position.
    """
    route = drag_route(view, name, target_xy)
    for _ in range(5):  # re-grasp when the rim slips out of the fingers
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
        best, since = np.inf, 0  # progress towards the current waypoint
        for _ in range(150):
            obj = view.body_pos(name)[:2]
            if done() or np.linalg.norm(obj - target_xy) < tol:
                break
            dist = float(np.linalg.norm(obj - route[0]))
            best, since = (dist, 0) if dist < best - 0.002 else (best, since + 1)
            if len(route) > 1 and (dist < 0.01 or since > 8):  # reached, or stuck (against a fixture)
                route.pop(0)
                best, since = np.inf, 0
            if np.linalg.norm(view.eef_pos()[:2] - obj - offset) > 0.025:
                slipped = True
                break
            step = route[0] - obj  # pull at least 1.5 cm ahead: friction stalls a smaller pull
            step *= np.clip(np.linalg.norm(step), 0.015, 0.03) / (np.linalg.norm(step) + 1e-9)
            goal = np.array([*(obj + offset + step), point[2]])
            yield servo(view, goal, yaw, CLOSE, style, vmax=min(style.vmax, 0.4))
        yield from open_gripper(view, yaw, style, steps=5)
        up = view.eef_pos() + np.array([0.0, 0.0, 0.06])
        yield from move_to(view, up, yaw, OPEN, style, tol=0.02, max_steps=30)
        if not slipped:
            break
    return bool(done())
