"""Hand rotations other than gripper-down for the scripted demonstrator, and following them.

:func:`envs.scripted.primitives.servo` and friends drive gripper-down orientations (a yaw about
world z). Drawer handles and door panels need others -- fingers pointing horizontally into a
cabinet, closing vertically around a handle bar -- so :func:`hand_rotation` builds such a
rotation from a pointing direction and a finger axis; the same saturated proportional law
servos to it (:func:`envs.scripted.primitives.pose_servo`, ``move_pose``, ``hold_pose``,
``close_on``).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from envs.scripted.primitives import Primitive, Style, pose_servo
from envs.scripted.scene import SceneView, rotation_error


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


def follow_pose(view: SceneView, waypoint: Callable[[], np.ndarray], rot: Callable[[], np.ndarray],
                grip: float, style: Style, done: Callable[[], bool], max_steps: int = 120,
                vmax: float | None = None) -> Primitive:
    """Servo to a moving target ``waypoint()`` (3,) / ``rot()`` (3,3) until ``done()``."""
    for _ in range(max_steps):
        if done():
            return True
        yield pose_servo(view, waypoint(), rot(), grip, style, vmax)
    return done()
