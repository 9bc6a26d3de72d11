#!/usr/bin/env python
"""Convert official-layout LIBERO HDF5 demonstrations into a LeRobot dataset (v3.0 or v2.1).

  python scripts/convert_to_lerobot.py data/libero_10 --out data/lerobot/libero_10

The same as `python -m envs.libero.lerobot_cli`; the code (and the full --help) is in envs/libero/lerobot_cli.py.
"""

from envs.libero.lerobot_cli import main

if __name__ == "__main__":
    raise SystemExit(main())
