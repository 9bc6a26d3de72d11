#!/usr/bin/env python
"""Benchmark an episode's start in the simulator: LIBERO's hard reset (the scene rebuilt
from XML) against the environment's soft one (reset in place; bit-identical episodes, see
tests/envs/test_libero.py), side by side in one run (a few minutes on 2 CPU cores).

  python scripts/bench_reset.py            # -> benchmarks/results/reset.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

SCENES = (  # (suite, task, camera resolution, fast rendering, what it stands for)
    ("libero_object", 1, 0, False, "libero_object task 1, no cameras (the object-token study)"),
    ("libero_10", 0, 128, True, "libero_10 task 0, two 128x128 cameras, fast rendering (image policies)"),
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--starts", type=int, default=5, help="episode starts timed per reset mode and scene (default 5)")
    p.add_argument("--episode-steps", type=int, default=180,
                   help="env steps of a typical episode, to express a start as a share of one (default 180)")
    p.add_argument("--out", default="benchmarks/results/reset.json")
    args = p.parse_args(argv)
    if args.starts < 1 or args.episode_steps < 1:
        print("error: --starts and --episode-steps must be at least 1", file=sys.stderr)
        return 2
    from tqdm import tqdm

    from envs.evaluation.bench import machine_info, measure_reset_s, today
    from envs.evaluation.results import atomic_write_text

    machine, t0, scenes = machine_info(), time.time(), []
    for suite, task, resolution, fast, label in tqdm(SCENES, desc="scenes"):
        r = measure_reset_s(suite, task, resolution, fast, args.starts)
        episode_cpu = args.episode_steps * r["cpu_ms_per_step"] / 1000
        r["share_of_episode_cpu"] = {m: round(r["cpu_s"][m] / (r["cpu_s"][m] + episode_cpu), 3) for m in ("hard", "soft")}
        scenes.append({"scene": label, **r})
        print(f"{label}: hard {r['cpu_s']['hard']:.3f} s, soft {r['cpu_s']['soft']:.3f} s CPU per start "
              f"(x{r['speedup_cpu']}); a start is {100 * r['share_of_episode_cpu']['hard']:.0f}% -> "
              f"{100 * r['share_of_episode_cpu']['soft']:.0f}% of a {args.episode_steps}-step episode's CPU time")
    result = {"scenes": scenes, "starts": args.starts, "episode_steps": args.episode_steps,
              "timed": "reset + set_init_state after 20 random steps, median over starts, the two modes alternating",
              "machine": machine, "date": today(), "seconds": round(time.time() - t0)}
    atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
