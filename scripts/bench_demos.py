"""Benchmark the scripted demonstrator: per-task success (planning without cameras) and
demonstrations per hour with official and fast rendering.

Example: python scripts/bench_demos.py --suites libero_object,libero_spatial --attempts 20 --workers 2
Merges results into benchmarks/results/demos.json ({"tasks": ..., "demos_per_hour": ...}).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

TARGET = {"libero_object": 0.9, "libero_spatial": 0.9, "libero_goal": 0.7, "libero_10": 0.7}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suites", default="libero_object,libero_spatial,libero_goal,libero_10",
                   help="comma-separated suites for the success benchmark ('' to skip)")
    p.add_argument("--tasks", default="all", help="task indices within each suite (default all)")
    p.add_argument("--attempts", type=int, default=20, help="random layouts per task (default 20)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--rate-demos", type=int, default=0,
                   help="demos to generate for the demos-per-hour measurement (0 = skip; default 0)")
    p.add_argument("--resolution", type=int, default=128, help="resolution for the rate measurement")
    p.add_argument("--out", default="benchmarks/results/demos.json", help="results JSON (merged)")
    args = p.parse_args(argv)
    from envs.libero.suites import check_suite
    from envs.scripted.bench import bench_demos_per_hour, bench_success, merge_results

    suites = [s for s in args.suites.split(",") if s]
    try:
        for s in suites:
            check_suite(s)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    save = lambda key, r: merge_results(Path(args.out), {key: r})  # noqa: E731  (partial results survive)
    tasks = bench_success(suites, args.attempts, args.workers, args.tasks, on_task=save) if suites else {}
    rates = {}
    if args.rate_demos > 0:
        for name, fast in (("official", False), ("fast", True)):
            rates[name] = round(bench_demos_per_hour("libero_object", 0, args.rate_demos, args.workers,
                                                     args.resolution, fast), 1)
    merge_results(Path(args.out), tasks, rates)
    below = [k for k, r in tasks.items() if r["successes"] < TARGET.get(k.split("/")[0], 0) * r["attempts"]]
    for k in sorted(tasks):
        r = tasks[k]
        print(f"{r['successes']:>3}/{r['attempts']:<3} {k}" + ("  BELOW TARGET" if k in below else ""))
    ok = sum(r["successes"] for r in tasks.values())
    n = sum(r["attempts"] for r in tasks.values())
    print(f"done: {ok}/{n} scripted successes over {len(tasks)} tasks, {len(below)} below target; "
          f"demos/hour {rates or '(not measured)'} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
