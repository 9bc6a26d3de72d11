"""Does a policy switch mode between consecutive chunks of one episode? Reversals in the chunks
that ``eval_rollouts.py --record-chunks`` saves, against the same count in the demonstrations.

Each chunk's *head* is the mean of its first :data:`HEAD` actions (what the chunk sets out to do).
Two consecutive chunks of an episode *reverse* when

- **yaw**: both heads turn strongly (|action 5| > ``yaw``) and in opposite directions: at a
  grasp-yaw fork, one chunk turns the hand back one way and the next the other way;
- **planar**: both heads move strongly in x, y (norm > ``planar``) and their directions are more
  than 120 degrees apart (cosine < -0.5): at a route fork, a step to one side then to the other.

and ``gripper`` counts the flips of the gripper command (the sign of action 6) between consecutive
chunks: a pick and place has two (close, open); more is a grasp let go and taken again.

A policy that keeps its mode reverses about as often as the demonstrations chunked the same way
(every 8 actions from the first); a policy that switches mode reverses more, and its episodes with
reversals succeed less. ``python -m envs.study.switching EVAL_DIR... [--demos DEMO_DIR] [--tasks 1,6,8]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from envs.evaluation.cli import parse_int_list

HEAD = 4  # actions of a chunk that say where it goes (as the fork probe's)
YAW, PLANAR = 0.3, 0.3  # strong-command thresholds (actions in [-1, 1])


def heads(chunks: np.ndarray) -> np.ndarray:
    """(K, action_dim) mean of each chunk's first HEAD actions, from (K, chunk, action_dim)."""
    return chunks[:, :HEAD].mean(axis=1)


def reversals(chunks: np.ndarray, yaw: float = YAW, planar: float = PLANAR) -> dict[str, int]:
    """Counts of yaw and planar reversals between consecutive chunks (K, chunk, action_dim)."""
    h = heads(np.asarray(chunks, dtype=np.float64))
    if len(h) < 2:
        return {"pairs": 0, "yaw": 0, "planar": 0, "gripper": 0}
    a, b = h[:-1], h[1:]
    yaw_rev = (np.abs(a[:, 5]) > yaw) & (np.abs(b[:, 5]) > yaw) & (np.sign(a[:, 5]) != np.sign(b[:, 5]))
    na, nb = np.linalg.norm(a[:, :2], axis=1), np.linalg.norm(b[:, :2], axis=1)
    cos = (a[:, :2] * b[:, :2]).sum(axis=1) / np.maximum(na * nb, 1e-12)
    planar_rev = (na > planar) & (nb > planar) & (cos < -0.5)
    flips = int((np.sign(a[:, 6]) != np.sign(b[:, 6])).sum())
    return {"pairs": len(h) - 1, "yaw": int(yaw_rev.sum()), "planar": int(planar_rev.sum()), "gripper": flips}


def demo_chunks(actions: np.ndarray, size: int = 8) -> np.ndarray:
    """A demonstration's actions (T, action_dim) cut into chunks of ``size`` from the first
    (the last partial chunk dropped)."""
    k = len(actions) // size
    return np.asarray(actions[: k * size], dtype=np.float64).reshape(k, size, -1)


def summarize(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Pooled rates over episodes (rows: ``reversals`` output plus ``success``, may be None)."""
    rows = list(rows)
    pairs = sum(r["pairs"] for r in rows)
    out: dict[str, Any] = {"episodes": len(rows), "chunk_pairs": pairs}
    for kind in ("yaw", "planar"):
        n = sum(r[kind] for r in rows)
        out[f"{kind}_reversals_per_100_pairs"] = round(100 * n / pairs, 2) if pairs else None
        out[f"episodes_with_{kind}_reversal"] = round(sum(r[kind] > 0 for r in rows) / len(rows), 4) if rows else None
    out["gripper_flips_per_episode"] = round(sum(r["gripper"] for r in rows) / len(rows), 3) if rows else None
    scored = [r for r in rows if r.get("success") is not None]
    switched = [r for r in scored if r["yaw"] + r["planar"] > 0]
    kept = [r for r in scored if r["yaw"] + r["planar"] == 0]
    out["success_with_reversal"] = round(sum(r["success"] for r in switched) / len(switched), 4) if switched else None
    out["success_without_reversal"] = round(sum(r["success"] for r in kept) / len(kept), 4) if kept else None
    return out


def eval_rows(folder: Path) -> list[dict[str, Any]]:
    """One row per recorded episode of an evaluation folder (its chunks/ and episodes.jsonl)."""
    from envs.evaluation.harness import chunk_file
    from envs.evaluation.results import EPISODES_FILE, load_episodes

    rows = []
    for rec in load_episodes(folder / EPISODES_FILE):
        path = chunk_file(folder, rec["suite"], int(rec["task_index"]), int(rec["episode"]))
        if not path.is_file():
            continue
        with np.load(path, allow_pickle=False) as z:
            rows.append({**reversals(z["chunks"]), "success": bool(rec["success"]), "task": int(rec["task_index"])})
    return rows


def demo_rows(path: Path) -> list[dict[str, Any]]:
    """One row per demonstration of an HDF5 file (official layout), or of the files in a folder."""
    import h5py

    rows = []
    for f in [path] if path.is_file() else sorted(Path(path).glob("*.hdf5")):
        with h5py.File(f, "r") as h:
            for name in h["data"]:
                rows.append({**reversals(demo_chunks(np.asarray(h["data"][name]["actions"]))), "success": None})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="*", help="evaluation folders run with --record-chunks")
    p.add_argument("--demos", nargs="+", default=[], metavar="PATH",
                   help="demonstration HDF5 files or folders of them, each its own row: the baseline")
    p.add_argument("--tasks", help="only these task indices of the evaluations, e.g. 1,6,8 (the grasp-yaw tasks)")
    p.add_argument("--out", help="write the summaries as JSON here (atomically)")
    args = p.parse_args(argv)
    try:
        tasks = None if args.tasks is None else set(parse_int_list(args.tasks, "--tasks"))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result: dict[str, Any] = {}
    if not args.folders and not args.demos:
        print("error: name evaluation folders (run with --record-chunks) and/or --demos DEMO_DIR", file=sys.stderr)
        return 2
    for demos in args.demos:
        rows = demo_rows(Path(demos))
        if not rows:
            print(f"error: no demonstrations in {demos}; pass .hdf5 files or the folder they were written to",
                  file=sys.stderr)
            return 2
        result[f"demonstrations {demos}"] = summarize(rows)
    for folder in args.folders:
        rows = [r for r in eval_rows(Path(folder)) if tasks is None or r["task"] in tasks]
        if not rows:
            print(f"error: {folder} has no recorded chunks{'' if tasks is None else f' of tasks {args.tasks}'}; "
                  "evaluate with eval_rollouts.py --record-chunks", file=sys.stderr)
            return 2
        result[folder] = summarize(rows)
    print("| source | episodes | yaw rev./100 pairs | planar rev./100 pairs | eps. with reversal (yaw / planar) "
          "| success with / without reversal | gripper flips / episode |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    pct = lambda v: "-" if v is None else f"{100 * v:.0f}%"  # noqa: E731
    for name, s in result.items():
        print(f"| {name} | {s['episodes']} | {s['yaw_reversals_per_100_pairs']} | {s['planar_reversals_per_100_pairs']} "
              f"| {pct(s['episodes_with_yaw_reversal'])} / {pct(s['episodes_with_planar_reversal'])} "
              f"| {pct(s['success_with_reversal'])} / {pct(s['success_without_reversal'])} "
              f"| {s['gripper_flips_per_episode']} |")
    if args.out:
        from policy.utils import atomic_write_json

        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
