"""Synthetic and hand-made demonstrations in the official LIBERO HDF5 layout (tests, benchmarks,
smoke runs): ``write_demo_file`` writes demos given as arrays, ``write_synthetic_suite`` a tiny
learnable suite. Both are re-exported by ``envs.libero.dataset``, the reader of that layout."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from policy.features import DEFAULT_FEATURES, OBJECT_KEY_SUFFIX, OBJECT_POSE_FIELDS, PROPRIO_LAYOUTS
from policy.utils import atomic_write

CAMERA_KEYS = DEFAULT_FEATURES.image_keys
OBS_SHAPES = {f.name: f.size for f in DEFAULT_FEATURES.states}
LAYOUT_SHAPES = {f.name: f.size for feats in PROPRIO_LAYOUTS.values() for f in feats}
ACTION_DIM = DEFAULT_FEATURES.action.shape[-1]


def write_demo_file(
    path: str | Path,
    language: str,
    demos: Sequence[dict[str, np.ndarray]],
    problem_name: str = "synthetic",
) -> Path:
    """Write demos in the official LIBERO HDF5 layout (atomically: temp file + rename).

    Each demo dict holds ``actions`` (T, 7) and the raw (as rendered, upside-down) obs
    fields ``agentview_rgb``, ``eye_in_hand_rgb`` (T, H, W, 3) uint8, ``joint_states``
    (T, 7), ``gripper_states`` (T, 2), and ``ee_pos`` (T, 3), ``ee_ori`` (T, 3) when the demo
    has them (the eef proprio layout), and the object poses ``<object>_pos`` (T, 3),
    ``<object>_quat`` (T, 4), ``<object>_to_robot0_eef_pos`` (T, 3) when it has them. Used for
    tests and small synthetic suites.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            data.attrs["problem_info"] = json.dumps({"problem_name": problem_name, "language_instruction": language})
            data.attrs["env_args"] = json.dumps({"env_name": problem_name, "type": 1})
            data.attrs["bddl_file_name"] = f"{problem_name}.bddl"
            for i, demo in enumerate(demos):
                g = data.create_group(f"demo_{i}")
                g.create_dataset("actions", data=np.asarray(demo["actions"], dtype=np.float64))
                g.attrs["num_samples"] = len(demo["actions"])
                obs = g.create_group("obs")
                extra = [k for k in LAYOUT_SHAPES if k in demo and k not in OBS_SHAPES]
                objects = [k[: -len(OBJECT_KEY_SUFFIX)] for k in demo if k.endswith(OBJECT_KEY_SUFFIX)]
                extra += [f"{n}_{suffix}" for n in objects for suffix, _ in OBJECT_POSE_FIELDS]
                for key in (*CAMERA_KEYS, *OBS_SHAPES, *extra):
                    obs.create_dataset(key, data=demo[key])

    return atomic_write(path, write)


def write_synthetic_suite(folder: str | Path, n_tasks: int = 2, n_demos: int = 2, length: int = 20, size: int = 32, seed: int = 0) -> list[Path]:
    """A tiny learnable suite in the official layout (for tests, benchmarks and smoke runs).

    Task i has its own instruction and background colour; within an episode the phase
    p = k / (T - 1) drives a square across the image, joint_states[0] = p, ee_pos[0] = p
    (ee_pos, ee_ori are written too, for the eef proprio layout), and the
    action is a smooth function of (task, p), so the chunk is determined by the
    observation. Images are stored upside down, as LIBERO renders them. Task i's scene holds
    2 + (i % 2) objects (``bowl_1``, ``plate_1``, ``cup_1``) whose poses follow p, so object-token
    policies learn it too (and batches mix scenes of different sizes).
    """
    rng = np.random.default_rng(seed)
    paths = []
    for task in range(n_tasks):
        demos = []
        for _ in range(n_demos):
            p = np.linspace(0.0, 1.0, length)
            actions = np.stack([np.sin(2 * np.pi * p + task + j) * (0.5 + 0.1 * j) for j in range(ACTION_DIM)], axis=1)
            actions[:, -1] = np.where(p < 0.5, -1.0, 1.0)  # gripper open, then closed
            img = np.zeros((length, size, size, 3), dtype=np.uint8)
            img[..., task % 3] = 60 + 40 * task
            for k in range(length):
                c = int(p[k] * (size - 8))
                img[k, c : c + 8, c : c + 8] = 255
            joints = np.concatenate([p[:, None], rng.normal(0, 0.01, (length, 6))], axis=1)
            gripper = np.stack([0.04 * (1 - p), -0.04 * (1 - p)], axis=1)
            demo = {"actions": actions, "agentview_rgb": img[:, ::-1, ::-1].copy(), "eye_in_hand_rgb": img.copy(),
                    "joint_states": joints, "gripper_states": gripper,
                    # the eef layout's fields, deterministic (no draws from rng: the joints data stay as they were)
                    "ee_pos": np.stack([p, 0.1 * np.sin(np.pi * p), 1.0 - 0.2 * p], axis=1),
                    "ee_ori": np.stack([np.full(length, np.pi), 0.1 * p, np.zeros(length)], axis=1)}
            for j, name in enumerate(("bowl_1", "plate_1", "cup_1")[: 2 + task % 2]):
                pos = np.stack([p + 0.1 * j, np.full(length, 0.05 * (task - j)), np.full(length, 0.9)], axis=1)
                demo[f"{name}_pos"] = pos
                demo[f"{name}_quat"] = np.tile([0.0, 0.0, 0.0, 1.0], (length, 1))
                demo[f"{name}_to_robot0_eef_pos"] = pos - demo["ee_pos"]
            for name, dim in OBS_SHAPES.items():  # a state feature added to the spec: zeros
                demo.setdefault(name, np.zeros((length, dim)))
            for cam in CAMERA_KEYS:  # a camera added to the spec: the agent view
                demo.setdefault(cam, demo["agentview_rgb"])
            demos.append(demo)
        paths.append(write_demo_file(Path(folder) / f"TASK_{task}_demo.hdf5", f"synthetic task {task}: move the square", demos, f"task_{task}"))
    return paths
