"""Scripted demonstrations, end to end: plan without cameras, render the successes, write HDF5.

One attempt = a fresh randomised layout (``np.random.seed(seed)`` then LIBERO's own
placement samplers in ``env.reset()``; never the 50 evaluation init states), 10
settling no-ops, then the :class:`~envs.scripted.planner.ScriptedPlanner` in a camera-less
simulator (~10x faster than rendering). Successful action sequences are replayed
from the same first state in the rendered environment of :func:`envs.libero.env.make_env`,
recording observations through :func:`envs.libero.observation.hdf5_obs_fields`; a replay that does
not end in success is dropped. Work is resumable per demonstration: each one is an
atomically written shard under ``<out>/.partial/<task name>/`` until the task file is
assembled.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

from envs.libero.hdf5_writer import (Demo, file_attrs, robot_state_vector, scripted_modes, task_file_name, write_demo_shard,
                              write_task_file)
from envs.libero.suites import MAX_STEPS, TaskInfo
from envs.libero.observation import hdf5_obs_fields
from envs.libero.env import make_env
from envs.scripted.planner import ScriptedPlanner, run_episode
from envs.libero.bddl import parse_goal
from envs.scripted.fresh_states import SEED_STRIDE, layout_state, make_planning_env  # noqa: F401 (re-exported)

DEMO_STEP_FACTOR = 1.5
"""A demonstration may take up to this many times the suite's evaluation cap (``MAX_STEPS``;
LIBERO's own collection allowed 600 steps): a slow but successful demonstration is still
a demonstration, and the kept ones are far shorter on average (``mean_steps`` in the bench)."""


REPLAY_GRACE = 10  # extra steps a rendered replay may take to reach the goal (see render_attempt)


def demo_step_budget(suite: str) -> int:
    """Step budget of one scripted attempt in ``suite``."""
    return int(DEMO_STEP_FACTOR * MAX_STEPS[suite])


@dataclass
class Attempt:
    """A planned episode: the layout seed, its first state (S,), actions (T, 7), outcome."""

    seed: int
    success: bool
    steps: int
    init_state: np.ndarray
    actions: np.ndarray
    failure: str | None
    seconds: float


def plan_attempt(env: Any, task: TaskInfo, seed: int, max_steps: int | None = None, detour: float = 0.0,
                 yaw_modes: bool = False) -> Attempt:
    """Reset ``env`` (a planning env) to the layout of ``seed`` and run the scripted planner once
    (``detour`` > 0: with route modes, ``yaw_modes``: with grasp-yaw modes, see
    :class:`envs.scripted.planner.ScriptedPlanner`)."""
    t0 = time.time()
    state0 = layout_state(env, seed)
    env.set_init_state(state0)  # the exact path a replay takes
    planner = ScriptedPlanner(env.env, parse_goal(task.bddl_file), np.random.default_rng(seed), detour, yaw_modes)
    actions: list[np.ndarray] = []
    ok, steps = run_episode(env, planner, demo_step_budget(task.suite) if max_steps is None else max_steps,
                            on_step=lambda a, r: actions.append(a))
    return Attempt(seed, ok, steps, state0, np.asarray(actions, np.float64).reshape(-1, 7),
                   None if ok else (planner.failure or "step budget exhausted"), time.time() - t0)


def render_attempt(env: Any, attempt: Attempt) -> Demo | None:
    """Replay ``attempt``'s actions from its first state in a rendered :class:`envs.libero.env.LiberoEnv`.

    Planning stops at the first step where the goal holds, so a contact-rich last motion (a door
    pushed shut) can end the replay a hair short of it; the replay then repeats the last action
    for up to ``REPLAY_GRACE`` more steps, which are recorded like the others.
    Returns the :class:`Demo` (T steps) if the replay ends in success on its last action, else None.
    """
    env.set_init_state(attempt.init_state)
    states, robot, obs = [], [], {}
    actions = list(attempt.actions)
    t = 0
    while t < len(actions):
        states.append(env.get_sim_state().copy())
        robot.append(robot_state_vector(env.raw_obs))
        for k, v in hdf5_obs_fields(env.raw_obs).items():
            obs.setdefault(k, []).append(v)
        _, _, success, _, _ = env.step(actions[t])
        if success:
            del actions[t + 1:]  # the replay may succeed earlier than planning did
            break
        if t == len(actions) - 1 and len(actions) < len(attempt.actions) + REPLAY_GRACE:
            actions.append(actions[-1])
        t += 1
    attempt.actions = np.asarray(actions, np.float64).reshape(-1, 7)
    if not env.check_success():
        return None
    model_xml = env.sim.model.get_xml() if hasattr(env.sim.model, "get_xml") else ""
    return Demo(actions=attempt.actions, states=np.asarray(states), robot_states=np.asarray(robot),
                obs={k: np.asarray(v) for k, v in obs.items()}, seed=attempt.seed, model_file=model_xml)


# ------------------------------------------------------------------ resumable files
def partial_dir(out: Path, task: TaskInfo) -> Path:
    """Folder of ``task``'s finished-but-unassembled demonstration shards."""
    return Path(out) / ".partial" / task.name


def tried_seeds(out: Path, task: TaskInfo) -> tuple[list[int], int]:
    """(seeds of demos already kept, in file + shards order; next attempt number to try)."""
    kept: list[int] = []
    final = Path(out) / task_file_name(task.name)
    if final.exists():
        with h5py.File(final, "r") as f:
            data = f["data"]
            for i in range(len([k for k in data if k.startswith("demo_")])):
                kept.append(int(data[f"demo_{i}"].attrs.get("seed", -1)))
    part = partial_dir(out, task)
    shard_seeds = sorted(int(p.stem.split("seed")[1]) for p in part.glob("demo_seed*.hdf5")) if part.exists() else []
    failed = [int(p.name.split("seed")[1]) for p in part.glob("fail_seed*")] if part.exists() else []
    kept += shard_seeds
    base = task.index * SEED_STRIDE
    nxt = max([s - base + 1 for s in kept + failed if s >= base] + [0])
    return kept, nxt


def _modes_text(detour: float, yaw_modes: bool) -> str:
    return f"--detour {detour:g}" + (" --yaw-modes" if yaw_modes else "")


def check_detour(out: Path, task: TaskInfo, detour: float, yaw_modes: bool = False) -> None:
    """Refuse to add demonstrations with route modes ``detour`` (and grasp-yaw modes
    ``yaw_modes``) to a task whose file or shards in ``out`` were made with other modes (one
    line naming the fix)."""
    final = Path(out) / task_file_name(task.name)
    seen: list[tuple[float, bool]] = []
    if final.exists():
        with h5py.File(final, "r") as f:
            seen.append(scripted_modes(f["data"].attrs))
    part = partial_dir(out, task)
    if (part / "modes.json").exists():
        m = json.loads((part / "modes.json").read_text())
        seen.append((float(m["detour"]), bool(m["yaw_modes"])))
    elif (part / "detour.txt").exists():  # shards of an older version: route modes only
        seen.append((float((part / "detour.txt").read_text()), False))
    other = [(d, y) for d, y in seen if abs(d - detour) > 1e-9 or y != bool(yaw_modes)]
    if other:
        raise ValueError(f"{final.parent} holds demos of {task.name!r} made with {_modes_text(*other[0])}, not "
                         f"{_modes_text(detour, yaw_modes)}; use another --out folder for demonstrations with "
                         "other modes")


def generate_task_demos(task: TaskInfo, out: Path, needed: int, resolution: int = 128,
                        fast_render: bool = False, max_attempts: int | None = None,
                        progress: Callable[[str, bool], None] | None = None, detour: float = 0.0,
                        yaw_modes: bool = False) -> tuple[int, int]:
    """Plan and render until ``needed`` new shards exist for ``task``; returns (kept, attempts)."""
    out = Path(out)
    part = partial_dir(out, task)
    check_detour(out, task, detour, yaw_modes)
    part.mkdir(parents=True, exist_ok=True)
    (part / "detour.txt").unlink(missing_ok=True)
    # the shards' modes, checked on a rerun
    (part / "modes.json").write_text(json.dumps({"detour": float(detour), "yaw_modes": bool(yaw_modes)}))
    _, attempt_no = tried_seeds(out, task)
    max_attempts = 3 * needed + 5 if max_attempts is None else max_attempts
    penv = make_planning_env(task)
    renv = None
    kept = tries = 0
    try:
        while kept < needed and tries < max_attempts:
            seed = task.index * SEED_STRIDE + attempt_no
            attempt_no += 1
            tries += 1
            attempt = plan_attempt(penv, task, seed, detour=detour, yaw_modes=yaw_modes)
            demo = None
            if attempt.success:
                if renv is None:
                    renv = make_env(task.suite, task.index, resolution=resolution, fast_render=fast_render)
                    renv.reset(seed=0)
                demo = render_attempt(renv, attempt)
            if demo is None:
                (part / f"fail_seed{seed}").touch()
            else:
                write_demo_shard(part / f"demo_seed{seed}.hdf5", demo)
                kept += 1
            if progress is not None:
                progress(task.name, demo is not None)
    finally:
        penv.close()
        if renv is not None:
            renv.close()
    return kept, tries


def assemble_task_file(task: TaskInfo, out: Path, limit: int, resolution: int, fast_render: bool,
                       detour: float = 0.0, yaw_modes: bool = False) -> int:
    """Merge the task file's existing demos and the shards (up to ``limit``) into the task file.

    Written atomically; used shards are deleted afterwards. Returns the number of demos.
    """
    out = Path(out)
    final = out / task_file_name(task.name)
    part = partial_dir(out, task)
    shards = sorted(part.glob("demo_seed*.hdf5"), key=lambda p: int(p.stem.split("seed")[1])) if part.exists() else []
    handles = [h5py.File(p, "r") for p in shards]
    old = h5py.File(final, "r") if final.exists() else None
    try:
        groups = []
        if old is not None:
            groups += [old["data"][f"demo_{i}"] for i in range(len([k for k in old["data"] if k.startswith("demo_")]))]
        groups += [h["data"]["demo_0"] for h in handles]
        groups = groups[:limit]
        if not groups or (old is not None and not handles):
            return len(groups)  # nothing new to write
        tmp_target = final.with_name(final.name + ".new")
        n = write_task_file(tmp_target, file_attrs(task, resolution, fast_render, detour, yaw_modes), groups)
    finally:
        for h in handles:
            h.close()
        if old is not None:
            old.close()
    tmp_target.replace(final)
    for p in list(part.glob("demo_seed*.hdf5")):
        p.unlink()  # fail markers stay, so a rerun does not retry known failures
    if not any(part.glob("fail_seed*")):
        (part / "modes.json").unlink(missing_ok=True)  # the task file records them from now on
        (part / "detour.txt").unlink(missing_ok=True)
    if not any(part.iterdir()):
        part.rmdir()
    if part.parent.exists() and not any(part.parent.iterdir()):
        part.parent.rmdir()
    return n
