"""Full-orientation motion for the scripted demonstrator: servo the hand to any rotation.

:mod:`envs.scripted_primitives` drives gripper-down orientations only (a yaw about world z).
Drawer handles and door panels need other orientations -- fingers pointing horizontally
into a cabinet, closing vertically around a handle bar -- so this module builds such
rotations from a pointing direction and a finger axis and servos to them with the same
saturated proportional law (:func:`envs.scripted_scene.rotation_error` works for any
target rotation).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from envs.scripted_primitives import Primitive, Style
from envs.scripted_scene import SceneView, rotation_error


def hand_rotation(view: SceneView, pointing: np.ndarray, finger_axis: np.ndarray) -> np.ndarray:
    """Grip-site rotation (3,3) whose approach axis (site z) is ``pointing`` (3,) and whose
    finger closing axis (site x) is ``finger_axis`` (3,), made orthogonal to ``pointing``.

    The fingers are symmetric, so the sign of the finger axis that needs the smaller
    rotation from the current hand orientation is chosen.
    """
    z = np.asarray(pointing, float) / np.linalg.norm(pointing)
    x = np.asarray(finger_axis, float) - np.dot(finger_axis, z) * z
    x /= np.linalg.norm(x)
    current = view.eef_mat()
    best, best_angle = None, np.inf
    for sx in (1.0, -1.0):
        rot = np.stack([sx * x, np.cross(z, sx * x), z], axis=1)
        angle = float(np.linalg.norm(rotation_error(rot, current)))
        if angle < best_angle:
            best, best_angle = rot, angle
    return best


def pose_servo(view: SceneView, pos: np.ndarray, rot: np.ndarray, grip: float, style: Style,
               vmax: float | None = None) -> np.ndarray:
    """One action (7,) driving the grip site towards ``pos`` (3,) and rotation ``rot`` (3,3)."""
    cap = style.vmax if vmax is None else vmax
    a = np.zeros(7)
    a[:3] = np.clip((pos - view.eef_pos()) * style.gain, -cap, cap)
    a[3:6] = np.clip(rotation_error(rot, view.eef_mat()) * style.rot_gain, -1.0, 1.0)
    a[6] = grip
    return a


def move_pose(view: SceneView, pos: np.ndarray, rot: np.ndarray, grip: float, style: Style,
              tol: float = 0.01, rot_tol: float = 0.08, max_steps: int = 120,
              vmax: float | None = None) -> Primitive:
    """Servo to ``pos`` (3,) and ``rot`` (3,3) until within ``tol`` metres and ``rot_tol`` radians."""
    for _ in range(max_steps):
        err = np.linalg.norm(pos - view.eef_pos())
        rerr = np.linalg.norm(rotation_error(rot, view.eef_mat()))
        if err < tol and rerr < rot_tol:
            return True
        yield pose_servo(view, pos, rot, grip, style, vmax)
    return False


def hold_pose(view: SceneView, rot: np.ndarray, grip: float, style: Style, steps: int,
              pos: np.ndarray | None = None) -> Primitive:
    """Stay at ``pos`` (default: here) with rotation ``rot`` for ``steps`` steps, gripper ``grip``."""
    here = view.eef_pos() if pos is None else pos
    for _ in range(steps):
        yield pose_servo(view, here, rot, grip, style)
    return True


def close_on(view: SceneView, rot: np.ndarray, style: Style, max_steps: int = 25) -> Primitive:
    """Close the fingers in place (rotation ``rot``) until they stop moving."""
    here = view.eef_pos()
    last, still = view.finger_opening(), 0
    for i in range(max_steps):
        yield pose_servo(view, here, rot, 1.0, style)
        now = view.finger_opening()
        still = still + 1 if abs(now - last) < 5e-4 else 0
        last = now
        if i >= 4 and still >= 3:
            break
    return True


def follow_pose(view: SceneView, waypoint: Callable[[], np.ndarray], rot: Callable[[], np.ndarray],
                grip: float, style: Style, done: Callable[[], bool], max_steps: int = 120,
                vmax: float | None = None) -> Primitive:
    """Servo to a moving target ``waypoint()`` (3,) / ``rot()`` (3,3) until ``done()``."""
    for _ in range(max_steps):
        if done():
            return True
        yield pose_servo(view, waypoint(), rot(), grip, style, vmax)
    return done()
