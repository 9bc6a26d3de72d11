"""The benchmark seam: what evaluation (and demonstration data) need from a task suite.

A :class:`Benchmark` is a set of named suites of tasks, each task with numbered initial
states, an episode cap, a no-op action to wait with, an environment to build and an
observation layout. The rollout harness (:mod:`envs.evaluation.harness`) and its worker
(:mod:`envs.evaluation.worker`) reach a simulator only through this protocol; LIBERO is
its implementation (:data:`envs.libero.benchmark.LIBERO`, the default of
``EvalConfig.benchmark``).

A new benchmark implements the members of :class:`Benchmark` below and must be picklable
(the local worker pool sends it to spawned worker processes: a module-level class
instance is). Its environments follow :class:`BenchmarkEnv` (the gymnasium-style subset
the worker calls) and return policy observations: a dict with every key of
:meth:`Benchmark.observation_spec` (arrays of that shape and dtype) plus ``"language"``
(the task instruction, a str). :func:`stack_observations` batches them for one
``policy.predict`` call.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Protocol, Sequence, runtime_checkable

import numpy as np

from policy.features import pad_names, pad_rows


class ObsField(NamedTuple):
    """One array of a policy observation: its shape (one step, no batch axis) and dtype.

    A leading ``None`` is a size that differs between tasks (LIBERO's ``object_poses``
    (None, 10): one row per scene object); dtype ``str`` is a list of strings of that size
    (``object_names``). :func:`stack_observations` pads both to the batch's largest."""

    shape: tuple[int, ...]
    dtype: Any  # a numpy dtype or scalar type (np.uint8, np.float32)


ObservationSpec = dict[str, ObsField]
"""key -> :class:`ObsField`, in the order a batch lists them (images are (H, W, 3) uint8)."""


class BenchmarkEnv(Protocol):
    """The environment of one task, as the evaluation worker drives it."""

    def reset(self, *, seed: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Reset the scene with this seed; (obs, info)."""

    def set_init_state(self, state: np.ndarray) -> dict[str, Any]:
        """Load an initial state (one from :meth:`Benchmark.init_state`); the policy observation."""

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """Apply one action: (obs, reward, terminated, truncated, info); ``terminated`` = the task succeeded."""

    def close(self) -> None:
        """Free the simulator."""


class EpisodeTracker(Protocol):
    """Optional per-episode failure analysis (LIBERO: :class:`envs.evaluation.outcome.OutcomeTracker`)."""

    def step(self, action: np.ndarray) -> None:
        """Called with every executed policy action (read-only: must not change the episode)."""

    def summary(self, success: bool, error: str | None) -> dict[str, Any]:
        """The episode's ``grasps``, ``lift_m`` and ``outcome`` fields (see envs/evaluation/outcome.py)."""


@runtime_checkable
class Benchmark(Protocol):
    """What a benchmark provides to evaluation and data. All methods are cheap except
    :meth:`make_env` (and :meth:`init_state` may read a file); none keeps per-episode state."""

    name: str
    """Recorded in a result folder's ``eval_config.json`` unless it is ``"libero"`` (the default)."""
    suites: tuple[str, ...]
    """The suite names it knows."""
    noop_action: np.ndarray
    """(action_dim,) action executed during the wait steps (success is not checked then)."""
    wait_steps: int
    """No-op steps at the start of every episode (``EvalConfig.wait_steps`` defaults to it)."""
    action_dim: int
    """Width of an action; a policy chunk is (B, chunk, action_dim)."""

    def check_suite(self, suite: str) -> str:
        """``suite`` if known, else a one-line ValueError naming the choices."""

    def task_names(self, suite: str) -> list[str]:
        """The suite's task names; task index i is position i."""

    def max_steps(self, suite: str) -> int:
        """Policy steps an episode of this suite may take (not counting the wait steps)."""

    def init_state(self, suite: str, task_index: int, episode: int) -> np.ndarray:
        """The state episode ``episode`` of the task starts from (what ``set_init_state`` loads)."""

    def make_env(self, suite: str, task_index: int, resolution: int, fast_render: bool) -> BenchmarkEnv:
        """Build one task's environment (square cameras of ``resolution`` px)."""

    def observation_spec(self, resolution: int) -> ObservationSpec:
        """The array keys of the environment's policy observations, their shapes and dtypes."""

    def episode_tracker(self, env: BenchmarkEnv, suite: str, task_index: int) -> EpisodeTracker | None:
        """Built after the wait steps of every episode; None: no failure analysis (the outcome is
        then ``success``, ``error`` or ``failed`` with ``grasps`` 0 and ``lift_m`` null)."""


def image_keys(spec: Mapping[str, ObsField]) -> list[str]:
    """The camera images of a spec ((H, W, 3) uint8), in spec order (what a video shows side by side)."""
    return [k for k, f in spec.items() if len(f.shape) == 3 and f.shape[-1] == 3 and np.dtype(f.dtype) == np.uint8]


def stack_observations(obs_list: Sequence[Mapping[str, Any]], spec: Mapping[str, ObsField]) -> dict[str, Any]:
    """B policy observations -> one batch: every spec key stacked to (B, *shape) in its dtype,
    in spec order, then ``language``: list[str] of length B. Keys outside the spec are dropped.
    A field with a leading ``None`` is padded to the batch's largest size (zero rows; a ``str``
    field: B lists padded with "")."""
    batch: dict[str, Any] = {}
    for k, f in spec.items():
        values = [o[k] for o in obs_list]
        if f.dtype is str:
            batch[k] = pad_names(values)
        elif f.shape and f.shape[0] is None:
            batch[k] = pad_rows(values, f.dtype, f.shape[1:])
        else:
            batch[k] = np.stack(values).astype(f.dtype, copy=False)
    batch["language"] = [str(o["language"]) for o in obs_list]
    return batch
