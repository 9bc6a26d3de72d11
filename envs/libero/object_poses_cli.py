"""Add the per-object observation keys (``obs/<object>_pos``, ``_quat``, ``_to_robot0_eef_pos``)
to LIBERO demo files that lack them (the official files do), recovered from their ``states``.

Examples:
  python scripts/add_object_poses.py data/libero_object/                 (every *.hdf5, in place)
  python scripts/add_object_poses.py X_demo.hdf5 --out X_objects.hdf5
  python scripts/add_object_poses.py data/libero_object data/libero_goal --out data/with_objects/
Demos that already have the keys are kept as they are (--force recomputes them). Files are
written atomically (temp file + rename). The code is in envs/libero/object_poses.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def targets(inputs: list[str], out: str | None) -> list[tuple[Path, Path]]:
    """(source, destination) of every file the inputs name (files, or folders: their *.hdf5).
    ``out``: None = in place; a file path when the only input is one file and ``out`` ends in
    .hdf5 (and is no folder); otherwise a folder that receives the files under their names.
    Bad input is one ValueError line."""
    from envs.libero.object_poses import hdf5_files

    sources: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = hdf5_files(path)
            if not found:
                raise ValueError(f"{path}: no *.hdf5 files in it; pass LIBERO demo files or folders of them")
            sources += found
        elif path.is_file():
            sources.append(path)
        else:
            raise ValueError(f"no such file or folder: {path}")
    if out is None:
        return [(s, s) for s in sources]
    out_path = Path(out)
    if len(inputs) == 1 and Path(inputs[0]).is_file() and out_path.suffix == ".hdf5" and not out_path.is_dir():
        return [(sources[0], out_path)]
    if out_path.exists() and not out_path.is_dir():
        raise ValueError(f"--out {out_path} is a file, but several files are written: pass a folder")
    pairs = [(s, out_path / s.name) for s in sources]
    seen: dict[Path, Path] = {}
    for s, d in pairs:
        if d in seen and seen[d].resolve() != s.resolve():
            raise ValueError(f"{seen[d]} and {s} would both be written to {d}: convert them separately")
        seen[d] = s
    return pairs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="demo files in the official LIBERO HDF5 layout, or folders of them")
    p.add_argument("--out", help="output file (one input file) or folder (default: rewrite the inputs in place)")
    p.add_argument("--force", action="store_true", help="recompute object keys that a demo already has")
    args = p.parse_args(argv)
    from tqdm import tqdm

    from envs.libero.object_poses import add_object_poses, demos_to_convert

    try:
        pairs = targets(args.paths, args.out)
        steps = sum(t for src, _ in pairs for _, t in demos_to_convert(src, args.force))  # checks every file first
        converted, files = 0, 0
        with tqdm(total=steps, desc="object poses", unit="step") as bar:
            for src, dst in pairs:
                bar.set_postfix_str(src.name[:40])
                n = add_object_poses(src, None if dst == src else dst, bar.update, args.force)
                converted += n
                files += n > 0
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    kept = len(pairs) - files
    print(f"done: object poses of {converted} demos added to {files} files"
          + (f"; {kept} files already had them" if kept else "")
          + (f" -> {args.out}" if args.out else " (in place)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
