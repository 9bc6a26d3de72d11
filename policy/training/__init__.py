"""Training of the LIBERO policy: the loop (loop.py), checkpoints and exact resume (checkpoint.py), Hydra config composition (config.py), optimiser/EMA/schedule (optim.py, shared by every training loop), benchmarks (bench.py).

The map of the packages and their seams: docs/architecture.md.
"""
