#!/usr/bin/env python
"""Benchmark: where the policy runs in a Ray evaluation (``eval_rollouts.py --ray-policy``):
episodes per second with the policy in the driver, in one Ray actor, and in one actor per node,
at equal workers on a two-node cluster; plus what decides it: the policy's predict time against
the batch size, and the round trip a policy actor adds.

The cluster is started here on this machine's loopback interface (envs/evaluation/ray_local.py),
two nodes splitting ``--workers`` CPUs, and its start is not timed. The nodes share this machine's
cores: per-node inference here runs its parts on cores the waiting workers leave idle, as it would
on a real cluster's nodes. ``--noise episode``: every placement makes the same actions.

  python scripts/bench_ray_policy.py --checkpoint runs/study/objects/libero_object/energy_lam1_beta0.1 \
      --episodes 20 --steps 2 --label objects_2_steps          # object tokens (preset objects), ~7 min
  python scripts/bench_ray_policy.py --checkpoint runs/study/quick/libero_object/energy_lam1_beta1 \
      --episodes 12 --steps 16 --label image_16_steps           # the small image policy (preset quick), ~10 min
  python scripts/bench_ray_policy.py --checkpoint <run> --tiny --out /tmp/ray_policy.json   # smoke run
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
PLACEMENTS = ("driver", "actor", "node")


def _batch(policy: Any, suite: str, task: int, b: int) -> dict[str, Any]:
    """A batch of ``b`` copies of the task's first observation (init state 0), stacked as the harness does."""
    from envs.benchmark import stack_observations
    from envs.libero.benchmark import LIBERO

    res = int(policy.config.render_resolution)
    env = LIBERO.make_env(suite, task, res, True)
    try:
        env.reset()
        obs = env.set_init_state(LIBERO.init_state(suite, task, 0))
    finally:
        env.close()
    return stack_observations([obs] * b, LIBERO.observation_spec(res))


def _timed(fn: Any, n: int) -> float:
    fn()  # warm
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def _micro(args: argparse.Namespace) -> dict[str, Any]:
    """Predict seconds by batch size in this process and through one policy actor."""
    import torch

    from envs.evaluation.policies import load_policy
    from envs.evaluation.ray_policy import RemotePolicy

    policy = load_policy("checkpoint", args.checkpoint)
    gens = lambda b: [torch.Generator().manual_seed(i) for i in range(b)]  # noqa: E731
    out: dict[str, Any] = {"local_s": {}, "actor_s": {}}
    remote = RemotePolicy(policy, args.checkpoint, "actor", "cpu")
    try:
        for b in args.batches:
            batch = _batch(policy, args.suite, args.task, b)
            out["local_s"][b] = round(_timed(lambda: policy.predict(batch, steps=args.steps, generator=gens(b)), args.reps), 5)
            rbatch = {**batch, "worker_ids": [0] * b}
            out["actor_s"][b] = round(_timed(lambda: remote.predict(rbatch, steps=args.steps, generator=gens(b)), args.reps), 5)
            print(f"predict batch {b:3d}: local {1e3 * out['local_s'][b]:.1f} ms, through an actor "
                  f"{1e3 * out['actor_s'][b]:.1f} ms", flush=True)
    finally:
        remote.close()
    return out


def _episodes(placement: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from envs.evaluation.harness import EvalConfig, run_evaluation
    from envs.evaluation.policies import load_policy
    from envs.evaluation.ray_policy import RemotePolicy
    from envs.evaluation.ray_pool import RayPool

    policy = load_policy("checkpoint", args.checkpoint)
    res = int(policy.config.render_resolution)
    cfg = EvalConfig(suites=[args.suite], tasks={args.suite: [args.task]}, out_dir=str(out), episodes=args.episodes,
                     workers=args.workers, steps=args.steps, resolution=res, fast_render=True, progress=False,
                     policy="bench", producer={"kind": "bench"}, noise="episode", max_steps=args.max_steps)
    pool = RayPool(cfg.benchmark, res, True, log=None)
    remote = None
    if placement != "driver":
        remote = RemotePolicy(policy, args.checkpoint, placement, "cpu")
        remote.bind(pool)
    try:
        summary = run_evaluation(remote or policy, cfg, pool=pool)
    finally:
        if remote is not None:
            remote.close()
    n, wall = summary["new_episodes"], summary["wall_time_s"]
    s = summary["suites"][args.suite]
    return {"placement": placement, "episodes": n, "successes": s["successes"], "errors": s["errors"], "wall_s": wall,
            "episodes_per_s": round(n / wall, 4), "policy_time_s": summary["policy_time_s"],
            "env_steps": summary["env_steps"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a trained policy's run dir or pretrained folder")
    p.add_argument("--suite", default="libero_object")
    p.add_argument("--task", type=int, default=0)
    p.add_argument("--steps", type=int, default=2, help="sampler steps (default 2)")
    p.add_argument("--workers", type=int, default=2, help="simulator workers, split over 2 nodes (default 2)")
    p.add_argument("--episodes", type=int, default=8, help="episodes per measurement (default 8)")
    p.add_argument("--max-steps", type=int, default=None, help="episode cap (default: the suite's)")
    p.add_argument("--repeats", type=int, default=2, help="measurements per placement, interleaved; median kept")
    p.add_argument("--batches", default="1,2,4,8,16,32", help="batch sizes of the predict timing")
    p.add_argument("--reps", type=int, default=10, help="timed predicts per batch size")
    p.add_argument("--tiny", action="store_true", help="smoke run: 2 episodes of 16 steps, 1 repeat, batches 1,2")
    p.add_argument("--label", help="key of this measurement in --out (default: <checkpoint name>_<steps>_steps); "
                   "the file keeps the other labels' measurements")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ray_policy.json"))
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    if args.tiny:
        args.episodes, args.max_steps, args.repeats, args.batches, args.reps = 2, 16, 1, [1, 2], 2
    if args.workers < 2:
        print("error: --workers must be >= 2 (two nodes)", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    import ray

    from envs.evaluation.bench import machine_info
    from envs.evaluation.ray_local import LocalCluster, prepare_driver

    machine, t0 = machine_info(), time.time()
    runs: list[dict[str, Any]] = []
    w = args.workers
    with LocalCluster((w - w // 2, w // 2)) as cluster, tempfile.TemporaryDirectory(prefix="bench-ray-policy-") as tmp:
        prepare_driver(cluster.env)
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            micro = _micro(args)
            for r in range(args.repeats):
                for placement in PLACEMENTS:
                    res = _episodes(placement, args, Path(tmp) / f"{placement}_{r}")
                    runs.append(res)
                    print(f"{placement:6s} repeat {r}: {res['episodes']} episodes in {res['wall_s']:.1f} s "
                          f"({res['episodes_per_s']:.3f}/s, policy {res['policy_time_s']:.1f} s, "
                          f"{res['successes']} successes)", flush=True)
        finally:
            ray.shutdown()
    eps = {m: round(statistics.median(x["episodes_per_s"] for x in runs if x["placement"] == m), 4)
           for m in PLACEMENTS}
    pol = {m: round(statistics.median(x["policy_time_s"] for x in runs if x["placement"] == m), 2) for m in PLACEMENTS}
    result = {
        "episodes_per_s": eps,
        "policy_time_s": pol,
        "predict_s_by_batch": micro,
        "actor_round_trip_ms": {b: round(1e3 * (micro["actor_s"][b] - micro["local_s"][b]), 2) for b in args.batches},
        "workers": w,
        "machine": machine,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "setup": (f"{args.checkpoint} ({args.steps} sampler steps, noise episode, CPU, 1 thread per process) on "
                  f"{args.suite} task {args.task}, {args.episodes} episodes per measurement, {w} workers on a "
                  f"LocalCluster of 2 nodes of this machine; median of {args.repeats} interleaved repeats; wall time "
                  f"of run_evaluation (worker start, env builds and policy actor start included, cluster start not)"),
        "ray_version": ray.__version__,
        "runs": runs,
        "bench_wall_s": round(time.time() - t0, 1),
    }
    from policy.utils import atomic_write_text

    label = args.label or f"{Path(args.checkpoint).name}_{args.steps}_steps"
    out = Path(args.out)
    known = json.loads(out.read_text()) if out.is_file() else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps({**known, label: result}, indent=2) + "\n")
    print(f"episodes/s: {eps}; policy time {pol}; written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
