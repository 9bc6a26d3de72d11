"""Write demonstrations in the official LIBERO HDF5 layout, atomically.

Layout (as LIBERO's ``create_dataset.py`` writes it)::

    data                      attrs: problem_info (JSON with language_instruction),
                                     env_args (JSON), bddl_file_name, total,
                                     env_name, macros_image_convention, num_demos
    data/demo_N               attrs: num_samples, init_state (first state),
                                     model_file (MJCF xml), seed (ours)
    data/demo_N/actions       (T, 7) float64, in [-1, 1]
    data/demo_N/states        (T, S) float64 flattened MuJoCo states *before* each action
    data/demo_N/robot_states  (T, 9) float64 = [gripper qpos (2), eef pos (3), eef quat (4)]
    data/demo_N/rewards       (T,) uint8, 1 on the last step
    data/demo_N/dones         (T,) uint8, 1 on the last step
    data/demo_N/obs/{agentview_rgb, eye_in_hand_rgb} (T, H, W, 3) uint8, as rendered
    data/demo_N/obs/{joint_states (T,7), gripper_states (T,2), ee_pos (T,3), ee_ori (T,3),
                     ee_states (T,6)} float64
    data/demo_N/obs/{<object>_pos (T,3), <object>_quat (T,4) x y z w,
                     <object>_to_robot0_eef_pos (T,3)} float64, per movable object (ours,
                     optional: official files and ours written before lack them;
                     ``envs.libero.object_poses`` recovers them from ``states``)

Every file is written to a temp file in the same folder and renamed into place
(``policy.utils.atomic_write``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import h5py
import numpy as np

from policy.features import OBJECT_KEY_SUFFIX, OBJECT_POSE_FIELDS
from policy.utils import atomic_write

OBS_KEYS = ("agentview_rgb", "eye_in_hand_rgb", "joint_states", "gripper_states", "ee_pos", "ee_ori", "ee_states")
DEMO_KEYS = ("actions", "states", "robot_states", "rewards", "dones")
DATA_ATTRS = ("problem_info", "env_args", "bddl_file_name", "total")
IMAGE_KEYS = ("agentview_rgb", "eye_in_hand_rgb")


def object_obs_keys(keys: Iterable[str]) -> list[str]:
    """The per-object observation keys among ``keys`` (a demo's ``obs`` keys or an ``obs/`` group):
    ``<object>_pos``, ``<object>_quat``, ``<object>_to_robot0_eef_pos`` of every object that has
    an ``<object>_to_robot0_eef_pos`` key, in sorted object order."""
    keys = set(keys)
    names = sorted(k[: -len(OBJECT_KEY_SUFFIX)] for k in keys if k.endswith(OBJECT_KEY_SUFFIX))
    return [f"{n}_{s}" for n in names for s, _ in OBJECT_POSE_FIELDS if f"{n}_{s}" in keys]


@dataclass
class Demo:
    """One demonstration of T steps (observation t is taken before action t).

    Attributes:
        actions: (T, 7) float64.
        states: (T, S) float64 flattened MuJoCo states.
        robot_states: (T, 9) float64.
        obs: field name -> (T, ...) arrays, the keys of :data:`OBS_KEYS` (required) and the
            per-object ``<object>_pos`` / ``_quat`` / ``_to_robot0_eef_pos`` keys (optional).
        seed: the layout seed the episode started from.
        model_file: the MJCF xml of the scene (lets a replay rebuild the exact model).
    """

    actions: np.ndarray
    states: np.ndarray
    robot_states: np.ndarray
    obs: dict[str, np.ndarray]
    seed: int = -1
    model_file: str = ""
    extra_attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        t = len(self.actions)
        if t == 0:
            raise ValueError("a demonstration needs at least one step")
        for name, arr in [("states", self.states), ("robot_states", self.robot_states), *self.obs.items()]:
            if len(arr) != t:
                raise ValueError(f"demo field {name!r} has {len(arr)} steps, actions have {t}")
        missing = [k for k in OBS_KEYS if k not in self.obs]
        if missing:
            raise ValueError(f"demo obs is missing {missing}; produce them with envs.libero.observation.hdf5_obs_fields")

    def __len__(self) -> int:
        return len(self.actions)


def robot_state_vector(raw_obs: Mapping[str, Any]) -> np.ndarray:
    """robosuite raw obs -> LIBERO's ``robot_states`` row (9,): gripper qpos, eef pos, eef quat."""
    return np.concatenate([np.asarray(raw_obs["robot0_gripper_qpos"], np.float64),
                           np.asarray(raw_obs["robot0_eef_pos"], np.float64),
                           np.asarray(raw_obs["robot0_eef_quat"], np.float64)])


def file_attrs(task: Any, resolution: int, fast_render: bool, detour: float = 0.0,
               yaw_modes: bool = False) -> dict[str, Any]:
    """The ``data`` attributes of a task file: problem_info, env_args, bddl_file_name (JSON strings),
    ``scripted_detour``, the scripted demonstrator's route-mode step in m (0 = no route modes),
    and ``scripted_yaw_modes`` (grasp-yaw modes on or off)."""
    problem_info = {"problem_name": _problem_name(task.bddl_file), "domain_name": "robosuite",
                    "language_instruction": task.language}
    env_kwargs = {"bddl_file_name": task.bddl_file, "camera_heights": resolution, "camera_widths": resolution,
                  "camera_names": ["agentview", "robot0_eye_in_hand"], "controller": "OSC_POSE",
                  "control_freq": 20, "robots": ["Panda"], "fast_render": bool(fast_render)}
    env_args = {"type": 1, "env_name": problem_info["problem_name"], "problem_name": problem_info["problem_name"],
                "bddl_file": task.bddl_file, "env_kwargs": env_kwargs}
    return {"problem_info": json.dumps(problem_info), "env_args": json.dumps(env_args),
            "bddl_file_name": task.bddl_file, "env_name": problem_info["problem_name"],
            "macros_image_convention": "opengl", "suite": task.suite, "task_name": task.name,
            "scripted_detour": float(detour), "scripted_yaw_modes": bool(yaw_modes)}


def scripted_modes(attrs: Mapping[str, Any]) -> tuple[float, bool]:
    """(detour, yaw_modes) of the scripted demonstrator recorded by :func:`file_attrs` in a task
    file's ``data`` attributes; absent (files of older versions, or not scripted) = off."""
    return float(attrs.get("scripted_detour", 0.0)), bool(attrs.get("scripted_yaw_modes", False))


def _problem_name(bddl_file: str) -> str:
    text = Path(bddl_file).read_text()
    start = text.find("(problem")
    return text[start:].split()[1].rstrip(")") if start >= 0 else "unknown"


def _write_demo(group: h5py.Group, demo: Demo, compress: bool) -> None:
    t = len(demo)
    group.create_dataset("actions", data=np.asarray(demo.actions, np.float64))
    group.create_dataset("states", data=np.asarray(demo.states, np.float64))
    group.create_dataset("robot_states", data=np.asarray(demo.robot_states, np.float64))
    rewards = np.zeros(t, np.uint8)
    rewards[-1] = 1
    group.create_dataset("rewards", data=rewards)
    group.create_dataset("dones", data=rewards.copy())
    obs = group.create_group("obs")
    for key in OBS_KEYS:
        arr = np.asarray(demo.obs[key])
        if key in IMAGE_KEYS:
            kw = dict(chunks=(1, *arr.shape[1:]), compression="gzip", compression_opts=4) if compress else {}
            obs.create_dataset(key, data=arr.astype(np.uint8), **kw)
        else:
            obs.create_dataset(key, data=arr.astype(np.float64))
    for key in object_obs_keys(demo.obs):  # optional: present when the recorder saw the objects
        obs.create_dataset(key, data=np.asarray(demo.obs[key], np.float64))
    group.attrs["num_samples"] = t
    group.attrs["init_state"] = np.asarray(demo.states[0], np.float64)
    group.attrs["seed"] = int(demo.seed)
    if demo.model_file:
        group.attrs["model_file"] = demo.model_file
    for k, v in demo.extra_attrs.items():
        group.attrs[k] = v


def _copy_demo(src: h5py.Group, dst_parent: h5py.Group, name: str) -> None:
    src.file.copy(src, dst_parent, name=name)


def write_task_file(path: str | Path, attrs: Mapping[str, Any], demos: Iterable[Demo | h5py.Group],
                    compress: bool = True) -> int:
    """Write a complete task file atomically (temp file + rename); returns the demo count.

    ``demos`` may mix new :class:`Demo` objects and ``demo_N`` groups of open HDF5 files
    (copied as they are), so a rerun can extend an existing file without re-rendering it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = [0]

    def write(tmp: str) -> None:
        total, n = 0, 0
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            for k, v in attrs.items():
                data.attrs[k] = v
            for demo in demos:
                name = f"demo_{n}"
                if isinstance(demo, Demo):
                    _write_demo(data.create_group(name), demo, compress)
                    total += len(demo)
                else:
                    _copy_demo(demo, data, name)
                    total += int(demo.attrs["num_samples"])
                n += 1
            data.attrs["total"] = total
            data.attrs["num_demos"] = n
        count[0] = n

    atomic_write(path, write)
    return count[0]


def write_demo_shard(path: str | Path, demo: Demo, compress: bool = True) -> None:
    """One demonstration alone in ``path`` (a resumable work unit), written atomically."""
    write_task_file(path, {}, [demo], compress)


def task_file_name(task_name: str) -> str:
    """Official file name of a task's demonstrations: ``<task name>_demo.hdf5``."""
    return f"{task_name}_demo.hdf5"


def check_official_layout(path: str | Path) -> list[str]:
    """Problems (empty list if none) with a file's keys and attributes versus the official layout."""
    problems: list[str] = []
    with h5py.File(path, "r") as f:
        if "data" not in f:
            return ["no 'data' group"]
        data = f["data"]
        problems += [f"data attribute {a!r} missing" for a in DATA_ATTRS if a not in data.attrs]
        if "problem_info" in data.attrs and "language_instruction" not in json.loads(data.attrs["problem_info"]):
            problems.append("problem_info has no language_instruction")
        demos = [k for k in data.keys() if k.startswith("demo_")]
        if not demos:
            problems.append("no demo_N groups")
        total = 0
        for d in demos:
            g = data[d]
            problems += [f"{d}/{k} missing" for k in DEMO_KEYS if k not in g]
            problems += [f"{d}/obs/{k} missing" for k in OBS_KEYS if "obs" not in g or k not in g["obs"]]
            if "num_samples" not in g.attrs:
                problems.append(f"{d} attribute num_samples missing")
            else:
                total += int(g.attrs["num_samples"])
                obs_keys = [*OBS_KEYS, *object_obs_keys(g["obs"])] if "obs" in g else []
                lens = {len(g[k]) for k in DEMO_KEYS if k in g} | {len(g["obs"][k]) for k in obs_keys if k in g["obs"]}
                if lens != {int(g.attrs["num_samples"])}:
                    problems.append(f"{d} datasets disagree with num_samples: {sorted(lens)}")
        if "total" in data.attrs and int(data.attrs["total"]) != total:
            problems.append(f"data.attrs['total']={int(data.attrs['total'])} but demos sum to {total}")
    return problems
