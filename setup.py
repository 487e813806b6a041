"""Build script: the pure-Python package always; the CUDA extension ``arc_fast._C`` only when it can.

The extension is built from ``csrc/*.cu``/``csrc/*.cpp`` with ``torch.utils.cpp_extension`` when a CUDA
toolkit and a CUDA build of torch are importable (use ``pip install --no-build-isolation`` so that the
installed torch is seen). Otherwise it is skipped with one line; ``ARC_FAST_SKIP_CUDA_BUILD=1`` skips it
explicitly. torch is imported lazily so that metadata-only builds and CPU-only installs never need it.
"""
import glob
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _cuda_extensions():
    if os.environ.get("ARC_FAST_SKIP_CUDA_BUILD", "0") == "1":
        print("arc-fast: ARC_FAST_SKIP_CUDA_BUILD=1, skipping the CUDA extension arc_fast._C")
        return [], {}
    sources = sorted(glob.glob(os.path.join("csrc", "*.cu")) + glob.glob(os.path.join("csrc", "*.cpp")))
    if not sources:
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
        sources=sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={"cxx": ["-O3", "-std=c++17"], "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"]},
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _cuda_extensions()

setup(
    packages=find_packages(include=["arc_fast", "arc_fast.*"]) + ["arc_fast.kernels"],
    package_dir={"arc_fast.kernels": "kernels"},
    package_data={"arc_fast": ["assets/*", "assets/**/*"]},
    include_package_data=True,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
