#!/usr/bin/env python
"""A robot controller loop driven by the policy server; the LIBERO simulator plays the robot.

  python scripts/robot_client_example.py --suite libero_object --task 0 --episodes 2

The same as `ddl-robot-client` or `python -m envs.evaluation.robot_client_cli`; the code (and the full --help) is in envs/evaluation/robot_client_cli.py.
"""

from envs.evaluation.robot_client_cli import main

if __name__ == "__main__":  # guarded: worker processes (spawn) re-import the main script
    raise SystemExit(main())
