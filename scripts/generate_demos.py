#!/usr/bin/env python
"""Generate scripted LIBERO demonstrations in the official HDF5 layout (resumable).

  python scripts/generate_demos.py --suite libero_object --demos-per-task 50 --workers 2 --out data/

The same as `ddl-demos` or `python -m envs.scripted.cli`; the code (and the full --help) is in envs/scripted/cli.py.
"""

from envs.scripted.cli import main

if __name__ == "__main__":  # guarded: worker processes (spawn) re-import the main script
    raise SystemExit(main())
