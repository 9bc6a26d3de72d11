"""Parallel, resumable generation of a suite's scripted demonstrations (the work behind
``scripts/generate_demos.py``): one worker process per task at a time (spawn context),
progress reported through a queue into one tqdm bar, task files assembled at the end."""
from __future__ import annotations

import multiprocessing as mp
import queue
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from envs.libero.suites import TaskInfo, check_suite, list_tasks
from envs.scripted.demos import assemble_task_file, check_detour, generate_task_demos, tried_seeds


@dataclass
class GenerateConfig:
    """Options of :func:`generate_suite` (see ``scripts/generate_demos.py --help``)."""

    suite: str = "libero_object"
    tasks: str = "all"
    demos_per_task: int = 50
    workers: int = 2
    out: Path = Path("data")
    resolution: int = 128
    fast_render: bool = False
    max_attempts_factor: float = 3.0
    detour: float = 0.0  # route modes of the scripted demonstrator (m, 0 = off)
    yaw_modes: bool = False  # grasp-yaw modes of the scripted demonstrator

    def selected(self) -> list[TaskInfo]:
        """The tasks named by ``tasks`` ('all' or comma-separated indices)."""
        tasks = list_tasks(check_suite(self.suite))
        if self.tasks == "all":
            return tasks
        try:
            idx = [int(x) for x in str(self.tasks).split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"--tasks must be 'all' or comma-separated integers, got {self.tasks!r}") from None
        bad = [i for i in idx if not 0 <= i < len(tasks)]
        if bad:
            raise ValueError(f"task indices {bad} out of range for {self.suite} (0..{len(tasks) - 1})")
        return [tasks[i] for i in idx]


def _worker(args: tuple) -> tuple[str, int, int]:
    import os

    os.environ.setdefault("LP_NUM_THREADS", "1")
    task, out, needed, resolution, fast_render, max_attempts, q, detour, yaw_modes = args
    kept, tries = generate_task_demos(task, out, needed, resolution, fast_render, max_attempts,
                                      progress=lambda name, ok: q.put((name, ok)), detour=detour,
                                      yaw_modes=yaw_modes)
    return task.name, kept, tries


def generate_suite(cfg: GenerateConfig) -> dict[str, int]:
    """Generate the missing demonstrations of the selected tasks; returns task name -> demo count."""
    if cfg.demos_per_task <= 0 or cfg.workers <= 0 or cfg.resolution <= 0:
        raise ValueError("--demos-per-task, --workers and --resolution must be positive")
    if not 0.0 <= cfg.detour <= 0.3:
        raise ValueError(f"--detour must be between 0 (off) and 0.3 m, got {cfg.detour:g}")
    tasks = cfg.selected()
    out = Path(cfg.out) / cfg.suite
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for task in tasks:
        check_detour(out, task, cfg.detour, cfg.yaw_modes)
        kept, _ = tried_seeds(out, task)
        missing = cfg.demos_per_task - len(kept)
        if missing > 0:
            jobs.append((task, missing))
    total = sum(m for _, m in jobs)
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager, tqdm(total=total, desc=f"{cfg.suite} demos", unit="demo") as bar:
        q = manager.Queue()
        attempts = kept_total = 0
        if jobs:
            with ctx.Pool(min(cfg.workers, len(jobs))) as pool:
                payload = [(t, out, m, cfg.resolution, cfg.fast_render,
                            int(cfg.max_attempts_factor * m) + 5, q, cfg.detour, cfg.yaw_modes)
                           for t, m in jobs]
                pending = pool.map_async(_worker, payload, chunksize=1)
                while True:
                    try:
                        _, ok = q.get(timeout=0.5)
                        attempts += 1
                        kept_total += ok
                        bar.update(int(ok))
                        bar.set_postfix(success=f"{kept_total}/{attempts}")
                    except queue.Empty:
                        if pending.ready():
                            break
                pending.get()  # re-raise a worker's exception
    summary = {}
    for task in tasks:
        summary[task.name] = assemble_task_file(task, out, cfg.demos_per_task, cfg.resolution, cfg.fast_render,
                                                cfg.detour, cfg.yaw_modes)
    return summary
