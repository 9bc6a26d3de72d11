"""THE observation pipeline shared by training and evaluation, one function each::

    robosuite raw obs --hdf5_obs_fields--> official HDF5 ``obs/`` fields
                      --process_observation--> policy observation
                      --stack_observations--> a batch

and what a LIBERO environment observes (:data:`ENV_FEATURES`, :func:`observation_arrays`)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from policy.features import (DEFAULT_FEATURES, IMAGE, LANGUAGE, OBJECT_KEY_SUFFIX, OBJECT_NAMES, OBJECT_POSE_FIELDS, OBJECTS, STATE,
                             FeatureSpec, all_layouts, object_fields, stack_objects, with_objects)

OBSERVATION_FEATURES = DEFAULT_FEATURES.observation  # what process_observation returns by default
ENV_FEATURES = with_objects(all_layouts(DEFAULT_FEATURES), True)
"""What :class:`LiberoEnv` observes: the cameras, the state features of every proprio layout
(joint_states, gripper_states, ee_pos, ee_ori), the object tokens' poses and names and the
language; a policy reads its own. A camera-less env (resolution 0) observes all but the images."""
CAMERALESS_FEATURES = ENV_FEATURES.with_config((), *ENV_FEATURES.action.shape)


def env_features(resolution: int) -> FeatureSpec:
    """What an env of this camera ``resolution`` observes (0: no cameras, nothing rendered)."""
    return ENV_FEATURES if resolution > 0 else CAMERALESS_FEATURES


def observation_arrays(resolution: int) -> dict[str, tuple[tuple[int | None, ...], Any]]:
    """name -> (shape, numpy scalar type) of every array :class:`LiberoEnv` observes, in spec
    order: the cameras at ``resolution`` (none for 0), the state features, ``object_poses``
    (None, 10) (None: one row per scene object) and ``object_names`` (None,) of type str."""
    out: dict[str, tuple[tuple[int | None, ...], Any]] = {}
    for f in env_features(resolution).observation:
        if f.kind == IMAGE:
            out[f.name] = ((resolution, resolution, *f.shape[2:]), np.dtype(f.dtype).type)
        elif f.kind in (STATE, OBJECTS):
            out[f.name] = (f.shape, np.dtype(f.dtype).type)
        elif f.kind == OBJECT_NAMES:
            out[f.name] = (f.shape, str)
    return out


def quat2axisangle(quat: np.ndarray) -> np.ndarray:
    """(x, y, z, w) quaternion (4,) -> axis-angle (3,), as robosuite.utils.transform_utils."""
    quat = np.asarray(quat, dtype=np.float64).copy()
    quat[3] = np.clip(quat[3], -1.0, 1.0)
    den = np.sqrt(1.0 - quat[3] * quat[3])
    if np.isclose(den, 0.0):
        return np.zeros(3)
    return (quat[:3] * 2.0 * np.arccos(quat[3])) / den


def hdf5_obs_fields(raw_obs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """robosuite's raw observation -> the official LIBERO HDF5 ``obs/`` fields of one step.

    Returns agentview_rgb and eye_in_hand_rgb (H, W, 3) uint8 exactly as rendered
    (upside down, as stored in the official files; absent for a camera-less env),
    joint_states (7,) float64, gripper_states (2,) float64, ee_pos (3,), ee_ori (3,)
    axis-angle, ee_states (6,) = [ee_pos, ee_ori] -- the layout of LIBERO's
    ``create_dataset.py`` -- and, per movable object, the simulator's ``<object>_pos`` (3,),
    ``<object>_quat`` (4,) and ``<object>_to_robot0_eef_pos`` (3,) float64 (ours; the
    official files lack them: ``envs.libero.object_poses`` recovers them from ``states``).
    """
    ee_pos = np.asarray(raw_obs["robot0_eef_pos"], dtype=np.float64)
    ee_ori = quat2axisangle(raw_obs["robot0_eef_quat"])
    out = {}
    if "agentview_image" in raw_obs:
        out["agentview_rgb"] = np.asarray(raw_obs["agentview_image"], dtype=np.uint8)
        out["eye_in_hand_rgb"] = np.asarray(raw_obs["robot0_eye_in_hand_image"], dtype=np.uint8)
    out.update({
        "joint_states": np.asarray(raw_obs["robot0_joint_pos"], dtype=np.float64),
        "gripper_states": np.asarray(raw_obs["robot0_gripper_qpos"], dtype=np.float64),
        "ee_pos": ee_pos,
        "ee_ori": ee_ori,
        "ee_states": np.concatenate([ee_pos, ee_ori]),
    })
    for key in raw_obs:
        if key.endswith(OBJECT_KEY_SUFFIX):
            name = key[: -len(OBJECT_KEY_SUFFIX)]
            for suffix, _ in OBJECT_POSE_FIELDS:
                out[f"{name}_{suffix}"] = np.asarray(raw_obs[f"{name}_{suffix}"], dtype=np.float64)
    return out


def process_observation(fields: Mapping[str, np.ndarray], language: str,
                        spec: FeatureSpec | None = None) -> dict[str, Any]:
    """Official-layout fields of one step -> the policy observation.

    THE function both evaluation and the dataset reader use; its keys, shapes and dtypes are
    the observation features of ``spec`` (a policy's ``config.spec``; default
    ``policy.features.DEFAULT_FEATURES``). Images are turned upright (rotated 180 degrees,
    ``img[::-1, ::-1]``, as openpi does) and made contiguous. Returns agentview_rgb,
    eye_in_hand_rgb: (H, W, 3) uint8; the state features float32 (joints layout:
    joint_states (7,), gripper_states (2,); eef layout: ee_pos (3,), ee_ori (3,),
    gripper_states (2,)); object_poses (N, 10) float32 and object_names (N names, sorted)
    from the ``<object>_*`` fields; language: str.
    """
    out: dict[str, Any] = {}
    feats = OBSERVATION_FEATURES if spec is None else spec.observation
    if any(f.kind == OBJECTS for f in feats):
        names, poses = object_fields(fields)
    for f in feats:
        if f.kind == IMAGE:
            img = np.asarray(fields[f.name])
            if img.ndim != 3 or img.shape[-1] != 3:
                raise ValueError(f"{f.name} must be (H, W, 3), got shape {img.shape}")
            out[f.name] = np.ascontiguousarray(img[::-1, ::-1]).astype(np.uint8, copy=False)
        elif f.kind == STATE:
            out[f.name] = np.asarray(fields[f.name], dtype=np.dtype(f.dtype)).reshape(f.shape)
        elif f.kind == OBJECTS:
            if not names:
                raise ValueError("the fields hold no objects (no <object>_to_robot0_eef_pos keys); an object-token "
                                 "policy needs them: recover them with `python scripts/add_object_poses.py <folder>`")
            out[f.name] = poses.astype(np.dtype(f.dtype))
        elif f.kind == OBJECT_NAMES:
            out[f.name] = list(names)
        else:
            out[f.name] = str(language)
    return out


def stack_observations(obs_list: list[Mapping[str, Any]], spec: FeatureSpec | None = None) -> dict[str, Any]:
    """List of B policy observations -> a batch: images (B, H, W, 3) uint8,
    joint_states (B, 7) and gripper_states (B, 2) float32, object_poses (B, N_max, 10) and
    object_names (B lists of N_max, padded with zero rows named ""), language list[str] of
    length B (the observation features of ``spec``, default ``policy.features.DEFAULT_FEATURES``)."""
    out: dict[str, Any] = {}
    feats = OBSERVATION_FEATURES if spec is None else spec.observation
    for f in feats:
        if f.kind == IMAGE:
            out[f.name] = np.stack([o[f.name] for o in obs_list])
        elif f.kind == STATE:
            out[f.name] = np.stack([o[f.name] for o in obs_list]).astype(np.dtype(f.dtype))
        elif f.kind == OBJECTS:
            names = next(g.name for g in feats if g.kind == OBJECT_NAMES)
            out[f.name], out[names] = stack_objects([o[f.name] for o in obs_list], [o[names] for o in obs_list], f.dtype)
        elif f.kind == LANGUAGE:
            out[f.name] = [str(o[f.name]) for o in obs_list]
    return out
