"""The scripted demonstrator: planner.py (ScriptedPlanner), primitives per object kind (pick, push, articulated, door, insert), scene/pose/layout helpers, demos.py (plan + render one demonstration), generate.py (suites in parallel), replay.py, bench.py.

The map of the packages and their seams: docs/architecture.md.
"""
