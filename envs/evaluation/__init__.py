"""The rollout harness: harness.py (the worker pool and batching loop, run_evaluation), plan.py (EvalConfig, plan, resume), worker.py (one simulator per process), results.py (episodes, records, tables, plots), outcome.py (why an episode failed), policies.py (what can be evaluated), bench.py.

The map of the packages and their seams: docs/architecture.md.
"""
