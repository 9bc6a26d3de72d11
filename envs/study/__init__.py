"""The energy-vs-MSE study: runner.py (presets, stages, resume), report.py (tables and plots from the evaluation folders)."""
