"""Triton kernels of arc-fast, installed as ``arc_fast.kernels``.

One file per fused op family (attention, rope, adaln, swiglu, snake_conv). Each file holds the
``@triton.jit`` kernels, their checked launchers and the ``torch.library`` registration; nothing else
(``_common`` holds the helpers they share). Importing this package never imports triton: an op module is
imported by an import statement or on first attribute access (``arc_fast.kernels.rope``).
"""
import importlib

_OP_MODULES = ("adaln", "attention", "rope", "snake_conv", "swiglu")


def __getattr__(name: str):
    # Lazy submodules (PEP 562). arc_fast.ops loads a kernel module by name with getattr on this package:
    # torch.compile runs a module's attribute lookup for real while tracing, whereas it cannot trace
    # importlib, so the first kernel call may happen inside a compiled graph.
    if name in _OP_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
