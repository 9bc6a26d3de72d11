#!/usr/bin/env python
"""Benchmark: what the observation features cost (a few minutes on 2 CPU cores).

Object tokens (``model=objects``, no cameras) against the small image policy (``model=small``,
two 64 px cameras, fast rendering), side by side on one task's demonstrations: evaluation env
steps/s, training step time (data loading included, same batch and loss) and predict latency.

  python scripts/bench_features.py --data data/study_objects/libero_object
      # -> benchmarks/results/features.json

The demonstrations must carry object poses (scripted files do; official files: run
scripts/add_object_poses.py on them first).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a folder of task files with object poses (one task is enough)")
    p.add_argument("--suite", default="libero_object", help="scene the env steps are timed in")
    p.add_argument("--task", type=int, default=0)
    p.add_argument("--env-steps", type=int, default=60, help="env steps per timing (default 60)")
    p.add_argument("--env-repeats", type=int, default=3, help="timings per env kind, the median is kept (default 3)")
    p.add_argument("--batch", type=int, default=32, help="training batch size of both presets (default 32)")
    p.add_argument("--iters", type=int, default=15, help="timed training steps per preset (the minimum is kept)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10, help="predict() calls per preset (the minimum is kept)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: the 2-core machine is shared)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "features.json"))
    args = p.parse_args(argv)
    try:
        import torch
        from tqdm import tqdm

        torch.set_num_threads(args.threads)
        from envs.evaluation.bench import machine_info, today
        from envs.libero.dataset import find_hdf5_files
        from envs.libero.suites import get_task
        from envs.libero.features_bench import env_steps_per_s, predict_ms, train_step_s
        from policy.scoring import LossConfig
        from policy.utils import atomic_write_json

        get_task(args.suite, args.task)
        find_hdf5_files(args.data)
        machine = machine_info()
        bar = tqdm(total=3, desc="bench")
        env = env_steps_per_s(args.suite, args.task, args.env_steps, args.env_repeats)
        bar.update()
        loss = LossConfig("energy", 1.0, 1.0, population=16)
        train = train_step_s(Path(args.data), args.batch, args.iters, args.warmup, loss)
        bar.update()
        pred = predict_ms(Path(args.data), args.repeats)
        bar.update()
        bar.close()
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = {
        "env_steps_per_s": env,
        "train_step_s": train["train_step_s"],
        "predict_ms": pred,
        "ratios": {"env_steps_object_over_image": round(env["object_tokens"] / env["image_fast"], 2),
                   "train_step_image_over_object": round(train["train_step_s"]["image_small"]
                                                         / train["train_step_s"]["object_tokens"], 2),
                   "predict_image_over_object": round(pred["image_small"] / pred["object_tokens"], 2)},
        "setup": {"suite": args.suite, "task": args.task, "data": args.data, "samples": train["samples"],
                  "env": "1 worker process each; object_tokens: camera-less env (resolution 0); image_fast: two 64 px "
                         "cameras, fast rendering", "batch": args.batch, "loss": "energy lambda=1 beta=1 m=16",
                  "parameters": train["parameters"], "threads": args.threads,
                  "timing": "env: median of repeats; train and predict: minimum over interleaved repeats, data loading "
                            "included in train"},
        "machine": machine,
        "date": today(),
    }
    atomic_write_json(Path(args.out), result)
    r = result["ratios"]
    print(f"env steps/s: objects {env['object_tokens']}, image {env['image_fast']} (x{r['env_steps_object_over_image']}); "
          f"train step s: objects {train['train_step_s']['object_tokens']}, image {train['train_step_s']['image_small']} "
          f"(image x{r['train_step_image_over_object']}); predict ms: {pred} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
