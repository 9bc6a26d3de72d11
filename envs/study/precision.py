"""How precisely does a policy aim its grasp, and how much of its miss is its own sampling spread?

Missed grasps are most of the study's failures, on every kind of task and for every model. This
probe asks each policy at the observation one chunk before every training demonstration first
closes the gripper (its final approach, from the recorded simulator state), draws ``samples``
chunks per observation at each step count, and compares the commanded translation of a chunk
(the sum of its 8 position actions) with the demonstration's own next 8 actions:

- ``error``: RMS distance of a draw to the demonstration's chunk;
- ``bias``: RMS over observations of the distance of the draws' mean to it (what the policy gets
  wrong whatever it samples);
- ``spread``: RMS distance of a draw to the draws' mean (what sampling adds), so
  error^2 = bias^2 + spread^2.

Units: action units (each commands LIBERO's OSC controller up to 5 cm off the current hand
position). The demonstrations' own chunks are the reference; they are training data, so this
measures how each policy reproduces what it was taught at its most precise moment, not how it
generalises. A distributional policy reproduces the demonstrations' spread; an MSE policy at one
step returns their mean, and at more steps draws samples too.

  python -m envs.study.precision RUN_DIR... --data data/study_objects_suite/libero_object \\
      --tasks 0-9 --steps 1,2,16 --groups route=0,2,3,4,5,7,9 yaw=1,6,8 --out precision.json

Runs named ``<model>_seed<k>`` are pooled with ``<model>`` (the study's run names).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from envs.study.grasps import first_close

CHUNK = 8


def approach_step(actions: np.ndarray) -> int | None:
    """The step one chunk before the first gripper close of (T, 7) demo actions (None: no close
    that late)."""
    close = first_close(actions)
    return None if close is None or close < CHUNK else close - CHUNK


def translation(chunks: np.ndarray) -> np.ndarray:
    """Commanded translation (..., 3) of action chunks (..., 8, 7): the sum of the position actions."""
    return chunks[..., :3].sum(axis=-2)


def sums(draws: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """draws (samples, N, 3) against target (N, 3) -> the sums of squares behind error, bias, spread."""
    mean = draws.mean(axis=0)
    return {"error": float(((draws - target[None]) ** 2).sum()), "bias": float(((mean - target) ** 2).sum()),
            "spread": float(((draws - mean[None]) ** 2).sum())}


def rms(sq: dict[str, float], observations: int, samples: int) -> dict[str, float]:
    """{error, bias, spread} (RMS, see the module doc) from :func:`sums` over ``observations`` x ``samples`` draws."""
    return {"error": float(np.sqrt(sq["error"] / (observations * samples))),
            "bias": float(np.sqrt(sq["bias"] / observations)),
            "spread": float(np.sqrt(sq["spread"] / (observations * samples)))}


def model_name(run: Path) -> str:
    """The study's model of a run dir: its name without the ``_seed<k>`` of the extra seeds."""
    return re.sub(r"_seed\d+$", "", run.name)


def task_observations(suite: str, task: int, data: Path, resolution: int, fast_render: bool) -> tuple[list[dict], np.ndarray]:
    """(observations at each training demo's approach step, the demos' own translations (N, 3))."""
    from envs.libero.dataset import find_hdf5_files, read_demo_file
    from envs.libero.suites import get_task
    from envs.study.probe_cli import demo_observations

    name = get_task(suite, task).name
    files = [p for p in find_hdf5_files(data) if p.name.startswith(name)]
    if not files:
        raise FileNotFoundError(f"no demonstration file of {name!r} (task {task}) in {data}")
    demos = read_demo_file(files[0])
    steps = [approach_step(d.actions) for d in demos]
    keep = [i for i, t in enumerate(steps) if t is not None]
    if not keep:
        raise ValueError(f"{files[0]}: no demonstration closes the gripper")
    args = SimpleNamespace(suite=suite, task=task, fast_render=fast_render)
    obs = demo_observations(args, files[0], [steps[i] if steps[i] is not None else 0 for i in range(len(demos))], resolution)
    target = np.stack([translation(demos[i].actions[steps[i]:steps[i] + CHUNK]) for i in keep])
    return [obs[i] for i in keep], target


def measure(runs: list[Path], suite: str, tasks: list[int], data: Path, steps: list[int], samples: int,
            xi_scales: tuple[float, ...] = (1.0,), fast_render: bool = True, out: Path | None = None) -> dict[str, Any]:
    """{"cells": [{run, model, steps, xi_scale, task, observations, samples, error, bias, spread,
    sum_sq}, ...]} per run dir, step count, xi scale and task (pooled by :func:`pool`). With
    ``out`` the report so far is written there after every (task, run), and the cells it already
    holds are not measured again: an interrupted run resumes."""
    from tqdm import tqdm

    from envs.evaluation.policies import load_policy
    from envs.study.probe_cli import draw
    from policy.utils import atomic_write_json

    cells = _resumed(out, suite, samples) if out is not None else []
    done = {(c["run"], c["task"], c["steps"], c["xi_scale"]) for c in cells}
    report = {"suite": suite, "tasks": tasks, "steps": steps, "xi_scales": list(xi_scales), "samples": samples, "cells": cells}
    policies = {run: load_policy("checkpoint", str(run)) for run in runs}
    cache: dict[tuple[int, int], tuple[list[dict], np.ndarray]] = {}
    bar = tqdm(total=len(tasks) * len(runs) * sum(steps) * len(xi_scales), desc="precision", unit="step x run",
               dynamic_ncols=True)
    for task in tasks:
        for run, policy in policies.items():
            todo = [(k, x) for k in steps for x in xi_scales if (run.name, task, k, x) not in done]
            bar.update(sum(steps) * len(xi_scales) - sum(k for k, _ in todo))
            if not todo:
                continue
            res = int(policy.config.render_resolution)
            if (task, res) not in cache:
                cache[(task, res)] = task_observations(suite, task, data, res, fast_render)
            obs, target = cache[(task, res)]
            for k, scale in todo:
                sq = sums(translation(draw(policy, obs, k, samples, scale)), target)  # draws (samples, N, 3)
                cells.append({"run": run.name, "model": model_name(run), "steps": k, "xi_scale": scale, "task": task,
                              "observations": len(obs), "samples": samples, **rms(sq, len(obs), samples), "sum_sq": sq})
                bar.update(k)
            if out is not None:
                atomic_write_json(out, report)
    bar.close()
    return report


def _resumed(out: Path, suite: str, samples: int) -> list[dict]:
    """The cells of an earlier report at ``out`` (none when absent); one ValueError line when it was
    made with another suite or number of draws."""
    if not out.is_file():
        return []
    try:
        old = json.loads(out.read_text())
        cells = list(old["cells"])
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{out} is not a precision report; use another --out or delete it") from None
    if old.get("suite") != suite or old.get("samples") != samples:
        raise ValueError(f"{out} holds a report of suite={old.get('suite')}, samples={old.get('samples')} (now {suite}, "
                         f"{samples}); use another --out or delete it")
    for c in cells:
        c.setdefault("xi_scale", 1.0)
    return cells


def pool(cells: list[dict], tasks: list[int]) -> dict[tuple[str, int, float], dict[str, Any]]:
    """(model, steps, xi_scale) -> {error, bias, spread, runs, observations} pooled over ``tasks``
    and the model's runs (RMS over all their draws and observations)."""
    acc: dict[tuple[str, int, float], dict[str, Any]] = {}
    for c in cells:
        if c["task"] in tasks:
            a = acc.setdefault((c["model"], c["steps"], c.get("xi_scale", 1.0)), {"sq": dict.fromkeys(("error", "bias", "spread"), 0.0),
                                                          "observations": 0, "samples": c["samples"], "runs": set()})
            for key, value in c["sum_sq"].items():
                a["sq"][key] += value
            a["observations"] += c["observations"]
            a["runs"].add(c["run"])
    return {key: {**rms(a["sq"], a["observations"], a["samples"]), "runs": len(a["runs"]), "observations": a["observations"]}
            for key, a in acc.items()}


def table(report: dict[str, Any], groups: dict[str, list[int]]) -> str:
    """Markdown: one row per (model, steps, xi_scale), error / bias / spread per task group."""
    names = list(groups)
    pooled = {g: pool(report["cells"], tasks) for g, tasks in groups.items()}
    keys = sorted({k for p in pooled.values() for k in p}, key=lambda key: (key[0].startswith("mse"), key[0], key[1], -key[2]))
    head = "| model | steps | xi scale | runs | " + " | ".join(f"{g}: error / bias / spread" for g in names) + " |"
    lines = [head, "|---|---:|---:|---:|" + "---:|" * len(names)]
    for m, k, scale in keys:
        cells = [pooled[g].get((m, k, scale)) for g in names]
        runs = max((c["runs"] for c in cells if c), default=0)
        lines.append(f"| {m} | {k} | {scale:g} | {runs} | " + " | ".join(
            f"{c['error']:.3f} / {c['bias']:.3f} / {c['spread']:.3f}" if c else "-" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _ints(key: str, text: str) -> list[int]:
    """``"0-2,5"`` -> [0, 1, 2, 5]; one ValueError line naming ``key`` otherwise."""
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise ValueError(f"{key} {text!r}: expected numbers and ranges such as 0-9 or 1,2,16") from None
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run dirs (or policy dirs) of the study")
    p.add_argument("--data", required=True, type=Path, help="folder of the tasks' demonstration files")
    p.add_argument("--suite", default="libero_object")
    p.add_argument("--tasks", default="0", help="tasks, e.g. 0-9 or 1,6,8 (default 0)")
    p.add_argument("--steps", default="1,2,16", help="sampler step counts (default 1,2,16)")
    p.add_argument("--samples", type=int, default=8, help="chunks drawn per observation (default 8)")
    p.add_argument("--xi-scales", default="1", help="generator-noise scales to draw with, e.g. 1,0.5,0 (default 1; "
                   "eval_rollouts.py --xi-scale)")
    p.add_argument("--groups", nargs="*", default=[], metavar="NAME=TASKS",
                   help="task groups of the table, e.g. route=0,2,3 yaw=1,6,8 (default: all tasks)")
    p.add_argument("--out", type=Path, help="write the report JSON here (after every task and run: a rerun resumes) "
                   "and the table beside it (.md)")
    args = p.parse_args(argv)
    try:
        tasks, steps = _ints("--tasks", args.tasks), _ints("--steps", args.steps)
        groups = {g.partition("=")[0]: _ints(f"--groups {g.partition('=')[0]}", g.partition("=")[2])
                  for g in args.groups} or {"all tasks": tasks}
        try:
            scales = tuple(float(x) for x in args.xi_scales.split(","))
        except ValueError:
            raise ValueError(f"--xi-scales {args.xi_scales!r}: expected numbers >= 0 such as 1,0.5,0") from None
        if args.samples < 2 or any(k < 1 for k in steps) or any(not x >= 0 for x in scales):
            raise ValueError("--samples must be >= 2, --steps >= 1 and --xi-scales >= 0")
        report = measure(args.runs, args.suite, tasks, args.data, steps, args.samples, scales, out=args.out)
    except (ValueError, IndexError, FileNotFoundError, KeyError, OSError) as exc:
        print(f"error: {str(exc).strip(chr(34) + chr(39))}", file=sys.stderr)
        return 2
    md = table(report, groups)
    print(md, end="")
    if args.out:
        from policy.utils import atomic_write_json, atomic_write_text

        atomic_write_json(args.out, {**report, "groups": groups})
        atomic_write_text(args.out.with_suffix(".md"), md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
