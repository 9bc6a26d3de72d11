#!/usr/bin/env python
"""Benchmark: training step time and peak memory of energy (m=16) vs MSE (m=1) on the
same batch and model, and predict() latency at 1, 2, 4, 8, 16 sampler steps (batch 1).

  python scripts/bench_train.py                         # small model, CPU
  python scripts/bench_train.py --model paper --batch 32 # on a GPU

Writes benchmarks/results/train.json (and prints a summary line).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the default --out is this checkout's benchmarks/results/


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="small", choices=["small", "paper"], help="configs/model/<name>.yaml")
    ap.add_argument("--batch", type=int, default=16, help="training batch size")
    ap.add_argument("--iters", type=int, default=12, help="timed steps per loss (the minimum is reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per loss")
    ap.add_argument("--repeats", type=int, default=7, help="predict() calls per step count (the minimum is reported)")
    ap.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: the 2-core machine is shared)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train.json"))
    args = ap.parse_args()

    import torch
    from tqdm import tqdm

    torch.set_num_threads(args.threads)

    from policy.utils import atomic_write_json
    from policy.training.bench import device_description, peak_memory_mb, predict_latency_ms, step_times
    from policy.training.config import compose_config, split_config

    policy_cfg = split_config(compose_config([f"model={args.model}"]))[0]
    device = torch.device(args.device)
    bar = tqdm(total=3, desc="bench")
    steps = step_times(policy_cfg, args.batch, args.iters, args.warmup, device)
    bar.update()
    mem = peak_memory_mb(policy_cfg, args.batch, device)
    bar.update()
    pred = predict_latency_ms(policy_cfg, (1, 2, 4, 8, 16), args.repeats, device)
    bar.update()
    bar.close()
    result = {
        "step_time_s": steps,
        "peak_mem_mb": mem,
        "predict_ms": pred,
        "ratio_energy_m16_over_mse": steps["energy_m16"] / steps["mse"],
        "setup": {"model": args.model, "batch": args.batch, "image_size": policy_cfg.image_size, "device": device_description(device),
                  "iters": args.iters, "threads": args.threads, "memory": "CUDA: max_memory_allocated; CPU: 4 x parameter bytes (weights, grads, AdamW moments) + activations saved for backward"},
    }
    out = Path(args.out)
    atomic_write_json(out, result)
    print(f"step mse {steps['mse']*1000:.0f} ms, energy m=16 {steps['energy_m16']*1000:.0f} ms "
          f"(x{result['ratio_energy_m16_over_mse']:.2f}); peak MB {mem['mse']:.0f} / {mem['energy_m16']:.0f}; "
          f"predict ms {', '.join(f'{k}:{v:.0f}' for k, v in pred.items())} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
