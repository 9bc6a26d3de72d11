"""LIBERO as a :class:`envs.benchmark.Benchmark`: the suites, official initial states, per-suite
caps, the no-op wait and :func:`envs.libero.env.make_env`, unchanged, behind the seam the
evaluation harness uses (``EvalConfig.benchmark`` defaults to :data:`LIBERO`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.benchmark import BenchmarkEnv, EpisodeTracker, ObservationSpec, ObsField
from envs.libero.suites import (ACTION_DIM, MAX_STEPS, NOOP_ACTION, NUM_INIT_STATES, NUM_WAIT_STEPS, SUITES, check_suite,
                                get_init_states, get_task, list_tasks)
from envs.libero.observation import observation_arrays
from envs.libero.env import make_env


class LiberoBenchmark:
    """The LIBERO suites (libero_spatial, _object, _goal, _10, _90) under the common protocol."""

    name = "libero"
    suites: tuple[str, ...] = tuple(SUITES)
    noop_action: np.ndarray = NOOP_ACTION
    wait_steps: int = NUM_WAIT_STEPS
    action_dim: int = ACTION_DIM

    def check_suite(self, suite: str) -> str:
        return check_suite(suite)

    def task_names(self, suite: str) -> list[str]:
        return [t.name for t in list_tasks(suite)]

    def max_steps(self, suite: str) -> int:
        return MAX_STEPS[check_suite(suite)]

    def init_state(self, suite: str, task_index: int, episode: int) -> np.ndarray:
        """Official init state ``episode`` (modulo the 50 shipped) of the task."""
        return get_init_states(suite, task_index)[episode % NUM_INIT_STATES]

    def make_env(self, suite: str, task_index: int, resolution: int, fast_render: bool) -> BenchmarkEnv:
        return make_env(suite, task_index, resolution, fast_render)

    def observation_spec(self, resolution: int) -> ObservationSpec:
        """What :class:`envs.libero.env.LiberoEnv` observes (:data:`envs.libero.observation.ENV_FEATURES`:
        the declared features with the state features of every proprio layout), the cameras at
        ``resolution``."""
        return {name: ObsField(shape, dtype) for name, (shape, dtype) in observation_arrays(resolution).items()}

    def episode_tracker(self, env: Any, suite: str, task_index: int) -> EpisodeTracker:
        """Grasps, lift and outcome label from the robosuite state and the task's BDDL goal."""
        from envs.evaluation.outcome import OutcomeTracker  # the evaluation side, imported only where it runs

        return OutcomeTracker(env.robosuite_env, get_task(suite, task_index).bddl_file)

    def __repr__(self) -> str:
        return "LIBERO"


LIBERO = LiberoBenchmark()
"""The LIBERO benchmark (stateless; pickles by reference to its class)."""
