"""Dispatch for adaptive LayerNorm (LN + gain + adaLN modulation) and the gated residual.

``adaln_layer_norm(x, gamma, scale, shift, eps, backend=None)`` and
``gated_residual(x, y, gate, sigmoid_gate, backend=None)`` pick ``eager`` (plain PyTorch: ``F.layer_norm`` +
``addcmul``, the ``reference.functional.adaln_modulate`` / ``gated_residual`` maths) or ``triton``
(``arc_fast.kernels.adaln``: one pass forward, one pass backward with fp32 partial reductions).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import _warned_fallback  # noqa: F401 - the shared once-per-op fallback-warning set (tests reset it)
from ._dispatch import kernel_module, pick_backend, use_triton

IMPLEMENTED = ("eager", "triton")


def triton_module():
    """The kernel module ``arc_fast.kernels.adaln`` (lazy; ``kernels.adaln`` in an uninstalled checkout)."""
    return kernel_module("adaln")


def _per_sample(t: torch.Tensor) -> torch.Tensor:
    """(Bs, D) or (Bs, 1, D) -> (Bs, 1, D), broadcast over the sequence."""
    return t.reshape(t.shape[0], 1, -1)


def _eager_adaln(x, gamma, scale, shift, eps):
    y = F.layer_norm(x, (x.shape[-1],), gamma, None, eps)
    if scale is not None and shift is not None:
        return torch.addcmul(_per_sample(shift), y, 1 + _per_sample(scale))
    if scale is not None:
        return y * (1 + _per_sample(scale))
    if shift is not None:
        return y + _per_sample(shift)
    return y


def adaln_layer_norm(x: torch.Tensor, gamma: torch.Tensor | None = None, scale: torch.Tensor | None = None,
                     shift: torch.Tensor | None = None, eps: float = 1e-5, backend: str | None = None) -> torch.Tensor:
    """``LayerNorm(x) * gamma * (1 + scale) + shift`` (bias-less LN, as Stable Audio Open's LayerNorm).

    Args:
        x: (B, L, D) fp32/fp16/bf16; any rank (..., D) when scale and shift are None (plain LayerNorm).
        gamma: (D,) gain or None. scale, shift: (B, D), (B, 1, D), (1, D) or (1, 1, D), broadcast over L, or
            None. All in x's dtype on the Triton path.
        eps: variance epsilon (SAO: 1e-5).
        backend: None (automatic), "eager" or "triton"; a requested backend is strict, an automatic triton
            choice the inputs do not support falls back to eager with a one-time warning.

    Returns:
        x's shape and dtype. Differentiable w.r.t. x, gamma, scale, shift.
    """
    name = pick_backend("adaln_layer_norm", x.device.type, implemented=IMPLEMENTED, requested=backend)
    if name == "triton":
        kmod = triton_module()
        if use_triton("adaln_layer_norm", kmod.not_supported_reasons(x, gamma, scale, shift), backend):
            return kmod.adaln_layer_norm(x, gamma, scale, shift, eps)
    return _eager_adaln(x, gamma, scale, shift, eps)


def _eager_gated(x, y, gate, sigmoid_gate):
    if gate is None:
        return x + y
    g = _per_sample(gate)
    if sigmoid_gate:
        g = torch.sigmoid(1 - g)
    return torch.addcmul(x, g, y)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, sigmoid_gate: bool = True,
                   backend: str | None = None) -> torch.Tensor:
    """``x + g * y`` with g = sigmoid(1 - gate) (SAO's adaLN convention, ``sigmoid_gate=True``) or g = gate.

    Args:
        x, y: (B, L, D) fp32/fp16/bf16, same shape and dtype.
        gate: (B, D), (B, 1, D), (1, D) or (1, 1, D), broadcast over L; or None (plain x + y).
        sigmoid_gate: see above.
        backend: None (automatic), "eager" or "triton" (rules as in ``adaln_layer_norm``).

    Returns:
        x's shape and dtype. Differentiable w.r.t. x, y and gate.
    """
    name = pick_backend("gated_residual", x.device.type, implemented=IMPLEMENTED, requested=backend)
    if name == "triton":
        kmod = triton_module()
        if use_triton("gated_residual", kmod.gated_residual_not_supported_reasons(x, y, gate), backend):
            return kmod.gated_residual(x, y, gate, sigmoid_gate)
    return _eager_gated(x, y, gate, sigmoid_gate)
