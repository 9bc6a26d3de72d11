"""The 2D experiment (paper Section 6.1): targets and metrics (targets.py), the MLP generator (mlp.py), training (train.py).

The map of the packages and their seams: docs/architecture.md.
"""
