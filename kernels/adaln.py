"""Adaptive LayerNorm (LayerNorm + gain + adaLN modulation in one pass) and the gated residual, fwd + bwd.

adaLN (Stable Audio Open's bias-less LayerNorm with learned gamma, then DiT modulation; SPEC.md 7.3):

    mean = sum_d x / D,  rstd = 1 / sqrt(sum_d (x - mean)^2 / D + eps),  xhat = (x - mean) * rstd
    y = xhat * gamma * (1 + scale[b]) + shift[b]

Each factor is optional (gamma None = 1, scale None = 0, shift None = 0); with neither scale nor shift it
is a plain bias-less LayerNorm. Backward, with w = gamma * (1 + scale[b]) and g = dy * w:

    dx = rstd * (g - mean_d(g) - xhat * mean_d(g * xhat))
    dgamma   = sum_{b,l} dy * xhat * (1 + scale[b])
    dscale[b] = gamma * sum_l dy * xhat
    dshift[b] = sum_l dy

The two row sums (sum_l dy and sum_l dy*xhat, per batch) are accumulated in fp32 per (batch, row-block)
program into a partials buffer and then summed over blocks by torch in fp32: deterministic, no atomics.

Gated residual (the adaLN block's residual update):

    out = x + g * y,   g = sigmoid(1 - gate[b])  (sigmoid_gate=True, SAO's convention)  or  g = gate[b]
    dx = dout,  dy = dout * g,  dgate[b] = sum_l dout * y * dg/dgate,  dg/dgate = -g (1 - g) or 1

Shapes and broadcast forms:
    x (B, L, D). Without scale and shift, x may have any rank (..., D) (it is viewed as (1, N, D); a view
    that needs a copy is copied).
    gamma (D,). scale, shift, gate: (B, D), (B, 1, D), (1, D) or (1, 1, D), broadcast over L (and over B when
    their batch is 1); stride(-1) == 1 (a ``chunk`` of a (B, 6D) projection is fine).
    gated_residual: x, y (B, L, D) with the same shape.

Dtype contract: x (and y) in {fp32, fp16, bf16}; gamma/scale/shift/gate in x's dtype. Outputs in x.dtype,
computed in fp32 and rounded once. mean/rstd saved in fp32, shape x.shape[:-1]. Gradients in each input's
dtype; parameter-gradient reductions in fp32. Inputs need stride(-1) == 1 (other strides are free);
incoming gradients may have any strides (stride 0 from ``.sum()``).

Limits: D <= MAX_D (one row lives in registers), batch <= 65535 (a grid axis).

References: Ba et al., "Layer Normalization" (arXiv:1607.06450); Peebles & Xie, "Scalable Diffusion Models
with Transformers" (adaLN, arXiv:2212.09748); Triton tutorial 05 (fused layer norm).
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import (MAX_GRID_YZ, as_3d, device_reasons, interpreter_active, launch, raise_if, rne_bf16,
                      rne_flag)

# ---------------------------------------------------------------------------------------------------------
# Capabilities
# ---------------------------------------------------------------------------------------------------------
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_D = 16384
MIN_CAPABILITY = (7, 0)
IS_DETERMINISTIC = True
# fp32 statistics and one rounding of the output: the kernel is at least as accurate as eager in that dtype.
ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}

_INTERPRETER_ROWS = 32         # rows per program (one tile) under the interpreter (fixed; no autotune)
_INTERPRETER_BLOCK_L = 32      # gated residual tile under the interpreter
_INTERPRETER_BLOCK_D = 512


# ---------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------
@triton.jit
def _row_weight(gamma_ptr, scale_ptr, b, s_sc_b, cols, cmask, BLOCK_D: tl.constexpr, HAS_GAMMA: tl.constexpr,
                HAS_SCALE: tl.constexpr):
    """The fp32 factor w = gamma * (1 + scale[b]) of batch b over the columns (1 where a factor is absent)."""
    w = tl.full([BLOCK_D], 1.0, tl.float32)
    if HAS_GAMMA:
        w = w * tl.load(gamma_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    if HAS_SCALE:
        w = w * (1.0 + tl.load(scale_ptr + b * s_sc_b + cols, mask=cmask, other=0.0).to(tl.float32))
    return w


@triton.jit
def _gate_tile(gate_ptr, b, s_g_b, cols, cmask, SIGMOID_GATE: tl.constexpr):
    """The fp32 gate factor g of batch b over the columns: sigmoid(1 - gate) or gate."""
    g = tl.load(gate_ptr + b * s_g_b + cols, mask=cmask, other=0.0).to(tl.float32)
    if SIGMOID_GATE:
        g = tl.sigmoid(1.0 - g)
    return g


@triton.jit
def _bld_tile(L, D, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's (BLOCK_L, BLOCK_D) tile, grid (row blocks, column blocks, batch): returns
    (batch, int64 rows, columns, column mask, tile mask)."""
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    rows = (pid_l * BLOCK_L + tl.arange(0, BLOCK_L)).to(tl.int64)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    m = (rows < L)[:, None] & cmask[None, :]
    return b, rows, cols, cmask, m


@triton.jit
def _adaln_fwd_kernel(
    x_ptr,        # (B, L, D) input, strided rows, unit column stride
    y_ptr,        # (B, L, D) output, contiguous
    gamma_ptr,    # (D,) gain, when HAS_GAMMA
    scale_ptr,    # (Bs, D) per-sample scale, when HAS_SCALE (Bs in {1, B}: s_sc_b is 0 when Bs == 1)
    shift_ptr,    # (Bs, D) per-sample shift, when HAS_SHIFT
    mean_ptr,     # (B*L,) fp32 row means (out)
    rstd_ptr,     # (B*L,) fp32 row 1/std (out)
    L, D,         # sequence length, feature size
    s_xb, s_xl,   # x strides of batch and row
    s_sc_b, s_sh_b,  # scale/shift batch strides (0 = broadcast over batch)
    eps,          # variance epsilon
    ROWS: tl.constexpr,       # rows per program (all of one batch), a multiple of BLOCK_R
    BLOCK_R: tl.constexpr,    # rows per tile
    BLOCK_D: tl.constexpr,    # next_pow2(D): a whole row is one tile row
    HAS_GAMMA: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    RNE_BF16: tl.constexpr,   # pre-round bf16 outputs (interpreter only)
):
    pid_l = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    # The per-sample factors are loaded once per program and reused by all its rows.
    w = _row_weight(gamma_ptr, scale_ptr, b, s_sc_b, cols, cmask, BLOCK_D, HAS_GAMMA, HAS_SCALE)
    if HAS_SHIFT:
        sh = tl.load(shift_ptr + b * s_sh_b + cols, mask=cmask, other=0.0).to(tl.float32)
    for t in range(ROWS // BLOCK_R):
        rows = pid_l * ROWS + t * BLOCK_R + tl.arange(0, BLOCK_R)
        rmask = rows < L
        m = rmask[:, None] & cmask[None, :]
        r64 = rows.to(tl.int64)
        x = tl.load(x_ptr + b * s_xb + r64[:, None] * s_xl + cols[None, :], mask=m, other=0.0).to(tl.float32)
        # Two-pass statistics in fp32 (x is in registers already, so the second pass is free).
        mean = tl.sum(x, axis=1) / D
        xc = tl.where(m, x - mean[:, None], 0.0)
        var = tl.sum(xc * xc, axis=1) / D
        rstd = 1.0 / tl.sqrt(var + eps)
        y = xc * rstd[:, None] * w[None, :]
        if HAS_SHIFT:
            y = y + sh[None, :]
        row = b * L + r64
        y = rne_bf16(y, RNE_BF16)
        tl.store(y_ptr + row[:, None] * D + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=m)
        tl.store(mean_ptr + row, mean, mask=rmask)
        tl.store(rstd_ptr + row, rstd, mask=rmask)


@triton.jit
def _adaln_bwd_kernel(
    dy_ptr,       # (B, L, D) incoming gradient, any strides
    x_ptr,        # (B, L, D) forward input, unit column stride
    gamma_ptr,    # (D,) gain, when HAS_GAMMA
    scale_ptr,    # (Bs, D) per-sample scale, when HAS_SCALE
    mean_ptr,     # (B*L,) fp32
    rstd_ptr,     # (B*L,) fp32
    dx_ptr,       # (B, L, D) out, contiguous
    pdy_ptr,      # (B, NBLK, D) fp32 out: per-block sum_l dy            (when NEED_SUMS)
    pdyx_ptr,     # (B, NBLK, D) fp32 out: per-block sum_l dy * xhat     (when NEED_SUMS)
    L, D, NBLK,   # sequence length, feature size, row blocks per batch
    s_dyb, s_dyl, s_dyd,  # dy strides
    s_xb, s_xl,   # x strides
    s_sc_b,       # scale batch stride (0 = broadcast)
    ROWS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_GAMMA: tl.constexpr, HAS_SCALE: tl.constexpr, NEED_SUMS: tl.constexpr,
    RNE_BF16: tl.constexpr,   # pre-round bf16 outputs (interpreter only)
):
    pid_l = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    w = _row_weight(gamma_ptr, scale_ptr, b, s_sc_b, cols, cmask, BLOCK_D, HAS_GAMMA, HAS_SCALE)
    acc_dy = tl.zeros([BLOCK_D], tl.float32)
    acc_dyx = tl.zeros([BLOCK_D], tl.float32)
    for t in range(ROWS // BLOCK_R):
        rows = pid_l * ROWS + t * BLOCK_R + tl.arange(0, BLOCK_R)
        rmask = rows < L
        m = rmask[:, None] & cmask[None, :]
        r64 = rows.to(tl.int64)
        row = b * L + r64
        # Rows past L load zeros everywhere (rstd included), so they add nothing to the sums.
        x = tl.load(x_ptr + b * s_xb + r64[:, None] * s_xl + cols[None, :], mask=m, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + b * s_dyb + r64[:, None] * s_dyl + cols[None, :] * s_dyd, mask=m,
                     other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + row, mask=rmask, other=0.0)
        rstd = tl.load(rstd_ptr + row, mask=rmask, other=0.0)
        xhat = tl.where(m, (x - mean[:, None]) * rstd[:, None], 0.0)
        g = dy * w[None, :]
        c1 = tl.sum(g * xhat, axis=1) / D
        c2 = tl.sum(g, axis=1) / D
        dx = rne_bf16((g - xhat * c1[:, None] - c2[:, None]) * rstd[:, None], RNE_BF16)
        tl.store(dx_ptr + row[:, None] * D + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=m)
        if NEED_SUMS:
            acc_dy += tl.sum(dy, axis=0)
            acc_dyx += tl.sum(dy * xhat, axis=0)
    if NEED_SUMS:
        p = (b * NBLK + pid_l) * D + cols
        tl.store(pdy_ptr + p, acc_dy, mask=cmask)
        tl.store(pdyx_ptr + p, acc_dyx, mask=cmask)


@triton.jit
def _gated_residual_fwd_kernel(
    x_ptr,        # (B, L, D) residual stream, unit column stride
    y_ptr,        # (B, L, D) branch output, unit column stride
    gate_ptr,     # (Bs, D) gate, when HAS_GATE
    out_ptr,      # (B, L, D) out, contiguous
    L, D,
    s_xb, s_xl, s_yb, s_yl,  # x / y strides
    s_g_b,        # gate batch stride (0 = broadcast)
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_GATE: tl.constexpr, SIGMOID_GATE: tl.constexpr,
    RNE_BF16: tl.constexpr,   # pre-round bf16 outputs (interpreter only)
):
    b, rows, cols, cmask, m = _bld_tile(L, D, BLOCK_L, BLOCK_D)
    x = tl.load(x_ptr + b * s_xb + rows[:, None] * s_xl + cols[None, :], mask=m, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + b * s_yb + rows[:, None] * s_yl + cols[None, :], mask=m, other=0.0).to(tl.float32)
    if HAS_GATE:
        y = y * _gate_tile(gate_ptr, b, s_g_b, cols, cmask, SIGMOID_GATE)[None, :]
    out = rne_bf16(x + y, RNE_BF16)
    tl.store(out_ptr + (b * L + rows[:, None]) * D + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _gated_residual_bwd_kernel(
    do_ptr,       # (B, L, D) incoming gradient, any strides
    y_ptr,        # (B, L, D) branch output from the forward, unit column stride
    gate_ptr,     # (Bs, D) gate
    dy_ptr,       # (B, L, D) out, contiguous
    pg_ptr,       # (B, NBLK, D) fp32 out: per-block sum_l dout * y * dg/dgate  (when NEED_DGATE)
    L, D, NBLK,
    s_ob, s_ol, s_od,  # dout strides
    s_yb, s_yl,   # y strides
    s_g_b,        # gate batch stride
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    SIGMOID_GATE: tl.constexpr, NEED_DGATE: tl.constexpr,
    RNE_BF16: tl.constexpr,   # pre-round bf16 outputs (interpreter only)
):
    b, rows, cols, cmask, m = _bld_tile(L, D, BLOCK_L, BLOCK_D)
    do = tl.load(do_ptr + b * s_ob + rows[:, None] * s_ol + cols[None, :] * s_od, mask=m, other=0.0).to(tl.float32)
    g = _gate_tile(gate_ptr, b, s_g_b, cols, cmask, SIGMOID_GATE)
    dy = rne_bf16(do * g[None, :], RNE_BF16)
    tl.store(dy_ptr + (b * L + rows[:, None]) * D + cols[None, :], dy.to(dy_ptr.dtype.element_ty), mask=m)
    if NEED_DGATE:
        y = tl.load(y_ptr + b * s_yb + rows[:, None] * s_yl + cols[None, :], mask=m, other=0.0).to(tl.float32)
        part = tl.sum(do * y, axis=0)
        if SIGMOID_GATE:
            part = -part * g * (1.0 - g)
        # One partials row per (batch, row block): this program's row block is its grid axis 0.
        tl.store(pg_ptr + (b * NBLK + tl.program_id(0)) * D + cols, part, mask=cmask)


_gated_residual_fwd_tuned = triton.autotune(
    configs=[triton.Config({"BLOCK_L": bl, "BLOCK_D": bd}, num_warps=nw)
             for bl, bd, nw in ((4, 512, 4), (8, 512, 4), (16, 256, 4), (8, 1024, 8))],
    key=["D"],
)(_gated_residual_fwd_kernel)


# ---------------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------------
def _per_sample_reasons(name: str, t: torch.Tensor, x: torch.Tensor) -> list[str]:
    """Checks for a (Bs, D) / (Bs, 1, D) per-sample tensor against x (B, L, D)."""
    reasons = []
    if t.device != x.device:
        reasons.append(f"{name}: device {t.device} differs from x's {x.device}")
    if t.dtype != x.dtype:
        reasons.append(f"{name}: dtype {t.dtype} must equal x's dtype {x.dtype}")
    ok_shape = (t.dim() == 2 or (t.dim() == 3 and t.shape[1] == 1)) and t.shape[-1] == x.shape[-1]
    if x.dim() != 3:
        reasons.append(f"{name}: needs x of shape (B, L, D), got x {tuple(x.shape)}")
    elif not ok_shape or t.shape[0] not in (1, x.shape[0]):
        reasons.append(f"{name}: expected shape ({x.shape[0]} or 1, {x.shape[-1]}) or ({x.shape[0]} or 1, 1, "
                       f"{x.shape[-1]}), got {tuple(t.shape)}")
    elif t.numel() > 0 and t.stride(-1) != 1:
        reasons.append(f"{name}: stride(-1) must be 1, got {t.stride(-1)}")
    return reasons


def not_supported_reasons(x: torch.Tensor, gamma: Optional[torch.Tensor] = None, scale: Optional[torch.Tensor] = None,
                          shift: Optional[torch.Tensor] = None) -> list[str]:
    """Every reason why ``adaln_layer_norm(x, gamma, scale, shift)`` cannot run on the Triton kernel."""
    for name, t in (("x", x), ("gamma", gamma), ("scale", scale), ("shift", shift)):
        if t is not None and not isinstance(t, torch.Tensor):
            return [f"{name} must be a torch.Tensor or None, got {type(t).__name__}"]
    reasons = device_reasons(x, "x", MIN_CAPABILITY)
    if x.dtype not in SUPPORTED_DTYPES:
        reasons.append(f"x: dtype {x.dtype} not in {SUPPORTED_DTYPES}")
    if x.dim() == 0:
        return reasons + ["x: expected at least 1 dim (..., D), got a scalar"]
    D = x.shape[-1]
    if D > MAX_D:
        reasons.append(f"x: D = {D} > MAX_D = {MAX_D}")
    if x.numel() > 0 and x.stride(-1) != 1:
        reasons.append(f"x: stride(-1) must be 1, got {x.stride(-1)}")
    if x.dim() == 3 and x.shape[0] > MAX_GRID_YZ:
        reasons.append(f"x: batch {x.shape[0]} > {MAX_GRID_YZ} (grid axis limit)")
    if gamma is not None:
        if gamma.device != x.device:
            reasons.append(f"gamma: device {gamma.device} differs from x's {x.device}")
        if gamma.dtype != x.dtype:
            reasons.append(f"gamma: dtype {gamma.dtype} must equal x's dtype {x.dtype}")
        if tuple(gamma.shape) != (D,):
            reasons.append(f"gamma: expected shape ({D},), got {tuple(gamma.shape)}")
        elif gamma.numel() > 0 and gamma.stride(-1) != 1:
            reasons.append(f"gamma: stride(-1) must be 1, got {gamma.stride(-1)}")
    for name, t in (("scale", scale), ("shift", shift)):
        if t is not None:
            reasons += _per_sample_reasons(name, t, x)
    return reasons


def gated_residual_not_supported_reasons(x: torch.Tensor, y: torch.Tensor, gate: Optional[torch.Tensor]) -> list[str]:
    """Every reason why ``gated_residual(x, y, gate)`` cannot run on the Triton kernel."""
    for name, t in (("x", x), ("y", y), ("gate", gate)):
        if (t is not None or name != "gate") and not isinstance(t, torch.Tensor):
            return [f"{name} must be a torch.Tensor{' or None' if name == 'gate' else ''}, got {type(t).__name__}"]
    reasons = device_reasons(x, "x", MIN_CAPABILITY)
    if x.dtype not in SUPPORTED_DTYPES:
        reasons.append(f"x: dtype {x.dtype} not in {SUPPORTED_DTYPES}")
    if y.dtype != x.dtype:
        reasons.append(f"y: dtype {y.dtype} must equal x's dtype {x.dtype}")
    if y.device != x.device:
        reasons.append(f"y: device {y.device} differs from x's {x.device}")
    if x.dim() != 3:
        return reasons + [f"x: expected shape (B, L, D), got {tuple(x.shape)}"]
    if y.shape != x.shape:
        reasons.append(f"y: shape {tuple(y.shape)} must equal x's shape {tuple(x.shape)}")
    if x.shape[0] > MAX_GRID_YZ:
        reasons.append(f"x: batch {x.shape[0]} > {MAX_GRID_YZ} (grid axis limit)")
    for name, t in (("x", x), ("y", y)):
        if t.numel() > 0 and t.stride(-1) != 1:
            reasons.append(f"{name}: stride(-1) must be 1, got {t.stride(-1)}")
    if gate is not None:
        reasons += _per_sample_reasons("gate", gate, x)
    return reasons


# ---------------------------------------------------------------------------------------------------------
# Shapes and launch configuration (shared by launchers and fakes)
# ---------------------------------------------------------------------------------------------------------
def _fwd_shapes(x_shape) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(y shape, mean/rstd shape) for an x of ``x_shape``."""
    return tuple(x_shape), tuple(x_shape[:-1])


def _sums_shape(x_shape, need: bool) -> tuple[int, ...]:
    """Shape of the fp32 per-batch row sums returned by the backward op: (B, D), or (0,) when not needed."""
    if not need:
        return (0,)
    batch = x_shape[0] if len(x_shape) == 3 else 1
    return (batch, x_shape[-1])


def _batch_stride(t: Optional[torch.Tensor]) -> int:
    """Batch stride of a (Bs, [1,] D) per-sample tensor; 0 broadcasts a batch of 1."""
    if t is None or t.shape[0] == 1:
        return 0
    return t.stride(0)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int | None) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _ln_config(D: int, B: int, L: int, device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_D, BLOCK_R, ROWS, num_warps) for the LayerNorm kernels; ROWS is a multiple of BLOCK_R."""
    block_d = triton.next_power_of_2(max(D, 1))
    if interpreter_active() or device.type != "cuda":
        # The interpreter pays per operation, not per element: big tiles, few programs.
        return block_d, _INTERPRETER_ROWS, _INTERPRETER_ROWS, 1
    # About 4K fp32 values per tile keeps x, dy and xhat in registers without spilling.
    block_r = max(1, min(16, 4096 // block_d))
    num_warps = 4 if block_d <= 1024 else 8 if block_d <= 4096 else 16
    # About two programs per SM, but several rows each so that the fp32 partials stay small next to x.
    target = 2 * _sm_count(device.index)
    rows = triton.next_power_of_2(max(triton.cdiv(B * L, target), 1))
    return block_d, block_r, max(min(max(rows, 4), 64), block_r), num_warps


# ---------------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------------
def adaln_fwd(x: torch.Tensor, gamma: Optional[torch.Tensor], scale: Optional[torch.Tensor],
              shift: Optional[torch.Tensor], eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Checked launch of the forward: returns (y in x.dtype, mean fp32, rstd fp32), stats shaped x.shape[:-1]."""
    raise_if(not_supported_reasons(x, gamma, scale, shift), "adaln_layer_norm")
    y_shape, stat_shape = _fwd_shapes(x.shape)
    y = torch.empty(y_shape, dtype=x.dtype, device=x.device)
    mean = torch.empty(stat_shape, dtype=torch.float32, device=x.device)
    rstd = torch.empty(stat_shape, dtype=torch.float32, device=x.device)
    if x.numel() == 0:
        return y, mean, rstd
    x3 = as_3d(x)
    B, L, D = x3.shape
    block_d, block_r, rows, num_warps = _ln_config(D, B, L, x.device)
    grid = (triton.cdiv(L, rows), B)
    _adaln_fwd_kernel[grid](
        x3, y, gamma, scale, shift, mean, rstd, L, D, x3.stride(0), x3.stride(1),
        _batch_stride(scale), _batch_stride(shift), float(eps),
        ROWS=rows, BLOCK_R=block_r, BLOCK_D=block_d, HAS_GAMMA=gamma is not None, HAS_SCALE=scale is not None,
        HAS_SHIFT=shift is not None, RNE_BF16=rne_flag(x.dtype), num_warps=num_warps)
    return y, mean, rstd


def adaln_bwd(dy: torch.Tensor, x: torch.Tensor, gamma: Optional[torch.Tensor], scale: Optional[torch.Tensor],
              mean: torch.Tensor, rstd: torch.Tensor,
              need_sums: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward launch: returns (dx in x.dtype, sum_l dy, sum_l dy*xhat), the sums fp32 (B, D) per batch
    (B = 1 for x that is not 3-D) or empty (0,) when ``need_sums`` is False."""
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    sums_shape = _sums_shape(x.shape, need_sums)
    if x.numel() == 0:
        z = torch.zeros(sums_shape, dtype=torch.float32, device=x.device)
        return dx, z, z.clone()
    x3, dy3 = as_3d(x), as_3d(dy)
    B, L, D = x3.shape
    block_d, block_r, rows, num_warps = _ln_config(D, B, L, x.device)
    nblk = triton.cdiv(L, rows)
    if need_sums:
        pdy = torch.empty((B, nblk, D), dtype=torch.float32, device=x.device)
        pdyx = torch.empty((B, nblk, D), dtype=torch.float32, device=x.device)
    else:
        pdy = pdyx = None
    _adaln_bwd_kernel[(nblk, B)](
        dy3, x3, gamma, scale, mean, rstd, dx, pdy, pdyx, L, D, nblk,
        *dy3.stride(), x3.stride(0), x3.stride(1), _batch_stride(scale),
        ROWS=rows, BLOCK_R=block_r, BLOCK_D=block_d, HAS_GAMMA=gamma is not None, HAS_SCALE=scale is not None,
        NEED_SUMS=need_sums, RNE_BF16=rne_flag(x.dtype), num_warps=num_warps)
    if not need_sums:
        e = x.new_empty((0,), dtype=torch.float32)
        return dx, e, e.clone()
    return dx, pdy.sum(1), pdyx.sum(1)


def _gr_block(D: int) -> int:
    return min(_INTERPRETER_BLOCK_D, triton.next_power_of_2(max(D, 1)))


def gated_residual_fwd(x: torch.Tensor, y: torch.Tensor, gate: Optional[torch.Tensor],
                       sigmoid_gate: bool) -> torch.Tensor:
    """Checked launch of ``x + g * y``; returns a new contiguous tensor of x's shape and dtype."""
    raise_if(gated_residual_not_supported_reasons(x, y, gate), "gated_residual")
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return out
    B, L, D = x.shape
    args = (x, y, gate, out, L, D, x.stride(0), x.stride(1), y.stride(0), y.stride(1), _batch_stride(gate))
    launch(_gated_residual_fwd_kernel, _gated_residual_fwd_tuned,
           lambda m: (triton.cdiv(L, m["BLOCK_L"]), triton.cdiv(D, m["BLOCK_D"]), B), args,
           {"BLOCK_L": _INTERPRETER_BLOCK_L, "BLOCK_D": _gr_block(D)},
           HAS_GATE=gate is not None, SIGMOID_GATE=bool(sigmoid_gate), RNE_BF16=rne_flag(x.dtype))
    return out


def gated_residual_bwd(dout: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, sigmoid_gate: bool,
                       need_dgate: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of the gated residual for a non-None gate: (dy in y.dtype, dgate as fp32 (B, D) per-batch
    sums, or empty (0,) when ``need_dgate`` is False). dx is dout itself and is not computed here."""
    dy = torch.empty(y.shape, dtype=y.dtype, device=y.device)
    B, L, D = y.shape
    if y.numel() == 0:
        return dy, torch.zeros((B, D) if need_dgate else (0,), dtype=torch.float32, device=y.device)
    if interpreter_active() or y.device.type != "cuda":
        bl, bd, nw = _INTERPRETER_BLOCK_L, _gr_block(D), 1
    else:
        # A fixed tile: the partials buffer shape depends on BLOCK_L, which an autotuner could not change.
        bl, bd, nw = 16, min(512, triton.next_power_of_2(D)), 4
    nblk = triton.cdiv(L, bl)
    pg = torch.empty((B, nblk, D), dtype=torch.float32, device=y.device) if need_dgate else None
    _gated_residual_bwd_kernel[(nblk, triton.cdiv(D, bd), B)](
        dout, y, gate, dy, pg, L, D, nblk, *dout.stride(), y.stride(0), y.stride(1), _batch_stride(gate),
        BLOCK_L=bl, BLOCK_D=bd, SIGMOID_GATE=bool(sigmoid_gate), NEED_DGATE=need_dgate,
        RNE_BF16=rne_flag(y.dtype), num_warps=nw)
    if not need_dgate:
        return dy, y.new_empty((0,), dtype=torch.float32)
    return dy, pg.sum(1)


# ---------------------------------------------------------------------------------------------------------
# torch.library glue
# ---------------------------------------------------------------------------------------------------------
@torch.library.custom_op("arc_fast::adaln_fwd", mutates_args=())
def adaln_fwd_op(x: torch.Tensor, gamma: Optional[torch.Tensor], scale: Optional[torch.Tensor],
                 shift: Optional[torch.Tensor], eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return adaln_fwd(x, gamma, scale, shift, eps)


@adaln_fwd_op.register_fake
def _(x, gamma, scale, shift, eps):
    y_shape, stat_shape = _fwd_shapes(x.shape)
    return x.new_empty(y_shape), x.new_empty(stat_shape, dtype=torch.float32), x.new_empty(stat_shape,
                                                                                            dtype=torch.float32)


@torch.library.custom_op("arc_fast::adaln_bwd", mutates_args=())
def adaln_bwd_op(dy: torch.Tensor, x: torch.Tensor, gamma: Optional[torch.Tensor], scale: Optional[torch.Tensor],
                 mean: torch.Tensor, rstd: torch.Tensor, need_sums: bool) -> tuple[torch.Tensor, torch.Tensor,
                                                                                   torch.Tensor]:
    return adaln_bwd(dy, x, gamma, scale, mean, rstd, need_sums)


@adaln_bwd_op.register_fake
def _(dy, x, gamma, scale, mean, rstd, need_sums):
    s = _sums_shape(x.shape, need_sums)
    return x.new_empty(x.shape), x.new_empty(s, dtype=torch.float32), x.new_empty(s, dtype=torch.float32)


def _adaln_setup_context(ctx, inputs, output):
    x, gamma, scale, shift, eps = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, gamma, scale, mean, rstd)
    ctx.shift_meta = None if shift is None else (tuple(shift.shape), shift.dtype)
    ctx.mark_non_differentiable(mean, rstd)


def _reduce_to(s: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """(B, D) fp32 per-batch sums -> the (Bs, [1,] D) shape of a per-sample input (summing B if Bs == 1)."""
    if shape[0] == 1 and s.shape[0] != 1:
        s = s.sum(0, keepdim=True)
    return s.reshape(shape).to(dtype)


def _adaln_backward(ctx, dy, _dmean, _drstd):
    x, gamma, scale, mean, rstd = ctx.saved_tensors
    need_x, need_gamma, need_scale, need_shift = ctx.needs_input_grad[:4]
    need_sums = bool(need_gamma or need_scale or need_shift)
    dx, s_dy, s_dyx = adaln_bwd_op(dy, x, gamma, scale, mean, rstd, need_sums)
    dgamma = dscale = dshift = None
    if need_gamma:
        t = s_dyx if scale is None else s_dyx * (1.0 + scale.reshape(scale.shape[0], -1).float())
        dgamma = t.sum(0).to(gamma.dtype)
    if need_scale:
        t = s_dyx if gamma is None else s_dyx * gamma.float()
        dscale = _reduce_to(t, tuple(scale.shape), scale.dtype)
    if need_shift:
        dshift = _reduce_to(s_dy, *ctx.shift_meta)
    return (dx if need_x else None), dgamma, dscale, dshift, None


adaln_fwd_op.register_autograd(_adaln_backward, setup_context=_adaln_setup_context)


@torch.library.custom_op("arc_fast::gated_residual_fwd", mutates_args=())
def gated_residual_fwd_op(x: torch.Tensor, y: torch.Tensor, gate: Optional[torch.Tensor],
                          sigmoid_gate: bool) -> torch.Tensor:
    return gated_residual_fwd(x, y, gate, sigmoid_gate)


@gated_residual_fwd_op.register_fake
def _(x, y, gate, sigmoid_gate):
    return x.new_empty(x.shape)


@torch.library.custom_op("arc_fast::gated_residual_bwd", mutates_args=())
def gated_residual_bwd_op(dout: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, sigmoid_gate: bool,
                          need_dgate: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return gated_residual_bwd(dout, y, gate, sigmoid_gate, need_dgate)


@gated_residual_bwd_op.register_fake
def _(dout, y, gate, sigmoid_gate, need_dgate):
    return y.new_empty(y.shape), y.new_empty((y.shape[0], y.shape[-1]) if need_dgate else (0,), dtype=torch.float32)


def _gr_setup_context(ctx, inputs, output):
    x, y, gate, sigmoid_gate = inputs
    ctx.save_for_backward(y, gate)
    ctx.sigmoid_gate = sigmoid_gate


def _gr_backward(ctx, dout):
    y, gate = ctx.saved_tensors
    need_x, need_y, need_gate = ctx.needs_input_grad[:3]
    # d(out)/dx is the identity: hand dout on (no copy; autograd accepts any strides).
    dx = dout if need_x else None
    if gate is None:
        return dx, (dout if need_y else None), None, None
    dy, s = gated_residual_bwd_op(dout, y, gate, ctx.sigmoid_gate, bool(need_gate))
    dgate = _reduce_to(s, tuple(gate.shape), gate.dtype) if need_gate else None
    return dx, (dy if need_y else None), dgate, None


gated_residual_fwd_op.register_autograd(_gr_backward, setup_context=_gr_setup_context)


# ---------------------------------------------------------------------------------------------------------
# Public functionals
# ---------------------------------------------------------------------------------------------------------
def adaln_layer_norm(x: torch.Tensor, gamma: Optional[torch.Tensor] = None, scale: Optional[torch.Tensor] = None,
                     shift: Optional[torch.Tensor] = None, eps: float = 1e-5) -> torch.Tensor:
    """``LayerNorm(x) * gamma * (1 + scale) + shift`` in one Triton pass (bias-less LN; SAO uses eps 1e-5).

    Args:
        x: (B, L, D) fp32/fp16/bf16 with stride(-1) == 1; any rank (..., D) when scale and shift are None.
        gamma: (D,) LayerNorm gain or None (= 1). SAO's LayerNorm beta is a zero buffer: leave it out.
        scale, shift: per-sample adaLN modulation or None, shaped (B, D), (B, 1, D), (1, D) or (1, 1, D),
            broadcast over L (and over B when their batch is 1); stride(-1) == 1.
        eps: variance epsilon.

    Returns:
        y, a new contiguous tensor of x's shape and dtype (computed in fp32, rounded once). Differentiable
        w.r.t. x, gamma, scale and shift; parameter gradients are reduced in fp32.

    Raises:
        TypeError (dtype problems) / ValueError (anything else) listing every ``not_supported_reasons`` item.
    """
    raise_if(not_supported_reasons(x, gamma, scale, shift), "adaln_layer_norm")
    return adaln_fwd_op(x, gamma, scale, shift, float(eps))[0]


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: Optional[torch.Tensor],
                   sigmoid_gate: bool = True) -> torch.Tensor:
    """``x + g * y`` with g = sigmoid(1 - gate) (``sigmoid_gate=True``, SAO's adaLN convention) or g = gate.

    Args:
        x: (B, L, D) residual stream, fp32/fp16/bf16, stride(-1) == 1.
        y: (B, L, D) branch output, x's dtype, stride(-1) == 1.
        gate: per-sample gate (B, D), (B, 1, D), (1, D) or (1, 1, D) in x's dtype, broadcast over L; or None
            (g = 1, plain residual add).
        sigmoid_gate: apply sigmoid(1 - gate) (True) or use gate as is (False).

    Returns:
        A new contiguous tensor of x's shape and dtype. Differentiable w.r.t. x, y and gate (dgate is
        reduced over L in fp32).

    Raises:
        TypeError / ValueError listing every ``gated_residual_not_supported_reasons`` item.
    """
    raise_if(gated_residual_not_supported_reasons(x, y, gate), "gated_residual")
    return gated_residual_fwd_op(x, y, gate, bool(sigmoid_gate))
