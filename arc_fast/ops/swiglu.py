"""Dispatch for SwiGLU of a packed projection: (value | gate) -> value * silu(gate).

``swiglu(h, backend=None)`` picks ``eager`` (plain PyTorch, ``reference.functional.swiglu``) or ``triton``
(``arc_fast.kernels.swiglu``: one fused pass forward and backward) through ``pick_backend``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import _warned_fallback  # noqa: F401 - the shared once-per-op fallback-warning set (tests reset it)
from ._dispatch import kernel_module, pick_backend, use_triton

OP = "swiglu"
IMPLEMENTED = ("eager", "triton")


def triton_module():
    """The kernel module ``arc_fast.kernels.swiglu`` (lazy; ``kernels.swiglu`` in an uninstalled checkout)."""
    return kernel_module("swiglu")


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
        if use_triton(OP, kmod.not_supported_reasons(h), backend):
            return kmod.swiglu(h)
    return _eager(h)
