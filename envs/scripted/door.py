"""Drawers and hinged doors of the scripted demonstrator (``Open``/``Close`` sub-goals).

The joint, its world axis and range are read from MuJoCo; the goal position comes from the
articulated object's own ``default_open_ranges`` / ``default_close_ranges`` (what LIBERO's
``Open``/``Close`` predicates test), pushed a margin past the threshold.

* Opening a drawer: LIBERO's cabinet handles are stacked 7 cm apart, so a gripper pointing
  down cannot reach a lower handle. The hand turns to point into the cabinet (against the
  slide direction, pitched ~17 degrees down so its lower edge clears the table), narrows
  the open fingers to fit between the neighbouring handles, grips the handle bar (the
  drawer geom that protrudes most along the slide axis) with the fingers closing
  vertically, pulls along the slide axis and lets go. An object that is to go into the
  drawer and lies under its pulled-out footprint (out of the gripper's reach once the
  drawer is open) is first pushed out of that footprint.
* Putting something into an open drawer: :func:`drawer_place_xy` moves the set-down spot
  forward from the region's centre so that the object's far rim clears the drawer above
  and its handle (it would land on that handle and jam the drawer when it closes).
* Closing a drawer: the hand, pointing down with its long side (the finger axis) along the
  slide axis, pushes the drawer front with the edge of the hand, beside the handle bars
  (where no handle of the drawers above is hit when the drawer is flush).
* Closing a door: the hand, pointing down with its long side along the panel, pushes the
  panel's outer face near its free end and follows the arc about the hinge.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator

import numpy as np

from envs.libero.bddl import Atom
from envs.scripted.context import PlannerContext
from envs.scripted.pose import follow_pose, hand_rotation
from envs.scripted.primitives import (CLOSE, CLOSE_STEP, FULL_OPENING, KEEP, OPEN, UP, Primitive, Style, close_on,
                                      hold_pose, move_pose, pose_servo)
from envs.scripted.scene import Box, SceneView, scene_boxes, scene_mask, xy_clearance


Actions = Generator[np.ndarray, None, bool]
HAND_HALF = 0.105  # m, half length of the Panda hand along the finger axis: its edge does the pushing
HAND_LIFT = 0.026  # m, height of the hand's underside above the grip site when pointing down
PUSH_CLEAR = 0.015  # m, gap between the hand and a surface before pushing it
HAND_THICK = 0.032  # m, half thickness of the hand across the finger axis
SWEEP_MARGIN = 0.035  # m, room left around a drawer's pulled-out footprint for the hand
FINGER_WIDTH = 0.029  # m, from a finger's inner pad face to its outer side
PUSH_IN = 0.03  # m, how far behind the pushed surface the hand is aimed while pushing


@dataclass
class Joint:
    """One drawer (slide) or door (hinge) joint of an articulated object.

    Attributes:
        body: id of the moving body; qadr: the joint's qpos address.
        axis: world joint axis (3,); anchor: world joint anchor (3,).
        slide: True for a drawer, False for a hinged door.
        open_goal, close_goal: positions where Open / Close hold with a margin (inside the range).
    """

    body: int
    qadr: int
    axis: np.ndarray
    anchor: np.ndarray
    slide: bool
    open_goal: float
    close_goal: float


def _goal(ranges: list[float], towards: float, lo: float, hi: float) -> float:
    """A position 3/4 of the way through ``ranges`` in direction ``towards`` (+-1), inside [lo, hi]."""
    a, b = min(ranges), max(ranges)
    q = a + 0.75 * (b - a) if towards > 0 else b - 0.75 * (b - a)
    return float(np.clip(q, lo + 0.002, hi - 0.002))


def find_joint(planner: PlannerContext, name: str) -> Joint:
    """The drawer or door joint behind a region (``..._bottom_region``) or object (``microwave_1``)."""
    env, view = planner.env, planner.view
    m, d = view.model, view.data
    site = env.object_sites_dict.get(name)
    parent = name
    if site is not None and getattr(site, "joints", None):
        names, parent = list(site.joints), site.parent_name
    else:
        bodies = set(view._subtree(view.body_id(name)))
        names = [m.joint(j).name for j in range(m.njnt) if int(m.jnt_bodyid[j]) in bodies and m.jnt_type[j] in (2, 3)]
    if not names:
        raise ValueError(f"{name} has no drawer or door joint")
    jid = m.joint(names[0]).id
    body = int(m.jnt_bodyid[jid])
    art = env.get_object(parent).object_properties["articulation"]
    lo, hi = (float(x) for x in m.jnt_range[jid])
    towards = float(np.sign(np.mean(art["default_open_ranges"]) - np.mean(art["default_close_ranges"])))
    return Joint(body, int(m.jnt_qposadr[jid]), d.xmat[body].reshape(3, 3) @ m.jnt_axis[jid],
                 d.xanchor[jid].copy(), int(m.jnt_type[jid]) == 2,
                 _goal(art["default_open_ranges"], towards, lo, hi),
                 _goal(art["default_close_ranges"], -towards, lo, hi))


def qpos(view: SceneView, joint: Joint) -> float:
    """Current position of ``joint``."""
    return float(view.data.qpos[joint.qadr])


def _geoms(view: SceneView, body: int) -> np.ndarray:
    """Oriented-box corners (G, 8, 3) of the collision geoms of ``body``'s subtree."""
    return view.geom_corners("", body=body).reshape(-1, 8, 3)


def _slide_dir(joint: Joint) -> np.ndarray:
    """Unit world direction (3,) in which the drawer front moves when it opens."""
    sign = 1.0 if joint.open_goal > joint.close_goal else -1.0
    return sign * joint.axis / np.linalg.norm(joint.axis)


def _retreat(view: SceneView, rot: np.ndarray, away: np.ndarray, style: Style,
             rng: np.random.Generator) -> Actions:
    """Let go, back off along ``away`` (3,), rise and turn the hand back to pointing down."""
    yield from hold_pose(view, rot, OPEN, style, int(rng.integers(5, 8)))
    back = view.eef_pos() + away * rng.uniform(0.06, 0.09)
    yield from move_pose(view, back, rot, OPEN, style, tol=0.02, rot_tol=0.3, max_steps=30)
    down = view.down_yaw(view.yaw_for_finger_axis(float(np.arctan2(away[1], away[0]))))
    up = view.eef_pos() + UP * rng.uniform(0.05, 0.08)
    yield from move_pose(view, up, down, OPEN, style, tol=0.03, rot_tol=0.25, max_steps=40)
    return True


def _push_aside(planner: PlannerContext, name: str, d: np.ndarray, shift: float) -> Actions:
    """Slide object ``name`` ``shift`` metres along horizontal unit ``d`` (3,) with the closed hand."""
    view, style, rng = planner.view, planner.style, planner.rng
    corners = view.geom_corners(name)
    box = Box(corners.min(axis=0), corners.max(axis=0))
    c0 = view.body_pos(name)
    behind = float((corners @ d).max() - box.center @ d)
    start = box.center - d * (behind + HAND_THICK + PUSH_CLEAR)
    start[2] = box.lo[2] + min(0.025, 0.5 * float(box.size[2]))
    rot = hand_rotation(view, -UP, np.cross(UP, d))
    here = view.eef_pos()
    above = start + UP * rng.uniform(0.05, 0.08)
    ok = yield from move_pose(view, np.array([*above[:2], max(above[2], here[2])]), rot, CLOSE, style,
                              tol=0.025, rot_tol=0.3, max_steps=80)
    ok = ok and (yield from move_pose(view, start, rot, CLOSE, style, tol=0.012, rot_tol=0.1, max_steps=60))
    if not ok:
        return False
    target = start + d * (shift + PUSH_CLEAR + HAND_THICK)  # the thinner fingers may be what touches
    moved = lambda: float((view.body_pos(name) - c0) @ d) >= shift  # noqa: E731
    yield from follow_pose(view, lambda: target, lambda: rot, CLOSE, style, moved, max_steps=60,
                           vmax=min(style.vmax, 0.7))
    up = view.eef_pos() + UP * rng.uniform(0.04, 0.06)
    yield from move_pose(view, up, rot, CLOSE, style, tol=0.025, max_steps=20)
    return moved()


def _clear_sweep(planner: PlannerContext, region: str, joint: Joint, out: np.ndarray,
                 travel: float) -> Actions:
    """Push what is to go into the drawer out of the floor area the pulled-out drawer will cover.

    An object under an open drawer is out of the gripper's reach (the hand would hit the
    drawer); it is slid sideways or forwards, whichever is shorter, before the drawer opens.
    """
    view = planner.view
    lateral = np.cross(UP, out)
    corners = _geoms(view, joint.body).reshape(-1, 3)
    lat_lo, lat_hi = (corners @ lateral).min() - SWEEP_MARGIN, (corners @ lateral).max() + SWEEP_MARGIN
    out_hi = (corners @ out).max() + travel + SWEEP_MARGIN
    for name in [a.args[0] for a in planner.atoms if a.predicate in ("in", "on") and a.args[1] == region]:
        obj = view.geom_corners(name)
        lat, fwd = obj @ lateral, obj @ out
        if lat.max() < lat_lo or lat.min() > lat_hi or fwd.min() > out_hi:
            continue
        shift, d = min([(lat.max() - lat_lo, -lateral), (lat_hi - lat.min(), lateral), (out_hi - fwd.min(), out)],
                       key=lambda sd: sd[0])
        if not (yield from _push_aside(planner, name, d, float(shift))):
            planner.failure = f"could not push {name} out from under {region}"
            return False
    return True


def _preshape_steps(view: SceneView, joint: Joint, bar: Box, out: np.ndarray) -> int:
    """Gripper-close steps (each narrows the open fingers by ~1 cm) that make the fingers, closing
    vertically, fit between the neighbouring drawers' handles above and below the bar."""
    lo, hi, bodies = scene_boxes(view)
    lateral = np.cross(UP, out)
    b_lat = np.sort([bar.lo @ lateral, bar.hi @ lateral])
    lat = np.sort(np.stack([lo @ lateral, hi @ lateral], axis=1), axis=1)
    fwd = np.maximum(lo @ out, hi @ out)
    near = ((lat[:, 1] > b_lat[0]) & (lat[:, 0] < b_lat[1]) & (fwd > float(bar.lo @ out) - 0.01)
            & scene_mask(view, bodies, {joint.body}))
    zc = float(bar.center[2])
    gaps = [lo[i, 2] - zc for i in np.nonzero(near)[0] if lo[i, 2] > bar.hi[2]]
    gaps += [zc - hi[i, 2] for i in np.nonzero(near)[0] if hi[i, 2] < bar.lo[2]]
    room = min(gaps, default=0.1)
    opening = float(np.clip(2.0 * (room - FINGER_WIDTH - 0.006), bar.size[2] + 0.015, FULL_OPENING))
    return int(np.ceil((FULL_OPENING - opening) / CLOSE_STEP))


def open_drawer(planner: PlannerContext, atom: Atom, joint: Joint) -> Actions:
    """Grip the drawer's handle bar with the hand pointing into the cabinet and pull it open."""
    view, style, rng = planner.view, planner.style, planner.rng
    out = _slide_dir(joint)
    geoms = _geoms(view, joint.body)
    front = [float((g @ out).min()) for g in geoms]
    bar = geoms[int(np.argmax(front))]
    box = Box(bar.min(axis=0), bar.max(axis=0))
    lateral = np.cross(UP, out)
    span = bar @ lateral
    # grip between the posts: the middle of the bar, +-1 cm
    grip = box.center + lateral * rng.uniform(-0.01, 0.01) * min(1.0, (span.max() - span.min()) / 0.06)
    grip -= out * 0.004
    travel = abs(joint.open_goal - qpos(view, joint)) * np.linalg.norm(joint.axis)
    if not (yield from _clear_sweep(planner, atom.args[0], joint, out, travel)):
        return False
    pitch = rng.uniform(0.25, 0.35)  # pointing slightly down lifts the hand's lower edge off the table
    rot = hand_rotation(view, -out * np.cos(pitch) - UP * np.sin(pitch), UP)
    stand = grip + out * rng.uniform(0.06, 0.08)
    here = view.eef_pos()
    yield from move_pose(view, np.array([*(0.5 * (here[:2] + stand[:2])), max(here[2], stand[2] + 0.05)]),
                         rot, OPEN, style, tol=0.04, rot_tol=0.5, max_steps=60)
    ok = yield from move_pose(view, stand, rot, OPEN, style, tol=0.012, rot_tol=0.06, max_steps=100)
    for _ in range(_preshape_steps(view, joint, box, out)):  # fingers narrower than the gap between handles
        yield pose_servo(view, stand, rot, CLOSE, style)
    ok = ok and (yield from move_pose(view, grip, rot, KEEP, style, tol=0.007, rot_tol=0.06, max_steps=60,
                                      vmax=min(style.vmax, 0.5)))
    if not ok:
        planner.failure = f"could not reach the handle of {atom.args[0]}"
        return False
    yield from close_on(view, rot, style)
    q0, start = qpos(view, joint), view.eef_pos()
    target = start + out * (travel + 0.01)
    done = lambda: (planner.holds(atom)  # noqa: E731
                    and abs(qpos(view, joint) - q0) >= abs(joint.open_goal - q0) - 0.003)
    return (yield from _slide_drawer(planner, atom, joint, target, rot, out, done, 0.8, "open"))


def drawer_place_xy(planner: PlannerContext, obj: str, region: str) -> np.ndarray | None:
    """Where to set ``obj`` (its body origin, (2,)) down in the open drawer ``region``; None when
    ``region`` is not a drawer.

    The region spans the drawer's inside, whose back part can sit under the drawer above and
    its handle: an object lowered at the region's centre may land its far rim on that handle
    and then jam the drawer when it is pushed shut. The object goes as far back as it can
    while still clearing everything overhanging the drawer, and never behind the front wall.
    """
    view = planner.view
    site = planner.env.object_sites_dict.get(region)
    if site is None or not getattr(site, "joints", None):
        return None
    joint = find_joint(planner, region)
    if not joint.slide:
        return None
    out = _slide_dir(joint)
    lateral = np.cross(UP, out)
    c, half = view.site_pos(region), view.region_half_size(region)
    size = view.object_box(obj).size
    r = 0.5 * float(max(size[0], size[1]))
    floor = float(c[2] - half[2])
    lo, hi, bodies = scene_boxes(view)
    skip = set(view._subtree(joint.body)) | set(view._subtree(view.body_id(obj))) | view.robot_bodies
    lat = np.sort(np.stack([lo @ lateral, hi @ lateral], axis=1), axis=1)
    fwd = np.sort(np.stack([lo @ out, hi @ out], axis=1), axis=1)
    c_lat, c_out, h_out = float(c @ lateral), float(c @ out), float(np.abs(half @ np.abs(out)))
    overhang = ((lat[:, 1] > c_lat - r) & (lat[:, 0] < c_lat + r)
                & (fwd[:, 1] > c_out - h_out) & (fwd[:, 0] < c_out + h_out)
                & (hi[:, 2] > floor + 0.005) & (lo[:, 2] < floor + float(size[2]) + 0.1)
                & np.array([int(b) not in skip for b in bodies]))
    back = float(fwd[overhang, 1].max()) + r + 0.002 if overhang.any() else c_out - h_out + r
    front = c_out + h_out - r + 0.001  # the region ends a few mm inside the front wall
    target = 0.5 * (back + front) if back <= front else front
    return (c + out * (target - c_out))[:2]


def _push_point(view: SceneView, joint: Joint, out: np.ndarray) -> np.ndarray:
    """Grip-site position (3,) from which the hand's edge pushes a drawer front: beside the
    handles, on the roomier side, low on the front."""
    geoms = _geoms(view, joint.body)
    lateral = np.cross(UP, out)
    ext = np.array([[(g @ out).min(), (g @ out).max()] for g in geoms])
    thin = ext[:, 1] - ext[:, 0] < 0.012
    fronts = [i for i in np.nonzero(thin)[0] if ext[i, 1] > ext[thin, 1].max() - 0.05]
    face = max(fronts, key=lambda i: np.ptp(geoms[i] @ lateral) * np.ptp(geoms[i][:, 2]))
    front = float(ext[face, 1])
    lo, hi = float((geoms[face] @ lateral).min()), float((geoms[face] @ lateral).max())
    handles = [geoms[i] @ lateral for i in range(len(geoms)) if ext[i, 1] > front + 0.004]
    h_lo = min((h.min() for h in handles), default=0.5 * (lo + hi))
    h_hi = max((h.max() for h in handles), default=0.5 * (lo + hi))
    face_lo, face_hi = float(geoms[face][:, 2].min()), float(geoms[face][:, 2].max())
    centre = geoms[face].reshape(-1, 3).mean(axis=0)
    base = centre - lateral * float(centre @ lateral) - out * float(centre @ out)
    cands = [(0.5 * (lo + h_lo), h_lo - lo), (0.5 * (h_hi + hi), hi - h_hi)]
    points = [base + lateral * c + out * (front + HAND_HALF + PUSH_CLEAR) for c, _ in cands]
    for p in points:
        p[2] = min(face_lo + 0.015, face_hi - HAND_LIFT - 0.015)  # the hand's underside meets the front
    room = [min(w, 0.05) + min(xy_clearance(view, p[:2], {joint.body}), 0.05) for p, (_, w) in zip(points, cands)]
    return points[int(np.argmax(room))]


def descend_onto(view: SceneView, point: np.ndarray, lift: float, rot: np.ndarray, style: Style,
                 rot_tol: float, tol: float) -> Primitive:
    """Closed hand at rotation ``rot`` (3,3) over ``point`` (3,) at ``lift`` m above it (never
    lower than the hand is now), then down onto it; True when every leg arrived."""
    here = view.eef_pos()
    above = point + UP * lift
    ok = yield from move_pose(view, np.array([*above[:2], max(above[2], here[2])]), rot, CLOSE, style,
                              tol=0.02, rot_tol=0.3, max_steps=100)
    ok = ok and (yield from move_pose(view, above, rot, CLOSE, style, tol=0.015, rot_tol=rot_tol))
    ok = ok and (yield from move_pose(view, point, rot, CLOSE, style, tol=tol, max_steps=60,
                                      vmax=min(style.vmax, 0.6)))
    return ok


def close_drawer(planner: PlannerContext, atom: Atom, joint: Joint) -> Actions:
    """Push the drawer front shut with the edge of the closed hand, pointing down."""
    view, style, rng = planner.view, planner.style, planner.rng
    out = _slide_dir(joint)
    point = _push_point(view, joint, out)
    rot = hand_rotation(view, -UP, out)
    ok = yield from descend_onto(view, point, float(rng.uniform(0.08, 0.12)), rot, style, rot_tol=0.08, tol=0.01)
    if not ok:
        planner.failure = f"could not reach the front of {atom.args[0]}"
        return False
    travel = abs(qpos(view, joint) - joint.close_goal) * np.linalg.norm(joint.axis)
    target = point - out * (travel + PUSH_IN)
    done = lambda: planner.holds(atom) and abs(qpos(view, joint) - joint.close_goal) < 0.003  # noqa: E731
    return (yield from _slide_drawer(planner, atom, joint, target, rot, out, done, 0.5, "close"))


def _slide_drawer(planner: PlannerContext, atom: Atom, joint: Joint, target: np.ndarray, rot: np.ndarray,
                  out: np.ndarray, done: Callable[[], bool], vmax: float, verb: str) -> Actions:
    """Drive the hand (holding or pushing the drawer) to ``target`` (3,) at ``rot`` until ``done()``,
    let go and back off along ``out``; True when ``atom`` holds, else sets the planner's failure."""
    view, style = planner.view, planner.style
    yield from follow_pose(view, lambda: target, lambda: rot, CLOSE, style, done, max_steps=90,
                           vmax=min(style.vmax, vmax))
    yield from _retreat(view, rot, out, style, planner.rng)
    if not planner.holds(atom):
        planner.failure = f"{atom.args[0]} did not {verb} (joint at {qpos(view, joint):.3f})"
        return False
    return True


def rotate_about(axis: np.ndarray, angle: float, v: np.ndarray) -> np.ndarray:
    """``v`` (3,) rotated by ``angle`` about unit ``axis`` (3,) (Rodrigues)."""
    return (v * np.cos(angle) + np.cross(axis, v) * np.sin(angle)
            + axis * float(axis @ v) * (1.0 - np.cos(angle)))


def close_door(planner: PlannerContext, atom: Atom, joint: Joint) -> Actions:
    """Push a hinged door's outer face near its free end, following the arc until it is shut."""
    view, style, rng = planner.view, planner.style, planner.rng
    axis = joint.axis / np.linalg.norm(joint.axis)
    q0 = qpos(view, joint)
    sign = 1.0 if joint.close_goal > q0 else -1.0
    rel = _geoms(view, joint.body).reshape(-1, 3) - joint.anchor
    rel -= np.outer(rel @ axis, axis)
    dist = np.linalg.norm(rel, axis=1)
    far = rel[int(np.argmax(dist))] / dist.max()
    reach = float(dist.max()) * rng.uniform(0.65, 0.8)
    half = float(np.abs(rel @ (sign * np.cross(axis, far))).max())  # panel half thickness (+ handle)
    zs = _geoms(view, joint.body)[..., 2]
    z = min(float(np.mean(zs)), float(zs.max()) - HAND_LIFT - 0.04) + rng.uniform(-0.015, 0.01)

    def spot(q: float, clear: float = -PUSH_IN) -> np.ndarray:
        e = rotate_about(axis, q - q0, far)
        p = joint.anchor + e * reach - sign * np.cross(axis, e) * (half + HAND_THICK + clear)
        return np.array([p[0], p[1], z])

    def rot_at(q: float) -> np.ndarray:  # the hand's long side along the panel
        return hand_rotation(view, -UP, rotate_about(axis, q - q0, far))

    start, rot = spot(q0, PUSH_CLEAR), rot_at(q0)
    ok = yield from descend_onto(view, start, float(rng.uniform(0.1, 0.14)), rot, style, rot_tol=0.1, tol=0.012)
    if not ok:
        planner.failure = f"could not reach the door of {atom.args[0]}"
        return False
    lead = lambda: qpos(view, joint) + sign * 0.25  # noqa: E731  (past the stop at the end: press it shut)
    done = lambda: planner.holds(atom) and abs(qpos(view, joint) - joint.close_goal) < 0.01  # noqa: E731
    yield from follow_pose(view, lambda: spot(lead()), lambda: rot_at(lead()), CLOSE, style, done,
                           max_steps=120, vmax=min(style.vmax, 0.5))
    e = rotate_about(axis, qpos(view, joint) - q0, far)
    yield from _retreat(view, rot_at(qpos(view, joint)), -sign * np.cross(axis, e), style, rng)
    if not planner.holds(atom):
        planner.failure = f"door of {atom.args[0]} did not close (joint at {qpos(view, joint):.3f})"
        return False
    return True
