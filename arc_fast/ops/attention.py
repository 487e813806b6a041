"""Attention op (QK-LayerNorm -> partial RoPE -> softmax attention) with backend dispatch.

Backends (``backend=`` per call, else ``pick_backend``: CUDA -> triton, CPU -> eager, CPU with
``TRITON_INTERPRET=1`` -> triton; ``use_backend``/``ARC_FAST_BACKEND`` force one):

* ``"triton"``: the fused kernel ``arc_fast.kernels.attention`` (norm + RoPE of q applied in the kernel, flash
  forward/backward, norm-parameter grads).
* ``"eager"``: LayerNorm + RoPE from ``arc_fast.reference.functional``, then
  ``torch.nn.functional.scaled_dot_product_attention`` (PyTorch picks its flash / memory-efficient / math
  kernel). ``"sdpa"`` is a synonym of ``"eager"`` for this op only.
* ``"flash_attn"``: the same eager prologue, then ``flash_attn.flash_attn_func`` (needs the optional
  ``flash-attn`` package, CUDA, fp16/bf16 and no ``key_padding_mask``). Never chosen automatically.

All backends compute the same function as ``arc_fast.reference.functional.qk_norm_rope_attention``; a query row
whose keys are all masked out gives 0 (and zero gradients) everywhere.
"""
from __future__ import annotations

import importlib.util
import math
from typing import Optional

import torch
import torch.nn.functional as F

from ..reference import functional as ref
from ._dispatch import kernel_module, pick_backend

__all__ = ["attention", "ATTENTION_BACKENDS"]

ATTENTION_BACKENDS = ("eager", "triton", "sdpa", "flash_attn")


def _kernels():
    """``arc_fast.kernels.attention`` when installed, else ``kernels/attention.py`` of a source checkout
    (imported on first use, traceable by torch.compile: see ``_dispatch.kernel_module``)."""
    return kernel_module("attention")


def _prologue(q, k, q_norm_weight, q_norm_bias, k_norm_weight, k_norm_bias, norm_eps, freqs):
    if q_norm_weight is not None:
        q = ref.layer_norm(q, q_norm_weight, q_norm_bias, norm_eps)
    if k_norm_weight is not None:
        k = ref.layer_norm(k, k_norm_weight, k_norm_bias, norm_eps)
    if freqs is not None:
        q = ref.apply_rotary(q, freqs)
        k = ref.apply_rotary(k, freqs)
    return q, k


def _sdpa(q, k, v, key_padding_mask, scale):
    if key_padding_mask is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    keep = key_padding_mask.bool()
    has_key = keep.any(dim=-1)  # (B,)
    # A row with no key would make SDPA's softmax 0/0 in some kernels: let it attend to everything (finite
    # values and grads), then zero its output so that it and its grads are exactly 0.
    keep = keep | ~has_key[:, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :], scale=scale)
    return out * has_key[:, None, None, None].to(out.dtype)


def _flash_attn(q, k, v, key_padding_mask, scale):
    if importlib.util.find_spec("flash_attn") is None:
        raise RuntimeError("attention: backend='flash_attn' needs the flash-attn package (pip install flash-attn, "
                           "CUDA only); use backend='triton' or 'eager'")
    if key_padding_mask is not None:
        raise NotImplementedError("attention: backend='flash_attn' does not take key_padding_mask here; "
                                  "use backend='triton' or 'eager'")
    if q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"attention: backend='flash_attn' needs CUDA fp16/bf16 tensors, got {q.device} {q.dtype}")
    from flash_attn import flash_attn_func

    # flash_attn_func takes (B, L, H, D).
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale, causal=False)
    return out.transpose(1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, key_padding_mask: Optional[torch.Tensor] = None,
              q_norm_weight: Optional[torch.Tensor] = None, q_norm_bias: Optional[torch.Tensor] = None,
              k_norm_weight: Optional[torch.Tensor] = None, k_norm_bias: Optional[torch.Tensor] = None,
              norm_eps: float = 1e-6, freqs: Optional[torch.Tensor] = None, scale: Optional[float] = None,
              backend: Optional[str] = None) -> torch.Tensor:
    """Non-causal attention with the DiT's optional QK-LayerNorm and partial RoPE prologue.

    Args:
        q: (B, H, Lq, D); k, v: (B, H, Lk, D), same float dtype (fp32/fp16/bf16 on the triton backend, which
            also needs stride(-1) == 1 and D a power of two in [16, 128]).
        key_padding_mask: (B, Lk) bool, True = attend; a row with no key gives zeros.
        q_norm_weight, q_norm_bias, k_norm_weight, k_norm_bias: (D,) per-head LayerNorm over D with eps
            ``norm_eps``, applied to q (k) when its weight is given, before RoPE.
        freqs: (Lq, R) fp32 angle table (``reference.functional.rope_freqs``); rotates the first R channels of
            q and k (half-split). Self-attention only (Lq == Lk).
        scale: softmax scale, default 1/sqrt(D).
        backend: None (automatic), ``"eager"``/``"sdpa"``, ``"triton"`` or ``"flash_attn"`` (see module doc).

    Returns:
        (B, H, Lq, D) in q.dtype.
    """
    if backend in ("sdpa", "flash_attn"):
        name = backend
    else:
        name = pick_backend("attention", q.device.type, implemented=("eager", "triton"), requested=backend)
    if name == "triton":
        return _kernels().attention(q, k, v, key_padding_mask=key_padding_mask, q_norm_weight=q_norm_weight,
                                    q_norm_bias=q_norm_bias, k_norm_weight=k_norm_weight, k_norm_bias=k_norm_bias,
                                    norm_eps=norm_eps, freqs=freqs, scale=scale)
    if k_norm_bias is not None and k_norm_weight is None or q_norm_bias is not None and q_norm_weight is None:
        raise ValueError("attention: a norm bias was given without its norm weight (q_norm_bias / k_norm_bias)")
    if freqs is not None and q.shape[-2] != k.shape[-2]:
        raise ValueError(f"freqs: RoPE needs self-attention (Lq == Lk), got Lq={q.shape[-2]}, Lk={k.shape[-2]}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    q, k = _prologue(q, k, q_norm_weight, q_norm_bias, k_norm_weight, k_norm_bias, norm_eps, freqs)
    if name == "flash_attn":
        return _flash_attn(q, k, v, key_padding_mask, scale)
    return _sdpa(q, k, v, key_padding_mask, scale)
