#!/usr/bin/env python
"""Evaluate a policy on LIBERO with the common protocol.

  python scripts/eval_rollouts.py --steps 2
  python scripts/eval_rollouts.py --steps 1,2,4,8,16

The same as `ddl-eval` or `python -m envs.evaluation.cli`; the code (and the full --help) is in envs/evaluation/cli.py.
"""

from envs.evaluation.cli import main

if __name__ == "__main__":  # guarded: worker processes (spawn) re-import the main script
    raise SystemExit(main())
