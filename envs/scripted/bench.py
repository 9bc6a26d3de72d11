"""Benchmarks of the scripted demonstrator: per-task planning success (no cameras) and
demonstrations per hour (official and fast rendering). Results merge into one JSON file
``{"tasks": {"<suite>/<task>": {"attempts": n, "successes": k, ...}}, "demos_per_hour": {...}}``."""
from __future__ import annotations

import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from envs.libero.suites import TaskInfo, list_tasks
from envs.scripted.demos import SEED_STRIDE, make_planning_env, plan_attempt
from policy.utils import atomic_write_text

BENCH_SEED_OFFSET = 500_000  # bench layouts differ from the generator's first seeds


def _bench_task(args: tuple[TaskInfo, int]) -> dict[str, Any]:
    task, attempts = args
    env = make_planning_env(task)
    ok, steps, secs, failures = 0, [], 0.0, {}
    try:
        for k in range(attempts):
            a = plan_attempt(env, task, task.index * SEED_STRIDE + BENCH_SEED_OFFSET + k)
            ok += a.success
            secs += a.seconds
            if a.success:
                steps.append(a.steps)
            else:
                failures[a.failure] = failures.get(a.failure, 0) + 1
    finally:
        env.close()
    return {"key": f"{task.suite}/{task.name}", "attempts": attempts, "successes": ok,
            "mean_steps": round(sum(steps) / len(steps), 1) if steps else None,
            "sec_per_attempt": round(secs / attempts, 2), "failures": failures}


def bench_success(suites: list[str], attempts: int, workers: int, tasks: str = "all",
                  on_task: Callable[[str, dict], None] | None = None) -> dict[str, dict]:
    """Planning success of every task of ``suites`` over ``attempts`` random layouts each.

    ``on_task(key, result)`` is called as each task finishes (e.g. to save partial results).
    """
    jobs = []
    for s in suites:
        ts = list_tasks(s)
        idx = range(len(ts)) if tasks == "all" else [int(i) for i in tasks.split(",")]
        jobs += [(ts[i], attempts) for i in idx]
    results: dict[str, dict] = {}
    ctx = mp.get_context("spawn")
    with ctx.Pool(max(1, min(workers, len(jobs)))) as pool, tqdm(total=len(jobs), desc="tasks") as bar:
        for r in pool.imap_unordered(_bench_task, jobs):
            key = r.pop("key")
            results[key] = r
            if on_task is not None:
                on_task(key, r)
            bar.update(1)
            bar.set_postfix(last=f"{r['successes']}/{r['attempts']}")
    return results


def bench_demos_per_hour(suite: str, task_index: int, demos: int, workers: int, resolution: int,
                         fast_render: bool) -> float:
    """Wall-clock demonstrations per hour of the full generator (plan + render + write)."""
    from envs.scripted.generate import GenerateConfig, generate_suite

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        tasks = ",".join(str(task_index) for _ in range(1)) if workers == 1 else \
            ",".join(str((task_index + i) % 10) for i in range(workers))
        per_task = max(1, demos // max(1, len(tasks.split(","))))
        summary = generate_suite(GenerateConfig(suite=suite, tasks=tasks, demos_per_task=per_task, workers=workers,
                                                out=Path(tmp), resolution=resolution, fast_render=fast_render))
        elapsed = time.time() - t0
    return 3600.0 * sum(summary.values()) / elapsed


def merge_results(path: Path, tasks: dict[str, dict] | None = None, rates: dict[str, float] | None = None) -> dict:
    """Merge new results into the JSON at ``path`` (written atomically); returns the merged dict."""
    path = Path(path)
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("tasks", {})
    data.setdefault("demos_per_hour", {})
    data["tasks"].update(tasks or {})
    data["demos_per_hour"].update(rates or {})
    data["tasks"] = dict(sorted(data["tasks"].items()))
    atomic_write_text(path, json.dumps(data, indent=1))
    return data
