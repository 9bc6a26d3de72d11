"""The LIBERO layer: suites, tasks, init states, the gymnasium env and THE observation function (env.py), fast rendering (render_fast.py, mesh_io.py), BDDL goal parsing (bddl.py), demonstration files (hdf5_writer.py, dataset.py).

The map of the packages and their seams: docs/architecture.md.
"""
