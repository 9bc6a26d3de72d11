"""Generate scripted LIBERO demonstrations in the official HDF5 layout (resumable).

Example: python scripts/generate_demos.py --suite libero_object --demos-per-task 50 --workers 2 --out data/
Writes <out>/<suite>/<task name>_demo.hdf5; a rerun only adds the demos still missing.
With --format lerobot it then also writes the LeRobot dataset <out>/<suite>_lerobot/ (v3.0,
envs/libero/lerobot_write.py) from those files: the HDF5 files stay the resumable record.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="libero_object", help="LIBERO suite (default libero_object)")
    p.add_argument("--tasks", default="all", help="comma-separated task indices, or 'all' (default)")
    p.add_argument("--demos-per-task", type=int, default=50, help="demonstrations per task (default 50)")
    p.add_argument("--workers", type=int, default=2, help="parallel worker processes (default 2)")
    p.add_argument("--out", default="data/", help="output root; files go to <out>/<suite>/ (default data/)")
    p.add_argument("--resolution", type=int, default=128, help="square camera resolution (default 128)")
    p.add_argument("--fast-render", action="store_true", help="render with simplified visual meshes")
    p.add_argument("--detour", type=float, default=0.0,
                   help="route modes (m, default 0 = off): every reach and every transfer first steps this far "
                        "left or right (50/50) of its straight line, a discrete multimodality whose average "
                        "action stands still (the study's preset cpu_bimodal uses 0.12)")
    p.add_argument("--yaw-modes", action="store_true",
                   help="grasp-yaw modes: the hand travels a quarter turn off the grasp axis and turns back one "
                        "way or the other (50/50) above the object; the average of the two leaves the fingers "
                        "across the wide side, which fails on boxes wider than the gripper (libero_object "
                        "tasks 1, 6, 8; the study's preset cpu_yaw_task1)")
    p.add_argument("--format", default="hdf5", choices=["hdf5", "lerobot"],
                   help="hdf5 (the official layout, default) or lerobot: also write <out>/<suite>_lerobot/, a LeRobot "
                        "v3.0 dataset of the suite folder's demos (needs pyarrow: pip install -e '.[lerobot]')")
    p.add_argument("--max-attempts-factor", type=float, default=3.0,
                   help="give up on a task after factor * missing attempts (default 3)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from envs.scripted.generate import GenerateConfig, generate_suite

    try:
        cfg = GenerateConfig(suite=args.suite, tasks=args.tasks, demos_per_task=args.demos_per_task,
                             workers=args.workers, out=Path(args.out), resolution=args.resolution,
                             fast_render=args.fast_render, max_attempts_factor=args.max_attempts_factor,
                             detour=args.detour, yaw_modes=args.yaw_modes)
        summary = generate_suite(cfg)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    short = [name for name, n in summary.items() if n < args.demos_per_task]
    print(f"done: {sum(summary.values())} demos in {len(summary)} task files under "
          f"{Path(args.out) / args.suite}" + (f"; SHORT of {args.demos_per_task}: {short}" if short else ""))
    if args.format == "lerobot" and not short:
        from envs.libero.dataset import DatasetError
        from envs.libero.lerobot_write import convert_hdf5_to_lerobot

        out = Path(args.out) / f"{args.suite}_lerobot"
        if out.is_dir() and any(out.iterdir()):
            print(f"note: {out} exists; delete it to convert the demos again")
            return 0
        try:
            convert_hdf5_to_lerobot([Path(args.out) / args.suite], out)
        except (ValueError, FileNotFoundError, FileExistsError, DatasetError, ImportError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"wrote the LeRobot dataset {out} (train from it with suite.data_dirs=[{out}])")
    return 1 if short else 0


if __name__ == "__main__":
    raise SystemExit(main())
