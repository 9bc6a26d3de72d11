"""Motion primitives of the scripted demonstrator, as closed-loop action generators.

Every primitive is a Python generator that, at each control step, reads the
simulator through a :class:`~envs.scripted.scene.SceneView` and yields one 7-D
OSC_POSE delta action in [-1, 1] (delta position (3), delta axis-angle (3),
gripper: -1 open, +1 close). A primitive returns ``True`` when it reached its
goal and ``False`` when it timed out, so the planner can abandon the episode.

Actions are a saturated proportional law on the pose error: robosuite's
OSC_POSE maps an action of 1 to a 5 cm / 0.5 rad set-point offset, so a gain of
``g`` per metre moves the set-point ``0.05 * g`` of the remaining error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator

import numpy as np

from envs.scripted.scene import SceneView, rotation_error

OPEN, CLOSE, KEEP = -1.0, 1.0, 0.0  # KEEP: the gripper holds its current opening
FULL_OPENING = 0.08  # m, finger opening of the open Panda gripper
SERVO_PUSH = 0.15  # action units added towards the target when the error is larger than ~5 mm
GRIP_RATE = 0.25  # gripper target change per control step (0.01 per 2 ms simulation step)
CLOSE_STEP = FULL_OPENING * GRIP_RATE / 2.0  # m, how much one CLOSE step narrows the fingers' target (1 cm)
UP = np.array([0.0, 0.0, 1.0])
Primitive = Generator[np.ndarray, None, bool]


@dataclass
class Style:
    """What a human teleoperator varies between demonstrations (drawn once per episode).

    Attributes:
        gain: position gain (action units per metre of error).
        vmax: largest translation action (speed cap), in (0, 1].
        rot_gain: orientation gain (action units per radian of error).
        pause_prob: chance of a short pause (no motion) between primitives.
        jitter: standard deviation (m) of approach and placement offsets.
        travel_lift: extra height (m) above the computed safe travel height.
        detour: route modes (m, 0 = off; not drawn by :meth:`sample`): each transfer first steps
            this far sideways, left or right of its straight line (50/50), see :func:`fork`.
        yaw_modes: grasp-yaw modes (not drawn by :meth:`sample`): the hand travels turned a
            quarter turn off the grasp axis and turns back one way or the other (50/50) above
            the object, see :func:`yaw_fork`.
    """

    gain: float = 10.0
    vmax: float = 1.0
    rot_gain: float = 2.0
    pause_prob: float = 0.0
    jitter: float = 0.0
    travel_lift: float = 0.0
    detour: float = 0.0
    yaw_modes: bool = False

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "Style":
        """Draw a teleoperator style: speeds, gains, pauses and offsets."""
        return cls(
            gain=float(rng.uniform(8.0, 14.0)),
            vmax=float(rng.uniform(0.6, 1.0)),
            rot_gain=float(rng.uniform(1.5, 2.5)),
            pause_prob=float(rng.uniform(0.0, 0.4)),
            jitter=float(rng.uniform(0.0, 0.006)),
            travel_lift=float(rng.uniform(0.0, 0.05)),
        )


def pose_servo(view: SceneView, pos: np.ndarray, rot: np.ndarray, grip: float, style: Style,
               vmax: float | None = None, push: float = 0.0) -> np.ndarray:
    """One action (7,) driving the grip site towards ``pos`` (3,) and rotation ``rot`` (3,3).

    ``push`` (action units) is added towards the target and saturates beyond ~1 cm: the OSC
    controller (no integral term) otherwise stalls a centimetre or two short of small offsets.
    """
    cap = style.vmax if vmax is None else vmax
    err = pos - view.eef_pos()
    a = np.zeros(7)
    a[:3] = np.clip(err * style.gain + push * err / (np.linalg.norm(err) + 0.005), -cap, cap)
    a[3:6] = np.clip(rotation_error(rot, view.eef_mat()) * style.rot_gain, -1.0, 1.0)
    a[6] = grip
    return a


def servo(view: SceneView, pos: np.ndarray, yaw: float, grip: float, style: Style,
          vmax: float | None = None) -> np.ndarray:
    """One action (7,) driving the end effector towards ``pos`` (3,) with gripper-down ``yaw``."""
    return pose_servo(view, pos, view.down_yaw(yaw), grip, style, vmax, SERVO_PUSH)


def move_pose(view: SceneView, pos: np.ndarray, rot: np.ndarray, grip: float, style: Style,
              tol: float = 0.01, rot_tol: float = 0.08, max_steps: int = 120,
              vmax: float | None = None, push: float = 0.0) -> Primitive:
    """Servo to ``pos`` (3,) and ``rot`` (3,3) until within ``tol`` metres and ``rot_tol`` radians."""
    for _ in range(max_steps):
        err = np.linalg.norm(pos - view.eef_pos())
        rerr = np.linalg.norm(rotation_error(rot, view.eef_mat()))
        if err < tol and rerr < rot_tol:
            return True
        yield pose_servo(view, pos, rot, grip, style, vmax, push)
    return False


def move_to(view: SceneView, pos: np.ndarray, yaw: float, grip: float, style: Style,
            tol: float = 0.01, rot_tol: float = 0.08, max_steps: int = 120,
            vmax: float | None = None) -> Primitive:
    """Servo to ``pos`` (3,) and gripper-down ``yaw`` until within ``tol`` metres and ``rot_tol`` radians."""
    return (yield from move_pose(view, pos, view.down_yaw(yaw), grip, style, tol, rot_tol, max_steps, vmax, SERVO_PUSH))


def hold_pose(view: SceneView, rot: np.ndarray, grip: float, style: Style, steps: int,
              pos: np.ndarray | None = None, push: float = 0.0) -> Primitive:
    """Stay at ``pos`` (default: here) with rotation ``rot`` for ``steps`` steps, gripper ``grip``."""
    here = view.eef_pos() if pos is None else pos
    for _ in range(steps):
        yield pose_servo(view, here, rot, grip, style, push=push)
    return True


def hold(view: SceneView, yaw: float, grip: float, style: Style, steps: int,
         pos: np.ndarray | None = None) -> Primitive:
    """Stay at ``pos`` (default: where the hand is now) for ``steps`` steps with gripper ``grip``."""
    return (yield from hold_pose(view, view.down_yaw(yaw), grip, style, steps, pos, SERVO_PUSH))


def maybe_pause(view: SceneView, yaw: float, grip: float, style: Style,
                rng: np.random.Generator) -> Primitive:
    """A teleoperator's hesitation: with probability ``style.pause_prob`` hold still 2-8 steps."""
    if rng.random() < style.pause_prob:
        yield from hold(view, yaw, grip, style, int(rng.integers(2, 9)))
    return True


def close_on(view: SceneView, rot: np.ndarray, style: Style, max_steps: int = 25, push: float = 0.0) -> Primitive:
    """Close the fingers in place (rotation ``rot``) until they stop moving (on an object or fully shut)."""
    here = view.eef_pos()
    last, still = view.finger_opening(), 0
    for i in range(max_steps):
        yield pose_servo(view, here, rot, CLOSE, style, push=push)
        now = view.finger_opening()
        still = still + 1 if abs(now - last) < 5e-4 else 0
        last = now
        if i >= 4 and still >= 3:
            break
    return True


def close_gripper(view: SceneView, yaw: float, style: Style, max_steps: int = 25) -> Primitive:
    """Close the fingers in place, gripper down at ``yaw``, until they stop moving."""
    return (yield from close_on(view, view.down_yaw(yaw), style, max_steps, SERVO_PUSH))


def narrow_gripper(view: SceneView, yaw: float, style: Style, opening: float) -> Primitive:
    """From fully open, set the fingers' target to ``opening`` m apart (send ``KEEP`` afterwards).

    robosuite's Panda gripper integrates ``sign(action)`` into its target at ``GRIP_RATE`` per
    control step (closed +1, open -1) and the fingers lag behind, so the target is set by counting
    steps rather than by watching the fingers (which would overshoot).
    """
    steps = int(round((1.0 - opening / FULL_OPENING) * 2.0 / GRIP_RATE))
    here = view.eef_pos()
    for _ in range(steps):
        yield servo(view, here, yaw, CLOSE, style)
    return True


def open_gripper(view: SceneView, yaw: float, style: Style, steps: int = 8) -> Primitive:
    """Open the fingers in place for ``steps`` steps."""
    yield from hold(view, yaw, OPEN, style, steps)
    return True


def follow(view: SceneView, waypoint: Callable[[], np.ndarray], yaw: float, grip: float,
           style: Style, done: Callable[[], bool], max_steps: int = 150,
           vmax: float | None = None) -> Primitive:
    """Servo to a moving target ``waypoint()`` (3,) until ``done()``; used to pull and push."""
    for _ in range(max_steps):
        if done():
            return True
        yield servo(view, waypoint(), yaw, grip, style, vmax)
    return done()


def fork(here_xy: np.ndarray, goal_xy: np.ndarray, style: Style, rng: np.random.Generator) -> np.ndarray | None:
    """Route modes: a waypoint (2,) ``style.detour`` m to the left or right (50/50) of the
    straight line from ``here_xy`` to ``goal_xy``, or None when route modes are off.

    The sideways step is perpendicular to the line, so the two modes start with opposite
    motions and their average stands still: the discrete multimodality of human teleoperation
    (going round one side or the other) that a mean-predicting policy cannot represent.
    The side is drawn only when route modes are on, so demonstrations without them keep
    their random stream (and their actions) unchanged.
    """
    if style.detour <= 0.0:
        return None
    line = np.asarray(goal_xy, float) - np.asarray(here_xy, float)
    length = float(np.linalg.norm(line))
    if length < 1e-6:
        return None
    side = 1.0 if rng.random() < 0.5 else -1.0
    return np.asarray(here_xy, float) + side * style.detour * np.array([-line[1], line[0]]) / length


def yaw_fork(yaw: float, style: Style, rng: np.random.Generator) -> tuple[float, float]:
    """Grasp-yaw modes: (travel yaw, grasp yaw) for a grasp whose fingers close along ``yaw``.

    With ``style.yaw_modes`` the hand travels at ``yaw + pi/2`` (fingers along the object's
    wide side) and above the object turns a quarter turn to ``yaw`` or to ``yaw + pi``
    (50/50). Both close the fingers across the narrow side: a parallel gripper is the same
    gripper turned half a turn. Their average stays at ``yaw + pi/2``, across the wide side,
    which fails on objects wider than the open fingers: a choice whose mean action is not a
    way of acting. Off: ``(yaw, yaw)``, and nothing is drawn from ``rng``.
    """
    if not style.yaw_modes:
        return yaw, yaw
    return yaw + np.pi / 2, yaw + (np.pi if rng.random() < 0.5 else 0.0)
