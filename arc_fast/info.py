"""``python -m arc_fast.info`` (or ``arc-fast info``): which backends are live here and, for each that is not, why."""
from __future__ import annotations

import importlib
import importlib.util
import platform


def backend_status() -> list[tuple[str, bool, str]]:
    """(name, live, detail) for Triton GPU, Triton interpreter, CUDA extension, CuPy, flash-attn, SDPA."""
    import torch

    from .ops._dispatch import interpreter_active, triton_import_error

    rows = []
    terr = triton_import_error()
    cuda = torch.cuda.is_available()
    if terr:
        rows.append(("triton (GPU)", False, terr))
        rows.append(("triton (interpreter)", False, terr))
    else:
        import triton
        rows.append(("triton (GPU)", cuda, f"triton {triton.__version__}" if cuda else "no CUDA device"))
        rows.append(("triton (interpreter)", interpreter_active(),
                     "TRITON_INTERPRET=1" if interpreter_active() else "set TRITON_INTERPRET=1 to run kernels on CPU"))
    try:
        from . import _cuda
        ok = _cuda.available()
        rows.append(("CUDA extension / CuPy", ok, "ready" if ok else (_cuda.unavailable_reason() or "unavailable")))
    except ImportError as exc:
        rows.append(("CUDA extension / CuPy", False, f"arc_fast._cuda missing: {exc}"))
    if importlib.util.find_spec("cupy") is None:
        rows.append(("cupy", False, "not installed (pip install 'arc-fast[gpu]')"))
    else:
        rows.append(("cupy", cuda, "installed" if cuda else "installed, but no CUDA device"))
    if importlib.util.find_spec("flash_attn") is None:
        rows.append(("flash-attn", False, "not installed"))
    else:
        rows.append(("flash-attn", cuda, "installed" if cuda else "installed, but no CUDA device"))
    rows.append(("SDPA (torch)", hasattr(torch.nn.functional, "scaled_dot_product_attention"),
                 f"torch {torch.__version__}"))
    return rows


def main() -> int:
    import torch

    from . import __version__
    print(f"arc-fast {__version__} | python {platform.python_version()} | torch {torch.__version__} "
          f"(CUDA {torch.version.cuda or 'none'}) | threads {torch.get_num_threads()}")
    if torch.cuda.is_available():
        print(f"device: {torch.cuda.get_device_name(0)}")
    else:
        print("device: CPU only")
    for name, live, detail in backend_status():
        print(f"  {'[live]' if live else '[off] '} {name:24s} {detail}")
    return 0


if __name__ == "__main__":  # python -m arc_fast.info
    import sys

    sys.exit(main())
