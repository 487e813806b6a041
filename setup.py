"""Build script: the pure-Python package always; the CUDA extension ``arc_fast._C`` only when it can.

The extension is built from ``csrc/*.cu``/``csrc/*.cpp`` with ``torch.utils.cpp_extension`` when a CUDA
toolkit and a CUDA build of torch are importable (use ``pip install --no-build-isolation`` so that the
installed torch is seen). Otherwise it is skipped with one line; ``ARC_FAST_SKIP_CUDA_BUILD=1`` skips it
explicitly. torch is imported lazily so that metadata-only builds and CPU-only installs never need it.
"""
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


# The torch binding and the kernels it launches. csrc/standalone_module.cpp belongs to the CMake build only
# (a second, torch-free Python module), so the sources are listed rather than globbed.
CUDA_SOURCES = ["csrc/snake_conv.cu", "csrc/bindings.cpp"]


def _cuda_extensions():
    if os.environ.get("ARC_FAST_SKIP_CUDA_BUILD", "0") == "1":
        print("arc-fast: ARC_FAST_SKIP_CUDA_BUILD=1, skipping the CUDA extension arc_fast._C")
        return [], {}
    missing = [s for s in CUDA_SOURCES if not os.path.isfile(os.path.join(HERE, s))]
    if missing:
        print(f"arc-fast: {', '.join(missing)} not found (sdist without csrc?); skipping arc_fast._C")
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except Exception as exc:  # noqa: BLE001 - any import failure means "no build"
        print(f"arc-fast: torch not importable at build time ({exc.__class__.__name__}); skipping arc_fast._C")
        return [], {}
    if torch.version.cuda is None or CUDA_HOME is None:
        print("arc-fast: no CUDA toolkit or CPU-only torch; skipping arc_fast._C (Triton/CuPy paths still work)")
        return [], {}
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")
    ext = CUDAExtension(
        name="arc_fast._C",
        sources=CUDA_SOURCES,
        include_dirs=[os.path.join(HERE, "csrc")],
        # No -std flag: torch picks the C++ standard its headers need (C++17 or C++20 by version). No fast
        # math: sinf/expf must stay accurate for the fp32 parity bound.
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo"]},
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _cuda_extensions()

setup(
    packages=find_packages(include=["arc_fast", "arc_fast.*"]) + ["arc_fast.kernels", "arc_fast.csrc"],
    package_dir={"arc_fast.kernels": "kernels", "arc_fast.csrc": "csrc"},
    # csrc ships as data: arc_fast/_cuda.py compiles csrc/snake_conv.cu with NVRTC (CuPy) at run time.
    package_data={"arc_fast": ["assets/*", "assets/**/*", "py.typed"], "arc_fast.csrc": ["*.cu", "*.h", "*.cpp"]},
    include_package_data=True,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
