"""Articulated-object primitives of the scripted demonstrator: knobs, drawers, doors.

* ``Turnon``/``Turnoff``: grasp a stove knob's grip bar from above and twist the wrist.
* ``Open`` a drawer: the hand points into the cabinet (slightly downwards), grips the handle
  bar with the fingers closing vertically (a gripper pointing down cannot reach a lower
  drawer's handle under the stacked ones) and pulls along the slide axis read from MuJoCo;
  what is to go into the drawer is first pushed out from under its pulled-out footprint.
* ``Close`` a drawer: push its front, beside the handles, with the edge of the closed hand.
* ``Close`` a hinged door (microwave): push the panel near its free end along the arc.
* ``Open`` a hinged door is not scripted: it fails with a clear ``failure`` message. Putting
  something *into* an enclosed container (the microwave) is not scripted either: the
  pick-and-place of :mod:`envs.scripted.pick` lowers it from above, onto the roof.

Drawers and doors live in :mod:`envs.scripted.door`; joint goals come from the object's
``default_open_ranges`` / ``default_close_ranges`` (what LIBERO's predicates test).
"""
from __future__ import annotations

from typing import Generator

import numpy as np

from envs.libero.bddl import Atom
from envs.scripted.context import PlannerContext
from envs.scripted.door import close_door, close_drawer, find_joint, open_drawer
from envs.scripted.primitives import CLOSE, OPEN, close_gripper, maybe_pause, move_to, open_gripper, servo
from envs.scripted.scene import Box


Actions = Generator[np.ndarray, None, bool]
TURN_MARGIN = 0.25  # rad beyond the switching threshold, so the knob stays on after release


def _hinge(planner: PlannerContext, name: str) -> tuple[int, int]:
    """(joint id, body id) of the first hinge joint inside object ``name``."""
    view = planner.view
    m = view.model
    bodies = view._subtree(view.body_id(name))
    for j in range(m.njnt):
        if int(m.jnt_bodyid[j]) in bodies and int(m.jnt_type[j]) == 3:
            return j, int(m.jnt_bodyid[j])
    raise ValueError(f"{name} has no hinge joint to turn")


def turn_knob(planner: PlannerContext, atom: Atom) -> Actions:
    """Grasp a stove knob's grip bar from above and twist the wrist until the atom holds."""
    view, style, rng = planner.view, planner.style, planner.rng
    name = atom.args[0]
    joint, body = _hinge(planner, name)
    m, d = view.model, view.data
    corners = view.geom_corners(name, body=body)
    per_geom = corners.reshape(-1, 8, 3)
    tops = per_geom[:, :, 2].max(axis=1)
    bar = per_geom[tops > tops.max() - 0.012].reshape(-1, 3)
    box = Box(bar.min(axis=0), bar.max(axis=0))
    narrow_axis = 0 if box.size[0] < box.size[1] else 1
    yaw = view.yaw_for_finger_axis(0.0 if narrow_axis == 0 else np.pi / 2)
    grip = np.array([box.center[0], box.center[1], box.hi[2] - min(0.015, 0.5 * box.size[2])])
    axis_world = d.xmat[body].reshape(3, 3) @ m.jnt_axis[joint]
    pivot = d.xanchor[joint].copy()
    sign = 1.0 if axis_world[2] > 0 else -1.0
    if atom.predicate == "turnoff":
        sign = -sign
    above = grip + np.array([0.0, 0.0, rng.uniform(0.06, 0.1)])
    here = view.eef_pos()
    ok = yield from move_to(view, np.array([above[0], above[1], max(above[2], here[2])]), yaw, OPEN, style, tol=0.02)
    ok = ok and (yield from move_to(view, above, yaw, OPEN, style, tol=0.012))
    yield from maybe_pause(view, yaw, OPEN, style, rng)
    ok = ok and (yield from move_to(view, grip, yaw, OPEN, style, tol=0.008, max_steps=60, vmax=0.6))
    if not ok:
        planner.failure = f"could not reach the knob of {name}"
        return False
    yield from close_gripper(view, yaw, style)
    start = float(d.qpos[m.jnt_qposadr[joint]])
    delta = 0.0
    for _ in range(90):
        if planner.holds(atom) and abs(float(d.qpos[m.jnt_qposadr[joint]]) - start) > 0.5 + TURN_MARGIN:
            break
        delta = min(delta + 0.06, 1.6)
        c, s = np.cos(sign * delta), np.sin(sign * delta)
        rel = grip[:2] - pivot[:2]
        pos = np.array([pivot[0] + c * rel[0] - s * rel[1], pivot[1] + s * rel[0] + c * rel[1], grip[2]])
        yield servo(view, pos, yaw + sign * delta, CLOSE, style)
    yield from open_gripper(view, yaw + sign * delta, style, steps=6)
    up = view.eef_pos() + np.array([0.0, 0.0, 0.08])
    yield from move_to(view, up, yaw + sign * delta, OPEN, style, tol=0.02, max_steps=30)
    if not planner.holds(atom):
        planner.failure = f"knob of {name} did not reach {atom.predicate}"
        return False
    return True


def open_articulated(planner: PlannerContext, atom: Atom) -> Actions:
    """Open a drawer (grip its handle and pull, :func:`envs.scripted.door.open_drawer`).

    Opening a hinged door is not scripted (none of the scripted suites needs it): fails with a message.
    """
    joint = find_joint(planner, atom.args[0])
    if not joint.slide:
        planner.failure = f"opening the door of {atom.args[0]} is not scripted"
        return False
    return (yield from open_drawer(planner, atom, joint))


def close_articulated(planner: PlannerContext, atom: Atom) -> Actions:
    """Push a drawer or a hinged door shut (:func:`envs.scripted.door.close_drawer` / ``close_door``)."""
    joint = find_joint(planner, atom.args[0])
    handler = close_drawer if joint.slide else close_door
    return (yield from handler(planner, atom, joint))


__all__ = ["turn_knob", "open_articulated", "close_articulated"]
