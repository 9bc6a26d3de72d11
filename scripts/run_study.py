#!/usr/bin/env python
"""The LIBERO study (energy vs MSE policies, success against sampler steps) in one resumable command.

  python scripts/run_study.py preset=quick
  python scripts/run_study.py suite=libero_object

The same as `ddl-study` or `python -m envs.study.cli`; the code (and the full --help) is in envs/study/cli.py.
"""

from envs.study.cli import main

if __name__ == "__main__":  # guarded: worker processes (spawn) re-import the main script
    raise SystemExit(main())
