"""Privileged scene queries for the scripted demonstrator.

Reads poses straight from the MuJoCo state of a LIBERO (robosuite) environment:
end-effector pose, finger opening, object bounding boxes from collision geoms,
site poses and sizes, articulation joint positions. Nothing here acts on the
simulator; the primitives in ``envs.scripted.primitives`` turn these readings
into OSC_POSE delta actions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Box:
    """World-frame axis-aligned box: ``lo`` and ``hi`` of shape (3,)."""

    lo: np.ndarray
    hi: np.ndarray

    @property
    def center(self) -> np.ndarray:
        """Centre of the box, shape (3,)."""
        return 0.5 * (self.lo + self.hi)

    @property
    def size(self) -> np.ndarray:
        """Full extents along x, y, z, shape (3,)."""
        return self.hi - self.lo


def _rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Axis-angle vector (3,) of the world-frame rotation taking ``current`` (3,3) to ``target`` (3,3)."""
    r = target @ current.T
    cos = np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)
    angle = float(np.arccos(cos))
    if angle < 1e-6:
        return np.zeros(3)
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    n = np.linalg.norm(axis)
    if n < 1e-6:  # angle close to pi: take the axis from the symmetric part
        w, v = np.linalg.eigh((r + np.eye(3)) / 2.0)
        axis = v[:, int(np.argmax(w))]
        n = 1.0
    return axis / n * angle


class SceneView:
    """Read-only view of a robosuite/LIBERO environment's simulator state.

    Args:
        env: the inner robosuite environment (``OffScreenRenderEnv(...).env``), i.e. a
            ``BDDLBaseDomain`` with ``sim``, ``robots``, ``objects_dict``, ``obj_body_id``.
    """

    def __init__(self, env: Any) -> None:
        self.env = env
        self.sim = env.sim
        self.model = env.sim.model._model
        self.data = env.sim.data._data
        robot = env.robots[0]
        self._eef_site = robot.eef_site_id
        self._finger_qpos_idx = list(robot._ref_gripper_joint_pos_indexes)
        # the downward-pointing gripper orientation the robot starts with, yaw removed
        self.down = self._level(self.eef_mat())
        fingers = [self.model.body(n).id for n in ("gripper0_leftfinger", "gripper0_rightfinger")]
        d = self.data.xpos[fingers[0]] - self.data.xpos[fingers[1]]
        self.finger_axis_yaw0 = float(np.arctan2(d[1], d[0]))
        base = self.model.body(robot.robot_model.root_body).id
        self.robot_bodies: set[int] = set(self._subtree(base))
        # the table or floor top: the highest geom wider than 0.5 m
        lo, hi, _ = scene_boxes(self)
        wide = (hi[:, 0] - lo[:, 0] > 0.5) & (hi[:, 1] - lo[:, 1] > 0.5) & (hi[:, 2] < 1.5)
        self.table_z = float(hi[wide, 2].max()) if wide.any() else 0.0

    @staticmethod
    def _level(mat: np.ndarray) -> np.ndarray:
        """Keep ``mat`` pointing down (z axis = -world z) and strip tilt: shape (3,3)."""
        x = mat[:, 0].copy()
        x[2] = 0.0
        x /= np.linalg.norm(x) + 1e-9
        z = np.array([0.0, 0.0, -1.0])
        y = np.cross(z, x)
        return np.stack([x, y, z], axis=1)

    # ---------------------------------------------------------------- robot
    def eef_pos(self) -> np.ndarray:
        """End-effector (grip site) position, shape (3,)."""
        return self.data.site_xpos[self._eef_site].copy()

    def eef_mat(self) -> np.ndarray:
        """End-effector rotation matrix, shape (3,3)."""
        return self.data.site_xmat[self._eef_site].reshape(3, 3).copy()

    def finger_opening(self) -> float:
        """Distance between the two finger joints (m); about 0.08 open, ~0 closed on nothing."""
        q = self.data.qpos[self._finger_qpos_idx]
        return float(q[0] - q[1])

    def down_yaw(self, yaw: float) -> np.ndarray:
        """Gripper-down rotation (3,3) turned by ``yaw`` radians about world z."""
        return _rot_z(yaw) @ self.down

    def yaw_for_finger_axis(self, direction_angle: float) -> float:
        """Yaw in [-pi/2, pi/2] that puts the fingers' closing axis along ``direction_angle``."""
        y = direction_angle - self.finger_axis_yaw0
        return float((y + np.pi / 2) % np.pi - np.pi / 2)

    # -------------------------------------------------------------- objects
    def _subtree(self, body: int) -> list[int]:
        return subtree(self.model, body)

    def body_id(self, name: str) -> int:
        """MuJoCo body id of a BDDL object or fixture ``name``."""
        if name not in self.env.obj_body_id:
            raise KeyError(f"object {name!r} is not in this scene; known: {sorted(self.env.obj_body_id)}")
        return int(self.env.obj_body_id[name])

    def body_pos(self, name: str) -> np.ndarray:
        """World position (3,) of an object's root body."""
        return self.data.xpos[self.body_id(name)].copy()

    def body_mat(self, name: str) -> np.ndarray:
        """World rotation (3,3) of an object's root body."""
        return self.data.xmat[self.body_id(name)].reshape(3, 3).copy()

    def geom_corners(self, name: str, body: int | None = None) -> np.ndarray:
        """Corners (N*8, 3) of the collision geoms' boxes of an object subtree, world frame."""
        root = self.body_id(name) if body is None else body
        bodies = set(self._subtree(root))
        pts = []
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
        for g in range(self.model.ngeom):
            if int(self.model.geom_bodyid[g]) not in bodies:
                continue
            if self.model.geom_contype[g] == 0 and self.model.geom_conaffinity[g] == 0:
                continue
            aabb = self.model.geom_aabb[g]
            local = aabb[:3] + signs * aabb[3:]
            mat = self.data.geom_xmat[g].reshape(3, 3)
            pts.append(local @ mat.T + self.data.geom_xpos[g])
        if not pts:
            raise ValueError(f"object {name!r} has no collision geoms to measure")
        return np.concatenate(pts, axis=0)

    def object_box(self, name: str) -> Box:
        """World axis-aligned bounding box of an object's collision geoms."""
        c = self.geom_corners(name)
        return Box(c.min(axis=0), c.max(axis=0))

    def horizontal_widths(self, name: str) -> list[tuple[float, float]]:
        """(angle, width) pairs: the object's extent along each of its body axes lying flat."""
        corners = self.geom_corners(name)
        mat = self.body_mat(name)
        out = []
        for k in range(3):
            axis = mat[:, k]
            if np.linalg.norm(axis[:2]) < 0.7:
                continue
            a2 = axis[:2] / np.linalg.norm(axis[:2])
            proj = corners[:, :2] @ a2
            out.append((float(np.arctan2(a2[1], a2[0])), float(proj.max() - proj.min())))
        return out

    # ---------------------------------------------------------------- sites
    def site_pos(self, name: str) -> np.ndarray:
        """World position (3,) of a MuJoCo site (BDDL regions are sites)."""
        return self.data.site(name).xpos.copy()

    def site_mat(self, name: str) -> np.ndarray:
        """World rotation (3,3) of a MuJoCo site."""
        return self.data.site(name).xmat.reshape(3, 3).copy()

    def region_half_size(self, name: str) -> np.ndarray:
        """Half extents (3,) of a BDDL region site, world axes (as LIBERO's ``in_box``)."""
        site = self.env.object_sites_dict[name]
        return np.abs(self.site_mat(name) @ np.asarray(site.size, float))

    def joint_qpos(self, joint: str) -> float:
        """Position of a hinge or slide joint by full MuJoCo name."""
        return float(self.data.qpos[self.model.joint(joint).qposadr[0]])


def subtree(model: Any, root: int) -> list[int]:
    """Ids of the MuJoCo bodies in the kinematic subtree of body ``root`` (``root`` first)."""
    out, stack = [], [int(root)]
    while stack:
        b = stack.pop()
        out.append(b)
        stack.extend(int(c) for c in np.nonzero(model.body_parentid == b)[0] if c != b)
    return out


def scene_mask(view: "SceneView", bodies: np.ndarray, exclude_bodies: set[int]) -> np.ndarray:
    """Boolean mask (G,) of the geom rows whose body is neither the robot's nor in ``exclude_bodies``."""
    skip = exclude_bodies | view.robot_bodies
    return np.array([int(b) not in skip for b in bodies], dtype=bool)


def _collision_geoms(model: Any) -> np.ndarray:
    """Ids (G,) of the geoms that collide (the order of :func:`scene_boxes`'s rows)."""
    return np.nonzero((model.geom_contype != 0) | (model.geom_conaffinity != 0))[0]


def scene_boxes(view: "SceneView") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World AABBs of every collision geom: (lo (G,3), hi (G,3), body id (G,))."""
    m, d = view.model, view.data
    coll = _collision_geoms(m)
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    aabb = m.geom_aabb[coll]
    local = aabb[:, None, :3] + signs[None] * aabb[:, None, 3:]
    mats = d.geom_xmat[coll].reshape(-1, 3, 3)
    world = np.einsum("gkj,gij->gki", local, mats) + d.geom_xpos[coll][:, None, :]
    return world.min(axis=1), world.max(axis=1), m.geom_bodyid[coll]


def clearance_height(view: SceneView, points_xy: np.ndarray, radius: float,
                     exclude_bodies: set[int]) -> float:
    """Highest collision-geom top (m) within ``radius`` of the segment path ``points_xy`` (P,2).

    Robot geoms and ``exclude_bodies`` (e.g. the held object) are ignored; geoms wider than
    1 m (floor, table top, walls) count only by their top surface.
    """
    lo, hi, bodies = scene_boxes(view)
    keep = scene_mask(view, bodies, exclude_bodies)
    lo, hi = lo[keep], hi[keep]
    best = -np.inf
    for p in points_xy:
        inside = np.all((p >= lo[:, :2] - radius) & (p <= hi[:, :2] + radius), axis=1)
        if inside.any():
            best = max(best, float(hi[inside, 2].max()))
    return best


def box_distance(points: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Distance (P,) from each of ``points`` (P, k) to the nearest of the boxes ``lo``..``hi`` (B, k)."""
    gap = np.maximum(np.maximum(lo[None] - points[:, None], points[:, None] - hi[None]), 0.0)
    return np.linalg.norm(gap, axis=2).min(axis=1)


def object_footprints(view: SceneView, exclude: set[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """Horizontal bounding boxes (lo (B,2), hi (B,2)) of the movable objects not in ``exclude``;
    None when there are none."""
    boxes = [view.object_box(n) for n in view.env.objects_dict if n not in exclude and n in view.env.obj_body_id]
    if not boxes:
        return None
    return np.array([b.lo[:2] for b in boxes]), np.array([b.hi[:2] for b in boxes])


def xy_clearance(view: SceneView, point_xy: np.ndarray, exclude_bodies: set[int]) -> float:
    """Horizontal distance (m) from ``point_xy`` (2,) to the nearest geom standing on the table.

    Robot geoms, ``exclude_bodies`` and table-sized geoms are ignored.
    """
    lo, hi, bodies = scene_boxes(view)
    keep = scene_mask(view, bodies, exclude_bodies)
    keep &= (hi[:, 2] > view.table_z + 0.005) & ((hi[:, 0] - lo[:, 0]) < 0.5) & ((hi[:, 1] - lo[:, 1]) < 0.5)
    if not keep.any():
        return float("inf")
    return float(box_distance(np.asarray(point_xy)[None], lo[keep, :2], hi[keep, :2])[0])


def obstacle_distance(view: SceneView, points: np.ndarray, exclude_bodies: set[int], above_z: float) -> float:
    """Smallest distance (m) from ``points`` (P,3) to a collision geom's oriented box.

    Only geoms reaching above ``above_z`` count (what a finger descending to that height could
    hit); robot geoms and ``exclude_bodies`` are ignored. Unlike world bounding boxes, oriented
    boxes stay tight around the thin walls of a yawed drawer or basket.
    """
    m, d = view.model, view.data
    lo, hi, bodies = scene_boxes(view)
    coll = _collision_geoms(m)
    keep = scene_mask(view, bodies, exclude_bodies)
    keep &= hi[:, 2] > above_z
    if not keep.any():
        return float("inf")
    g = coll[keep]
    mats = d.geom_xmat[g].reshape(-1, 3, 3)
    rel = points[None, :, :] - d.geom_xpos[g][:, None, :]  # (G,P,3)
    local = np.einsum("gji,gpj->gpi", mats, rel) - m.geom_aabb[g][:, None, :3]
    gap = np.maximum(np.abs(local) - m.geom_aabb[g][:, None, 3:], 0.0)
    return float(np.linalg.norm(gap, axis=2).min())
