#!/usr/bin/env python
"""Benchmark: the training data readers, in-RAM against bounded (peak RSS per rank, samples/s).

Synthetic official-layout data of 1x, 4x and 16x the size of libero_object (~75k steps, two
cameras), each configuration in its own process (envs/libero/data_bench.py). The data sets and
the frame cache are written under --work (16x at 64 px: ~30 GB of cache on disk).

  python scripts/bench_data.py                                   # -> benchmarks/results/data.json
  python scripts/bench_data.py --scale-base 600 --length 30 --batches 5 --out /tmp/data.json   # smoke
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    from envs.libero.data_bench import LIBERO_OBJECT_STEPS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scales", default="1,4,16", help="data sizes in units of --scale-base steps (default 1,4,16)")
    p.add_argument("--scale-base", type=int, default=LIBERO_OBJECT_STEPS, help=f"steps at scale 1 (default {LIBERO_OBJECT_STEPS})")
    p.add_argument("--length", type=int, default=150, help="steps per demonstration (default 150)")
    p.add_argument("--image-size", type=int, default=64, help="stored and training image size (default 64, model=small)")
    p.add_argument("--workers", default="2,4", help="DataLoader worker counts (default 2,4; the last is data.json's)")
    p.add_argument("--batches", type=int, default=100, help="timed batches per configuration (default 100)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-ram-gb", type=float, default=16.0, help="leave the in-RAM reader out above this many GB of frames")
    p.add_argument("--work", default="/tmp/ddl_bench_data", help="where the data sets and the cache go")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "data.json"))
    args = p.parse_args(argv)
    try:
        scales = [int(s) for s in args.scales.split(",") if s]
        workers = [int(w) for w in args.workers.split(",") if w]
    except ValueError:
        print("error: --scales and --workers take comma-separated integers, e.g. --scales 1,4,16 --workers 2,4", file=sys.stderr)
        return 2
    if not scales or not workers or min(scales) < 1 or min(workers) < 0 or args.scale_base < args.length:
        print("error: give scales >= 1, workers >= 0 and --scale-base >= --length", file=sys.stderr)
        return 2
    from envs.evaluation.bench import machine_info, today
    from envs.libero.data_bench import run, to_result
    from policy.utils import atomic_write_json

    machine = machine_info()
    try:
        detail = run(Path(args.work), scales, workers, args.scale_base, args.length, args.image_size, args.batches,
                     args.batch_size, args.max_ram_gb, log=lambda m: print(m, file=sys.stderr))
    except (RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    config = {k: getattr(args, k) for k in ("scales", "scale_base", "length", "image_size", "batches", "batch_size", "max_ram_gb")}
    result = to_result(detail, workers[-1], machine, today(), config)
    atomic_write_json(Path(args.out), result)
    print(f"wrote {args.out}: peak RSS {result['peak_rss_mb']}, samples/s {result['samples_per_s']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
