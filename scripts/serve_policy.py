#!/usr/bin/env python
"""Serve a trained policy to robot controllers (openpi-client's websocket protocol).

  python scripts/serve_policy.py
  python scripts/serve_policy.py --checkpoint DIR --steps 2 --host 0.0.0.0 --api-key KEY

The same as `ddl-serve` or `python -m policy.serving.cli`; the code (and the full --help) is in policy/serving/cli.py.
"""

from policy.serving.cli import main

if __name__ == "__main__":  # guarded: worker processes (spawn) re-import the main script
    raise SystemExit(main())
