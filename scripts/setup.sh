#!/usr/bin/env bash
# Installs the package and its dependencies into the current Python (or an active venv).
# torch is pinned to the CPU build that these machines carry on disk; on a GPU machine
# install the torch you need first and this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp -t ddl-setup.XXXXXX.log)
pip_quiet() {  # pip's chatter goes to a log that is shown only if the install fails
  if ! python -m pip install --disable-pip-version-check "$@" >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup failed: pip install $* (full log above)" >&2
    exit 1
  fi
}
echo "setup: installing dependencies (log: $log)"
python -c "import torch" 2>/dev/null || pip_quiet "torch==2.13.0"
pip_quiet -e ".[dev]"
# the stock openpi client, for the test that drives an episode with it: its numpy<2 pin is
# stale (it runs on numpy 2) and would break robosuite's opencv, so its dependencies come from [dev]
pip_quiet --no-deps "openpi-client==0.1.2"
echo "setup: done ($(python -c 'import torch; print("torch", torch.__version__)'))"
