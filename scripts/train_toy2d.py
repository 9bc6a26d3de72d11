#!/usr/bin/env python
"""The 2D experiment (paper Section 6.1): distributional (energy) vs classical (MSE) diffusion.

  python scripts/train_toy2d.py --quick
  python scripts/train_toy2d.py --config paper

The same as `ddl-toy2d` or `python -m policy.toy2d.cli`; the code (and the full --help) is in policy/toy2d/cli.py.
"""

from policy.toy2d.cli import main

if __name__ == "__main__":  # guarded: worker processes (spawn) re-import the main script
    raise SystemExit(main())
