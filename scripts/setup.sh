#!/usr/bin/env bash
# Make (or reuse) the project venv .venv: CPU torch 2.13.0 first (the wheel on disk; plain `torch` would pull
# a multi-GB CUDA build), then the project. EXTRAS=dev for the test tools. Quiet unless something fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
log=$(mktemp)
trap 'rm -f "$log"' EXIT
run() { "$@" >"$log" 2>&1 || { cat "$log"; echo "setup: failed: $*" >&2; exit 1; }; }
python -c "import torch" 2>/dev/null || run python -m pip install torch==2.13.0
extras=${EXTRAS:-}
spec="."
[ -n "$extras" ] && spec=".[$extras]"
run python -m pip install -e "$spec"
echo "setup: .venv ready (torch $(python -c 'import torch; print(torch.__version__)'))"
