"""Initial states other than the 50 official ones: fresh layouts drawn the way the scripted
demonstrations draw theirs (LIBERO's placement samplers after ``np.random`` seeding, objects
repaired onto their regions, the protocol's no-op steps), from seeds no demonstration uses.

``eval_rollouts.py --init-states fresh`` evaluates from them: episode ``i`` of task ``k`` starts
from the layout of :func:`fresh_seed` (k, i, seed), so a policy is measured on layouts it has not
seen and on no fixed list it could be tuned to. The states of a run are written into its
evaluation folder (``init_states/<suite>_task<k>.npy``), so a rerun resumes on the same ones and
anyone can replay them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from envs.libero.suites import NOOP_ACTION, NUM_WAIT_STEPS
from envs.libero.env import clear_gripper_commands
from envs.scripted.layout import repair_layout

SEED_STRIDE = 1_000_003  # the demonstrations' seeds of task k are k * SEED_STRIDE + attempt (envs.scripted.demos)
FRESH_OFFSET = 500_000  # fresh evaluation layouts start half a stride in: no demonstration attempt reaches it
MAX_EPISODES = 10_000  # episodes per (task, seed) block


def fresh_seed(task_index: int, episode: int, seed: int = 0) -> int:
    """The layout seed of ``episode`` of task ``task_index`` for evaluation seed ``seed`` (0-49)."""
    if not 0 <= episode < MAX_EPISODES or not 0 <= seed < (SEED_STRIDE - FRESH_OFFSET) // MAX_EPISODES:
        raise ValueError(f"fresh layouts need 0 <= episode < {MAX_EPISODES} and 0 <= seed < 50 "
                         f"(got episode {episode}, seed {seed})")
    return task_index * SEED_STRIDE + FRESH_OFFSET + seed * MAX_EPISODES + episode


def make_planning_env(task: Any) -> Any:
    """LIBERO ``ControlEnv`` of ``task`` (a TaskInfo) without cameras or renderer (physics only,
    soft resets): where the demonstrations' layouts are drawn."""
    from libero.libero.envs.env_wrapper import ControlEnv

    return ControlEnv(bddl_file_name=task.bddl_file, has_offscreen_renderer=False, use_camera_obs=False,
                      camera_names=[], hard_reset=False, horizon=100_000)


def layout_state(env: Any, seed: int) -> np.ndarray:
    """Reset ``env`` (:func:`make_planning_env`) to the layout of ``seed``, repaired, after
    the protocol's no-op steps; its flattened MuJoCo state (what a demonstration starts from)."""
    env.seed(int(seed))
    env.reset()
    clear_gripper_commands(env.env)  # a soft reset keeps the last episode's gripper command
    repair_layout(env.env)  # objects on/in fixture regions: LIBERO's sampler puts them in the air
    for _ in range(NUM_WAIT_STEPS):
        env.step(NOOP_ACTION.astype(np.float64))
    return np.asarray(env.get_sim_state(), dtype=np.float64).copy()


def fresh_init_states(suite: str, task_index: int, episodes: int, seed: int, folder: Path) -> np.ndarray:
    """(episodes, state_dim) fresh initial states of the task, read from ``folder`` when an earlier
    run wrote at least that many (the same seeds), else made in a camera-less environment and
    written there (temp file + rename)."""
    from envs.libero.suites import get_task
    from policy.utils import atomic_write_bytes

    path = Path(folder) / f"{suite}_task{task_index}_seed{seed}.npy"
    if path.is_file():
        known = np.load(path, allow_pickle=False)
        if len(known) >= episodes:
            return known[:episodes]
    env = make_planning_env(get_task(suite, task_index))
    try:
        states = np.stack([layout_state(env, fresh_seed(task_index, e, seed)) for e in range(episodes)])
    finally:
        env.close()
    import io

    buf = io.BytesIO()
    np.save(buf, states)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return states
