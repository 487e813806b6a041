#!/usr/bin/env bash
# The one script a short GPU loan runs (from the repository root), in under 8 minutes on an H100:
#   1. pip install --no-deps --no-build-isolation -e .   (builds the CUDA extension when nvcc is there;
#      falls back to ARC_FAST_SKIP_CUDA_BUILD=1 if the build fails or runs long: the CuPy runtime or the
#      Triton kernels still serve)
#   2. pytest tests/test_csrc.py -k ext                   (the CUDA extension alone, in its own process; if it fails,
#      the rest runs on the CuPy runtime, and a segfault gets a cuda-gdb backtrace)
#   3. python -m bench --device cuda                      (e2e first, then kernels, decoder, train-step), with
#      a time budget (BENCH_S, 270 s) so that it always finishes and writes its JSON / markdown / plots
#   4. python -m pytest -m gpu                            (the GPU parity suite with the time left; one pinned
#      autotune config; all of it, not -x: a loan is too short to rerun; xdist workers when installed)
# Everything goes to $OUT (default: ./gpu_out): log.txt (with the bench's stdout), pytest.txt,
# bench/<device>.{json,md} and its plots: 8 files, what the device tool brings back.
#   OUT=/tmp/x bash bench/gpu_run.sh          TOTAL_S=470 (wall budget), BENCH_S=270, TEST_S=150 (kept for
#   the tests), PYTHON=python
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
# Only this GPU's architecture: the build is half as long as CI's sm_80 + sm_90a compile check.
CAP=$("$PY" -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}.{n}' + ('a' if m == 9 else ''))" 2>/dev/null)
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-${CAP:-8.0;9.0a}}" MAX_JOBS="${MAX_JOBS:-16}"
if ! timeout 200 "$PY" -m pip install --no-deps --no-build-isolation -q -e . >>"$LOG" 2>&1; then
    say "install with the CUDA build failed or timed out; retrying with ARC_FAST_SKIP_CUDA_BUILD=1"
    ARC_FAST_SKIP_CUDA_BUILD=1 timeout 90 "$PY" -m pip install --no-deps --no-build-isolation -q -e . >>"$LOG" 2>&1 \
        || say "install failed again: running from the source tree"
fi
"$PY" -m arc_fast info 2>&1 | tee -a "$LOG" || true

# 2. The extension alone first, in its own process: its bad-input test segfaulted on the first H100 run
#    (2026-11-27) and a later worker hit an illegal memory access. If anything in it fails, the benchmark and the
#    test suite run on the CuPy/NVRTC runtime (ARC_FAST_CUDA_RUNTIME=cupy; the ext tests then skip with that reason),
#    and a segfault is re-run under cuda-gdb (the machine has no gdb) for a native backtrace.
if "$PY" -c "import arc_fast._C" 2>/dev/null; then
    say "extension tests (tests/test_csrc.py -k ext), in their own process"
    ARC_FAST_CUDA_RUNTIME=ext timeout 120 "$PY" -X faulthandler -m pytest -m gpu -q -p no:cacheprovider -rfE \
        --tb=short tests/test_csrc.py -k "ext" >>"$LOG" 2>&1
    rc=$?
    say "extension tests exit code $rc (0 ok, 1 failures, 139 segfault, 124 timeout)"
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then
        export ARC_FAST_CUDA_RUNTIME=cupy
        say "extension not trusted: ARC_FAST_CUDA_RUNTIME=cupy for the rest of the run"
        if [ "$rc" -eq 139 ] && command -v cuda-gdb >/dev/null; then
            say "native backtrace of the bad-input test (cuda-gdb -batch)"
            ARC_FAST_CUDA_RUNTIME=ext timeout 90 cuda-gdb -q -batch -ex run -ex bt -ex "info sharedlibrary arc_fast" \
                --args "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/test_csrc.py \
                -k rejects_bad_tensors 2>&1 | grep -v "^\[New Thread\|^\[Thread .* exited" | tail -n 60 >>"$LOG"
        fi
    fi
fi

# 3. Benchmarks first: the e2e latency and the kernels' ratios are what a loan is for (the parity suite mostly
#    passed on the first loan); a budget that leaves time to write the outputs.
B=$(( $(left) - ${TEST_S:-150} ))
[ "$B" -gt "${BENCH_S:-270}" ] && B="${BENCH_S:-270}"
[ "$B" -lt 60 ] && B=60   # a slow install must not leave the benchmark without a budget (--budget-s needs > 0)
say "python -m bench --device cuda (budget ${B}s)"
# Untuned kernels unless BENCH_AUTOTUNE=1: a fresh machine's first-call tuning (one LLVM -O3 compile per config
# and key) took the whole e2e budget on the first H100 run; the JSON records which it was.
ARC_FAST_AUTOTUNE=$([ "${BENCH_AUTOTUNE:-0}" = 1 ] && echo 1 || echo 0) \
timeout $((B + 20)) "$PY" -m bench --device cuda --suite e2e,kernels,decoder,train-step --budget-s "$B" \
    --out "$OUT/bench" --no-readme ${BENCH_ARGS:-} >>"$LOG" 2>&1
rc=$?
say "bench exit code $rc (0 ok, 1 some rows failed, 124 killed at the budget)"
ls -la "$OUT/bench" | tee -a "$LOG"

# 4. GPU tests with the time left (Triton's cache is warm from the benchmark by now)
T_TEST=$(( $(left) - 10 ))
if [ "$T_TEST" -gt 30 ]; then
    XD=""
    "$PY" -c "import xdist" 2>/dev/null && XD="-n ${PYTEST_WORKERS:-8}"
    TO=""
    "$PY" -c "import pytest_timeout" 2>/dev/null && TO="--timeout=${TEST_TIMEOUT_S:-100}"
    say "pytest -m gpu $XD $TO (timeout ${T_TEST}s)"
    # SIGINT first: pytest then still prints its failures and summary (a loan has no time for a rerun).
    ARC_FAST_AUTOTUNE=0 timeout -s INT -k 10 "$T_TEST" "$PY" -m pytest -m gpu -v -p no:cacheprovider $XD $TO \
        --tb=short -rfE --deselect tests/test_csrc.py::test_gpu_ext_rejects_bad_tensors_by_name \
        --durations=15 ${PYTEST_ARGS:-} >"$OUT/pytest.txt" 2>&1
    rc=$?
    tail -n 25 "$OUT/pytest.txt" | tee -a "$LOG"
    [ "$rc" -eq 124 ] && say "pytest timed out after ${T_TEST}s" || say "pytest exit code $rc"
else
    say "pytest skipped: not enough time left"
fi
say "done in ${SECONDS}s"
# The tool returns the end of the output: finish with the two summaries.
echo "==== bench table"; cat "$OUT"/bench/*.md 2>/dev/null | grep -E "^\| (total|dit_step|decoder) |^#|speed-up" | head -n 40
echo "==== pytest summary"; grep -E "passed|failed|error|skipped" "$OUT/pytest.txt" 2>/dev/null | tail -n 3
