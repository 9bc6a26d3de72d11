"""Did a rollout grasp in one of the demonstrated modes, or between them? The grasp-yaw fork of
the rollouts themselves (the probe asks the policy at chosen observations; this reads what its
episodes did), from the chunks that ``eval_rollouts.py --record-chunks`` saves.

A grasp-yaw demonstration turns the hand a quarter turn for the travel and back one way or the
other above the object, so the net yaw command from the start to the first gripper close
(``sum(action[5])`` until ``action[6] > 0``) has two modes, a half turn apart. For each
rollout episode the same sum is placed against the demonstrations' two mode means:

- ``yaw_error_deg``: the distance to the nearer mode, in degrees (the modes are 180 apart, so
  90 is their average: the fingers across the wide side);
- **committed** (error under 45 degrees) or **averaged** (45 or more);
- ``closes``: gripper closings in the episode (a demonstration closes once; a missed grasp
  is closed again).

``python -m envs.study.grasps EVAL_DIR... --demos DEMO_FILE --task K``: one row per folder, the
episodes split by committed / averaged with their success, and the median yaw error and closes
of the successful and the failed ones (a policy that commits and still fails misses by
position or timing, not by averaging).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

COMMITTED_DEG = 45.0  # under this distance to a demonstrated mode, a grasp is in that mode


def first_close(actions: np.ndarray) -> int | None:
    """Index of the first gripper close command (action 6 > 0) of (T, 7) actions, or None."""
    idx = np.nonzero(actions[:, 6] > 0)[0]
    return int(idx[0]) if len(idx) else None


def closes(actions: np.ndarray) -> int:
    """Gripper closings (open -> close transitions, a close at the start counted) of (T, 7) actions."""
    g = actions[:, 6] > 0
    return int(g[0]) + int(np.sum(g[1:] & ~g[:-1]))


def yaw_at_close(actions: np.ndarray) -> float | None:
    """Net yaw command (sum of action 5) before the first close; None when the gripper never closes."""
    i = first_close(actions)
    return None if i is None else float(actions[:i, 5].sum())


def demo_modes(yaws: np.ndarray) -> tuple[float, float]:
    """The two mode means of the demonstrations' net yaws (split at the widest gap). ValueError
    when they have no two modes (demonstrations made without --yaw-modes)."""
    ys = np.sort(np.asarray(yaws, dtype=float))
    if len(ys) < 2:
        raise ValueError("fewer than two demonstrations close the gripper")
    cut = int(np.argmax(np.diff(ys))) + 1
    lo, hi = ys[:cut].mean(), ys[cut:].mean()
    spread = max(ys[:cut].std(), ys[cut:].std())
    if hi - lo < 4 * max(spread, 1e-9):
        raise ValueError("the demonstrations' yaw at the grasp has no two modes: were they made with --yaw-modes?")
    return float(lo), float(hi)


def yaw_error_deg(yaw: float, modes: tuple[float, float]) -> float:
    """Degrees from ``yaw`` to the nearer mode (the modes a half turn apart; 90 = their average)."""
    lo, hi = modes
    return float(min(abs(yaw - lo), abs(yaw - hi)) / ((hi - lo) / 2) * 90.0)


def demo_summary(path: str | Path) -> tuple[tuple[float, float], dict[str, Any]]:
    """The two yaw modes of a task's demonstration file (made with --yaw-modes) and the
    demonstrations' own row ({episodes, median_yaw_error_deg, mean_closes}). OSError, KeyError
    or ValueError for a file that is missing, not in the official layout or has no two modes."""
    import h5py

    with h5py.File(path, "r") as f:
        demos = [np.asarray(f["data"][k]["actions"]) for k in f["data"]]
    yaws = [y for y in map(yaw_at_close, demos) if y is not None]
    modes = demo_modes(np.asarray(yaws))
    errs = [yaw_error_deg(y, modes) for y in yaws]
    return modes, {"episodes": len(demos), "median_yaw_error_deg": round(float(np.median(errs)), 1),
                   "mean_closes": round(float(np.mean([closes(a) for a in demos])), 2)}


def episode_rows(folder: Path, task: int, modes: tuple[float, float]) -> list[dict[str, Any]]:
    """One row per recorded episode of ``task`` in an evaluation folder."""
    from envs.evaluation.harness import chunk_file
    from envs.evaluation.results import EPISODES_FILE, load_episodes

    rows = []
    for rec in load_episodes(folder / EPISODES_FILE):
        if int(rec["task_index"]) != task:
            continue
        path = chunk_file(folder, rec["suite"], task, int(rec["episode"]))
        if not path.is_file():
            continue
        with np.load(path, allow_pickle=False) as z:
            actions = z["chunks"].reshape(-1, z["chunks"].shape[-1])
        yaw = yaw_at_close(actions)
        err = None if yaw is None else yaw_error_deg(yaw, modes)
        rows.append({"success": bool(rec["success"]), "closes": closes(actions), "yaw_error_deg": err,
                     "grasp": "none" if err is None else "committed" if err < COMMITTED_DEG else "averaged"})
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"episodes": len(rows)}
    for kind in ("committed", "averaged", "none"):
        sel = [r for r in rows if r["grasp"] == kind]
        out[kind] = {"episodes": len(sel), "successes": sum(r["success"] for r in sel)}
    for ok, name in ((True, "successful"), (False, "failed")):
        sel = [r for r in rows if r["success"] == ok]
        errs = [r["yaw_error_deg"] for r in sel if r["yaw_error_deg"] is not None]
        out[name] = {"episodes": len(sel), "median_yaw_error_deg": round(float(np.median(errs)), 1) if errs else None,
                     "mean_closes": round(float(np.mean([r["closes"] for r in sel])), 2) if sel else None}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", help="evaluation folders run with --record-chunks")
    p.add_argument("--demos", required=True, help="the task's demonstration HDF5 file (made with --yaw-modes)")
    p.add_argument("--task", type=int, required=True, help="the task index in the evaluations")
    p.add_argument("--out", help="write the summaries as JSON here (atomically)")
    args = p.parse_args(argv)
    try:
        modes, demos = demo_summary(args.demos)
    except (OSError, KeyError, ValueError) as exc:
        print(f"error: {args.demos}: {exc}", file=sys.stderr)
        return 2
    result: dict[str, Any] = {"demos": demos}
    for folder in args.folders:
        rows = episode_rows(Path(folder), args.task, modes)
        if not rows:
            print(f"error: {folder} has no recorded chunks of task {args.task}; evaluate with eval_rollouts.py "
                  "--record-chunks", file=sys.stderr)
            return 2
        result[folder] = summarize(rows)
    print(f"task {args.task}: yaw at the first grasp against the demonstrations' two modes (degrees to the nearer; "
          f"90 = their average); demonstrations: median {result['demos']['median_yaw_error_deg']}, "
          f"{result['demos']['mean_closes']} closes")
    print("| source | episodes | committed (succ.) | averaged (succ.) | no grasp | yaw error succ. / failed "
          "| closes succ. / failed |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, s in result.items():
        if name == "demos":
            continue
        ok, bad = s["successful"], s["failed"]
        print(f"| {name} | {s['episodes']} | {s['committed']['episodes']} ({s['committed']['successes']}) "
              f"| {s['averaged']['episodes']} ({s['averaged']['successes']}) | {s['none']['episodes']} "
              f"| {ok['median_yaw_error_deg']} / {bad['median_yaw_error_deg']} | {ok['mean_closes']} / {bad['mean_closes']} |")
    if args.out:
        from policy.utils import atomic_write_json

        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
