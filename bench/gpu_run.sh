#!/usr/bin/env bash
# The one script a short GPU loan runs (from the repository root), in under 8 minutes on an H100:
#   1. pip install --no-deps --no-build-isolation -e .   (builds the CUDA extension when nvcc is there;
#      falls back to ARC_FAST_SKIP_CUDA_BUILD=1 if the build fails or runs long: the CuPy runtime or the
#      Triton kernels still serve)
#   2. python -m pytest -m gpu -x -q                      (the GPU parity suite; one pinned autotune config)
#   3. python -m bench --device cuda                      (e2e first, then kernels, decoder, train-step), with
#      a time budget so that it always finishes and writes its JSON / markdown / plots
# Everything goes to $OUT (default: ./gpu_out): log.txt, pytest.txt, bench/<device>.{json,md,png}.
#   OUT=/tmp/x bash bench/gpu_run.sh          TOTAL_S=480 (wall budget), PYTHON=python
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-$PWD/gpu_out}"
PY="${PYTHON:-python}"
TOTAL_S="${TOTAL_S:-470}"
mkdir -p "$OUT/bench"
LOG="$OUT/log.txt"
: >"$LOG"
SECONDS=0
say() { echo "[gpu_run ${SECONDS}s] $*" | tee -a "$LOG"; }
left() { echo $((TOTAL_S - SECONDS)); }

say "start: $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown) out=$OUT"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())" 2>&1
  "$PY" -c "import triton; print('triton', triton.__version__)" 2>&1; } | tee -a "$LOG"

# 1. install (editable; the extension build is optional)
say "pip install -e . (CUDA extension build if possible)"
if ! timeout 200 "$PY" -m pip install --no-deps --no-build-isolation -q -e . >>"$LOG" 2>&1; then
    say "install with the CUDA build failed or timed out; retrying with ARC_FAST_SKIP_CUDA_BUILD=1"
    ARC_FAST_SKIP_CUDA_BUILD=1 timeout 90 "$PY" -m pip install --no-deps --no-build-isolation -q -e . >>"$LOG" 2>&1 \
        || say "install failed again: running from the source tree"
fi
"$PY" -m arc_fast info 2>&1 | tee -a "$LOG" || true

# 2. GPU tests (bounded: the benchmark must keep at least ~4 minutes)
T_TEST=$(( $(left) - 240 ))
if [ "$T_TEST" -gt 30 ]; then
    say "pytest -m gpu -x -q (timeout ${T_TEST}s)"
    ARC_FAST_AUTOTUNE=0 timeout "$T_TEST" "$PY" -m pytest -m gpu -x -q -p no:cacheprovider >"$OUT/pytest.txt" 2>&1
    rc=$?
    tail -n 25 "$OUT/pytest.txt" | tee -a "$LOG"
    [ "$rc" -eq 124 ] && say "pytest timed out after ${T_TEST}s" || say "pytest exit code $rc"
else
    say "pytest skipped: not enough time left"
fi

# 3. benchmarks, with a budget that leaves time to write the outputs
B=$(( $(left) - 25 ))
say "python -m bench --device cuda (budget ${B}s)"
timeout $((B + 20)) "$PY" -m bench --device cuda --suite e2e,kernels,decoder,train-step --budget-s "$B" \
    --out "$OUT/bench" --no-readme >"$OUT/bench/stdout.md" 2>>"$LOG"
rc=$?
say "bench exit code $rc (0 ok, 1 some rows failed, 124 killed at the budget)"
ls -la "$OUT/bench" | tee -a "$LOG"
say "done in ${SECONDS}s"
