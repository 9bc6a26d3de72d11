"""Why did an episode fail? A per-episode outcome label from the simulator's state.

The evaluation worker feeds every executed action to an :class:`OutcomeTracker`, which
watches the objects the task's BDDL goal asks to move (the first argument of every
``On`` / ``In`` atom) and the gripper commands. At the end of the episode
:meth:`OutcomeTracker.summary` gives ``episodes.jsonl`` three fields:

- ``grasps``: how many times the policy commanded the gripper to close (open -> close);
- ``lift_m``: the highest rise of a goal object above where it stood after the wait steps;
- ``outcome``: one of :data:`OUTCOMES`, decided by :func:`classify`.

Read only: the tracker never touches the simulator, so an episode runs the same with it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# success; the gripper never closed; it closed but no goal object rose LIFT_M; a goal object
# rose and was let go outside the goal; a goal object was still in the hand at the step cap;
# a goal with no pick-and-place atom (drawer, knob) that did not hold; the episode errored.
OUTCOMES = ("success", "no_grasp", "missed_grasp", "dropped", "held_at_cap", "failed", "error")
LIFT_M = 0.03  # a goal object counts as lifted once it rose this far (m)
HELD_M = 0.10  # ... and as still held when it is this close to the grip site at the end (m)


def classify(success: bool, error: str | None, grasps: int, lift_m: float | None, held: bool) -> str:
    """The outcome label of one episode (see :data:`OUTCOMES`).

    ``lift_m`` is None when the goal moves no object (then a failure is ``failed`` unless
    the gripper never closed); ``held``: a lifted goal object is in the hand at the end.
    """
    if error is not None:
        return "error"
    if success:
        return "success"
    if grasps == 0:
        return "no_grasp"
    if lift_m is None:
        return "failed"
    if lift_m < LIFT_M:
        return "missed_grasp"
    return "held_at_cap" if held else "dropped"


def goal_objects(bddl_file: str, body_ids: dict[str, int]) -> list[str]:
    """Objects the goal of ``bddl_file`` moves (``On``/``In`` first arguments) that have a body."""
    from envs.libero.bddl import parse_goal

    names = [a.args[0] for a in parse_goal(bddl_file) if a.predicate in ("on", "in")]
    return [n for n in dict.fromkeys(names) if n in body_ids]


class OutcomeTracker:
    """Watches one episode of a LIBERO robosuite environment (``LiberoEnv.robosuite_env``).

    Build it after the wait steps (the objects have settled); call :meth:`step` with every
    executed action (7,), then :meth:`summary`.
    """

    def __init__(self, env: Any, bddl_file: str) -> None:
        self._data = env.sim.data
        self._ids = [int(env.obj_body_id[n]) for n in goal_objects(bddl_file, env.obj_body_id)]
        self._eef_site = int(env.robots[0].eef_site_id)
        self._z0 = np.array([self._data.body_xpos[i][2] for i in self._ids])
        self._lift = 0.0
        self._closed = False
        self.grasps = 0

    def step(self, action: np.ndarray) -> None:
        """Record an executed action (7,): gripper > 0 is a close command."""
        closed = float(action[-1]) > 0.0
        if closed and not self._closed:
            self.grasps += 1
        self._closed = closed
        if self._ids:
            z = np.array([self._data.body_xpos[i][2] for i in self._ids])
            self._lift = max(self._lift, float((z - self._z0).max()))

    def held(self) -> bool:
        """Whether a lifted goal object is now within HELD_M of the grip site."""
        eef = np.asarray(self._data.site_xpos[self._eef_site])
        return any(float(np.linalg.norm(self._data.body_xpos[i] - eef)) < HELD_M
                   and self._data.body_xpos[i][2] - z0 >= LIFT_M for i, z0 in zip(self._ids, self._z0))

    def summary(self, success: bool, error: str | None) -> dict[str, Any]:
        """``grasps``, ``lift_m`` (None when the goal moves no object) and ``outcome``."""
        lift = round(self._lift, 4) if self._ids else None
        return {"grasps": self.grasps, "lift_m": lift,
                "outcome": classify(success, error, self.grasps, lift, bool(self._ids) and self.held())}
