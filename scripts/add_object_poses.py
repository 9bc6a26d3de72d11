#!/usr/bin/env python
"""Add the per-object observation keys (<object>_pos, _quat, _to_robot0_eef_pos) to LIBERO demo
files that lack them (the official files do), recovered from their recorded states.

  python scripts/add_object_poses.py data/libero_object/            (every *.hdf5 in it, in place)
  python scripts/add_object_poses.py X_demo.hdf5 --out X_objects.hdf5

The code (and the full --help) is in envs/libero/object_poses_cli.py and envs/libero/object_poses.py.
"""

from envs.libero.object_poses_cli import main

if __name__ == "__main__":
    raise SystemExit(main())
