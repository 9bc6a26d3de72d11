"""Replay of written demonstrations: re-render a file from its stored states (another
resolution, fast rendering) and check that a demo's actions reproduce it.

Both work on any file in the official layout (ours or LIBERO's); the task is found from
the file's ``bddl_file_name`` attribute, so only tasks of the registered suites are supported.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

from envs.libero.hdf5_writer import Demo, write_task_file
from envs.libero.suites import SUITES, TaskInfo, list_tasks
from envs.libero.observation import hdf5_obs_fields
from envs.libero.env import LiberoEnv, clear_gripper_commands


def task_of_file(path: str | Path) -> TaskInfo:
    """The :class:`TaskInfo` whose BDDL file a demo file was recorded with."""
    with h5py.File(path, "r") as f:
        if "data" not in f or "bddl_file_name" not in f["data"].attrs:
            raise ValueError(f"{path} is not a LIBERO demo file (no data.attrs['bddl_file_name'])")
        bddl = str(f["data"].attrs["bddl_file_name"])
    stem = Path(bddl).name
    folder = Path(bddl).parent.name
    for suite in SUITES:
        for t in list_tasks(suite):
            if Path(t.bddl_file).name == stem and t.problem_folder == folder:
                return t
    raise ValueError(f"{path}: BDDL file {bddl} belongs to no registered LIBERO suite")


def render_states(env: LiberoEnv, states: np.ndarray) -> dict[str, np.ndarray]:
    """Observation fields (T, ...) rendered from flattened MuJoCo states (T, S)."""
    out: dict[str, list[np.ndarray]] = {}
    for s in states:
        env.set_init_state(s)
        for k, v in hdf5_obs_fields(env.raw_obs).items():
            out.setdefault(k, []).append(v)
    return {k: np.asarray(v) for k, v in out.items()}


def rerender_file(src: str | Path, dst: str | Path, resolution: int, fast_render: bool = False,
                  progress: Callable[[int], None] | None = None) -> int:
    """Write ``dst``: ``src`` with every ``obs/`` field re-rendered from ``states``, the scripted
    demonstrator's modes (route detour, grasp-yaw modes) kept. Returns demo count."""
    from envs.libero.hdf5_writer import file_attrs, scripted_modes
    from envs.libero.env import make_env

    task = task_of_file(src)
    env = make_env(task.suite, task.index, resolution=resolution, fast_render=fast_render)
    env.reset(seed=0)
    demos: list[Demo] = []
    try:
        with h5py.File(src, "r") as f:
            data = f["data"]
            detour, yaw_modes = scripted_modes(data.attrs)
            names = sorted((k for k in data if k.startswith("demo_")), key=lambda k: int(k.split("_")[1]))
            for name in names:
                g = data[name]
                states = np.asarray(g["states"])
                demos.append(Demo(actions=np.asarray(g["actions"]), states=states,
                                  robot_states=np.asarray(g["robot_states"]), obs=render_states(env, states),
                                  seed=int(g.attrs.get("seed", -1)), model_file=str(g.attrs.get("model_file", ""))))
                if progress is not None:
                    progress(len(states))
    finally:
        env.close()
    return write_task_file(dst, file_attrs(task, resolution, fast_render, detour, yaw_modes), demos)


def replay_actions(env: Any, group: h5py.Group, on_state: Callable[[int, Any], None] | None = None) -> tuple[bool, float]:
    """Replay a demo's actions from its first state in ``env`` (LiberoEnv or planning ControlEnv).

    Returns (success after the last action, largest |replayed state - stored state| on the way).
    ``on_state(t, env)`` is called before action t.
    """
    states = np.asarray(group["states"])
    actions = np.asarray(group["actions"])
    if not isinstance(env, LiberoEnv):  # a raw LIBERO env keeps controller state across loads: reset first
        env.seed(0)
        env.reset()
        clear_gripper_commands(env.env)
    env.set_init_state(states[0])  # a LiberoEnv resets by itself when it stepped since its last reset
    worst = 0.0
    for t, a in enumerate(actions):
        cur = np.asarray(env.get_sim_state())
        worst = max(worst, float(np.abs(cur[1:] - states[t][1:]).max()))
        if on_state is not None:
            on_state(t, env)
        env.step(a)
    return bool(env.check_success()), worst
