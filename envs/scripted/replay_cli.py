"""Re-render a LIBERO demo file from its stored states, or check that its actions replay.

Examples:
  python scripts/replay_demos.py data/libero_object/X_demo.hdf5 --resolution 224 --out X_224.hdf5
  python scripts/replay_demos.py data/libero_object/X_demo.hdf5 --fast-render --out X_fast.hdf5
  python scripts/replay_demos.py data/libero_object/X_demo.hdf5 --check   (actions -> success?)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="demo file in the official LIBERO HDF5 layout")
    p.add_argument("--out", help="where to write the re-rendered file (required unless --check)")
    p.add_argument("--resolution", type=int, default=128, help="camera resolution (default 128)")
    p.add_argument("--fast-render", action="store_true", help="render with simplified visual meshes")
    p.add_argument("--check", action="store_true", help="replay every demo's actions without cameras")
    args = p.parse_args(argv)
    src = Path(args.file)
    if not src.is_file():
        print(f"error: no such file {src}", file=sys.stderr)
        return 2
    import h5py
    from tqdm import tqdm

    from envs.scripted.demos import make_planning_env
    from envs.scripted.replay import replay_actions, rerender_file, task_of_file

    try:
        task = task_of_file(src)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with h5py.File(src, "r") as f:
        names = [k for k in f["data"] if k.startswith("demo_")]
        steps = int(f["data"].attrs.get("total", 0))
    if args.check:
        env = make_planning_env(task)
        env.reset()
        ok = 0
        with h5py.File(src, "r") as f:
            for name in tqdm(names, desc="replaying actions"):
                success, _ = replay_actions(env, f["data"][name])
                ok += success
        env.close()
        print(f"done: {ok}/{len(names)} demos of {task.name} replay to success")
        return 0 if ok == len(names) else 1
    if not args.out:
        print("error: pass --out FILE (or --check)", file=sys.stderr)
        return 2
    with tqdm(total=steps, desc="re-rendering", unit="step") as bar:
        n = rerender_file(src, args.out, args.resolution, args.fast_render, progress=bar.update)
    print(f"done: {n} demos re-rendered at {args.resolution}px{' (fast)' if args.fast_render else ''} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
