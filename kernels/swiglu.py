"""Fused SwiGLU of a packed projection, forward and backward.

The DiT feed-forward projects to 2F features and splits them as (value | gate) (SPEC.md 7.3):

    h = (v | g),  v, g (..., F)
    out = v * silu(g) = v * g * sigmoid(g)

Backward, with s = sigmoid(g):

    dv = dout * g * s
    dg = dout * v * s * (1 + g * (1 - s))
    dh = (dv | dg)

Shapes and dtypes:
    h (..., 2F) in {fp32, fp16, bf16}, stride(-1) == 1. 3-D inputs are read through their strides (a
    row-sliced h needs no copy); other ranks are viewed as (1, N, 2F) (copied only if no view exists).
    out (..., F) in h.dtype, new and contiguous; computed in fp32, rounded once (the oracle
    ``reference.functional.swiglu`` rounds silu(g) and the product separately in low precision).
    dh (..., 2F) in h.dtype; the incoming gradient may have any strides (stride 0 from ``.sum()``).

Limits: the leading 3-D batch <= 65535 (a grid axis).

References: Shazeer, "GLU Variants Improve Transformer" (arXiv:2002.05202).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import MAX_GRID_YZ, as_3d, device_reasons, launch, raise_if, rne_bf16, rne_flag

# ---------------------------------------------------------------------------------------------------------
# Capabilities
# ---------------------------------------------------------------------------------------------------------
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MIN_CAPABILITY = (7, 0)
IS_DETERMINISTIC = True
ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
RTOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}

_INTERPRETER_BLOCK_M = 32  # the interpreter pays per operation: few, large tiles
_INTERPRETER_BLOCK_F = 512


# ---------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------
@triton.jit
def _value_gate_tile(
    h_ptr,        # (B, M, 2F) packed (value | gate), unit column stride
    M, F,         # rows per batch, output features
    s_hb, s_hm,   # h strides of batch and row
    BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr,
):
    """This program's (BLOCK_M, BLOCK_F) tile, grid (row blocks, feature blocks, batch): returns
    (batch, int64 rows, feature columns, mask, value tile, gate tile), the tiles loaded as fp32."""
    pid_m = tl.program_id(0)
    pid_f = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
    m = (rows < M)[:, None] & (cols < F)[None, :]
    base = h_ptr + b * s_hb + rows[:, None] * s_hm + cols[None, :]
    v = tl.load(base, mask=m, other=0.0).to(tl.float32)
    g = tl.load(base + F, mask=m, other=0.0).to(tl.float32)
    return b, rows, cols, m, v, g


@triton.jit
def _swiglu_fwd_kernel(
    h_ptr,        # (B, M, 2F) packed (value | gate), unit column stride
    o_ptr,        # (B, M, F) out, contiguous
    M, F,         # rows per batch, output features
    s_hb, s_hm,   # h strides of batch and row
    BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr,
    RNE_BF16: tl.constexpr,   # pre-round bf16 outputs (interpreter only)
):
    b, rows, cols, m, v, g = _value_gate_tile(h_ptr, M, F, s_hb, s_hm, BLOCK_M, BLOCK_F)
    out = rne_bf16(v * g * tl.sigmoid(g), RNE_BF16)
    tl.store(o_ptr + (b * M + rows[:, None]) * F + cols[None, :], out.to(o_ptr.dtype.element_ty), mask=m)


@triton.jit
def _swiglu_bwd_kernel(
    do_ptr,       # (B, M, F) incoming gradient, any strides
    h_ptr,        # (B, M, 2F) forward input, unit column stride
    dh_ptr,       # (B, M, 2F) out, contiguous
    M, F,
    s_ob, s_om, s_of,  # dout strides
    s_hb, s_hm,   # h strides
    BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr,
    RNE_BF16: tl.constexpr,   # pre-round bf16 outputs (interpreter only)
):
    b, rows, cols, m, v, g = _value_gate_tile(h_ptr, M, F, s_hb, s_hm, BLOCK_M, BLOCK_F)
    do = tl.load(do_ptr + b * s_ob + rows[:, None] * s_om + cols[None, :] * s_of, mask=m, other=0.0).to(tl.float32)
    s = tl.sigmoid(g)
    dv = do * g * s
    dg = do * v * s * (1.0 + g * (1.0 - s))
    dv = rne_bf16(dv, RNE_BF16)
    dg = rne_bf16(dg, RNE_BF16)
    out = dh_ptr + (b * M + rows[:, None]) * (2 * F) + cols[None, :]
    tl.store(out, dv.to(dh_ptr.dtype.element_ty), mask=m)
    tl.store(out + F, dg.to(dh_ptr.dtype.element_ty), mask=m)


# Memory-bound elementwise kernels: the configs only trade tile shape against per-program overhead.
_CONFIGS = [triton.Config({"BLOCK_M": bm, "BLOCK_F": bf}, num_warps=nw)
            for bm, bf, nw in ((1, 1024, 4), (4, 512, 4), (8, 512, 8), (2, 2048, 8))]
# Keyed on F only: the token count changes with every clip length and must not trigger a re-tune.
_swiglu_fwd_tuned = triton.autotune(configs=_CONFIGS, key=["F"])(_swiglu_fwd_kernel)
_swiglu_bwd_tuned = triton.autotune(configs=_CONFIGS, key=["F"])(_swiglu_bwd_kernel)


# ---------------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------------
def not_supported_reasons(h: torch.Tensor) -> list[str]:
    """Every reason why ``swiglu(h)`` cannot run on the Triton kernel (empty list: it can)."""
    if not isinstance(h, torch.Tensor):
        return [f"h must be a torch.Tensor, got {type(h).__name__}"]
    reasons = device_reasons(h, "h", MIN_CAPABILITY)
    if h.dtype not in SUPPORTED_DTYPES:
        reasons.append(f"h: dtype {h.dtype} not in {SUPPORTED_DTYPES}")
    if h.dim() == 0:
        return reasons + ["h: expected at least 1 dim (..., 2F), got a scalar"]
    if h.shape[-1] % 2 != 0:
        reasons.append(f"h: last dim must be even (value | gate), got {h.shape[-1]}")
    if h.numel() > 0 and h.stride(-1) != 1:
        reasons.append(f"h: stride(-1) must be 1, got {h.stride(-1)}")
    if h.dim() == 3 and h.shape[0] > MAX_GRID_YZ:
        reasons.append(f"h: batch {h.shape[0]} > {MAX_GRID_YZ} (grid axis limit)")
    return reasons


def _out_shape(h_shape) -> tuple[int, ...]:
    """Output shape for an h of ``h_shape``; shared by the launcher and the fake."""
    return (*h_shape[:-1], h_shape[-1] // 2)


# ---------------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------------
def _launch(kernel, tuned, grid_shape, args, dtype):
    B, M, F = grid_shape
    launch(kernel, tuned, lambda m: (triton.cdiv(M, m["BLOCK_M"]), triton.cdiv(F, m["BLOCK_F"]), B), args,
           {"BLOCK_M": _INTERPRETER_BLOCK_M, "BLOCK_F": min(_INTERPRETER_BLOCK_F, triton.next_power_of_2(F))},
           RNE_BF16=rne_flag(dtype))


def swiglu_fwd(h: torch.Tensor) -> torch.Tensor:
    """Checked forward launch: (..., 2F) -> (..., F) in h.dtype, contiguous."""
    raise_if(not_supported_reasons(h), "swiglu")
    out = torch.empty(_out_shape(h.shape), dtype=h.dtype, device=h.device)
    if out.numel() == 0:
        return out
    h3 = as_3d(h)
    B, M, F = h3.shape[0], h3.shape[1], h3.shape[2] // 2
    _launch(_swiglu_fwd_kernel, _swiglu_fwd_tuned, (B, M, F), (h3, out, M, F, h3.stride(0), h3.stride(1)), h.dtype)
    return out


def swiglu_bwd(dout: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Backward launch: dh (..., 2F) in h.dtype, contiguous. dout (..., F) may have any strides."""
    dh = torch.empty(h.shape, dtype=h.dtype, device=h.device)
    if dh.numel() == 0:
        return dh
    h3, do3 = as_3d(h), as_3d(dout)
    B, M, F = h3.shape[0], h3.shape[1], h3.shape[2] // 2
    _launch(_swiglu_bwd_kernel, _swiglu_bwd_tuned, (B, M, F),
            (do3, h3, dh, M, F, *do3.stride(), h3.stride(0), h3.stride(1)), h.dtype)
    return dh


# ---------------------------------------------------------------------------------------------------------
# torch.library glue
# ---------------------------------------------------------------------------------------------------------
@torch.library.custom_op("arc_fast::swiglu_fwd", mutates_args=())
def swiglu_fwd_op(h: torch.Tensor) -> torch.Tensor:
    return swiglu_fwd(h)


@swiglu_fwd_op.register_fake
def _(h):
    return h.new_empty(_out_shape(h.shape))


@torch.library.custom_op("arc_fast::swiglu_bwd", mutates_args=())
def swiglu_bwd_op(dout: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    return swiglu_bwd(dout, h)


@swiglu_bwd_op.register_fake
def _(dout, h):
    return h.new_empty(h.shape)


def _setup_context(ctx, inputs, output):
    (h,) = inputs
    ctx.save_for_backward(h)


def _backward(ctx, dout):
    (h,) = ctx.saved_tensors
    return swiglu_bwd_op(dout, h)


swiglu_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------------------
# Public functional
# ---------------------------------------------------------------------------------------------------------
def swiglu(h: torch.Tensor) -> torch.Tensor:
    """``value * silu(gate)`` of a packed projection ``h = (value | gate)``, one Triton pass.

    Args:
        h: (..., 2F) fp32/fp16/bf16, stride(-1) == 1; the first F features are the value, the last F the gate
            (the order of Stable Audio Open's feed-forward projection).

    Returns:
        (..., F) in h.dtype, a new contiguous tensor computed in fp32. Differentiable w.r.t. h.

    Raises:
        TypeError (dtype problems) / ValueError (anything else) listing every ``not_supported_reasons`` item.
    """
    raise_if(not_supported_reasons(h), "swiglu")
    return swiglu_fwd_op(h)
