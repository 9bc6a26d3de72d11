#!/usr/bin/env python
"""Benchmark the evaluation harness (a minute or two on 2 CPU cores):
env steps/s with 1 and 2 workers, official vs fast rendering (two 128x128 cameras),
and the share of rollout-loop time spent in policy inference.

  python scripts/bench_eval.py            # -> benchmarks/results/eval.json, render_compare.png
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="libero_10", help="scene to time (default libero_10, the heaviest)")
    p.add_argument("--task", type=int, default=0)
    p.add_argument("--steps", type=int, default=30, help="env steps per worker per measurement (default 30)")
    p.add_argument("--workers", default="1,2", help="worker counts to time (default 1,2)")
    p.add_argument("--checkpoint", help="policy for the inference share (default: untrained default architecture)")
    p.add_argument("--out", default="benchmarks/results", help="folder for eval.json and render_compare.png")
    args = p.parse_args(argv)
    try:
        from tqdm import tqdm

        from envs.evaluation.bench import machine_info, measure_steps_per_s, render_compare_png, today
        from envs.evaluation.results import atomic_write_text
        from envs.evaluation.harness import EvalConfig, run_evaluation
        from envs.libero.suites import get_task

        get_task(args.suite, args.task)
        workers = tuple(int(x) for x in args.workers.split(","))
        machine = machine_info()
        t0 = time.time()
        res = {}
        for mode in tqdm(("official", "fast"), desc="rendering modes"):
            res[mode] = measure_steps_per_s(args.suite, args.task, mode == "fast", workers, args.steps)
        render_compare_png(res["official"]["obs"], res["fast"]["obs"], Path(args.out) / "render_compare.png",
                           (res["official"]["faces"], res["fast"]["faces"]))

        if args.checkpoint:
            from envs.evaluation.policies import load_policy

            policy = load_policy("checkpoint", args.checkpoint)
        else:
            from policy.model.config import PolicyConfig
            from policy.model.policy import DiffusionPolicy

            policy = DiffusionPolicy(PolicyConfig(suites=(args.suite,)))
        with tempfile.TemporaryDirectory() as tmp:
            cfg = EvalConfig(suites=[args.suite], tasks={args.suite: [args.task]}, out_dir=tmp, episodes=2,
                             workers=2, max_steps=48, fast_render=True, policy="bench", progress=False)
            summary = run_evaluation(policy, cfg)
        n_calls = 2 * 48 // 8
        result = {
            "steps_per_s": {m: res[m]["steps_per_s"] for m in ("official", "fast")},
            "policy_time_share": summary["policy_time_share_loop"],
            "policy_s_per_call": round(summary["policy_time_s"] / n_calls, 4),
            "speedup_fast_vs_official": {k: round(res["fast"]["steps_per_s"][k] / res["official"]["steps_per_s"][k], 2)
                                         for k in res["fast"]["steps_per_s"]},
            "cpu_ms_per_step": {m: res[m]["cpu_ms_per_step"] for m in ("official", "fast")},
            "speedup_fast_vs_official_cpu": round(res["official"]["cpu_ms_per_step"] / res["fast"]["cpu_ms_per_step"], 2),
            "mesh_faces": {m: res[m]["faces"] for m in ("official", "fast")},
            "scene": f"{args.suite} task {args.task}, two 128x128 cameras, {args.steps} steps per worker",
            "policy_share_setup": "DiffusionPolicy default architecture, steps=2, batch of 2 workers, fast rendering, "
                                  "share of the rollout loop after start-up",
            "machine": machine,
            "date": today(),
        }
        atomic_write_text(Path(args.out) / "eval.json", json.dumps(result, indent=2) + "\n")
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    s = result["steps_per_s"]
    print(f"done in {time.time() - t0:.0f} s: official {s['official']} steps/s, fast {s['fast']} steps/s "
          f"(x{result['speedup_fast_vs_official']} wall, x{result['speedup_fast_vs_official_cpu']} CPU time), "
          f"policy share {100 * result['policy_time_share']:.0f}%; "
          f"wrote {Path(args.out) / 'eval.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
