"""Measurements behind ``scripts/bench_eval.py``: env steps per second with 1 and 2
worker processes, official vs fast rendering; the share of rollout time spent in
policy inference; the side-by-side rendering picture."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from envs.evaluation.results import save_figure


def _bench_worker(conn: Connection, suite: str, task: int, fast: bool, resolution: int) -> None:
    from envs.libero.suites import get_init_states
    from envs.libero.env import make_env

    env = make_env(suite, task, resolution=resolution, fast_render=fast)
    state = get_init_states(suite, task)[0]
    obs = env.set_init_state(state)
    faces = int(env.sim.model._model.mesh_facenum.sum())
    conn.send(("ready", {"obs": obs, "faces": faces}))
    rng = np.random.default_rng(0)
    try:
        while True:
            kind, n = conn.recv()
            if kind == "stop":
                break
            env.set_init_state(state)
            actions = np.concatenate([rng.uniform(-0.3, 0.3, (n, 6)), -np.ones((n, 1))], axis=1)
            t, c = time.perf_counter(), time.process_time()
            for a in actions:
                env.step(a)
            conn.send(("done", (time.perf_counter() - t, time.process_time() - c)))
    finally:
        env.close()


def measure_steps_per_s(suite: str, task: int, fast: bool, workers: tuple[int, ...] = (1, 2),
                        n_steps: int = 30, resolution: int = 128) -> dict[str, Any]:
    """Aggregate env steps/s (two cameras at ``resolution``) with k concurrent worker
    processes for each k in ``workers`` (spawn context, one env each, LP_NUM_THREADS=1).
    Environment construction is not timed. Also returns the CPU time per env step
    (process time of a worker, all its threads): unlike wall time it does not depend on
    what else the machine runs. Returns {"steps_per_s": {"k": x}, "cpu_ms_per_step": ms,
    "faces": n, "obs": first observation}."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs, conns = [], []
    try:
        for i in range(max(workers)):
            a, b = ctx.Pipe()
            p = ctx.Process(target=_bench_worker, args=(b, suite, task, fast, resolution), daemon=True)
            p.start()
            procs.append(p)
            conns.append(a)
            if i == 0 and fast:  # the first worker fills the simplified-mesh cache for the others
                first = a.recv()[1]
        ready = [c.recv()[1] for c in (conns[1:] if fast else conns)]
        first = first if fast else ready[0]
        out: dict[str, float] = {}
        cpu: list[float] = []
        for k in workers:
            t = time.perf_counter()
            for c in conns[:k]:
                c.send(("run", n_steps))
            for c in conns[:k]:
                cpu.append(c.recv()[1][1])
            out[str(k)] = round(k * n_steps / (time.perf_counter() - t), 3)
        cpu_ms = 1000 * sum(cpu) / (n_steps * len(cpu))
        return {"steps_per_s": out, "cpu_ms_per_step": round(cpu_ms, 2), "faces": first["faces"], "obs": first["obs"]}
    finally:
        for c in conns:
            try:
                c.send(("stop", 0))
            except (BrokenPipeError, OSError):
                pass
        for p in procs:
            p.join(20)
            if p.is_alive():
                p.kill()


def render_compare_png(official: dict[str, Any], fast: dict[str, Any], path: str | os.PathLike,
                       faces: tuple[int, int] = (0, 0)) -> None:
    """Side-by-side picture: rows official / fast, columns agentview / eye-in-hand."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(5.2, 5.4))
    for r, (label, obs, nf) in enumerate((("official", official, faces[0]), ("fast", fast, faces[1]))):
        for c, key in enumerate(("agentview_rgb", "eye_in_hand_rgb")):
            axes[r][c].imshow(obs[key], interpolation="nearest")
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
            axes[r][c].set_title(f"{label} ({nf // 1000}k faces): {key.split('_rgb')[0]}", fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=130)


def machine_info() -> str:
    """One line: CPU model, core count, load average, platform."""
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} cores, load average {load:.1f} at start, {platform.platform()}"


def today() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def measure_reset_s(suite: str, task: int, resolution: int, fast: bool, n: int = 5,
                    steps: int = 20) -> dict[str, Any]:
    """Seconds per episode start (``reset`` + ``set_init_state``) with LIBERO's hard reset and
    with the env's soft one, each after ``steps`` random steps (a used env), alternating
    between the two envs so that both see the same load. Wall and CPU (process) time, median
    over ``n`` starts; also the CPU time of one env step, to put a reset in an episode's terms."""
    from envs.libero.suites import get_init_states, get_task
    from envs.libero.env import LiberoEnv

    states = get_init_states(suite, task)
    envs = {mode: LiberoEnv(get_task(suite, task), resolution, fast, hard_reset=mode == "hard") for mode in ("hard", "soft")}
    rng = np.random.default_rng(0)
    wall: dict[str, list[float]] = {m: [] for m in envs}
    cpu: dict[str, list[float]] = {m: [] for m in envs}
    step_cpu: list[float] = []
    try:
        for i in range(n):
            for mode, env in envs.items():
                c = time.process_time()
                for a in np.concatenate([rng.uniform(-0.3, 0.3, (steps, 6)), -np.ones((steps, 1))], axis=1):
                    env.step(a)
                step_cpu.append((time.process_time() - c) / steps)
                t, c = time.perf_counter(), time.process_time()
                env.reset(seed=i)
                env.set_init_state(states[i % len(states)])
                wall[mode].append(time.perf_counter() - t)
                cpu[mode].append(time.process_time() - c)
    finally:
        for env in envs.values():
            env.close()
    med = lambda xs: round(float(np.median(xs)), 4)  # noqa: E731
    return {"wall_s": {m: med(wall[m]) for m in envs}, "cpu_s": {m: med(cpu[m]) for m in envs},
            "cpu_ms_per_step": round(1000 * float(np.median(step_cpu)), 2),
            "speedup_cpu": round(float(np.median(cpu["hard"]) / np.median(cpu["soft"])), 1)}
