"""Flash attention (forward + backward) with the DiT's fused QK-LayerNorm + partial-RoPE prologue.

Math (per batch b, head h; q (Lq, D), k/v (Lk, D); all statistics and accumulations in fp32):

    q' = rope(LN_q(q)),  k' = rope(LN_k(k))            (each stage optional, see below)
    S  = scale * q' k'^T,  S[:, j] = -inf where key_padding_mask[b, j] is False
    P  = softmax(S) row-wise (a row with no key left gives P = 0),   O = P v

* ``LN``: per-head LayerNorm over D, biased variance, ``(x - mean) * rsqrt(var + eps) * w + b``.
* ``rope``: partial rotary, half-split (GPT-NeoX style): with ``freqs`` (L, R) an fp32 angle table
  (``[theta, theta]`` in the DiT), channel d < R becomes ``x[d] cos f[d] + rotate_half(x)[d] sin f[d]`` with
  ``rotate_half(a | b) = (-b | a)`` over the first R channels; channels d >= R pass through. Self-attention only
  (Lq == Lk, the same table for q and k). Implemented by loading the row a second time at the permuted columns
  ``perm(d) = d +- R/2`` so no register shuffles are needed.

Prologue: one launch computes q' and k' (``_prologue_fwd_kernel``, both tensors, rows in parallel) in the
input dtype; the attention kernels then read q', k'. (Fusing it into the attention loops was tried: the extra
(BLOCK, D) fp32 tiles spilled ~1.3 KB of registers per thread at D = 128 on sm_90, and the backward would redo it
per block; one O(L D) pass is cheaper.)

Forward: one program per (query block, b*h), online softmax in base 2 (``exp2``, the scale folded with log2 e
after the dot). Saves O (in fp32 for fp16/bf16 inputs: see ``attention_fwd``) and the natural log-sum-exp
``lse`` (B, H, Lq) fp32 (``+inf`` for a row with no key, so that ``exp(s - lse) = 0`` in the backward); no
Lq x Lk matrix is stored. q', k' are not saved: the backward recomputes them from the raw inputs.

Backward (flash-attention 2):
    delta = rowsum(dO * O)                                       (_attn_bwd_preprocess_kernel)
    P = exp(S - lse);  dV = P^T dO;  dP = dO V^T;  dS = P * (dP - delta)
    dK' = scale * dS^T q'   (_attn_bwd_dkdv_kernel: one program per key block, loops over query blocks)
    dQ' = scale * dS k'     (_attn_bwd_dq_kernel: one program per query block, loops over key blocks)
When q (or k) has a prologue, dQ' (dK') is kept in fp32 and ``_prologue_bwd_kernel`` (q and k in one launch)
maps it back to the raw input:
    rope^T:  g[d] = dy[d] cos f[d] - sign(d) dy[perm d] sin f[perm d]    (rotation by -theta)
    LN^T:    x^ = (x - mean) rstd;  dx^ = g w;  dx = rstd (dx^ - mean(dx^) - x^ mean(dx^ x^))
             dw = sum_rows g x^,  db = sum_rows g   (fp32 per-program partials, summed in fp32: deterministic)

Shapes and dtypes:
    q (B, H, Lq, D), k and v (B, H, Lk, D): any strides with stride(-1) == 1; fp32, fp16 or bf16, all the same.
    D a power of two in [16, 128]. key_padding_mask (B, Lk) bool, True = attend. Norm weight/bias (D,), any
    float dtype (the bias needs the weight). freqs (Lq, R) fp32, R even, R <= D, only with Lq == Lk.
    Output (B, H, Lq, D) in q.dtype, contiguous. Gradients in each input's dtype; freqs and the mask get none.

GPU: native fp16/bf16 tensor-core dots with fp32 accumulation; fp32 inputs use IEEE fp32 dots, or TF32 dots when
``torch.backends.cuda.matmul.allow_tf32`` is set (~3e-4 relative), like torch.matmul. Block sizes are autotuned
per (Lq, Lk, D, mask, dtype) on first use; ``ARC_FAST_AUTOTUNE=0`` pins one config instead.
Under ``TRITON_INTERPRET=1`` (CPU tests) every operand is upcast to fp32 right after loading and the dots run in
fp32 (the interpreter computes bf16 arithmetic wrongly), with one fixed 16 x 16 block config; bf16 results are
written to fp32 buffers there and rounded by torch (the interpreter's fp32 -> bf16 cast truncates).

References: Dao, "FlashAttention-2" (2023); the Triton fused-attention tutorial (structure only).
"""
from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import autotune_enabled, interpreter_active, interpreter_gpu_config, pinned_config

__all__ = [
    "attention",
    "attention_fwd",
    "attention_bwd",
    "not_supported_reasons",
    "SUPPORTED_DTYPES",
    "SUPPORTED_HEAD_DIMS",
    "MAX_BATCH_HEADS",
    "IS_DETERMINISTIC",
    "ATOL",
    "RTOL",
]

# ----------------------------------------------------------------------------------------------------------
# Capabilities as data
# ----------------------------------------------------------------------------------------------------------
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
MAX_BATCH_HEADS = 65535  # B * H is grid axis 1
IS_DETERMINISTIC = True  # no atomics: norm-param grads are reduced from per-program partials
# Typical |error| vs the fp32 eager oracle (GPU; fp32 includes TF32 dots). Tests use assert_close_to_ref instead.
ATOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
RTOL = {torch.float32: 3e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


# ----------------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------------
# Addressing: the (b, h) base offset of every tensor is int64; offsets inside one (b, h) slice are int32
# (checked on the host: (L - 1) * stride(2) + D < 2**31), which keeps the pointer tiles cheap.


@triton.jit
def _batch_head(pid_bh, H):
    """(b, h) as int64 from the program's flat b * H + h index."""
    return (pid_bh // H).to(tl.int64), (pid_bh % H).to(tl.int64)


@triton.jit
def _load_rows(base, offs, mask, stride, D: tl.constexpr, UPCAST: tl.constexpr):
    """The (len(offs), D) tile of rows ``offs`` (row stride ``stride``, channels contiguous) of one (b, h) slice,
    zero where ``mask`` is False; upcast to fp32 when UPCAST (the DOT_FP32 path), else in the tensor's dtype."""
    x = tl.load(base + offs[:, None] * stride + tl.arange(0, D)[None, :], mask=mask[:, None], other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _key_valid(MASK, b, stride_mb, stride_ml, offs_n, n_mask, HAS_MASK: tl.constexpr):
    """Keys that exist (offs_n < Lk, i.e. ``n_mask``) and, with a padding mask, are kept by it."""
    valid = n_mask
    if HAS_MASK:
        keep = tl.load(MASK + b * stride_mb + offs_n * stride_ml, mask=n_mask, other=0)
        valid = valid & (keep != 0)
    return valid


@triton.jit
def _dot_cast(a, b, DT: tl.constexpr, DOT_FP32: tl.constexpr, PREC: tl.constexpr):
    """a @ b where ``a`` is an fp32 intermediate (P or dS): cast to the I/O dtype DT for a tensor-core dot,
    or kept in fp32 on the DOT_FP32 path (``b`` is then fp32 too)."""
    if DOT_FP32:
        out = tl.dot(a, b, input_precision=PREC)
    else:
        out = tl.dot(a.to(DT), b, input_precision=PREC)
    return out


@triton.jit
def _row_stats(LSE, DELTA, row0, offs_m, m_mask):
    """The backward's per-query-row (lse in base 2, delta); +inf lse for missing rows makes their P exactly 0
    (as for rows with no valid key)."""
    lse = tl.load(LSE + row0 + offs_m, mask=m_mask, other=float("inf")) * 1.4426950408889634
    delta = tl.load(DELTA + row0 + offs_m, mask=m_mask, other=0.0)
    return lse, delta


@triton.jit
def _ln_rows(x, eps, D: tl.constexpr):
    """Per-row LayerNorm statistics of a full (rows, D) fp32 tile: (mean, x - mean, rstd)."""
    mean = tl.sum(x, axis=1) / D
    xc = x - mean[:, None]
    var = tl.sum(xc * xc, axis=1) / D
    return mean, xc, 1.0 / tl.sqrt(var + eps)


@triton.jit
def _rope_perm(offs_d, ROT_DIM: tl.constexpr):
    """For half-split RoPE over the first ROT_DIM channels: (is_rot, perm) with
    rotate_half(y)[d] = sign(d) * y[perm[d]], sign(d) = -1 for d < ROT_DIM / 2 else 1 (perm is the identity on
    pass-through channels)."""
    HALF = ROT_DIM // 2
    is_rot = offs_d < ROT_DIM
    perm = tl.where(offs_d < HALF, offs_d + HALF, tl.where(is_rot, offs_d - HALF, offs_d))
    return is_rot, perm


@triton.jit
def _prologue_tile(
    x_base,  # pointer to x[b, h, 0, 0]
    stride_l,  # x.stride(2) (elements between rows; channels are contiguous)
    offs_l,  # (BLOCK_L,) row (sequence) indices
    l_mask,  # (BLOCK_L,) rows that exist (l < L)
    eps,  # LayerNorm epsilon
    W,  # LayerNorm weight (D,) or a dummy pointer
    Bias,  # LayerNorm bias (D,) or a dummy pointer
    COS,  # cos(freqs) (L, ROT_DIM) fp32 contiguous, or a dummy pointer
    SIN,  # sin(freqs), same layout
    D: tl.constexpr,  # head dim (power of two)
    HAS_NORM: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_ROPE: tl.constexpr,
    ROT_DIM: tl.constexpr,  # rotated channels R (even, <= D); unused without rope
):
    """A (BLOCK_L, D) tile of rope(LN(x)) in fp32. Missing rows come out finite (LN of zeros = bias)."""
    offs_d = tl.arange(0, D)
    rows = x_base + offs_l[:, None] * stride_l
    x = tl.load(rows + offs_d[None, :], mask=l_mask[:, None], other=0.0).to(tl.float32)
    if HAS_NORM:
        mean, xc, rstd = _ln_rows(x, eps, D)
        w = tl.load(W + offs_d).to(tl.float32)
        y = xc * rstd[:, None] * w[None, :]
        if HAS_BIAS:
            y += tl.load(Bias + offs_d).to(tl.float32)[None, :]
    else:
        y = x
    if HAS_ROPE:
        # rotate_half(y)[d] = sign(d) * y[perm(d)]: re-load the row at the permuted columns (cheap, cached)
        # instead of shuffling registers.
        is_rot, perm = _rope_perm(offs_d, ROT_DIM)
        xp = tl.load(rows + perm[None, :], mask=l_mask[:, None], other=0.0).to(tl.float32)
        if HAS_NORM:
            wp = tl.load(W + perm).to(tl.float32)
            yp = (xp - mean[:, None]) * rstd[:, None] * wp[None, :]
            if HAS_BIAS:
                yp += tl.load(Bias + perm).to(tl.float32)[None, :]
        else:
            yp = xp
        cs_off = offs_l[:, None] * ROT_DIM + offs_d[None, :]
        cs_mask = l_mask[:, None] & is_rot[None, :]
        c = tl.load(COS + cs_off, mask=cs_mask, other=1.0)
        s = tl.load(SIN + cs_off, mask=cs_mask, other=0.0)
        # Computed here, after the loads, not in _rope_perm: earlier it changed ptxas' schedule (sm_90, measured).
        sign = tl.where(offs_d < ROT_DIM // 2, -1.0, 1.0)
        y = y * c + (sign[None, :] * yp) * s
    return y


@triton.jit
def _prologue_fwd_slot(X, Y, W, Bias, COS, SIN, stride_xb, stride_xh, stride_xl, b, h, pid_bh, pid_l, L, eps,
                       D: tl.constexpr, BLOCK_L: tl.constexpr, HAS_NORM: tl.constexpr, HAS_BIAS: tl.constexpr,
                       HAS_ROPE: tl.constexpr, ROT_DIM: tl.constexpr):
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    l_mask = offs_l < L
    y = _prologue_tile(X + b * stride_xb + h * stride_xh, stride_xl, offs_l, l_mask, eps, W, Bias, COS, SIN,
                       D, HAS_NORM, HAS_BIAS, HAS_ROPE, ROT_DIM)
    y_base = Y + pid_bh.to(tl.int64) * L * D
    tl.store(y_base + offs_l[:, None] * D + tl.arange(0, D)[None, :], y.to(Y.dtype.element_ty), mask=l_mask[:, None])


@triton.jit
def _prologue_fwd_kernel(
    X1, Y1, W1, B1,  # slot 0: raw x (B, H, L1, D) (channel stride 1), out y (B, H, L1, D) contiguous, LN w/b
    stride_1b, stride_1h, stride_1l, L1,
    X2, Y2, W2, B2,  # slot 1 (grid axis 2 == 1): the same for the other tensor, or dummies
    stride_2b, stride_2h, stride_2l, L2,
    COS, SIN,  # rope tables (L, ROT_DIM) fp32 contiguous, or dummies (rope implies L1 == L2)
    H, eps,
    D: tl.constexpr, BLOCK_L: tl.constexpr,
    NORM1: tl.constexpr, BIAS1: tl.constexpr, NORM2: tl.constexpr, BIAS2: tl.constexpr,
    HAS_ROPE: tl.constexpr, ROT_DIM: tl.constexpr,
):
    """y = rope(LN(x)) for q and k in one launch; grid (cdiv(max(L1, L2), BLOCK_L), B * H, slots)."""
    pid_l = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b, h = _batch_head(pid_bh, H)
    if tl.program_id(2) == 0:
        _prologue_fwd_slot(X1, Y1, W1, B1, COS, SIN, stride_1b, stride_1h, stride_1l, b, h, pid_bh, pid_l, L1, eps,
                           D, BLOCK_L, NORM1, BIAS1, HAS_ROPE, ROT_DIM)
    else:
        _prologue_fwd_slot(X2, Y2, W2, B2, COS, SIN, stride_2b, stride_2h, stride_2l, b, h, pid_bh, pid_l, L2, eps,
                           D, BLOCK_L, NORM2, BIAS2, HAS_ROPE, ROT_DIM)


@triton.jit
def _prologue_bwd_slot(DY, X, DX, W, DW_PART, DB_PART, COS, SIN, stride_xb, stride_xh, stride_xl, b, h, pid_bh,
                       pid_l, n_lblk, L, eps,
                       D: tl.constexpr, BLOCK_L: tl.constexpr, HAS_NORM: tl.constexpr, HAS_BIAS: tl.constexpr,
                       HAS_ROPE: tl.constexpr, ROT_DIM: tl.constexpr):
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_d = tl.arange(0, D)
    l_mask = offs_l < L
    base = pid_bh.to(tl.int64) * L * D
    dy_rows = DY + base + offs_l[:, None] * D
    # Missing rows load g = 0, so they add nothing to the dw/db partials below.
    g = tl.load(dy_rows + offs_d[None, :], mask=l_mask[:, None], other=0.0)
    if HAS_ROPE:
        is_rot, perm = _rope_perm(offs_d, ROT_DIM)
        g_p = tl.load(dy_rows + perm[None, :], mask=l_mask[:, None], other=0.0)
        cs_mask = l_mask[:, None] & is_rot[None, :]
        c = tl.load(COS + offs_l[:, None] * ROT_DIM + offs_d[None, :], mask=cs_mask, other=1.0)
        s_p = tl.load(SIN + offs_l[:, None] * ROT_DIM + perm[None, :], mask=cs_mask, other=0.0)
        sign = tl.where(offs_d < ROT_DIM // 2, -1.0, 1.0)
        g = g * c - (sign[None, :] * g_p) * s_p
    if HAS_NORM:
        x = tl.load(X + b * stride_xb + h * stride_xh + offs_l[:, None] * stride_xl + offs_d[None, :],
                    mask=l_mask[:, None], other=0.0).to(tl.float32)
        _, xc, rstd = _ln_rows(x, eps, D)
        xhat = xc * rstd[:, None]
        w = tl.load(W + offs_d).to(tl.float32)
        dxhat = g * w[None, :]
        c1 = tl.sum(dxhat * xhat, axis=1) / D
        c2 = tl.sum(dxhat, axis=1) / D
        dx = (dxhat - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
        part = (pid_bh.to(tl.int64) * n_lblk + pid_l) * D
        tl.store(DW_PART + part + offs_d, tl.sum(g * xhat, axis=0))
        if HAS_BIAS:
            tl.store(DB_PART + part + offs_d, tl.sum(g, axis=0))
    else:
        dx = g
    tl.store(DX + base + offs_l[:, None] * D + offs_d[None, :], dx.to(DX.dtype.element_ty), mask=l_mask[:, None])


@triton.jit
def _prologue_bwd_kernel(
    DY1, X1, DX1, W1, DW1, DB1,  # slot 0: fp32 grad of y (B, H, L1, D) contiguous, raw x, out dx (contiguous,
    stride_1b, stride_1h, stride_1l, L1, n_lblk1,  # x.dtype), LN weight, out fp32 dw/db partials (B*H*n_lblk1, D)
    DY2, X2, DX2, W2, DW2, DB2,  # slot 1: the same for the other tensor, or dummies
    stride_2b, stride_2h, stride_2l, L2, n_lblk2,
    COS, SIN,
    H, eps,
    D: tl.constexpr, BLOCK_L: tl.constexpr,
    NORM1: tl.constexpr, BIAS1: tl.constexpr, NORM2: tl.constexpr, BIAS2: tl.constexpr,
    HAS_ROPE: tl.constexpr, ROT_DIM: tl.constexpr,
):
    """dx = LN^T(rope^T(dy)) and the dw/db partials, for q and k in one launch; grid as the forward."""
    pid_l = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b, h = _batch_head(pid_bh, H)
    if tl.program_id(2) == 0:
        if pid_l < n_lblk1:
            _prologue_bwd_slot(DY1, X1, DX1, W1, DW1, DB1, COS, SIN, stride_1b, stride_1h, stride_1l, b, h, pid_bh,
                               pid_l, n_lblk1, L1, eps, D, BLOCK_L, NORM1, BIAS1, HAS_ROPE, ROT_DIM)
    else:
        if pid_l < n_lblk2:
            _prologue_bwd_slot(DY2, X2, DX2, W2, DW2, DB2, COS, SIN, stride_2b, stride_2h, stride_2l, b, h, pid_bh,
                               pid_l, n_lblk2, L2, eps, D, BLOCK_L, NORM2, BIAS2, HAS_ROPE, ROT_DIM)


@triton.jit
def _attn_fwd_kernel(
    Q, K, V,  # post-prologue q' (B, H, Lq, D), k' and v (B, H, Lk, D); channel stride 1
    O,  # out (B, H, Lq, D) contiguous, q.dtype (written when STORE_O)
    O32,  # out (B, H, Lq, D) contiguous fp32 copy for the backward's delta (written when STORE_O32)
    LSE,  # out (B, H, Lq) fp32 contiguous, natural log
    MASK,  # key padding mask (B, Lk) as uint8, or a dummy pointer
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_mb, stride_ml,
    H, Lq, Lk,  # heads and sequence lengths
    sm_scale,  # softmax scale
    D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr,
    DOT_FP32: tl.constexpr,  # fp32 dot operands (interpreter, fp32 I/O); else fp16/bf16 tensor-core dots
    PREC: tl.constexpr,  # fp32 dots: "ieee" or "tf32" (follows torch.backends.cuda.matmul.allow_tf32)
    STORE_O: tl.constexpr,
    STORE_O32: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b, h = _batch_head(pid_bh, H)
    DT = V.dtype.element_ty
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    m_mask = offs_m < Lq

    q = _load_rows(Q + b * stride_qb + h * stride_qh, offs_m, m_mask, stride_ql, D, DOT_FP32)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    qk_scale = sm_scale * 1.4426950408889634  # softmax in base 2

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for start_n in range(0, Lk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_mask = offs_n < Lk
        k = _load_rows(k_base, offs_n, n_mask, stride_kl, D, DOT_FP32)
        v = _load_rows(v_base, offs_n, n_mask, stride_vl, D, DOT_FP32)
        valid = _key_valid(MASK, b, stride_mb, stride_ml, offs_n, n_mask, HAS_MASK)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # A row that has seen no valid key yet keeps m = -inf; subtracting 0 keeps exp2 at 0 instead of NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + _dot_cast(p, v, DT, DOT_FP32, PREC)
        m_i = m_new

    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    o = acc / l_safe[:, None]
    lse = tl.where(empty, float("inf"), (m_i + tl.log2(l_safe)) * 0.6931471805599453)
    row0 = pid_bh.to(tl.int64) * Lq
    o_off = row0 * D + offs_m[:, None] * D + offs_d[None, :]
    if STORE_O:
        tl.store(O + o_off, o.to(O.dtype.element_ty), mask=m_mask[:, None])
    if STORE_O32:
        tl.store(O32 + o_off, o, mask=m_mask[:, None])
    tl.store(LSE + row0 + offs_m, lse, mask=m_mask)


@triton.jit
def _attn_bwd_preprocess_kernel(
    O,  # (B, H, Lq, D) contiguous
    DO,  # (B, H, Lq, D), channel stride 1
    DELTA,  # out (B, H, Lq) fp32: rowsum(dO * O)
    stride_dob, stride_doh, stride_dol,
    H, Lq,
    D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b, h = _batch_head(pid_bh, H)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    m_mask = offs_m < Lq
    row0 = pid_bh.to(tl.int64) * Lq
    o = tl.load(O + row0 * D + offs_m[:, None] * D + offs_d[None, :], mask=m_mask[:, None], other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dol + offs_d[None, :],
                 mask=m_mask[:, None], other=0.0)
    tl.store(DELTA + row0 + offs_m, tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1), mask=m_mask)


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V,  # post-prologue q', k' and v (B, H, L, D), channel stride 1
    DO,  # (B, H, Lq, D), channel stride 1
    LSE, DELTA,  # (B, H, Lq) fp32 contiguous
    DK,  # out (B, H, Lk, D) contiguous: fp32 dK' when k has a prologue, else k.dtype dK
    DV,  # out (B, H, Lk, D) contiguous, v.dtype
    MASK,  # as in the forward
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_dob, stride_doh, stride_dol,
    stride_mb, stride_ml,
    H, Lq, Lk, sm_scale,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PREC: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b, h = _batch_head(pid_bh, H)
    DT = Q.dtype.element_ty
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    n_mask = offs_n < Lk
    valid = _key_valid(MASK, b, stride_mb, stride_ml, offs_n, n_mask, HAS_MASK)

    k = _load_rows(K + b * stride_kb + h * stride_kh, offs_n, n_mask, stride_kl, D, DOT_FP32)
    v = _load_rows(V + b * stride_vb + h * stride_vh, offs_n, n_mask, stride_vl, D, DOT_FP32)
    q_base = Q + b * stride_qb + h * stride_qh
    do_base = DO + b * stride_dob + h * stride_doh
    row0 = pid_bh.to(tl.int64) * Lq
    qk_scale = sm_scale * 1.4426950408889634

    dk = tl.zeros([BLOCK_N, D], tl.float32)
    dv = tl.zeros([BLOCK_N, D], tl.float32)
    for start_m in range(0, Lq, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_mask = offs_m < Lq
        q = _load_rows(q_base, offs_m, m_mask, stride_ql, D, DOT_FP32)
        do = _load_rows(do_base, offs_m, m_mask, stride_dol, D, DOT_FP32)
        lse, delta = _row_stats(LSE, DELTA, row0, offs_m, m_mask)
        s_t = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale  # (BLOCK_N, BLOCK_M)
        p_t = tl.where(valid[:, None], tl.exp2(s_t - lse[None, :]), 0.0)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PREC)
        ds_t = p_t * (dp_t - delta[None, :])
        dv += _dot_cast(p_t, do, DT, DOT_FP32, PREC)
        dk += _dot_cast(ds_t, q, DT, DOT_FP32, PREC)

    out = pid_bh.to(tl.int64) * Lk * D + offs_n[:, None] * D + offs_d[None, :]
    tl.store(DK + out, (dk * sm_scale).to(DK.dtype.element_ty), mask=n_mask[:, None])
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=n_mask[:, None])


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA,  # as in _attn_bwd_dkdv_kernel
    DQ,  # out (B, H, Lq, D) contiguous: fp32 dQ' when q has a prologue, else q.dtype dQ
    MASK,
    stride_qb, stride_qh, stride_ql,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_dob, stride_doh, stride_dol,
    stride_mb, stride_ml,
    H, Lq, Lk, sm_scale,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr,
    DOT_FP32: tl.constexpr,
    PREC: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b, h = _batch_head(pid_bh, H)
    DT = Q.dtype.element_ty
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    m_mask = offs_m < Lq

    q = _load_rows(Q + b * stride_qb + h * stride_qh, offs_m, m_mask, stride_ql, D, DOT_FP32)
    do = _load_rows(DO + b * stride_dob + h * stride_doh, offs_m, m_mask, stride_dol, D, DOT_FP32)
    row0 = pid_bh.to(tl.int64) * Lq
    lse, delta = _row_stats(LSE, DELTA, row0, offs_m, m_mask)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    qk_scale = sm_scale * 1.4426950408889634

    dq = tl.zeros([BLOCK_M, D], tl.float32)
    for start_n in range(0, Lk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_mask = offs_n < Lk
        k = _load_rows(k_base, offs_n, n_mask, stride_kl, D, DOT_FP32)
        v = _load_rows(v_base, offs_n, n_mask, stride_vl, D, DOT_FP32)
        valid = _key_valid(MASK, b, stride_mb, stride_ml, offs_n, n_mask, HAS_MASK)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        p = tl.where(valid[None, :], tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dq += _dot_cast(ds, k, DT, DOT_FP32, PREC)

    tl.store(DQ + row0 * D + offs_m[:, None] * D + offs_d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty),
             mask=m_mask[:, None])


# ----------------------------------------------------------------------------------------------------------
# Launch configuration: autotuned on GPU, one fixed small config under the interpreter
# ----------------------------------------------------------------------------------------------------------
_KEYS = ["Lq", "Lk", "D", "HAS_MASK", "PREC"]
_INTERP_BLOCK = 16  # small blocks so that L = 17, 33, 257 cross several blocks and exercise the tails


def _gpu_configs(fwd: bool):
    # (BLOCK_M, BLOCK_N, num_warps, num_stages): few, so that first-call tuning stays short; the smaller tiles
    # are there because D = 128 tiles spill registers on sm_90 at 64 x 64 with 4 warps (offline compile).
    if fwd:
        shapes = [(64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 8, 2), (128, 64, 8, 3), (128, 128, 8, 2), (64, 32, 4, 3)]
    else:
        shapes = [(32, 64, 4, 2), (64, 64, 4, 2), (64, 64, 8, 3), (64, 128, 8, 2), (32, 32, 4, 3)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in shapes]


def _autotune_enabled() -> bool:
    return not interpreter_active() and autotune_enabled()


if _autotune_enabled():
    _fwd = triton.autotune(configs=_gpu_configs(True), key=_KEYS)(_attn_fwd_kernel)
    _dkdv = triton.autotune(configs=_gpu_configs(False), key=_KEYS)(_attn_bwd_dkdv_kernel)
    _dq = triton.autotune(configs=_gpu_configs(False), key=_KEYS)(_attn_bwd_dq_kernel)
else:
    _fwd = _attn_fwd_kernel
    _dkdv = _attn_bwd_dkdv_kernel
    _dq = _attn_bwd_dq_kernel


def _row_block(D: int) -> int:
    """Rows per program of the row-wise kernels: ~2048 elements per tile keeps the (rows, D) fp32 tiles of the
    prologue in registers with 4 warps (64 rows x 128 spilled ~2 KB per thread on sm_90)."""
    if interpreter_active() and interpreter_gpu_config() is None:
        return _INTERP_BLOCK
    return max(16, 2048 // D)


def _buf_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the kernels' output buffers. The interpreter truncates fp32 -> bf16 casts (1.999 -> 1.992, even
    with fp_downcast_rounding="rtne"; Triton 3.9, measured), which doubled the bf16 error, so under it bf16
    results are written in fp32 and rounded to nearest by torch. On GPU: the I/O dtype itself."""
    if dtype == torch.bfloat16 and interpreter_active():
        return torch.float32
    return dtype


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 I/O: IEEE fp32 dots unless torch allows TF32 matmuls (as torch.matmul does); fp16/bf16: the default."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _block_kwargs(fwd: bool) -> dict:
    """Launch meta-parameters: the autotuner supplies them on GPU; ``ARC_FAST_AUTOTUNE=0`` pins the first config
    of the list (no first-call tuning, e.g. for quick GPU test runs); the interpreter uses 16 x 16 blocks."""
    cfg = pinned_config(_gpu_configs(fwd))
    if interpreter_active():
        return dict(cfg.kwargs) if cfg is not None else {"BLOCK_M": _INTERP_BLOCK, "BLOCK_N": _INTERP_BLOCK}
    if cfg is None:
        return {}
    return dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


# ----------------------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------------------
def _problems(q, k, v, key_padding_mask=None, q_norm_weight=None, q_norm_bias=None, k_norm_weight=None,
              k_norm_bias=None, freqs=None) -> list[tuple[type, str]]:
    """Every problem with the inputs, as (exception type, message); empty when the kernel supports them."""
    out: list[tuple[type, str]] = []
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            out.append((TypeError, f"{name}: expected a torch.Tensor, got {type(t).__name__}"))
    if out:
        return out
    dev = q.device
    if dev.type == "cpu" and not interpreter_active():
        out.append((ValueError, "q: CPU tensors need TRITON_INTERPRET=1 for the Triton kernel (use the eager backend)"))
    elif dev.type not in ("cuda", "cpu"):
        out.append((ValueError, f"q: expected a CUDA tensor, got device {dev}"))
    if q.dtype not in SUPPORTED_DTYPES:
        out.append((TypeError, f"q: expected dtype in {[str(d) for d in SUPPORTED_DTYPES]}, got {q.dtype}"))
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            out.append((ValueError, f"{name}: expected 4 dims (B, H, L, D), got shape {tuple(t.shape)}"))
        if name != "q" and t.dtype != q.dtype:
            out.append((TypeError, f"{name}: expected dtype {q.dtype} (same as q), got {t.dtype}"))
        if t.device != dev:
            out.append((ValueError, f"{name}: expected device {dev} (same as q), got {t.device}"))
        if t.dim() == 4 and t.shape[-1] > 1 and t.stride(-1) != 1:
            out.append((ValueError, f"{name}: expected stride(-1) == 1, got strides {t.stride()}"))
    if any(t.dim() != 4 for t in (q, k, v)):
        return out
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    if D not in SUPPORTED_HEAD_DIMS:
        out.append((ValueError, f"q: head dim D must be one of {SUPPORTED_HEAD_DIMS}, got {D}"))
    if (k.shape[0], k.shape[1], k.shape[3]) != (B, H, D):
        out.append((ValueError, f"k: expected shape ({B}, {H}, Lk, {D}) to match q {tuple(q.shape)}, "
                                f"got {tuple(k.shape)}"))
    if tuple(v.shape) != tuple(k.shape):
        out.append((ValueError, f"v: expected the shape of k {tuple(k.shape)}, got {tuple(v.shape)}"))
    for name, t in (("q", q), ("k", k), ("v", v)):
        if (t.shape[2] - 1) * t.stride(2) + t.shape[3] >= 2**31:
            out.append((ValueError, f"{name}: one (b, h) slice spans >= 2**31 elements (L={t.shape[2]}, "
                                    f"stride(2)={t.stride(2)}); the kernel uses int32 offsets inside a slice"))
    if B * H > MAX_BATCH_HEADS:
        out.append((ValueError, f"q: B * H must be <= {MAX_BATCH_HEADS}, got {B * H}"))
    if key_padding_mask is not None:
        m = key_padding_mask
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
            out.append((TypeError, f"key_padding_mask: expected a torch.bool tensor, got "
                                   f"{getattr(m, 'dtype', type(m).__name__)}"))
        elif tuple(m.shape) != (B, Lk):
            out.append((ValueError, f"key_padding_mask: expected shape (B, Lk) = ({B}, {Lk}), got {tuple(m.shape)}"))
        elif m.device != dev:
            out.append((ValueError, f"key_padding_mask: expected device {dev}, got {m.device}"))
    for name, t in (("q_norm_weight", q_norm_weight), ("q_norm_bias", q_norm_bias),
                    ("k_norm_weight", k_norm_weight), ("k_norm_bias", k_norm_bias)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            out.append((TypeError, f"{name}: expected a floating-point tensor, got "
                                   f"{getattr(t, 'dtype', type(t).__name__)}"))
        elif tuple(t.shape) != (D,):
            out.append((ValueError, f"{name}: expected shape ({D},), got {tuple(t.shape)}"))
        elif t.device != dev:
            out.append((ValueError, f"{name}: expected device {dev}, got {t.device}"))
    if q_norm_bias is not None and q_norm_weight is None:
        out.append((ValueError, "q_norm_bias: given without q_norm_weight (the norm runs only with a weight)"))
    if k_norm_bias is not None and k_norm_weight is None:
        out.append((ValueError, "k_norm_bias: given without k_norm_weight (the norm runs only with a weight)"))
    if freqs is not None:
        if not isinstance(freqs, torch.Tensor) or freqs.dtype != torch.float32:
            got = getattr(freqs, "dtype", type(freqs).__name__)
            out.append((TypeError, f"freqs: expected a float32 tensor, got {got}"))
        elif freqs.dim() != 2 or freqs.shape[0] != Lq or freqs.shape[1] % 2 or not 0 < freqs.shape[1] <= D:
            out.append((ValueError, f"freqs: expected shape (Lq, R) = ({Lq}, R) with R even and 0 < R <= {D}, "
                                    f"got {tuple(freqs.shape)}"))
        elif freqs.device != dev:
            out.append((ValueError, f"freqs: expected device {dev}, got {freqs.device}"))
        if Lq != Lk:
            out.append((ValueError, f"freqs: RoPE needs self-attention (Lq == Lk), got Lq={Lq}, Lk={Lk}"))
    return out


def not_supported_reasons(q, k, v, key_padding_mask=None, q_norm_weight=None, q_norm_bias=None, k_norm_weight=None,
                          k_norm_bias=None, freqs=None) -> list[str]:
    """Every reason the Triton kernel cannot run these inputs (empty list = supported). Arguments as in
    ``attention``."""
    return [msg for _, msg in _problems(q, k, v, key_padding_mask, q_norm_weight, q_norm_bias, k_norm_weight,
                                        k_norm_bias, freqs)]


def _check_inputs(*args) -> None:
    problems = _problems(*args)
    if problems:
        raise problems[0][0]("attention: " + "; ".join(msg for _, msg in problems))


# ----------------------------------------------------------------------------------------------------------
# Launchers (no autograd)
# ----------------------------------------------------------------------------------------------------------
def _fwd_shapes(q: torch.Tensor, k: torch.Tensor):
    """Output shapes of the forward, shared by the launcher and the fake: O (B, H, Lq, D), lse (B, H, Lq) and
    the fp32 copy of O kept for the backward ((B, H, Lq, D) for fp16/bf16 inputs, (0,) for fp32: O itself)."""
    B, H, Lq, D = q.shape
    return (B, H, Lq, D), (B, H, Lq), ((0,) if q.dtype == torch.float32 else (B, H, Lq, D))


def _bwd_shapes(q, k, v, q_norm_weight, q_norm_bias, k_norm_weight, k_norm_bias):
    """Gradient shapes, shared by the launcher and the fake; an absent norm parameter gets a (0,) tensor."""
    def p(t):
        return tuple(t.shape) if t is not None else (0,)
    return (tuple(q.shape), tuple(k.shape), tuple(v.shape), p(q_norm_weight), p(q_norm_bias), p(k_norm_weight),
            p(k_norm_bias))


def _rope_tables(freqs: Optional[torch.Tensor]):
    if freqs is None:
        return None, None, 0
    # cos/sin from torch (not tl.cos in the kernel): bit-equal to the oracle and no transcendental per tile.
    return freqs.cos().contiguous(), freqs.sin().contiguous(), int(freqs.shape[1])


def _mask_arg(key_padding_mask, dummy):
    if key_padding_mask is None:
        return dummy, 0, 0
    m = key_padding_mask.view(torch.uint8)
    return m, m.stride(0), m.stride(1)


def _prologue_fwd(jobs, cos, sin, rot: int, eps: float) -> list:
    """jobs: one or two (x (B, H, L, D), weight or None, bias or None). Returns rope(LN(x)) for each, contiguous in
    x.dtype, from one launch."""
    x0 = jobs[0][0]
    B, H, _, D = x0.shape
    ys = [torch.empty(x.shape, device=x.device, dtype=_buf_dtype(x.dtype)) for x, _, _ in jobs]
    slots = [(x, y, w if w is not None else x, b if b is not None else x, w is not None, b is not None)
             for (x, w, b), y in zip(jobs, ys)]
    if len(slots) == 1:
        slots.append(slots[0])  # never run: grid axis 2 has size 1
    block_l = _row_block(D)
    max_l = max(x.shape[2] for x, _, _ in jobs)
    (x1, y1, w1, b1, n1, c1), (x2, y2, w2, b2, n2, c2) = slots
    _prologue_fwd_kernel[(triton.cdiv(max_l, block_l), B * H, len(jobs))](
        x1, y1, w1, b1, x1.stride(0), x1.stride(1), x1.stride(2), x1.shape[2],
        x2, y2, w2, b2, x2.stride(0), x2.stride(1), x2.stride(2), x2.shape[2],
        cos if cos is not None else x1, sin if sin is not None else x1,
        H, float(eps),
        D=D, BLOCK_L=block_l, NORM1=n1, BIAS1=c1, NORM2=n2, BIAS2=c2, HAS_ROPE=cos is not None, ROT_DIM=rot,
        num_warps=4,
    )
    return ys


def _prologue_bwd(jobs, cos, sin, rot: int, eps: float) -> list:
    """jobs: one or two (dy fp32 (B, H, L, D) contiguous, x, weight or None, bias or None). Returns, for each,
    (dx in x.dtype contiguous, dweight or None, dbias or None), from one launch; dw/db are reduced in fp32 from
    per-program partials (deterministic)."""
    x0 = jobs[0][1]
    B, H, _, D = x0.shape
    block_l = _row_block(D)
    slots = []
    for dy, x, w, b in jobs:
        n_lblk = triton.cdiv(x.shape[2], block_l)
        dx = torch.empty(x.shape, device=x.device, dtype=_buf_dtype(x.dtype))
        dw = torch.empty((B * H * n_lblk, D), device=x.device, dtype=torch.float32) if w is not None else dy
        db = torch.empty((B * H * n_lblk, D), device=x.device, dtype=torch.float32) if b is not None else dy
        slots.append((dy, x, dx, w if w is not None else dy, dw, db, n_lblk, w is not None, b is not None))
    if len(slots) == 1:
        slots.append(slots[0])  # never run: grid axis 2 has size 1
    (dy1, x1, dx1, w1, dw1, db1, nb1, n1, c1), (dy2, x2, dx2, w2, dw2, db2, nb2, n2, c2) = slots
    _prologue_bwd_kernel[(max(nb1, nb2), B * H, len(jobs))](
        dy1, x1, dx1, w1, dw1, db1, x1.stride(0), x1.stride(1), x1.stride(2), x1.shape[2], nb1,
        dy2, x2, dx2, w2, dw2, db2, x2.stride(0), x2.stride(1), x2.stride(2), x2.shape[2], nb2,
        cos if cos is not None else dy1, sin if sin is not None else dy1,
        H, float(eps),
        D=D, BLOCK_L=block_l, NORM1=n1, BIAS1=c1, NORM2=n2, BIAS2=c2, HAS_ROPE=cos is not None, ROT_DIM=rot,
        num_warps=4,
    )
    results = []
    for (dy, x, w, b), (_, _, dx, _, dw, db, _, has_w, has_b) in zip(jobs, slots):
        results.append((dx.to(x.dtype), dw.sum(0).to(w.dtype) if has_w else None,
                        db.sum(0).to(b.dtype) if has_b else None))
    return results


def attention_fwd(q, k, v, key_padding_mask=None, q_norm_weight=None, q_norm_bias=None, k_norm_weight=None,
                  k_norm_bias=None, freqs=None, norm_eps: float = 1e-6, scale: Optional[float] = None):
    """Forward launcher. Shapes as in ``attention``. Returns (O (B, H, Lq, D) q.dtype contiguous,
    lse (B, H, Lq) fp32 natural log-sum-exp of the scaled masked scores, +inf for a row with no key,
    o_acc: the fp32 O for fp16/bf16 inputs, else an empty (0,) tensor).

    o_acc exists because the backward's delta = rowsum(dO * O) taken from a bf16-rounded O cost ~1.8 bf16 ulps
    of dK (measured) against < 1 ulp from the fp32 O; it costs 2 bytes per element of O more saved memory."""
    _check_inputs(q, k, v, key_padding_mask, q_norm_weight, q_norm_bias, k_norm_weight, k_norm_bias, freqs)
    o_shape, lse_shape, acc_shape = _fwd_shapes(q, k)
    q_dtype = q.dtype
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    lowp = q_dtype != torch.float32
    o_acc = torch.empty(acc_shape, device=q.device, dtype=torch.float32)
    if Lq == 0 or B * H == 0 or Lk == 0:
        lse = torch.full(lse_shape, float("inf"), device=q.device, dtype=torch.float32)
        return torch.zeros(o_shape, device=q.device, dtype=q_dtype), lse, o_acc.zero_()
    # Under the interpreter a low-precision O is rounded by torch from o_acc (see _buf_dtype).
    store_o = not (lowp and interpreter_active())
    o = torch.empty(o_shape, device=q.device, dtype=q_dtype) if store_o else o_acc
    lse = torch.empty(lse_shape, device=q.device, dtype=torch.float32)
    q, k = _apply_prologue(q, k, q_norm_weight, q_norm_bias, k_norm_weight, k_norm_bias, freqs, norm_eps)
    mask, smb, sml = _mask_arg(key_padding_mask, q)

    def grid(meta):
        return (triton.cdiv(Lq, meta["BLOCK_M"]), B * H)

    _fwd[grid](
        q, k, v, o, o_acc if lowp else o, lse, mask,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        smb, sml,
        H, Lq, Lk, scale,
        D=D, HAS_MASK=key_padding_mask is not None, DOT_FP32=interpreter_active() or not lowp,
        PREC=_dot_precision(q_dtype), STORE_O=store_o, STORE_O32=lowp, **_block_kwargs(True),
    )
    return (o if store_o else o_acc.to(q_dtype)), lse, o_acc


def _apply_prologue(q, k, q_norm_weight, q_norm_bias, k_norm_weight, k_norm_bias, freqs, norm_eps):
    """(q', k'): the normalised + rotated tensors from one prologue launch (the raw tensors where none applies).

    The prologue is not fused into the attention loops: q' would be recomputed per key block in the backward
    (and k' per query block), and the extra (BLOCK, D) fp32 tiles spilled ~1.3 KB of registers per thread in
    the forward at D = 128 on sm_90 (offline compile); one O(L D) pass is cheaper than either."""
    cos, sin, rot = _rope_tables(freqs)
    jobs = []
    if q_norm_weight is not None or freqs is not None:
        jobs.append(("q", (q, q_norm_weight, q_norm_bias)))
    if k_norm_weight is not None or freqs is not None:
        jobs.append(("k", (k, k_norm_weight, k_norm_bias)))
    if not jobs:
        return q, k
    out = dict(zip((n for n, _ in jobs), _prologue_fwd([j for _, j in jobs], cos, sin, rot, norm_eps)))
    return out.get("q", q), out.get("k", k)


def attention_bwd(do, q, k, v, o, lse, key_padding_mask=None, q_norm_weight=None, q_norm_bias=None,
                  k_norm_weight=None, k_norm_bias=None, freqs=None, norm_eps: float = 1e-6,
                  scale: Optional[float] = None):
    """Backward launcher. ``do`` (B, H, Lq, D) any strides (copied only if stride(-1) != 1, e.g. the all-zero
    strides of a ``.sum()`` grad); ``o``: the forward output that delta = rowsum(dO * O) is taken from, best the
    fp32 ``o_acc`` of ``attention_fwd`` for fp16/bf16 inputs; ``lse`` from ``attention_fwd``; the other arguments
    as given to it.
    Returns (dq, dk, dv, dq_norm_weight, dq_norm_bias, dk_norm_weight, dk_norm_bias): input grads contiguous in
    the inputs' dtypes; a norm-parameter grad is None when that parameter is None."""
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    q_pro = q_norm_weight is not None or freqs is not None
    k_pro = k_norm_weight is not None or freqs is not None
    # Grads of the post-prologue q', k' stay fp32 until the prologue backward.
    dq = torch.empty(q.shape, device=q.device, dtype=torch.float32 if q_pro else _buf_dtype(q.dtype))
    dk = torch.empty(k.shape, device=q.device, dtype=torch.float32 if k_pro else _buf_dtype(k.dtype))
    dv = torch.empty(v.shape, device=q.device, dtype=_buf_dtype(v.dtype))
    if Lq == 0 or Lk == 0 or B * H == 0:
        dq.zero_()
        dk.zero_()
        dv.zero_()
    else:
        if do.stride(-1) != 1:
            do = do.contiguous()
        o = o.contiguous()
        lse = lse.contiguous()
        delta = torch.empty((B, H, Lq), device=q.device, dtype=torch.float32)
        pre_block = _row_block(D)
        _attn_bwd_preprocess_kernel[(triton.cdiv(Lq, pre_block), B * H)](
            o, do, delta, do.stride(0), do.stride(1), do.stride(2), H, Lq, D=D, BLOCK_M=pre_block, num_warps=4)
        qe, ke = _apply_prologue(q, k, q_norm_weight, q_norm_bias, k_norm_weight, k_norm_bias, freqs, norm_eps)
        mask, smb, sml = _mask_arg(key_padding_mask, q)
        common = (
            mask,
            qe.stride(0), qe.stride(1), qe.stride(2),
            ke.stride(0), ke.stride(1), ke.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            do.stride(0), do.stride(1), do.stride(2),
            smb, sml,
            H, Lq, Lk, scale,
        )
        flags = dict(D=D, HAS_MASK=key_padding_mask is not None,
                     DOT_FP32=interpreter_active() or q.dtype == torch.float32, PREC=_dot_precision(q.dtype),
                     **_block_kwargs(False))
        _dkdv[lambda meta: (triton.cdiv(Lk, meta["BLOCK_N"]), B * H)](qe, ke, v, do, lse, delta, dk, dv, *common,
                                                                       **flags)
        _dq[lambda meta: (triton.cdiv(Lq, meta["BLOCK_M"]), B * H)](qe, ke, v, do, lse, delta, dq, *common, **flags)

    grads = {"q": (dq, None, None), "k": (dk, None, None)}
    jobs = []
    if q_pro:
        jobs.append(("q", (dq, q, q_norm_weight, q_norm_bias)))
    if k_pro:
        jobs.append(("k", (dk, k, k_norm_weight, k_norm_bias)))
    if jobs:
        cos, sin, rot = _rope_tables(freqs)
        grads.update(zip((n for n, _ in jobs), _prologue_bwd([j for _, j in jobs], cos, sin, rot, norm_eps)))
    (dq, dqw, dqb), (dk, dkw, dkb) = grads["q"], grads["k"]
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dqw, dqb, dkw, dkb


# ----------------------------------------------------------------------------------------------------------
# torch.library registration
# ----------------------------------------------------------------------------------------------------------
def _on_device(t: torch.Tensor):
    """Triton launches on the current device: make it the tensors' one (a no-op on the CPU)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


@torch.library.custom_op("arc_fast::attention_fwd", mutates_args=())
def _attention_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: Optional[torch.Tensor],
                      q_norm_weight: Optional[torch.Tensor], q_norm_bias: Optional[torch.Tensor],
                      k_norm_weight: Optional[torch.Tensor], k_norm_bias: Optional[torch.Tensor],
                      freqs: Optional[torch.Tensor], norm_eps: float, scale: float
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with _on_device(q):
        return attention_fwd(q, k, v, key_padding_mask, q_norm_weight, q_norm_bias, k_norm_weight, k_norm_bias,
                             freqs, norm_eps, scale)


@_attention_fwd_op.register_fake
def _(q, k, v, key_padding_mask, q_norm_weight, q_norm_bias, k_norm_weight, k_norm_bias, freqs, norm_eps, scale):
    _check_inputs(q, k, v, key_padding_mask, q_norm_weight, q_norm_bias, k_norm_weight, k_norm_bias, freqs)
    o_shape, lse_shape, acc_shape = _fwd_shapes(q, k)
    return (q.new_empty(o_shape), q.new_empty(lse_shape, dtype=torch.float32),
            q.new_empty(acc_shape, dtype=torch.float32))


@torch.library.custom_op("arc_fast::attention_bwd", mutates_args=())
def _attention_bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                      lse: torch.Tensor, key_padding_mask: Optional[torch.Tensor],
                      q_norm_weight: Optional[torch.Tensor], q_norm_bias: Optional[torch.Tensor],
                      k_norm_weight: Optional[torch.Tensor], k_norm_bias: Optional[torch.Tensor],
                      freqs: Optional[torch.Tensor], norm_eps: float, scale: float
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                 torch.Tensor]:
    with _on_device(q):
        grads = attention_bwd(do, q, k, v, o, lse, key_padding_mask, q_norm_weight, q_norm_bias, k_norm_weight,
                              k_norm_bias, freqs, norm_eps, scale)
    # custom_op outputs cannot be None: an absent norm parameter gets an empty (0,) gradient.
    return tuple(g if g is not None else q.new_empty((0,)) for g in grads)


@_attention_bwd_op.register_fake
def _(do, q, k, v, o, lse, key_padding_mask, q_norm_weight, q_norm_bias, k_norm_weight, k_norm_bias, freqs, norm_eps,
      scale):
    shapes = _bwd_shapes(q, k, v, q_norm_weight, q_norm_bias, k_norm_weight, k_norm_bias)
    like = (q, k, v, q_norm_weight, q_norm_bias, k_norm_weight, k_norm_bias)
    return tuple((t if t is not None else q).new_empty(s) for s, t in zip(shapes, like))


def _setup_context(ctx, inputs, output):
    (q, k, v, key_padding_mask, q_norm_weight, q_norm_bias, k_norm_weight, k_norm_bias, freqs, norm_eps,
     scale) = inputs
    o, lse, o_acc = output
    # delta = rowsum(dO * O) is taken from the fp32 O when there is one (see attention_fwd).
    o_bwd = o if q.dtype == torch.float32 else o_acc
    ctx.save_for_backward(q, k, v, o_bwd, lse, key_padding_mask, q_norm_weight, q_norm_bias, k_norm_weight,
                          k_norm_bias, freqs)
    ctx.norm_eps = norm_eps
    ctx.scale = scale


def _backward(ctx, do, _dlse, _do_acc):
    q, k, v, o, lse, mask, qw, qb, kw, kb, freqs = ctx.saved_tensors
    dq, dk, dv, dqw, dqb, dkw, dkb = _attention_bwd_op(do, q, k, v, o, lse, mask, qw, qb, kw, kb, freqs,
                                                       ctx.norm_eps, ctx.scale)
    return (dq, dk, dv, None,
            dqw if qw is not None else None, dqb if qb is not None else None,
            dkw if kw is not None else None, dkb if kb is not None else None,
            None, None, None)


_attention_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------------------
# Public functional
# ----------------------------------------------------------------------------------------------------------
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, key_padding_mask: Optional[torch.Tensor] = None,
              q_norm_weight: Optional[torch.Tensor] = None, q_norm_bias: Optional[torch.Tensor] = None,
              k_norm_weight: Optional[torch.Tensor] = None, k_norm_bias: Optional[torch.Tensor] = None,
              norm_eps: float = 1e-6, freqs: Optional[torch.Tensor] = None,
              scale: Optional[float] = None) -> torch.Tensor:
    """Fused (QK-LayerNorm -> partial RoPE ->) softmax attention, non-causal; differentiable.

    Args:
        q: (B, H, Lq, D); k, v: (B, H, Lk, D). fp32, fp16 or bf16 (all the same); any strides with
            stride(-1) == 1 (e.g. permuted slices of a packed qkv projection). D in ``SUPPORTED_HEAD_DIMS``.
        key_padding_mask: (B, Lk) bool, True = attend. A query row whose keys are all masked gets output 0 and
            zero gradients.
        q_norm_weight, q_norm_bias: (D,) per-head LayerNorm on q over D (``eps = norm_eps``), applied when the
            weight is given (the bias is optional). k_norm_weight, k_norm_bias: the same for k.
        freqs: (Lq, R) fp32 rotary angle table (``arc_fast.reference.functional.rope_freqs``), R even <= D:
            rotates the first R channels of each head of q and k after the norm (half-split). Needs Lq == Lk.
            Not differentiable.
        scale: softmax scale, default 1/sqrt(D).

    Returns:
        (B, H, Lq, D) in q.dtype (contiguous). Gradients flow to q, k, v and the norm weights/biases.

    Raises:
        TypeError / ValueError naming the argument when ``not_supported_reasons`` is non-empty.
    """
    if not isinstance(q, torch.Tensor) or q.dim() == 0:
        _check_inputs(q, k, v)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    o, _, _ = _attention_fwd_op(q, k, v, key_padding_mask, q_norm_weight, q_norm_bias, k_norm_weight, k_norm_bias,
                             freqs, float(norm_eps), scale)
    return o
