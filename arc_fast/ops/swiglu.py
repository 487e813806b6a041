"""Dispatch for SwiGLU of a packed projection: (value | gate) -> value * silu(gate).

``swiglu(h, backend=None)`` picks ``eager`` (plain PyTorch, ``reference.functional.swiglu``) or ``triton``
(``arc_fast.kernels.swiglu``: one fused pass forward and backward) through ``pick_backend``.
"""
from __future__ import annotations

import importlib.util
import warnings

import torch
import torch.nn.functional as F

from ._dispatch import pick_backend

OP = "swiglu"
IMPLEMENTED = ("eager", "triton")
_warned_fallback: set[str] = set()


_kernel_module = None
# setup.py installs kernels/ as arc_fast.kernels; an uninstalled source checkout only has the top-level
# ``kernels`` package. Decided once here (finding a spec imports no triton).
_INSTALLED_KERNELS = importlib.util.find_spec("arc_fast.kernels") is not None


def triton_module():
    """The kernel module ``arc_fast.kernels.swiglu`` (lazy; ``kernels.swiglu`` in an uninstalled checkout)."""
    # A module global and plain import statements (no importlib, no try/except) keep this traceable by
    # torch.compile even when the first call happens while compiling.
    global _kernel_module
    if _kernel_module is None:
        if _INSTALLED_KERNELS:
            from arc_fast.kernels import swiglu as mod
        else:
            from kernels import swiglu as mod
        _kernel_module = mod
    return _kernel_module


def _eager(h: torch.Tensor) -> torch.Tensor:
    value, gate = h.chunk(2, dim=-1)
    if torch.is_grad_enabled() and h.requires_grad:
        return value * F.silu(gate)
    # Without autograd the activation buffer can take the product in place: one allocation fewer.
    return F.silu(gate).mul_(value)


def swiglu(h: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """``value * silu(gate)`` with ``h = (value | gate)`` split in halves of the last dim.

    Args:
        h: (..., 2F) fp32/fp16/bf16 (the Triton path needs stride(-1) == 1).
        backend: None (automatic), "eager" or "triton"; see ``arc_fast.ops.rope.rope`` for the rules.

    Returns:
        (..., F) in h.dtype. Differentiable w.r.t. h.
    """
    name = pick_backend(OP, h.device.type, implemented=IMPLEMENTED, requested=backend)
    if name == "triton":
        kmod = triton_module()
        reasons = kmod.not_supported_reasons(h)
        if not reasons or backend == "triton":
            return kmod.swiglu(h)
        if OP not in _warned_fallback:
            _warned_fallback.add(OP)
            warnings.warn(f"arc_fast: {OP} falls back to eager: {'; '.join(reasons)}", RuntimeWarning, stacklevel=2)
    return _eager(h)
