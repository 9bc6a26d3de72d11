"""Scripted demonstrator for LIBERO tasks: BDDL goal -> motion primitives -> OSC_POSE actions.

The planner reads the task's BDDL goal (:mod:`envs.libero.bddl`), looks at the
simulator's privileged state (:mod:`envs.scripted.scene`) and composes closed-loop
primitives (:mod:`envs.scripted.pick`, :mod:`envs.scripted.articulated`) into one
generator of 7-D OSC_POSE delta actions in [-1, 1] at 20 Hz (gripper -1 open,
+1 close). Each episode draws a teleoperator :class:`~envs.scripted.primitives.Style`
(speeds, gains, pauses, approach offsets, grasp yaw) so demonstrations differ.

Usage::

    planner = ScriptedPlanner(robosuite_env, parse_goal(bddl_path), rng)
    for action in planner.actions():
        obs, reward, done, info = env.step(action)
        if done: break
"""
from __future__ import annotations

from typing import Any, Callable, Generator

import numpy as np

from envs.libero.bddl import Atom, order_subgoals, parse_goal
from envs.scripted import articulated as art  # drawers, doors, knobs
from envs.scripted.door import drawer_place_xy
from envs.scripted.insert import enclosing_container, put_inside  # a roofed region (microwave)
from envs.scripted.pick import Grasp, pick, place, still_held, support_z
from envs.scripted.push import is_flat_and_wide, push
from envs.scripted.primitives import OPEN, Style, hold
from envs.scripted.scene import SceneView, box_distance, object_footprints

__all__ = ["ScriptedPlanner", "parse_goal", "run_episode", "NOOP"]

NOOP = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])


class ScriptedPlanner:
    """Turns a task's goal atoms into one stream of actions for the current scene.

    Args:
        env: the inner robosuite environment (``BDDLBaseDomain``) whose ``sim`` is stepped.
        atoms: goal atoms from :func:`envs.libero.bddl.parse_goal`.
        rng: random generator for the episode's style, offsets and yaws.
        detour: route modes (m, 0 = off): every pick and every transfer first steps this far
            left or right of its straight line (:func:`envs.scripted.primitives.fork`).
        yaw_modes: grasp-yaw modes: every grasp of a narrow object is approached turned a quarter
            turn off its axis and turns back one way or the other (:func:`envs.scripted.primitives.yaw_fork`).
    """

    def __init__(self, env: Any, atoms: list[Atom], rng: np.random.Generator, detour: float = 0.0,
                 yaw_modes: bool = False) -> None:
        self.env = env
        self.view = SceneView(env)
        self.atoms = order_subgoals(atoms)
        self.rng = rng
        self.style = Style.sample(rng)
        self.style.detour = float(detour)
        self.style.yaw_modes = bool(yaw_modes)
        self.failure: str | None = None

    # ------------------------------------------------------------- predicates
    def holds(self, atom: Atom) -> bool:
        """Whether ``atom`` is already true in the simulator (LIBERO's own predicate check)."""
        if atom.predicate == "open" and not self.is_articulated(atom.args[0]):
            return True
        return bool(self.env._eval_predicate([atom.predicate, *atom.args]))

    def is_articulated(self, name: str) -> bool:
        """True for a region or object that has a drawer, door or knob joint."""
        site = self.env.object_sites_dict.get(name)
        if site is not None:
            return bool(getattr(site, "joints", None))
        obj = self.env.get_object(name) if name in self.env.objects_dict or name in self.env.fixtures_dict else None
        return obj is not None and bool(obj.object_properties.get("articulation", {}).get("default_open_ranges"))

    # ---------------------------------------------------------------- actions
    def actions(self) -> Generator[np.ndarray, None, bool]:
        """Yield actions (7,) until every sub-goal holds; returns False (and sets ``failure``) on failure."""
        for atom in self.atoms:
            if self.holds(atom):
                continue
            ok = yield from self.achieve(atom)
            if not ok:
                self.failure = self.failure or f"could not achieve {atom}"
                return False
        return True

    def achieve(self, atom: Atom) -> Generator[np.ndarray, None, bool]:
        """Actions for one sub-goal; dispatches on the predicate."""
        if atom.predicate in ("on", "in"):
            return (yield from self.pick_and_place(atom.args[0], atom.args[1]))
        handlers: dict[str, Callable] = {
            "open": art.open_articulated, "close": art.close_articulated,
            "turnon": art.turn_knob, "turnoff": art.turn_knob,
        }
        ok = yield from handlers[atom.predicate](self, atom)
        return ok

    def target_xy(self, target: str) -> np.ndarray:
        """Where to put something: an object's body centre or a region site's centre, shape (2,)."""
        if target in self.env.object_sites_dict:
            return self.view.site_pos(target)[:2]
        return self.view.body_pos(target)[:2]

    def free_spot(self, region: str, obj: str) -> np.ndarray:
        """Where in ``region`` to put ``obj`` (2,): the point nearest the region's centre that keeps
        ``obj``'s footprint clear of the objects already there; the point farthest from any other
        object when several objects go to this region (both moka pots on one burner)."""
        inside = drawer_place_xy(self, obj, region)  # an open drawer: clear of the drawer above
        if inside is not None:
            return inside
        centre = self.view.site_pos(region)[:2]
        shared = sum(a.predicate in ("on", "in") and a.args[1] == region for a in self.atoms) > 1
        half = (0.45 if shared else 0.7) * self.view.region_half_size(region)[:2]
        grid = np.linspace(-1.0, 1.0, 7)
        points = centre + np.stack(np.meshgrid(grid, grid), axis=-1).reshape(-1, 2) * half
        owner = self.env.parsed_problem["regions"].get(region, {}).get("target")
        others = object_footprints(self.view, {obj, owner})
        if others is None:
            return centre
        room = box_distance(points, *others)  # (P,) distance to the nearest other object
        need = 0.5 * float(min(self.view.object_box(obj).size[:2])) + 0.01
        free = np.nonzero(room >= need)[0]
        if shared or not len(free):  # leave room for the next object, or find the least crowded spot
            return points[int(np.argmax(room))]
        return points[free[int(np.argmin(np.linalg.norm(points[free] - centre, axis=1)))]]

    def pick_and_place(self, obj: str, target: str, attempts: int = 2) -> Generator[np.ndarray, None, bool]:
        """Grasp ``obj`` and put it on / in ``target``; re-grasps once if the object slips, and
        starts over once if it is dropped on the way."""
        if is_flat_and_wide(self.view, obj) and target in self.env.object_sites_dict:
            atom = Atom("on", (obj, target))
            ok = yield from push(self.view, obj, self.free_spot(target, obj), self.style, self.rng,
                                 done=lambda: self.holds(atom))
            if not ok:
                self.failure = f"push of {obj} to {target} failed"
            return ok
        container = enclosing_container(self, obj, target)
        if container is not None:
            return (yield from put_inside(self, obj, target, container))
        ok = False
        for _ in range(2):  # pick again if the object was dropped on the way
            grasp: Grasp | None = None
            for _ in range(attempts):
                grasp = yield from pick(self.view, obj, self.style, self.rng)
                if grasp is not None:
                    break
                yield from hold(self.view, 0.0, OPEN, self.style, 3,
                                pos=self.view.eef_pos() + np.array([0.0, 0.0, 0.05]))
            if grasp is None:
                self.failure = f"grasp of {obj} failed"
                return False
            xy = self.free_spot(target, obj) if target in self.env.object_sites_dict else self.target_xy(target)
            surface = support_z(self.view, xy, {self.view.body_id(obj)})
            ok = yield from place(self.view, grasp, xy, self.style, self.rng, surface=surface)
            if ok or still_held(self.view, grasp):
                break
        if ok:
            return True
        self.failure = f"transport of {obj} to {target} failed"
        return False


def run_episode(env: Any, planner: ScriptedPlanner, max_steps: int,
                on_step: Callable[[np.ndarray, Any], None] | None = None,
                step_fn: Callable[[np.ndarray], tuple] | None = None) -> tuple[bool, int]:
    """Execute ``planner`` in ``env`` until success, the planner ends, or ``max_steps``.

    Args:
        env: the environment whose ``step(action)`` returns (obs, reward, done, info); ``done``
            is LIBERO's BDDL success check.
        planner: a :class:`ScriptedPlanner` built on ``env``'s simulator.
        max_steps: step budget.
        on_step: called as ``on_step(action (7,), step_result)`` after every step.
        step_fn: override for ``env.step``.
    Returns:
        (success, steps taken).
    """
    step = env.step if step_fn is None else step_fn
    gen = planner.actions()
    steps, extra = 0, None
    while steps < max_steps:
        if extra is None:
            try:
                action = next(gen)
            except StopIteration:
                action = NOOP  # planner finished: let the scene settle a few steps
                extra = 0
        else:
            action, extra = NOOP, extra + 1
            if extra > 15:
                break
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        result = step(action)
        steps += 1
        if on_step is not None:
            on_step(action, result)
        if bool(result[2]):
            return True, steps
    return False, steps
