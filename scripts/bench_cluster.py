#!/usr/bin/env python
"""Benchmark: evaluation episodes per second with the local process pool and with the Ray pool
at equal worker counts (Ray's overhead), and with the Ray workers on 1 and on 2 nodes.

The Ray clusters are started here, on this machine's loopback interface
(envs/evaluation/ray_local.py), and stopped after each measurement; their start is not timed
(a cluster runs before an evaluation starts). Two nodes on one machine share its cores: the
2-node figure measures the cost of messages between nodes, not more hardware. The policy is the
no-op (nothing to infer): the figures are the simulator and the pool, per episode. Episodes run
to the cap (the no-op never succeeds), so every episode has the same length.

  python scripts/bench_cluster.py                    # -> benchmarks/results/cluster.json (~15 min, quiet 2 cores)
  python scripts/bench_cluster.py --tiny --out /tmp/cluster.json   # a smoke run (under a minute)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODES = ("local", "ray", "ray_2_nodes")


def _run(mode: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One evaluation of ``args.episodes`` episodes with the pool of ``mode``; its timings."""
    from envs.evaluation.harness import EvalConfig, run_evaluation
    from envs.evaluation.policies import NoopPolicy

    cfg = EvalConfig(suites=[args.suite], tasks={args.suite: [args.task]}, out_dir=str(out), episodes=args.episodes,
                     workers=args.workers, max_steps=args.max_steps, resolution=args.resolution,
                     fast_render=args.fast_render, progress=False, policy="noop", producer={"kind": "noop"})
    if mode == "local":
        summary = run_evaluation(NoopPolicy(), cfg)
        nodes = 1
    else:
        import ray

        from envs.evaluation.ray_local import LocalCluster, prepare_driver
        from envs.evaluation.ray_pool import RayPool

        w = args.workers
        cpus = (w,) if mode == "ray" else (w - w // 2, w // 2)
        nodes = len(cpus)
        with LocalCluster(cpus) as cluster:
            prepare_driver(cluster.env)
            ray.init(address=cluster.address, log_to_driver=False)
            try:
                pool = RayPool(cfg.benchmark, cfg.resolution, cfg.fast_render, log=None)
                summary = run_evaluation(NoopPolicy(), cfg, pool=pool)
            finally:
                ray.shutdown()
    errors = sum(d["errors"] for d in summary["suites"].values())
    if errors:
        raise RuntimeError(f"{mode}: {errors} episodes ended in an error; see {out}/episodes.jsonl")
    n, wall, loop = summary["new_episodes"], summary["wall_time_s"], summary["loop_time_s"]
    return {"mode": mode, "nodes": nodes, "episodes": n, "wall_s": wall, "loop_s": loop,
            "episodes_per_s": round(n / wall, 4), "env_steps": summary["env_steps"],
            "env_steps_per_s": round(summary["env_steps"] / wall, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2, help="simulator workers in every mode (default 2, at least 2)")
    p.add_argument("--episodes", type=int, default=12, help="episodes per measurement (default 12)")
    p.add_argument("--max-steps", type=int, default=80, help="policy steps per episode, the cap (default 80)")
    p.add_argument("--suite", default="libero_goal")
    p.add_argument("--task", type=int, default=0)
    p.add_argument("--resolution", type=int, default=128, help="camera size; 0: camera-less envs (default 128)")
    p.add_argument("--fast-render", action="store_true")
    p.add_argument("--repeats", type=int, default=2, help="measurements per mode, interleaved; the median is kept")
    p.add_argument("--tiny", action="store_true", help="a smoke run: 2 episodes of 8 steps, no cameras, 1 repeat")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cluster.json"))
    args = p.parse_args(argv)
    if args.tiny:
        args.episodes, args.max_steps, args.resolution, args.repeats = 2, 8, 0, 1
    if args.workers < 2 or args.episodes < 1 or args.repeats < 1:
        print("error: --workers must be >= 2 (two nodes), --episodes and --repeats >= 1", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import ray  # noqa: F401
    except ImportError:
        print('error: Ray is not installed; install the cluster extra: pip install -e ".[cluster]"', file=sys.stderr)
        return 2
    from envs.evaluation.bench import machine_info

    machine, t0 = machine_info(), time.time()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        for r in range(args.repeats):
            for mode in MODES:
                res = _run(mode, args, Path(tmp) / f"{mode}_{r}")
                runs.append(res)
                print(f"{mode:12s} repeat {r}: {res['episodes']} episodes in {res['wall_s']:.1f} s "
                      f"({res['episodes_per_s']:.3f} episodes/s)", flush=True)
    eps = {m: round(statistics.median(x["episodes_per_s"] for x in runs if x["mode"] == m), 4) for m in MODES}
    steps_per_episode = args.max_steps + 10  # the cap and the wait steps: the no-op never succeeds
    result = {
        "episodes_per_s": eps,
        "workers": args.workers,
        "machine": machine,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "ray_overhead_pct": round(100 * (eps["local"] / eps["ray"] - 1), 1),
        "ray_2_nodes_overhead_pct": round(100 * (eps["local"] / eps["ray_2_nodes"] - 1), 1),
        "worker_s_per_episode": {m: round(args.workers / v, 3) for m, v in eps.items()},
        "setup": (f"{args.suite} task {args.task}, {args.episodes} episodes of {steps_per_episode} env steps "
                  f"({args.max_steps} policy steps + 10 wait), no-op policy, resolution {args.resolution}"
                  f"{', fast rendering' if args.fast_render else ''}, {args.workers} workers; Ray on a LocalCluster "
                  f"of this machine (1 node of {args.workers} CPUs, or 2 nodes splitting them); median of "
                  f"{args.repeats} interleaved repeats; wall time of run_evaluation (worker start and env builds "
                  f"included, cluster start not)"),
        "ray_version": __import__("ray").__version__,
        "runs": runs,
        "bench_wall_s": round(time.time() - t0, 1),
    }
    from policy.utils import atomic_write_text

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"episodes/s: local {eps['local']}, ray {eps['ray']}, ray_2_nodes {eps['ray_2_nodes']} "
          f"(Ray overhead {result['ray_overhead_pct']}%); written to {args.out}")
    return 0


if __name__ == "__main__":  # guarded: worker processes (spawn) re-import the main script
    raise SystemExit(main())
