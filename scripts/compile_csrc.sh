#!/usr/bin/env bash
# Compile check of the CUDA C++ sources (csrc/) without a GPU, as CI runs it:
#   1. CMake + nvcc build of CMakeLists.txt (kernel library + pybind11 module arc_fast_csrc) for sm_80 and sm_90a
#      (without cmake or pybind11: nvcc alone compiles csrc/snake_conv.cu for the same architectures);
#   2. a syntax check of the torch binding csrc/bindings.cpp against the installed torch's headers (any torch,
#      CPU builds included), when torch is importable.
# Skips with one line (exit 0) when nvcc is absent. Any compile error or warning exits non-zero.
#   ARCHS="80;90a" BUILD_DIR=build/csrc scripts/compile_csrc.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python}
command -v "$PY" >/dev/null 2>&1 || PY=python3
NVCC=${CUDACXX:-$(command -v nvcc || true)}
if [[ -z "$NVCC" && -x /usr/local/cuda/bin/nvcc ]]; then NVCC=/usr/local/cuda/bin/nvcc; fi
if [[ -z "$NVCC" ]]; then echo "compile_csrc: SKIP (nvcc not found; set CUDACXX or install the CUDA toolkit)"; exit 0; fi

ARCHS=${ARCHS:-"80;90a"}
BUILD_DIR=${BUILD_DIR:-build/csrc}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
start=$(date +%s)
mkdir -p "$BUILD_DIR"

# Without cmake or pybind11 the kernels still get compiled, by nvcc alone, so a CUDA error still fails.
why=""
command -v cmake >/dev/null 2>&1 || why="cmake not found"
if [[ -z "$why" ]] && ! PYBIND_DIR=$("$PY" -m pybind11 --cmakedir 2>/dev/null); then
  why="pybind11 not importable by $PY (pip install pybind11)"
fi
if [[ -n "$why" ]]; then
  gencode=()
  IFS=';' read -ra archs <<<"$ARCHS"
  for a in "${archs[@]}"; do gencode+=(-gencode "arch=compute_$a,code=sm_$a"); done
  "$NVCC" -std=c++17 -O3 -c csrc/snake_conv.cu -o "$BUILD_DIR/snake_conv.o" -Icsrc "${gencode[@]}" \
    --Werror=all-warnings -Xcompiler=-Wall
  echo "compile_csrc: $why; compiled csrc/snake_conv.cu with nvcc alone for sm ${ARCHS} in $(( $(date +%s) - start ))s (no CMake/pybind11 module)"
  exit 0
fi

GEN=()
command -v ninja >/dev/null 2>&1 && GEN=(-G Ninja)

# A build dir configured by another generator or compiler cannot be reused.
if [[ -f "$BUILD_DIR/CMakeCache.txt" ]] && ! grep -q "CMAKE_CUDA_COMPILER:[A-Z]*=$NVCC\$" "$BUILD_DIR/CMakeCache.txt"; then
  rm -rf "$BUILD_DIR"
fi
cmake -S . -B "$BUILD_DIR" "${GEN[@]}" -DCMAKE_CUDA_COMPILER="$NVCC" -DCMAKE_CUDA_ARCHITECTURES="$ARCHS" \
  -Dpybind11_DIR="$PYBIND_DIR" -DPython_EXECUTABLE="$(command -v "$PY")" >"$BUILD_DIR/configure.log" 2>&1 \
  || { cat "$BUILD_DIR/configure.log"; echo "compile_csrc: FAIL (cmake configure)"; exit 1; }
cmake --build "$BUILD_DIR" --parallel "$JOBS"
echo "compile_csrc: built $(ls "$BUILD_DIR"/arc_fast_csrc*.so) for sm ${ARCHS} in $(( $(date +%s) - start ))s"

# Torch binding: syntax only (the extension itself is built by setup.py where torch has CUDA). CPU wheels of
# torch lack one generated CUDA header; a stub stands in for it.
if TORCH_INC=$("$PY" -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'include'))" 2>/dev/null); then
  PY_INC=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
  CUDA_INC=""
  for d in "${CUDA_HOME:-}" "${CUDA_PATH:-}" "$(dirname "$(dirname "$(readlink -f "$NVCC")")")" /usr/local/cuda; do
    if [[ -n "$d" && -f "$d/include/cuda_runtime.h" ]]; then CUDA_INC="$d/include"; break; fi
  done
  [[ -n "$CUDA_INC" ]] || { echo "compile_csrc: FAIL (cuda_runtime.h not found; set CUDA_HOME)"; exit 1; }
  STUB="$BUILD_DIR/torch_stub"
  if [[ ! -f "$TORCH_INC/c10/cuda/impl/cuda_cmake_macros.h" ]]; then
    mkdir -p "$STUB/c10/cuda/impl"
    echo "#define C10_CUDA_BUILD_SHARED_LIBS" >"$STUB/c10/cuda/impl/cuda_cmake_macros.h"
  fi
  t0=$(date +%s)
  ${CXX:-g++} -fsyntax-only -std=c++20 -Wall -Werror -DTORCH_EXTENSION_NAME=_C -Icsrc -isystem "$TORCH_INC" \
    -isystem "$TORCH_INC/torch/csrc/api/include" -isystem "$PY_INC" -isystem "$CUDA_INC" -isystem "$STUB" \
    csrc/bindings.cpp
  echo "compile_csrc: csrc/bindings.cpp compiles against torch $("$PY" -c 'import torch; print(torch.__version__)') headers ($(( $(date +%s) - t0 ))s)"
else
  echo "compile_csrc: torch not importable by $PY; skipped the syntax check of csrc/bindings.cpp"
fi
