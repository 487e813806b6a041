#!/usr/bin/env bash
# Train and evaluate the bundled tiny model end to end on the CPU (docs/tiny_model.md).
#   bash scripts/train_tiny/run_all.sh [--quick] [RUN_DIR]      # --quick: every stage for seconds (CI)
# The full run's exact arguments (time limits included) are those recorded in arc_fast/assets/default/manifest.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
QUICK=""
if [ "${1:-}" = "--quick" ]; then QUICK="--quick"; shift; fi
OUT=${1:-${TMPDIR:-/tmp}/arc_fast_tiny_run}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PY=${PYTHON:-python}
$PY scripts/train_tiny/01_autoencoder.py --out "$OUT" $QUICK
$PY scripts/train_tiny/02_pretrain_rf.py --out "$OUT" $QUICK
$PY scripts/train_tiny/03_arc.py --out "$OUT" $QUICK
$PY scripts/train_tiny/04_eval.py --out "$OUT" --results "$OUT/eval" $QUICK
