"""Backend selection shared by every op.

An op has up to three implementations: ``eager`` (plain PyTorch, the oracle in ``arc_fast.reference``),
``triton`` (``arc_fast.kernels``) and ``cuda`` (the compiled extension ``arc_fast._C`` or its CuPy/NVRTC
twin). The default is chosen by device:

* CUDA tensors -> ``triton``
* CPU tensors  -> ``eager``, or ``triton`` when ``TRITON_INTERPRET=1`` (the Triton interpreter runs the
  kernels on the CPU; that is how CI tests them)

``ARC_FAST_BACKEND=eager|triton|cuda`` or ``with use_backend("eager"):`` forces one. A forced backend
that an op does not implement falls back to that op's default with a one-time warning, so that forcing
``cuda`` for the decoder does not break the DiT.

The ops also share two helpers: ``kernel_module(name)`` imports a Triton kernel module on first use, and
``use_triton(op, reasons, requested)`` decides whether inputs that the kernel does not support fall back to
eager (automatic choice, warned once per op) or raise (``backend="triton"`` requested). Both stay traceable
by ``torch.compile(fullgraph=True)``.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings

BACKENDS = ("eager", "triton", "cuda")

# A plain module-level stack (not a ContextVar): torch.compile traces reads of module globals, not ContextVars.
_forced_stack: list[str | None] = []
_warned: set[tuple[str, str]] = set()
_warned_fallback: set[str] = set()  # ops that warned about an eager fallback (tests may discard entries)

# setup.py installs kernels/ as arc_fast.kernels; an uninstalled source checkout only has the top-level
# ``kernels`` package. Decided once here (finding a spec imports no triton).
KERNELS_INSTALLED = importlib.util.find_spec("arc_fast.kernels") is not None
_kernels_package = None


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return name


def forced_backend() -> str | None:
    """The backend forced by ``use_backend`` (innermost wins) or ``ARC_FAST_BACKEND``, else None."""
    if _forced_stack and _forced_stack[-1] is not None:
        return _forced_stack[-1]
    env = os.environ.get("ARC_FAST_BACKEND", "").strip().lower()
    if not env or env == "auto":
        return None
    return _check_name(env)


@contextlib.contextmanager
def use_backend(name: str | None):
    """Force every op inside the block to ``name`` (``eager``, ``triton``, ``cuda``; None = automatic)."""
    _forced_stack.append(None if name is None else _check_name(name))
    try:
        yield
    finally:
        _forced_stack.pop()


def interpreter_active() -> bool:
    """True when ``TRITON_INTERPRET=1``: Triton kernels then run on CPU tensors in Python.

    ``arc_fast.kernels._common.interpreter_active`` answers the same for the kernels (they import nothing
    from this layer, and this layer must not import triton to ask)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _probe_triton() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'arc-fast[triton]')"
    try:
        import triton  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return f"import triton failed: {exc}"
    return None


# Probed once at import: a plain global keeps pick_backend traceable by torch.compile (no lru_cache).
_TRITON_ERROR: str | None = _probe_triton()


def triton_import_error() -> str | None:
    """None when ``import triton`` works, else the reason."""
    return _TRITON_ERROR


def triton_unavailable_reason(device_type: str) -> str | None:
    """Why Triton cannot run on ``device_type`` now, or None when it can."""
    err = triton_import_error()
    if err:
        return err
    if device_type == "cuda":
        return None
    if device_type == "cpu":
        return None if interpreter_active() else "CPU tensors need TRITON_INTERPRET=1 for Triton kernels"
    return f"Triton has no backend for device type {device_type!r}"


def default_backend(device_type: str) -> str:
    """The automatic choice for a device type (see module docstring)."""
    if device_type == "cuda" and triton_import_error() is None:
        return "triton"
    if device_type == "cpu" and interpreter_active() and triton_import_error() is None:
        return "triton"
    return "eager"


def pick_backend(op: str, device_type: str, implemented: tuple[str, ...] = ("eager", "triton"),
                 requested: str | None = None) -> str:
    """Choose the implementation of ``op`` for tensors on ``device_type``.

    ``requested`` (a per-call ``backend=`` argument) is strict: an unimplemented or unusable backend
    raises. A globally forced backend is a preference: if ``op`` lacks it, the default is used and a
    warning is given once per (op, backend).
    """
    if requested is not None:
        _check_name(requested)
        if requested not in implemented:
            raise NotImplementedError(f"{op}: backend {requested!r} is not implemented (have {', '.join(implemented)})")
        if requested == "triton":
            reason = triton_unavailable_reason(device_type)
            if reason:
                raise RuntimeError(f"{op}: triton backend unavailable: {reason}")
        return requested
    forced = forced_backend()
    if forced is not None:
        usable = forced in implemented and (forced != "triton" or triton_unavailable_reason(device_type) is None)
        if usable:
            return forced
        if (op, forced) not in _warned:
            _warned.add((op, forced))
            warnings.warn(f"arc_fast: {op} cannot use forced backend {forced!r} on {device_type}; "
                          f"using {default_backend(device_type)!r}", RuntimeWarning, stacklevel=3)
    choice = default_backend(device_type)
    return choice if choice in implemented else "eager"


def kernel_module(name: str):
    """The Triton kernel module ``arc_fast.kernels.<name>`` (``kernels.<name>`` in an uninstalled source
    checkout), imported on first use: importing the ops imports no kernel module.

    Traceable by torch.compile even when the first call happens while compiling: the package comes from
    plain import statements into a module global, and the submodule from ``getattr`` on the package (its
    ``__getattr__`` imports it; dynamo runs a module's attribute lookup for real). ``importlib`` calls, or an
    import statement with a computed name, would not trace.
    """
    global _kernels_package
    if _kernels_package is None:
        if KERNELS_INSTALLED:
            from arc_fast import kernels as pkg
        else:
            import kernels as pkg
        _kernels_package = pkg
    return getattr(_kernels_package, name)


def use_triton(op: str, reasons: list[str], requested: str | None) -> bool:
    """Whether ``op``, dispatched to triton, runs its kernel on inputs with these ``not_supported_reasons``.

    True when there is no reason, or when triton was requested (``backend="triton"`` is strict: the kernel's
    launcher then raises the reasons). Otherwise the automatic choice falls back to eager: False, with a
    RuntimeWarning once per op naming the reasons.
    """
    if not reasons or requested == "triton":
        return True
    if op not in _warned_fallback:
        _warned_fallback.add(op)
        warnings.warn(f"arc_fast: {op} falls back to eager: {'; '.join(reasons)}", RuntimeWarning, stacklevel=3)
    return False
