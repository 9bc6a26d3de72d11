"""Pick and place primitives of the scripted demonstrator (reach, grasp, lift, transport, place).

Heights come from the collision geometry: grasp depth from the object's bounding
box, travel height from the tallest geom under the transport path, release
height from the support surface under the target. Offsets, grasp yaw (where the
object's footprint allows), speeds and pauses are drawn from the episode's
:class:`~envs.scripted.primitives.Style` and random generator.
"""
from __future__ import annotations

from dataclasses import dataclass
import logging

import numpy as np

from envs.scripted.primitives import (CLOSE, KEEP, OPEN, Primitive, Style, close_gripper, fork, maybe_pause, yaw_fork,
                                      move_to, narrow_gripper, open_gripper)
from envs.scripted.scene import SceneView, clearance_height, obstacle_distance

GRIPPER_MAX_OPEN = 0.075  # m, widest object the Panda fingers close around comfortably
RIM_OPENING = 0.04  # m, finger opening for a rim grasp: straddles the wall, fits beside it
PALM_DROP = 0.024  # m, height of the palm's underside above the grip site (with a margin)
PALM_REACH = 0.05  # m, horizontal reach of the palm around the grip site, across the fingers
PALM_HALF_LENGTH = 0.1  # m, half length of the palm along the fingers' closing axis
RIM_CARRY_VMAX = 0.5  # speed cap carrying an object held by its rim (the thin wall slips on jerks)
LOG = logging.getLogger(__name__)
MAX_REACH_Z = 0.55  # m above the table: keep travel heights inside the arm's comfortable range


@dataclass
class Grasp:
    """What the hand holds: object name, yaw (rad), the eef offset (3,) from the object's body
    origin (x, y) and its lowest point (z), and the speed cap (action units) for carrying it."""

    name: str
    yaw: float
    hang: np.ndarray
    vmax: float


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


def rim_circle(view: SceneView, name: str) -> tuple[np.ndarray, float, float]:
    """The rim of an open object (bowl, mug): centre (2,), wall radius (m) and top height (m).

    Taken from the collision geoms reaching the top 2.5 cm (the upper wall ring), leaving out
    those well outside the ring (a mug's handle); a flat object's rim is its footprint's edge.
    """
    corners = view.geom_corners(name).reshape(-1, 8, 3)
    top = float(corners[..., 2].max())
    if top - float(corners[..., 2].min()) < 0.03:  # flat (plate): its footprint's edge
        box = view.object_box(name)
        return box.center[:2], 0.5 * float(min(box.size[0], box.size[1])) - 0.012, top
    ring = corners[corners[..., 2].max(axis=1) > top - 0.025].mean(axis=1)[:, :2]
    centre = ring.mean(axis=0)
    for _ in range(2):
        dist = np.linalg.norm(ring - centre, axis=1)
        ring = ring[dist < np.median(dist) + 0.012]
        centre = ring.mean(axis=0)
    return centre, float(np.median(np.linalg.norm(ring - centre, axis=1))), top


def rim_grasp(view: SceneView, name: str, rng: np.random.Generator,
              avoid: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Grasp point (3,) on the rim of a wide open object (one finger in, one out) and its yaw.

    The rim point faces the robot base (-x) give or take 70 degrees, away from ``avoid`` (2,),
    e.g. a handle, picked at random among the candidates where both fingers, opened to
    ``RIM_OPENING``, and the palm have room to descend (a bowl in a drawer, next to a rack);
    fingers close radially.
    """
    c, radius, top = rim_circle(view, name)
    z = max(top - 0.018, view.table_z + 0.012)
    thetas = np.pi + np.linspace(-1.2, 1.2, 9) + rng.normal(0.0, 0.08, 9)
    if avoid is not None:
        away = np.arctan2(c[1] - avoid[1], c[0] - avoid[0])
        thetas = away + np.linspace(-1.0, 1.0, 9) + rng.normal(0.0, 0.08, 9)
    body = view.body_id(name)
    heights = np.array([0.0, 0.03, 0.06])
    room = []
    for t in thetas:
        u = np.array([np.cos(t), np.sin(t)])
        fingers = [c + (radius + s * 0.5 * RIM_OPENING) * u for s in (-1.0, 1.0)]
        pts = np.array([[f[0], f[1], z + h] for f in fingers for h in heights])
        palm = palm_room(view, np.array([*(c + radius * u), z]), view.yaw_for_finger_axis(t), {body})
        room.append(min(obstacle_distance(view, pts, {body}, z - 0.005) - 0.02, palm - 0.01))
    room = np.array(room)
    roomy = np.nonzero(room > 0.0)[0]
    theta = float(thetas[rng.choice(roomy)] if len(roomy) else thetas[int(np.argmax(room))])
    point = np.array([c[0] + radius * np.cos(theta), c[1] + radius * np.sin(theta), z])
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


def palm_clears(view: SceneView, name: str, point: np.ndarray) -> bool:
    """Whether the palm stays above ``name``'s own geoms when the grip site is at ``point`` (3,)."""
    geoms = view.geom_corners(name).reshape(-1, 8, 3)
    centres = geoms.mean(axis=1)
    near = np.linalg.norm(centres[:, :2] - point[:2], axis=1)
    body = geoms[(near > 0.02) & (near < PALM_REACH)]  # the rest of the object, not the handle itself
    return not len(body) or float(body[..., 2].max()) < point[2] + PALM_DROP


def palm_room(view: SceneView, point: np.ndarray, yaw: float, exclude: set[int]) -> float:
    """Clearance (m) around the palm, which spans +-``PALM_HALF_LENGTH`` along the fingers' closing
    axis, when the grip site is at ``point`` (3,) with ``yaw``; geoms of ``exclude`` are ignored."""
    phi = yaw + view.finger_axis_yaw0
    axis, side = np.array([np.cos(phi), np.sin(phi)]), np.array([-np.sin(phi), np.cos(phi)])
    pts = [np.array([*(point[:2] + u * axis + w * side), point[2] + h])
           for u in np.linspace(-PALM_HALF_LENGTH, PALM_HALF_LENGTH, 7) for w in (-0.02, 0.02) for h in (0.035, 0.07)]
    return obstacle_distance(view, np.array(pts), exclude, point[2] + PALM_DROP)


def palm_shift(view: SceneView, name: str, point: np.ndarray, yaw: float) -> np.ndarray:
    """``point`` (3,) slid along the object's long side so that the palm clears tall neighbours."""
    widths = sorted(view.horizontal_widths(name), key=lambda aw: aw[1])
    if not widths:
        return point
    angle, length = widths[-1]
    reach = max(0.0, 0.5 * length - 0.02)
    direction = np.array([np.cos(angle), np.sin(angle), 0.0])
    offsets = sorted(np.linspace(-reach, reach, 7), key=abs)
    body = {view.body_id(name)}
    rooms = [min(palm_room(view, point + o * direction, yaw, body), 0.015) for o in offsets]
    return point + offsets[int(np.argmax(rooms))] * direction  # first best: the most central


def grasp_point(view: SceneView, name: str, grip_point: np.ndarray | None = None) -> np.ndarray:
    """Where the grip site goes to grasp ``name`` (3,): centre of the footprint, near the top."""
    box = view.object_box(name)
    height = box.size[2]
    depth = min(0.035, 0.5 * height) if height > 0.05 else 0.5 * height
    z = max(box.hi[2] - depth, view.table_z + 0.012)
    xy = box.center[:2] if grip_point is None else grip_point[:2]
    return np.array([xy[0], xy[1], z])


def travel_z(view: SceneView, path_xy: list[np.ndarray], hang: float,
             radius: float, exclude: set[int], style: Style) -> float:
    """Grip-site height (m) at which a load hanging ``hang`` m below the hand clears the path
    through the waypoints ``path_xy`` ((2,) each; 12 samples per leg)."""
    pts = np.concatenate([np.linspace(a, b, 12) for a, b in zip(path_xy[:-1], path_xy[1:])])
    top = clearance_height(view, pts, radius, exclude)
    return min(max(top, view.table_z) + hang + 0.04 + style.travel_lift, view.table_z + MAX_REACH_Z)


def pick(view: SceneView, name: str, style: Style, rng: np.random.Generator,
         grip_point: np.ndarray | None = None) -> Primitive:
    """Reach above ``name``, descend, close, lift; returns a :class:`Grasp` or ``None``."""
    handle = handle_grasp(view, name) if is_wide(view, name) and grip_point is None else None
    avoid = None
    if handle is not None and not palm_clears(view, name, handle[0]):
        avoid, handle = handle[0][:2], None  # a low handle (mug): the palm would hit the rim
    rim = handle is None and is_wide(view, name) and grip_point is None
    if handle is not None:
        target, yaw = handle
    elif rim:
        target, yaw = rim_grasp(view, name, rng, avoid)
    else:
        target = grasp_point(view, name, grip_point)
        yaws = [choose_grasp_yaw(view, name, rng) for _ in range(6)]  # free yaw: round objects
        body = {view.body_id(name)}
        yaw = yaws[int(np.argmax([min(palm_room(view, target, y, body), 0.015) for y in yaws]))]
        if grip_point is None:
            target = palm_shift(view, name, target, yaw)
    target[:2] += rng.normal(0.0, style.jitter, 2)
    body = view.body_id(name)
    above = target + np.array([0.0, 0.0, rng.uniform(0.07, 0.11)])
    here = view.eef_pos()
    via = fork(here[:2], above[:2], style, rng)
    travel, yaw = yaw_fork(yaw, style, rng) if not (rim or handle is not None) else (yaw, yaw)
    path = [here[:2]] + ([] if via is None else [via]) + [above[:2]]
    z = max(travel_z(view, path, 0.02, 0.06, {body}, style), above[2])
    if here[2] < z - 0.03:
        ok = yield from move_to(view, np.array([here[0], here[1], z]), travel, OPEN, style, tol=0.03, rot_tol=0.5)
    if via is not None:
        yield from move_to(view, np.array([via[0], via[1], z]), travel, OPEN, style, tol=0.03, rot_tol=0.5)
    ok = yield from move_to(view, np.array([above[0], above[1], max(z, above[2])]), travel, OPEN, style, tol=0.02)
    if not ok:
        return None
    ok = yield from move_to(view, above, yaw, OPEN, style, tol=0.015, rot_tol=0.06)
    yield from maybe_pause(view, yaw, OPEN, style, rng)
    grip = OPEN
    if rim:  # narrow the fingers so that the outer one fits between the wall and what stands around
        yield from narrow_gripper(view, yaw, style, RIM_OPENING)
        grip = KEEP
    ok = yield from move_to(view, target, yaw, grip, style, tol=0.008, rot_tol=0.06, max_steps=60,
                            vmax=min(style.vmax, 0.6))
    if not ok:
        LOG.debug("could not reach grasp point %s of %s (eef %s)", target.round(3), name, view.eef_pos().round(3))
        return None
    yield from close_gripper(view, yaw, style)
    LOG.debug("grasp %s at %s (eef %s), fingers %.4f", name, target.round(3), view.eef_pos().round(3),
              view.finger_opening())
    if view.finger_opening() < 0.004:  # closed on nothing
        return None
    # the object's material point between the fingers: it rises with the hand unless the grip
    # slipped, even when a bowl held by its rim tilts as it leaves the table
    held = view.body_mat(name).T @ (view.eef_pos() - view.body_pos(name))
    eef_z0 = view.eef_pos()[2]
    lift = view.eef_pos() + np.array([0.0, 0.0, 0.06])
    yield from move_to(view, lift, yaw, CLOSE, style, tol=0.01, max_steps=40)
    rise_obj = float((view.body_pos(name) + view.body_mat(name) @ held)[2]) - eef_z0
    rise_eef = view.eef_pos()[2] - eef_z0
    if rise_obj < 0.7 * rise_eef or view.finger_opening() < 0.003:  # slipped out
        LOG.debug("%s slipped: object rose %.3f, hand %.3f", name, rise_obj, rise_eef)
        return None
    box = view.object_box(name)
    pos = view.body_pos(name)
    hang = view.eef_pos() - np.array([pos[0], pos[1], box.lo[2]])
    return Grasp(name, yaw, hang, min(style.vmax, RIM_CARRY_VMAX) if rim else style.vmax)


def support_z(view: SceneView, xy: np.ndarray, exclude: set[int], radius: float = 0.015) -> float:
    """Top (m) of the highest collision geom whose footprint covers ``xy`` (2,)."""
    return clearance_height(view, xy[None], radius, exclude)


def still_held(view: SceneView, grasp: Grasp) -> bool:
    """Whether the object of ``grasp`` still hangs from the hand about as it did after the lift."""
    hang = view.eef_pos() - np.array([*view.body_pos(grasp.name)[:2], view.object_box(grasp.name).lo[2]])
    return bool(np.linalg.norm(hang - grasp.hang) < 0.04)


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
    via = fork(here[:2], goal_xy, style, rng)
    path = [here[:2]] + ([] if via is None else [via]) + [goal_xy]
    z = travel_z(view, path, hang, radius, {body}, style)
    ok = yield from move_to(view, np.array([here[0], here[1], max(z, here[2])]), grasp.yaw, CLOSE, style,
                            tol=0.03, rot_tol=0.3, vmax=grasp.vmax)
    if via is not None:
        yield from move_to(view, np.array([via[0], via[1], z]), grasp.yaw, CLOSE, style,
                           tol=0.03, rot_tol=0.3, vmax=grasp.vmax)
    ok = yield from move_to(view, np.array([goal_xy[0], goal_xy[1], z]), grasp.yaw, CLOSE, style,
                            tol=0.012, rot_tol=0.08, max_steps=150, vmax=grasp.vmax)
    if not still_held(view, grasp):
        LOG.debug("%s dropped in transport", grasp.name)
        return False
    if not ok:
        return False
    yield from maybe_pause(view, grasp.yaw, CLOSE, style, rng)
    floor = support_z(view, target_xy, {body}) if surface is None else surface
    release = np.array([goal_xy[0], goal_xy[1], floor + hang + release_above + rng.uniform(0.0, 0.01)])
    ok = yield from move_to(view, release, grasp.yaw, CLOSE, style, tol=0.01, max_steps=80,
                            vmax=min(grasp.vmax, 0.7))
    yield from open_gripper(view, grasp.yaw, style, steps=int(rng.integers(5, 9)))
    up = view.eef_pos() + np.array([0.0, 0.0, rng.uniform(0.05, 0.09)])
    yield from move_to(view, up, grasp.yaw, OPEN, style, tol=0.02, max_steps=30)
    return True
