#!/usr/bin/env python
"""Train the LIBERO distributional diffusion policy (Hydra key=value overrides).

  python scripts/train_policy.py suite=libero_10 loss=energy loss.lam=0.5 loss.beta=1
  torchrun --nproc_per_node=2 scripts/train_policy.py suite=libero_10   # DDP

The same as `ddl-train` or `python -m envs.training_cli`; the code (and the full --help) is in envs/training_cli.py.
"""

from envs.training_cli import main

if __name__ == "__main__":  # guarded: worker processes (spawn) re-import the main script
    raise SystemExit(main())
