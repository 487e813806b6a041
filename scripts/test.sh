#!/usr/bin/env bash
# The test command: set up .venv with the dev extras, lint (ruff, config in pyproject.toml; it takes well
# under a second, so it runs first), compile-check csrc/ (when nvcc is present), fetch the
# stable-audio-tools interop set, then run the CPU test suite (Triton kernels under the interpreter).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=dev bash scripts/setup.sh
. .venv/bin/activate
ruff check .
if [ -f scripts/compile_csrc.sh ]; then bash scripts/compile_csrc.sh; fi
if [ -f scripts/install_sat.sh ]; then bash scripts/install_sat.sh || true; fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
python -m pytest tests "$@"
