"""Eager PyTorch definitions of every fused op: the oracle that kernels are tested against.

Plain, readable PyTorch with no kernel imports. Each function computes in the input dtype unless it
says otherwise (tests run it in fp32 for the reference and in low precision to measure PyTorch's own
rounding error). Conventions follow Stable Audio Open (SPEC.md section 7).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """LayerNorm over the last dim. x (..., D); weight/bias (D,) or None. Returns x's shape and dtype."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def rope_freqs(seq_len: int, inv_freq: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Rotary angle table, fp32, shape (seq_len, rot_dim) = [theta, theta] (half-split, not interleaved).

    inv_freq (rot_dim/2,) holds base^(-2j/rot_dim); positions are offset..offset+seq_len-1.
    """
    t = torch.arange(offset, offset + seq_len, device=inv_freq.device, dtype=torch.float32)
    theta = torch.outer(t, inv_freq.float())
    return torch.cat([theta, theta], dim=-1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(a | b) -> (-b | a) over the last dim."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def apply_rotary(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Partial RoPE: rotate the first rot_dim channels of each head, pass the rest through.

    x (B, H, L, Dh) any float dtype; freqs (L, rot_dim) fp32 with rot_dim <= Dh, even.
    The rotation is computed in fp32 and cast back to x.dtype (as the SAO reference does).
    """
    rot_dim = freqs.shape[-1]
    x_rot, x_pass = x[..., :rot_dim], x[..., rot_dim:]
    xf = x_rot.float()
    out = xf * freqs.cos() + rotate_half(xf) * freqs.sin()
    return torch.cat([out.to(x.dtype), x_pass], dim=-1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
              scale: float | None = None) -> torch.Tensor:
    """Non-causal softmax attention. q (B, H, Lq, D), k/v (B, H, Lk, D), key_padding_mask (B, Lk) bool
    with True = attend (a row with no True keys gives zeros). Returns (B, H, Lq, D) in q.dtype;
    softmax in fp32."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = torch.einsum("bhqd,bhkd->bhqk", q.float(), k.float()) * scale
    if key_padding_mask is not None:
        s = s.masked_fill(~key_padding_mask[:, None, None, :].bool(), float("-inf"))
    p = torch.softmax(s, dim=-1)
    p = torch.nan_to_num(p, nan=0.0)
    return torch.einsum("bhqk,bhkd->bhqd", p, v.float()).to(q.dtype)


def qk_norm_rope_attention(q, k, v, q_norm_weight=None, q_norm_bias=None, k_norm_weight=None, k_norm_bias=None,
                           freqs=None, key_padding_mask=None, norm_eps: float = 1e-6, scale=None):
    """The DiT's attention with its prologue: per-head LayerNorm on q and k (before RoPE), partial RoPE
    (self-attention only; ``freqs`` (L, rot_dim) applied to both q and k, so Lq == Lk), then softmax
    attention. Shapes as in ``attention``; norm weights/biases (D,)."""
    if q_norm_weight is not None:
        q = layer_norm(q, q_norm_weight, q_norm_bias, norm_eps)
    if k_norm_weight is not None:
        k = layer_norm(k, k_norm_weight, k_norm_bias, norm_eps)
    if freqs is not None:
        q = apply_rotary(q, freqs)
        k = apply_rotary(k, freqs)
    return attention(q, k, v, key_padding_mask, scale)


def adaln_modulate(x: torch.Tensor, gamma: torch.Tensor | None, scale: torch.Tensor | None,
                   shift: torch.Tensor | None, eps: float = 1e-5) -> torch.Tensor:
    """Bias-less LayerNorm with learned gain, then optional adaLN modulation.

    x (B, L, D); gamma (D,) or None; scale/shift (B, D) or (B, 1, D) or None, broadcast over L.
    y = LN(x) * gamma * (1 + scale) + shift.
    """
    y = F.layer_norm(x, (x.shape[-1],), gamma, None, eps)
    if scale is not None:
        y = y * (1 + scale.reshape(scale.shape[0], 1, -1))
    if shift is not None:
        y = y + shift.reshape(shift.shape[0], 1, -1)
    return y


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, sigmoid_gate: bool = True) -> torch.Tensor:
    """x + g * y. x, y (B, L, D); gate (B, D) or (B, 1, D) broadcast over L, or None (g = 1).

    With ``sigmoid_gate`` g = sigmoid(1 - gate), the Stable Audio adaLN convention; else g = gate.
    """
    if gate is None:
        return x + y
    g = gate.reshape(gate.shape[0], 1, -1)
    if sigmoid_gate:
        g = torch.sigmoid(1 - g)
    return x + g * y


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """SwiGLU of a packed projection: h (..., 2F) = (value | gate) -> value * silu(gate), (..., F)."""
    value, gate = h.chunk(2, dim=-1)
    return value * F.silu(gate)


def snake_beta(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, logscale: bool = True) -> torch.Tensor:
    """SnakeBeta: x + sin^2(a x) / (b + 1e-9). x (B, C, T); alpha/beta (C,), log-scale by default."""
    a = alpha.reshape(1, -1, 1)
    b = beta.reshape(1, -1, 1)
    if logscale:
        a, b = a.exp(), b.exp()
    return x + (1.0 / (b + 1e-9)) * torch.sin(x * a).pow(2)


def fold_weight_norm(weight_g: torch.Tensor, weight_v: torch.Tensor) -> torch.Tensor:
    """Legacy ``torch.nn.utils.weight_norm`` (dim=0): w = g * v / ||v||, norm over every axis but 0."""
    dims = tuple(range(1, weight_v.dim()))
    return weight_g * weight_v / weight_v.norm(dim=dims, keepdim=True)
