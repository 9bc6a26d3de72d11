"""Putting an object *into* an enclosed container (a microwave) from its open side.

A region is *enclosed* when it sits on a fixed part of its container and the container's fixed
geometry hangs over it lower than the object plus the room a gripper pointing down needs (the
microwave's ceiling): a top-down place would set the object on the roof. The Panda hand
(21 cm along the finger axis) does not fit through such an opening, so the object is held
where the hand can stay outside while the object goes in: by its handle (a mug), with the hand
pointing along the handle towards the object's body, pitched down the least that keeps hand
and wrist clear of the neighbours, the fingers closing across the handle's thin side. The
object is lifted to the cavity floor's height, turned about the vertical so that its body
leads into the opening, and slid in at the lateral position and depth that a scan of hand poses
against every collision geom allows (walls, control panel, open door; the far rim short of the
back wall); it is set down and released. The pitched hand cannot reach deep enough for the
handle to clear the closed door, so the hand then re-grasps the bar level (reaching 2-3 cm
deeper) and slides the object further in; it backs out, rises above the container and points
down again. The door is closed afterwards by the planner's ``Close`` sub-goal
(:func:`envs.scripted.door.close_door`). Objects without a handle are not handled.
"""
from __future__ import annotations

from typing import Generator

import numpy as np

from envs.libero.bddl import Atom
from envs.scripted.context import PlannerContext
from envs.scripted.door import rotate_about, find_joint, qpos
from envs.scripted.pick import rim_circle
from envs.scripted.pose import hand_rotation
from envs.scripted.primitives import CLOSE, OPEN, UP, close_on, hold_pose, move_pose
from envs.scripted.scene import SceneView, scene_boxes, obstacle_distance


Actions = Generator[np.ndarray, None, bool]
TOP_DOWN_ROOM = 0.12  # m above an object that a hand pointing down needs to set it down
FLOOR_GAP = 0.012  # m, the object's bottom above the cavity floor while sliding in
HAND_MARGIN = 0.004  # m, the hand keeps this far from every geom (walls, panel, open door)
PITCHES = (0.3, 0.4, 0.5, 0.6, 0.75, 0.9)  # rad below horizontal tried for the hand: the least that clears
# the Panda hand's collision box in the grip-site frame (x: finger axis, z: pointing axis)
HAND_LO = np.array([-0.104, -0.032, -0.124])
HAND_HI = np.array([0.104, 0.032, -0.026])
WRIST_LO, WRIST_HI = np.array([-0.068, -0.151, -0.294]), np.array([0.052, 0.06, -0.13])  # link 6, same frame


def _hand_points(rot: np.ndarray, grip: np.ndarray, lo: np.ndarray = HAND_LO, hi: np.ndarray = HAND_HI
                 ) -> np.ndarray:
    """Points (P, 3) on the hand's collision box (or the box ``lo``..``hi`` of the grip-site frame)
    when the grip site is at ``grip`` with rotation ``rot``."""
    xs, ys, zs = (np.linspace(lo[k], hi[k], n) for k, n in ((0, 9), (1, 3), (2, 4)))
    local = np.stack(np.meshgrid(xs, ys, zs, indexing="ij"), axis=-1).reshape(-1, 3)
    return grip + local @ rot.T


def _static_bodies(view: SceneView, container: str) -> set[int]:
    """Ids of the container's bodies that do not move (not a door, drawer or knob)."""
    static = set(view._subtree(view.body_id(container)))
    for j in range(view.model.njnt):
        b = int(view.model.jnt_bodyid[j])
        if b in static:
            static -= set(view._subtree(b))
    return static


def _static_boxes(view: SceneView, container: str) -> tuple[np.ndarray, np.ndarray]:
    """World AABBs (lo, hi), each (G, 3), of the container's geoms that do not move (no door)."""
    lo, hi, bodies = scene_boxes(view)
    static = _static_bodies(view, container)
    keep = np.array([int(b) in static for b in bodies])
    return lo[keep], hi[keep]


def cavity(view: SceneView, region: str, container: str) -> tuple[float, float] | None:
    """(floor top, ceiling bottom) in metres over ``region``'s centre, or None if nothing is above it."""
    c = view.site_pos(region)
    lo, hi = _static_boxes(view, container)
    over = np.all((lo[:, :2] <= c[:2]) & (hi[:, :2] >= c[:2]), axis=1)
    above, below = over & (lo[:, 2] > c[2]), over & (hi[:, 2] <= c[2])
    if not above.any():
        return None
    floor = float(hi[below, 2].max()) if below.any() else view.table_z
    return floor, float(lo[above, 2].min())


def enclosing_container(planner: PlannerContext, obj: str, region: str) -> str | None:
    """The container of ``region`` if ``obj`` cannot be set into it from above, else None.

    True for a region on a fixed (not drawer) part of its container whose fixed geometry over the
    region's centre leaves a gap above the floor that fits the object but is lower than the
    object's height plus ``TOP_DOWN_ROOM`` (a gap too small for the object is no cavity: a stove's
    burner plate over its cook region's site).
    """
    site = planner.env.object_sites_dict.get(region)
    container = getattr(site, "parent_name", None)
    if site is None or getattr(site, "joints", None) or container not in planner.env.obj_body_id:
        return None
    view = planner.view
    sb = int(view.model.site(region).bodyid[0])
    if sb not in set(view._subtree(view.body_id(container))):
        return None
    gap = cavity(view, region, container)
    if gap is None:
        return None
    height = float(view.object_box(obj).size[2])
    return container if height + FLOOR_GAP < gap[1] - gap[0] < height + TOP_DOWN_ROOM else None


def _opening(view: SceneView, region: str, container: str, z: float) -> tuple[np.ndarray, float, float]:
    """The cavity's open side: outward unit direction u (3,) along one of the container's horizontal
    axes, and the lateral interval (lo, hi) along cross(UP, u) free of walls at height ``z``."""
    c = view.site_pos(region)
    lo, hi = _static_boxes(view, container)
    mat = view.body_mat(container)
    for k in (0, 1):
        for s in (1.0, -1.0):
            u = s * mat[:, k] * np.array([1.0, 1.0, 0.0])
            u /= np.linalg.norm(u)
            pts = c[None] + np.linspace(0.0, 0.4, 41)[:, None] * u
            pts[:, 2] = z
            if not np.any(np.all((pts[:, None] >= lo[None]) & (pts[:, None] <= hi[None]), axis=2)):
                lat = np.cross(UP, u)
                span = np.linspace(-0.3, 0.3, 121)
                free = [not np.any(np.all((p >= lo) & (p <= hi), axis=1))
                        for p in (c + np.outer(span, lat)) * np.array([1, 1, 0]) + np.array([0, 0, z])]
                free = np.array(free)
                mid = int(np.argmin(np.abs(span)))
                a = b = mid
                while a > 0 and free[a - 1]:
                    a -= 1
                while b < len(span) - 1 and free[b + 1]:
                    b += 1
                return u, float(c @ lat + span[a]), float(c @ lat + span[b])
    raise ValueError(f"{region} has no open side to slide an object in")


def handle_bar(view: SceneView, obj: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The outermost collision geom of ``obj`` well outside its rim (a mug's handle bar): its centre
    (3,) and the horizontal outward unit direction (3,) from the body's axis; None without one."""
    c, radius, _ = rim_circle(view, obj)
    geoms = view.geom_corners(obj).reshape(-1, 8, 3)
    centres = geoms.mean(axis=1)
    dist = np.linalg.norm(centres[:, :2] - c, axis=1)
    k = int(np.argmax(dist))
    if dist[k] < radius + 0.02:
        return None
    out = np.array([*(centres[k, :2] - c) / dist[k], 0.0])
    return centres[k].copy(), out


def _door_inner(planner: PlannerContext, container: str, u: np.ndarray) -> float | None:
    """Coordinate along ``u`` of the closed door's inner face, or None if the container has no door."""
    try:
        joint = find_joint(planner, container)
    except (ValueError, KeyError):
        return None
    if joint.slide:
        return None
    axis = joint.axis / np.linalg.norm(joint.axis)
    pts = planner.view.geom_corners("", body=joint.body) - joint.anchor
    closed = np.array([rotate_about(axis, joint.close_goal - qpos(planner.view, joint), p) for p in pts])
    return float(((closed + joint.anchor) @ u).min())


def _rotation(view: SceneView, lead: np.ndarray, pitch: float) -> np.ndarray:
    """Hand rotation pointing along horizontal ``lead`` (3,), ``pitch`` rad down, fingers across it."""
    pointing = lead * np.cos(pitch) - UP * np.sin(pitch)
    return hand_rotation(view, pointing, np.cross(UP, lead))


def grasp_handle(planner: PlannerContext, obj: str
                 ) -> Generator[np.ndarray, None, tuple[np.ndarray, float] | None]:
    """Grasp ``obj`` by its handle bar from above the bar, hand pointing at the body; lift it.

    The hand is pitched down the least of ``PITCHES`` at which it and the wrist clear what stands
    around the handle (another mug behind it). Returns the grip offset (3,) of the hand from the
    object's lowest point and the pitch, or None on failure.
    """
    view, style, rng = planner.view, planner.style, planner.rng
    bar = handle_bar(view, obj)
    if bar is None:
        return None
    centre, out = bar
    body = {view.body_id(obj)}
    rooms = []
    for pitch in PITCHES:
        r = _rotation(view, -out, pitch)
        pts = np.concatenate([_hand_points(r, centre), _hand_points(r, centre, WRIST_LO, WRIST_HI)])
        rooms.append(obstacle_distance(view, pts, body, view.table_z + 0.003))
    ok_pitch = [p for p, room in zip(PITCHES, rooms) if room > 0.004]
    pitch = ok_pitch[0] if ok_pitch else PITCHES[int(np.argmax(rooms))]
    rot = _rotation(view, -out, pitch)
    grip = centre + rng.normal(0.0, style.jitter * 0.5, 3) * np.array([0.0, 0.0, 1.0])
    above = grip + UP * rng.uniform(0.08, 0.11)
    here = view.eef_pos()
    ok = yield from move_pose(view, np.array([here[0], here[1], max(here[2], above[2])]), rot, OPEN, style,
                              tol=0.03, rot_tol=0.25, max_steps=80)
    ok = ok and (yield from move_pose(view, above, rot, OPEN, style, tol=0.012, rot_tol=0.06, max_steps=100))
    ok = ok and (yield from move_pose(view, grip, rot, OPEN, style, tol=0.007, rot_tol=0.06, max_steps=60,
                                      vmax=min(style.vmax, 0.5)))
    if not ok:
        return None
    yield from close_on(view, rot, style)
    z0 = view.body_pos(obj)[2]
    yield from move_pose(view, view.eef_pos() + UP * 0.05, rot, CLOSE, style, tol=0.01, max_steps=40)
    if view.body_pos(obj)[2] - z0 < 0.03 or view.finger_opening() < 0.002:
        return None
    return view.eef_pos() - np.array([0.0, 0.0, view.object_box(obj).lo[2]]), pitch


def _slide_spot(view: SceneView, obj: str, rot: np.ndarray, u: np.ndarray, lats: np.ndarray,
                deepest: float, z: float, back: float, ignore: set[int] | None = None
                ) -> tuple[float, float] | None:
    """Lateral coordinate and grip coordinate along ``u`` that take the object deepest (not past
    ``deepest``) while the hand, on its whole way in from ``back`` m further out, keeps
    ``HAND_MARGIN`` from every geom (but those of ``ignore`` bodies); ties go to the middle of
    ``lats``. None if nothing fits."""
    lat = np.cross(UP, u)
    body = {view.body_id(obj)} | (ignore or set())
    mid = 0.5 * (lats[0] + lats[-1])
    best: tuple[float, float] | None = None
    for t in sorted(lats, key=lambda t: abs(t - mid)):
        clear = lambda g: obstacle_distance(  # noqa: E731
            view, _hand_points(rot, lat * t + u * g + UP * z), body, z - 0.2) >= HAND_MARGIN
        g = deepest + back
        if not clear(g):
            continue
        while g - 0.005 >= deepest and clear(g - 0.005):
            g -= 0.005
        if best is None or g < best[1] - 0.002:
            best = (float(t), float(g))
    return best


def _push_handle(planner: PlannerContext, obj: str, container: str, u: np.ndarray, distance: float
                 ) -> Actions:
    """Re-grasp the released object's handle bar with the hand level (it reaches deeper than the
    pitched hand that carried the object in) and slide the object ``distance`` m further along -u,
    no deeper than where the hand keeps ``HAND_MARGIN`` from the container's fixed geoms (it may
    nudge the open door further open); let go and back off."""
    view, style = planner.view, planner.style
    bar = handle_bar(view, obj)
    if bar is None:
        return False
    rot = _rotation(view, -u, 0.0)
    lat = np.cross(UP, u)
    t, bar_u, z = float(bar[0] @ lat), float(bar[0] @ u), float(bar[0][2])
    door = set(view._subtree(view.body_id(container))) - _static_bodies(view, container)
    spot = _slide_spot(view, obj, rot, u, np.array([t]), bar_u - distance, z, distance + 0.04, door)
    if spot is None:
        return False
    at = lat * t + UP * z
    here = view.eef_pos()
    yield from move_pose(view, here + u * 0.04, view.eef_mat(), OPEN, style, tol=0.015, max_steps=30)
    yield from move_pose(view, at + u * (bar_u + 0.06), rot, OPEN, style, tol=0.012, rot_tol=0.08,
                         max_steps=80)
    ok = yield from move_pose(view, at + u * bar_u, rot, OPEN, style, tol=0.006, rot_tol=0.06, max_steps=50,
                              vmax=min(style.vmax, 0.4))
    yield from close_on(view, rot, style)
    ok = ok and (yield from move_pose(view, at + u * spot[1], rot, CLOSE, style, tol=0.005, max_steps=60,
                                      vmax=min(style.vmax, 0.3)))
    yield from hold_pose(view, rot, OPEN, style, 7)
    yield from move_pose(view, view.eef_pos() + u * 0.04, rot, OPEN, style, tol=0.01, max_steps=25)
    return ok


def put_inside(planner: PlannerContext, obj: str, region: str, container: str) -> Actions:
    """Grasp ``obj`` by its handle and slide it into the enclosed ``region`` (see the module doc)."""
    view, style = planner.view, planner.style
    floor, ceiling = cavity(view, region, container)
    if handle_bar(view, obj) is None:
        planner.failure = f"{obj} has no handle to hold it by while sliding it into {region}"
        return False
    held = None
    for _ in range(2):
        held = yield from grasp_handle(planner, obj)
        if held is not None:
            break
        yield from hold_pose(view, view.eef_mat(), OPEN, style, 4, pos=view.eef_pos() + UP * 0.06)
    if held is None:
        planner.failure = f"handle grasp of {obj} failed"
        return False
    path = _slide_path(planner, obj, region, container, held, floor, ceiling)
    if path is None:
        planner.failure = f"no way for the hand to slide {obj} into {region}"
        return False
    rot, u, z, inside, outside, front = path
    here = view.eef_pos()
    carry = max(here[2], z)
    ok = yield from move_pose(view, np.array([here[0], here[1], carry]), rot, CLOSE, style, tol=0.03,
                              rot_tol=0.3, max_steps=60, vmax=min(style.vmax, 0.6))
    ok = yield from move_pose(view, np.array([outside[0], outside[1], carry]), rot, CLOSE, style,
                              tol=0.015, rot_tol=0.08, max_steps=150, vmax=min(style.vmax, 0.6))
    ok = ok and (yield from move_pose(view, outside, rot, CLOSE, style, tol=0.01, max_steps=60))
    ok = ok and (yield from move_pose(view, inside, rot, CLOSE, style, tol=0.008, max_steps=100,
                                      vmax=min(style.vmax, 0.4)))
    if not ok:
        planner.failure = f"could not slide {obj} into {region}"
        return False
    yield from _release_inside(planner, obj, container, rot, u, inside, front)
    if not planner.holds(Atom("in", (obj, region))):
        planner.failure = f"{obj} is not in {region} after sliding it in"
        return False
    return True


def _slide_path(planner: PlannerContext, obj: str, region: str, container: str, held: tuple,
                floor: float, ceiling: float) -> tuple | None:
    """Where to slide the held ``obj`` in: (hand rotation, the opening's outward axis u (3,), the
    carrying height z, the grip point inside (3,), the point in front of the opening (3,), the
    opening's plane along u); None when the hand fits nowhere. Draws one lateral jitter from the
    planner's rng."""
    view = planner.view
    hang, pitch = held
    z = floor + FLOOR_GAP + float(hang[2])
    u, lat_lo, lat_hi = _opening(view, region, container, 0.5 * (floor + ceiling))
    lat = np.cross(UP, u)
    rot = _rotation(view, -u, pitch)
    lo, hi = _static_boxes(view, container)
    # the object's extent along -u from the grip once turned: measured on its current corners
    lead = view.eef_mat()[:, 2] * np.array([1.0, 1.0, 0.0])  # where the hand points now, level
    lead /= np.linalg.norm(lead)
    reach = float(((view.geom_corners(obj) - view.eef_pos()) @ lead).max())
    back = reach + 0.03
    c = view.site_pos(region)
    u_hi = np.maximum(lo * u, hi * u).sum(axis=1)  # (G,) how far each geom reaches along u
    front = float(u_hi.max())  # the opening's plane
    behind = u_hi < c @ u  # the back wall: geoms wholly behind the region's centre
    wall = float(u_hi[behind].max()) if behind.any() else float(c @ u) - 0.1
    half = 0.5 * float(view.object_box(obj).size[:2].min())
    t_lo, t_hi = lat_lo + half + 0.005, lat_hi - half - 0.005
    spot = None
    if t_lo <= t_hi:  # the lateral spot where the level hand of the final push reaches deepest
        door = set(view._subtree(view.body_id(container))) - _static_bodies(view, container)
        level = _slide_spot(view, obj, _rotation(view, -u, 0.0), u, np.linspace(t_lo, t_hi, 11),
                            wall + reach + 0.008, z, back, door)
        if level is not None:
            spot = _slide_spot(view, obj, rot, u, np.array([level[0]]), wall + reach + 0.008, z, back)
        if spot is None:  # the carrying (pitched) hand does not fit there: anywhere it does
            spot = _slide_spot(view, obj, rot, u, np.linspace(t_lo, t_hi, 11), wall + reach + 0.008, z, back)
    if spot is None:
        return None
    t, grip_u = spot
    t += float(planner.rng.uniform(-0.003, 0.003))
    inside = lat * t + u * grip_u + UP * z
    return rot, u, z, inside, inside + u * back, front


def _release_inside(planner: PlannerContext, obj: str, container: str, rot: np.ndarray, u: np.ndarray,
                    inside: np.ndarray, front: float) -> Actions:
    """Set ``obj`` down at ``inside``, let go, push its handle in past the closed door's line,
    and retreat above the container pointing down, as the other primitives expect."""
    view, style, rng = planner.view, planner.style, planner.rng
    yield from move_pose(view, inside - UP * FLOOR_GAP, rot, CLOSE, style, tol=0.005, max_steps=15)
    yield from hold_pose(view, rot, OPEN, style, int(rng.integers(6, 9)))
    grip = view.eef_pos()
    yield from move_pose(view, grip + u * 0.03, rot, OPEN, style, tol=0.01, max_steps=30)
    inner = _door_inner(planner, container, u)
    line = front if inner is None else inner  # where the closed door's inner face will be

    def sticks() -> float:
        return float((view.geom_corners(obj) @ u).max()) - line + 0.006

    for _ in range(2):  # push the handle in past the closed door with the closed fingertips
        if sticks() > 0.0:
            yield from _push_handle(planner, obj, container, u, sticks() + 0.01)
    out = view.eef_pos() + u * rng.uniform(0.08, 0.11)
    yield from move_pose(view, out, rot, OPEN, style, tol=0.02, max_steps=40)
    top = float(view.object_box(container).hi[2]) + rng.uniform(0.1, 0.14)  # above the container, door
    yield from move_pose(view, np.array([out[0], out[1], max(top, out[2])]), rot, OPEN, style, tol=0.03,
                         rot_tol=0.3, max_steps=50)
    yield from move_pose(view, view.eef_pos(), view.down_yaw(0.0), OPEN, style, tol=0.03,
                         rot_tol=0.15, max_steps=60)  # point down as at the start, as other primitives expect
    return True
