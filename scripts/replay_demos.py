#!/usr/bin/env python
"""Re-render a LIBERO demo file from its stored states, or check that its actions replay.

  python scripts/replay_demos.py data/libero_object/X_demo.hdf5 --check

The same as `ddl-replay` or `python -m envs.scripted.replay_cli`; the code (and the full --help) is in envs/scripted/replay_cli.py.
"""

from envs.scripted.replay_cli import main

if __name__ == "__main__":  # guarded: worker processes (spawn) re-import the main script
    raise SystemExit(main())
