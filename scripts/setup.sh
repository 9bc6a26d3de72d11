#!/usr/bin/env bash
# Installs the package and its dependencies into the current Python (or an active venv).
# torch is pinned to the CPU build that these machines carry on disk; on a GPU machine
# install the torch you need first and this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev]"
