"""The energy-vs-MSE study: runner.py (presets, stages, resume), report.py (tables and plots from the evaluation folders).

The map of the packages and their seams: docs/architecture.md.
"""
