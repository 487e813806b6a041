"""Dispatch for the fused SnakeBeta + convolution ops of the Oobleck decoder.

``snake_conv1d`` and ``snake_conv_transpose1d`` have three implementations:

* ``eager``: the reference ``snake_beta`` + ``F.conv1d`` / ``F.conv_transpose1d``. When no gradient is
  needed (``torch.no_grad``/``inference_mode`` or nothing requires grad) it computes SnakeBeta with one
  temporary and in-place steps and adds the residual in place (the same operations in the same order as
  the reference: bitwise equal, fewer passes over memory), and runs the transposed conv in polyphase form
  as one 2-tap ``F.conv1d`` with S*Cout output channels plus an interleave (equal up to summation order;
  1.4-3x faster than ``F.conv_transpose1d`` on CPU). This is the CPU fast path;
* ``triton``: ``arc_fast.kernels.snake_conv`` (CUDA, or CPU under ``TRITON_INTERPRET=1``);
* ``cuda``: ``arc_fast._cuda.snake_conv1d`` / ``snake_conv_transpose1d`` (compiled extension or CuPy),
  offered only when ``arc_fast._cuda.available()`` says so.

The backend is chosen by ``arc_fast.ops.pick_backend`` (device, ``use_backend``, ``ARC_FAST_BACKEND``) unless
a ``backend=`` argument forces one.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..reference.functional import snake_beta
from . import _dispatch
from ._dispatch import pick_backend

__all__ = ["snake_conv1d", "snake_conv_transpose1d", "snake_activation", "pack_polyphase", "PolyphaseWeight",
           "is_channels_last_1d", "to_channels_last_1d", "channels_last_weight",
           "kernel_module", "implemented_backends"]

_SNAKE_EPS = 1e-9


def kernel_module():
    """The Triton kernel module ``arc_fast.kernels.snake_conv`` (imported lazily: importing the ops never
    imports triton).

    From a source checkout that is not installed, ``arc_fast.kernels`` does not exist (setup.py maps it onto
    ``kernels/``); the top-level ``kernels`` package is used then (the same rule as the other ops, so each
    kernel file is imported, and its custom ops registered, once). Traceable by torch.compile, also on the
    first call (``_dispatch.kernel_module``).
    """
    return _dispatch.kernel_module("snake_conv")


@functools.lru_cache(maxsize=1)
def _cuda_module():
    """``arc_fast._cuda`` when it reports available (looked up once per process), else None."""
    try:
        from .. import _cuda
        return _cuda if _cuda.available() else None
    except Exception:  # noqa: BLE001 - a missing or broken CUDA runtime must not break eager/triton
        return None


def implemented_backends() -> tuple[str, ...]:
    """Backends this op can use in this process: eager, triton, and cuda when ``arc_fast._cuda`` is available."""
    return ("eager", "triton", "cuda") if _cuda_module() is not None else ("eager", "triton")


def _no_grad_needed(*tensors) -> bool:
    if not torch.is_grad_enabled():
        return True
    return not any(t is not None and t.requires_grad for t in tensors)


def snake_activation(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """SnakeBeta (log-scale alpha/beta (C,)) on x (B, C, T) in x's dtype; one temporary when no grad is needed.

    Bitwise equal to ``reference.functional.snake_beta`` (same operations, same order).
    """
    if not _no_grad_needed(x, alpha, beta):
        return snake_beta(x, alpha, beta)
    a = alpha.to(x.dtype).reshape(1, -1, 1).exp()
    inv_b = 1.0 / (beta.to(x.dtype).reshape(1, -1, 1).exp() + _SNAKE_EPS)
    t = x * a
    t.sin_()
    t.square_()
    t.mul_(inv_b)
    return t.add_(x)


def is_channels_last_1d(x: torch.Tensor) -> bool:
    """True when a (B, C, T) tensor is a transposed view of a (B, T, C) buffer (strides (T*C, 1, C), batch
    stride free when B == 1): the channels-last ("nwc") layout oneDNN prefers (see ``to_channels_last_1d``).
    C == 1 or T == 1 is both layouts at once and counts as (B, C, T), the layout callers expect by default."""
    if x.dim() != 3 or x.shape[1] == 1 or x.shape[2] == 1:
        return False
    return x.stride(1) == 1 and x.stride(2) == x.shape[1]


def to_channels_last_1d(x: torch.Tensor) -> torch.Tensor:
    """x (B, C, T) -> the same values as a (B, C, T) view of a dense (B, T, C) buffer (no copy if already so).

    Why: oneDNN's CPU convolutions run 1.1-3x faster on channels-last data than on (B, C, T) (measured: bf16 k7
    C=128 204 vs 148 GFLOP/s, k1 115 vs 35 GFLOP/s, one thread, AVX512-BF16), and the eager ops below keep this
    layout from layer to layer, so the whole decoder runs without layout reorders.
    """
    if is_channels_last_1d(x) and (x.shape[0] == 1 or x.stride(0) == x.shape[1] * x.shape[2]):
        return x
    return x.transpose(1, 2).contiguous().transpose(1, 2)


def channels_last_weight(weight: torch.Tensor) -> torch.Tensor:
    """A (Cout, Cin, K) conv weight as a view of a (Cout, K, Cin) buffer: the weight layout the channels-last
    convolution reads without a reorder (prepare once, e.g. in a module's weight cache)."""
    return weight.unsqueeze(2).contiguous(memory_format=torch.channels_last).squeeze(2)


def _conv_cl(s: torch.Tensor, w: torch.Tensor, b, padding: int, dilation: int = 1) -> torch.Tensor:
    """conv1d on channels-last (B, C, T) data as a 1xT conv2d (oneDNN's channels-last path; conv1d itself
    takes a slower route for these strides). Output: (B, Cout, T') channels-last."""
    if not (w.stride(1) == 1 and w.stride(2) == w.shape[1]):
        w = channels_last_weight(w)
    y = F.conv2d(s.unsqueeze(2), w.unsqueeze(2), b, padding=(0, padding), dilation=(1, dilation))
    return y.squeeze(2)


def _eager_conv1d(x, alpha, beta, weight, bias, dilation, residual, apply_snake):
    s = snake_activation(x, alpha, beta) if apply_snake else x
    w = weight.to(x.dtype)
    b = None if bias is None else bias.to(x.dtype)
    pad = dilation * (weight.shape[2] - 1) // 2
    if x.device.type == "cpu" and is_channels_last_1d(x) and _no_grad_needed(x, alpha, beta, weight, bias, residual):
        y = _conv_cl(s, w, b, pad, dilation)
    else:
        y = F.conv1d(s, w, b, padding=pad, dilation=dilation)
    if residual is None:
        return y
    if _no_grad_needed(x, alpha, beta, weight, bias, residual):
        return y.add_(residual)
    return y + residual


class PolyphaseWeight(NamedTuple):
    """A transposed-conv weight repacked for the eager polyphase path (``pack_polyphase``).

    weight (S*Cout, Cin, 2): row r*Cout + o holds taps (r + S, r) of output channel o, i.e. phase r of the
    output as a 2-tap conv1d over the input padded by one frame on the left; bias (S*Cout,) or None.
    """
    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: int
    cin: int
    cout: int


def pack_polyphase(weight: torch.Tensor, bias: torch.Tensor | None, stride: int) -> PolyphaseWeight:
    """Repack a (Cin, Cout, 2*stride) transposed-conv weight (and bias) for the eager polyphase path."""
    S = int(stride)
    cin, cout, k = weight.shape
    if k != 2 * S:
        raise ValueError(f"pack_polyphase: weight must be (Cin, Cout, 2*stride={2 * S}), got {tuple(weight.shape)}")
    # Tap 0 of the 2-tap conv meets s[m - 1] (kernel index r + S), tap 1 meets s[m] (kernel index r).
    w = torch.stack([weight[:, :, S:], weight[:, :, :S]], dim=-1)         # (Cin, Cout, S, 2)
    w = w.permute(2, 1, 0, 3).reshape(S * cout, cin, 2).contiguous()
    b = None if bias is None else bias.repeat(S)
    return PolyphaseWeight(w, b, S, cin, cout)


def _polyphase(s: torch.Tensor, packed: PolyphaseWeight) -> torch.Tensor:
    """conv_transpose1d(s, W, b, stride=S, padding=ceil(S/2)) as one 2-tap conv1d + interleave (see kernels)."""
    S, cout = packed.stride, packed.cout
    B, _, T = s.shape
    P = (S + 1) // 2
    L = (T - 1) * S - 2 * P + 2 * S
    M = (L - 1 + P) // S + 1
    w = packed.weight.to(s.dtype)
    b = None if packed.bias is None else packed.bias.to(s.dtype)
    if M - T == 1 and s.device.type == "cpu" and is_channels_last_1d(s):
        # Channels-last: conv2d's symmetric padding (1, 1) is the (1, M - T) pad, and the (B, M, S*Cout) output
        # buffer already *is* the interleaved (B, M*S, Cout) signal: the interleave costs nothing.
        y = _conv_cl(s, w, b, 1)                                          # (B, S*Cout, M) channels-last
        y = y.transpose(1, 2).reshape(B, M * S, cout)[:, P:P + L]         # (B, L, Cout) view
        y = y.transpose(1, 2)
        return y if B == 1 else to_channels_last_1d(y)
    y = F.conv1d(F.pad(s, (1, M - T)), w, b)                              # (B, S*Cout, M): phases stacked
    y = y.view(B, S, cout, M).permute(0, 2, 3, 1).reshape(B, cout, M * S)  # interleave: sample m*S + r
    return y[:, :, P:P + L].contiguous()


def _eager_conv_transpose1d(x, alpha, beta, weight, bias, stride, apply_snake, packed=None):
    s = snake_activation(x, alpha, beta) if apply_snake else x
    if _no_grad_needed(x, alpha, beta, weight, bias):
        # CPU fast path: the polyphase conv1d is 1.4-3x faster than mkldnn's transposed conv (measured).
        if packed is None or packed.stride != stride or packed.cin != x.shape[1]:
            packed = pack_polyphase(weight, bias, stride)
        return _polyphase(s, packed)
    b = None if bias is None else bias.to(x.dtype)
    return F.conv_transpose1d(s, weight.to(x.dtype), b, stride=stride, padding=(stride + 1) // 2)


def _check_common(op: str, x, weight, dilation_or_stride: int, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{op}: weight must be a torch.Tensor, got {type(weight).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{op}: x must be (B, Cin, T), got shape {tuple(x.shape)}")
    if weight.dim() != 3:
        raise ValueError(f"{op}: weight must have 3 dims, got shape {tuple(weight.shape)}")
    if not isinstance(dilation_or_stride, int) or isinstance(dilation_or_stride, bool) or dilation_or_stride < 1:
        raise ValueError(f"{op}: {what} must be a positive int, got {dilation_or_stride!r}")


def snake_conv1d(x: torch.Tensor, alpha: torch.Tensor | None, beta: torch.Tensor | None, weight: torch.Tensor,
                 bias: torch.Tensor | None = None, dilation: int = 1, residual: torch.Tensor | None = None,
                 apply_snake: bool = True, backend: str | None = None) -> torch.Tensor:
    """y = conv1d(snake_beta(x), weight, bias, padding=dilation*(K-1)//2, dilation=dilation) + residual.

    Args:
        x: (B, Cin, T) fp32/fp16/bf16. alpha, beta: (Cin,) log-scale (unused if ``apply_snake=False``).
        weight: (Cout, Cin, K) plain (weight norm folded), K odd. bias: (Cout,) or None.
        residual: (B, Cout, T) or None. backend: None (automatic), "eager", "triton" or "cuda".

    Returns:
        (B, Cout, T) in x's dtype.
    """
    op = "snake_conv1d"
    _check_common(op, x, weight, dilation, "dilation")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"{op}: weight must be (Cout, Cin={x.shape[1]}, K), got shape {tuple(weight.shape)}")
    if weight.shape[2] % 2 != 1:
        raise ValueError(f"{op}: kernel size must be odd for 'same' padding, got {weight.shape[2]}")
    if apply_snake and (alpha is None or beta is None):
        raise ValueError(f"{op}: alpha and beta are required when apply_snake=True")
    name = pick_backend(op, x.device.type, implemented_backends(), backend)
    if name == "triton":
        return kernel_module().snake_conv1d(x, alpha, beta, weight, bias, dilation, residual, apply_snake)
    if name == "cuda":
        cuda = _cuda_module()
        if cuda is None:
            raise RuntimeError(f"{op}: the cuda backend is not available (arc_fast._cuda.available() is False)")
        return cuda.snake_conv1d(x, alpha, beta, weight, bias, dilation, residual, apply_snake)
    return _eager_conv1d(x, alpha, beta, weight, bias, dilation, residual, apply_snake)


def snake_conv_transpose1d(x: torch.Tensor, alpha: torch.Tensor | None, beta: torch.Tensor | None,
                           weight: torch.Tensor, bias: torch.Tensor | None = None, stride: int = 2,
                           apply_snake: bool = True, backend: str | None = None,
                           packed: PolyphaseWeight | None = None) -> torch.Tensor:
    """y = conv_transpose1d(snake_beta(x), weight, bias, stride=stride, padding=ceil(stride/2)).

    Args:
        x: (B, Cin, T) fp32/fp16/bf16. alpha, beta: (Cin,) log-scale (unused if ``apply_snake=False``).
        weight: (Cin, Cout, 2*stride) plain (weight norm folded). bias: (Cout,) or None.
        stride: positive int. backend: None (automatic), "eager", "triton" or "cuda".
        packed: optional ``pack_polyphase(weight, bias, stride)`` result, reused by the eager path when no
            gradient is needed (the eager path then runs the transposed conv as one polyphase conv1d).

    Returns:
        (B, Cout, (T-1)*stride - 2*ceil(stride/2) + 2*stride) in x's dtype (stride*T for even strides).
    """
    op = "snake_conv_transpose1d"
    _check_common(op, x, weight, stride, "stride")
    if weight.shape[0] != x.shape[1] or weight.shape[2] != 2 * stride:
        raise ValueError(f"{op}: weight must be (Cin={x.shape[1]}, Cout, 2*stride={2 * stride}), got shape "
                         f"{tuple(weight.shape)}")
    if apply_snake and (alpha is None or beta is None):
        raise ValueError(f"{op}: alpha and beta are required when apply_snake=True")
    name = pick_backend(op, x.device.type, implemented_backends(), backend)
    if name == "triton":
        return kernel_module().snake_conv_transpose1d(x, alpha, beta, weight, bias, stride, apply_snake)
    if name == "cuda":
        cuda = _cuda_module()
        if cuda is None:
            raise RuntimeError(f"{op}: the cuda backend is not available (arc_fast._cuda.available() is False)")
        return cuda.snake_conv_transpose1d(x, alpha, beta, weight, bias, stride, apply_snake)
    return _eager_conv_transpose1d(x, alpha, beta, weight, bias, stride, apply_snake, packed)
