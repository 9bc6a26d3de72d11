#!/usr/bin/env python
"""The image experiment (paper Section 6.2): energy vs MSE image diffusion models.

  python scripts/train_image.py --quick

The same as `ddl-image` or `python -m policy.image.cli`; the code (and the full --help) is in policy/image/cli.py.
"""

from policy.image.cli import main

if __name__ == "__main__":  # guarded: worker processes (spawn) re-import the main script
    raise SystemExit(main())
