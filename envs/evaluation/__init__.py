"""The rollout harness: harness.py (plan, resume, the worker pool and batching loop), worker.py (one simulator per process), results.py (episodes, records, tables, plots), outcome.py (why an episode failed), policies.py (what can be evaluated), bench.py.

The map of the packages and their seams: docs/architecture.md.
"""
