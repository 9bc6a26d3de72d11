#!/usr/bin/env python
"""Which way does a policy go at a fork? A probe of the route / grasp-yaw modes.

  python scripts/probe_route_modes.py --checkpoint RUN --data DEMOS --steps 1 --samples 8

The same as `ddl-probe` or `python -m envs.study.probe_cli`; the code (and the full --help) is in envs/study/probe_cli.py.
"""

from envs.study.probe_cli import main

if __name__ == "__main__":  # guarded: worker processes (spawn) re-import the main script
    raise SystemExit(main())
