"""Fused partial rotary position embedding (RoPE) for q and k in one launch, forward and backward.

Maths (GPT-NeoX half-split layout, as Stable Audio Open uses; SPEC.md 7.3). For one head row x (Dh,) at
position l, with the angle table row f = freqs[l] (rot_dim,) = [theta | theta] and h = rot_dim / 2:

    x = (x1 | x2 | x_pass)       x1, x2 (h,), x_pass (Dh - rot_dim,)
    y1 = x1 * cos(f1) - x2 * sin(f1)          f1 = f[:h]
    y2 = x2 * cos(f2) + x1 * sin(f2)          f2 = f[h:]
    y_pass = x_pass

which is ``x * cos(f) + rotate_half(x) * sin(f)`` on the first rot_dim channels. The map is linear in x, so
the backward is its transpose:

    dx1 = dy1 * cos(f1) + dy2 * sin(f2)
    dx2 = dy2 * cos(f2) - dy1 * sin(f1)
    dx_pass = dy_pass

For the usual table (f1 == f2 == theta) that is the rotation by -theta. The transpose is used so that an
arbitrary table (f1 != f2) still gets the exact gradient. ``freqs`` receives no gradient (it is a buffer
of positions, never learned).

Shapes and dtypes:
    q (B, H, L, Dh), k (B, H, L, Dh): the same shape (Lq == Lk == L, because one angle table serves both)
        and dtype in {fp32, fp16, bf16}; any strides with stride(-1) == 1.
    freqs (L, rot_dim): fp32, rot_dim even, 2 <= rot_dim <= Dh, stride(-1) == 1.
    Outputs: new contiguous tensors of q's/k's shape and dtype. The rotation runs in fp32 and is rounded
    once to the output dtype (the oracle ``arc_fast.reference.functional.apply_rotary`` does the same).
    Backward: dq, dk in q's dtype; incoming gradients may have any strides (stride 0 from ``.sum()``).

Limits: Dh <= MAX_HEAD_DIM. One program handles BLOCK_L positions of one (batch, head) for q and k together,
so cos/sin are computed once for both.

References: Su et al., "RoFormer" (arXiv:2104.09864); GPT-NeoX rotary layout.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import MAX_GRID_YZ, device_reasons, launch, raise_if, rne_bf16, rne_flag

# ---------------------------------------------------------------------------------------------------------
# Capabilities
# ---------------------------------------------------------------------------------------------------------
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 1024
MIN_CAPABILITY = (7, 0)
IS_DETERMINISTIC = True
# Elementwise rotation in fp32, one rounding: within an ulp of the output dtype (plus cos/sin ulps).
ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
RTOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


# ---------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------
@triton.jit
def _rotate_tile(
    x_ptr,            # input (B, H, L, Dh), strided
    y_ptr,            # output (B, H, L, Dh), contiguous
    b, h, H, L,       # this program's batch / head, head count, sequence length
    s_b, s_h, s_l, s_d,  # input strides (s_d is 1 in the forward; any value for incoming gradients)
    offs_l,           # (BLOCK_L,) positions of this tile
    c1, s1, c2, s2,   # (BLOCK_L, BLOCK_HALF) fp32 cos/sin of the two halves of the angle table
    D: tl.constexpr, HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_PASS: tl.constexpr,
    HAS_PASS: tl.constexpr, TRANSPOSE: tl.constexpr, RNE_BF16: tl.constexpr,
):
    offs_j = tl.arange(0, BLOCK_HALF)
    mask_l = offs_l < L
    mask = mask_l[:, None] & (offs_j < HALF)[None, :]
    # int64 row offsets: B*H*L*Dh can exceed 2**31 for long sequences.
    row_in = b.to(tl.int64) * s_b + h.to(tl.int64) * s_h + offs_l.to(tl.int64)[:, None] * s_l
    row_out = ((b.to(tl.int64) * H + h) * L + offs_l.to(tl.int64)[:, None]) * D
    # Upcast right after loading: bf16 arithmetic is wrong under the interpreter and imprecise anyway.
    x1 = tl.load(x_ptr + row_in + offs_j[None, :] * s_d, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + row_in + (offs_j[None, :] + HALF) * s_d, mask=mask, other=0.0).to(tl.float32)
    if TRANSPOSE:
        y1 = x1 * c1 + x2 * s2
        y2 = x2 * c2 - x1 * s1
    else:
        y1 = x1 * c1 - x2 * s1
        y2 = x2 * c2 + x1 * s2
    y1 = rne_bf16(y1, RNE_BF16)
    y2 = rne_bf16(y2, RNE_BF16)
    tl.store(y_ptr + row_out + offs_j[None, :], y1.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(y_ptr + row_out + HALF + offs_j[None, :], y2.to(y_ptr.dtype.element_ty), mask=mask)
    if HAS_PASS:
        offs_p = tl.arange(0, BLOCK_PASS)
        mask_p = mask_l[:, None] & (offs_p < D - 2 * HALF)[None, :]
        xp = tl.load(x_ptr + row_in + (offs_p[None, :] + 2 * HALF) * s_d, mask=mask_p, other=0.0)
        tl.store(y_ptr + row_out + 2 * HALF + offs_p[None, :], xp.to(y_ptr.dtype.element_ty), mask=mask_p)


@triton.jit
def _rope_kernel(
    q_ptr, k_ptr,            # inputs (B, H, L, Dh) each, strided
    qo_ptr, ko_ptr,          # outputs (B, H, L, Dh) each, contiguous
    f_ptr,                   # angle table (L, rot_dim) fp32
    H, L,                    # head count, sequence length
    sq_b, sq_h, sq_l, sq_d,  # q strides
    sk_b, sk_h, sk_l, sk_d,  # k strides
    sf_l,                    # freqs row stride
    D: tl.constexpr,         # head dim Dh
    HALF: tl.constexpr,      # rot_dim // 2
    BLOCK_L: tl.constexpr,   # positions per program
    BLOCK_HALF: tl.constexpr,  # next_pow2(HALF)
    BLOCK_PASS: tl.constexpr,  # next_pow2(Dh - rot_dim), >= 1
    HAS_PASS: tl.constexpr,    # Dh > rot_dim
    TRANSPOSE: tl.constexpr,   # backward: apply the transposed rotation
    RNE_BF16: tl.constexpr,    # pre-round bf16 outputs (interpreter only)
):
    pid_l = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_j = tl.arange(0, BLOCK_HALF)
    mask = (offs_l < L)[:, None] & (offs_j < HALF)[None, :]
    f_row = f_ptr + offs_l.to(tl.int64)[:, None] * sf_l
    f1 = tl.load(f_row + offs_j[None, :], mask=mask, other=0.0)
    f2 = tl.load(f_row + HALF + offs_j[None, :], mask=mask, other=0.0)
    # cos/sin once per tile, shared by q and k (the point of fusing them).
    c1 = tl.cos(f1)
    s1 = tl.sin(f1)
    c2 = tl.cos(f2)
    s2 = tl.sin(f2)
    _rotate_tile(q_ptr, qo_ptr, b, h, H, L, sq_b, sq_h, sq_l, sq_d, offs_l, c1, s1, c2, s2,
                 D, HALF, BLOCK_HALF, BLOCK_PASS, HAS_PASS, TRANSPOSE, RNE_BF16)
    _rotate_tile(k_ptr, ko_ptr, b, h, H, L, sk_b, sk_h, sk_l, sk_d, offs_l, c1, s1, c2, s2,
                 D, HALF, BLOCK_HALF, BLOCK_PASS, HAS_PASS, TRANSPOSE, RNE_BF16)


# Small list: the kernel is memory bound; the choice only trades occupancy against per-program overhead.
_rope_kernel_tuned = triton.autotune(
    configs=[triton.Config({"BLOCK_L": bl}, num_warps=nw) for bl, nw in ((16, 2), (32, 4), (64, 4), (64, 8))],
    key=["D", "HALF"],  # not L: a new sequence length must not trigger a re-tune
)(_rope_kernel)

_INTERPRETER_BLOCK_L = 32  # the interpreter pays per operation: few, large tiles


# ---------------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------------
def not_supported_reasons(q: torch.Tensor, k: torch.Tensor, freqs: torch.Tensor) -> list[str]:
    """Every reason why ``rope(q, k, freqs)`` cannot run on the Triton kernel (empty list: it can)."""
    reasons: list[str] = []
    for name, t in (("q", q), ("k", k), ("freqs", freqs)):
        if not isinstance(t, torch.Tensor):
            return [f"{name} must be a torch.Tensor, got {type(t).__name__}"]
    reasons += device_reasons(q, "q", MIN_CAPABILITY)
    if k.device != q.device or freqs.device != q.device:
        reasons.append(f"devices differ: q {q.device}, k {k.device}, freqs {freqs.device}")
    if q.dtype not in SUPPORTED_DTYPES:
        reasons.append(f"q: dtype {q.dtype} not in {SUPPORTED_DTYPES}")
    if k.dtype != q.dtype:
        reasons.append(f"k: dtype {k.dtype} must equal q's dtype {q.dtype}")
    if freqs.dtype != torch.float32:
        reasons.append(f"freqs: dtype must be torch.float32, got {freqs.dtype}")
    if q.dim() != 4:
        reasons.append(f"q: expected 4 dims (B, H, L, Dh), got shape {tuple(q.shape)}")
    if k.dim() != 4:
        reasons.append(f"k: expected 4 dims (B, H, L, Dh), got shape {tuple(k.shape)}")
    if freqs.dim() != 2:
        reasons.append(f"freqs: expected 2 dims (L, rot_dim), got shape {tuple(freqs.shape)}")
    if reasons:
        return reasons
    if k.shape != q.shape:
        reasons.append(f"k: shape {tuple(k.shape)} must equal q's shape {tuple(q.shape)} (one angle table for both)")
    L, Dh = q.shape[2], q.shape[3]
    rot = freqs.shape[1]
    if freqs.shape[0] != L:
        reasons.append(f"freqs: expected {L} rows (the sequence length of q and k), got {freqs.shape[0]}")
    if rot % 2 != 0 or rot < 2 or rot > Dh:
        reasons.append(f"freqs: rot_dim must be even and in [2, Dh={Dh}], got {rot}")
    if q.shape[0] * q.shape[1] > MAX_GRID_YZ:
        reasons.append(f"q: B*H = {q.shape[0] * q.shape[1]} > {MAX_GRID_YZ} (grid axis limit)")
    if Dh > MAX_HEAD_DIM:
        reasons.append(f"q: head dim {Dh} > MAX_HEAD_DIM={MAX_HEAD_DIM}")
    for name, t in (("q", q), ("k", k), ("freqs", freqs)):
        if t.numel() > 0 and t.stride(-1) != 1:
            reasons.append(f"{name}: stride(-1) must be 1, got {t.stride(-1)}")
    return reasons


def _check_inputs(q: torch.Tensor, k: torch.Tensor, freqs: torch.Tensor) -> None:
    raise_if(not_supported_reasons(q, k, freqs), "rope")


def _out_shapes(q_shape, k_shape):
    """Output shapes, shared by the launcher and the fake implementation."""
    return tuple(q_shape), tuple(k_shape)


# ---------------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------------
def _launch(q, k, freqs, transpose: bool):
    q_shape, k_shape = _out_shapes(q.shape, k.shape)
    qo = torch.empty(q_shape, dtype=q.dtype, device=q.device)
    ko = torch.empty(k_shape, dtype=k.dtype, device=k.device)
    B, H, L, D = q.shape
    if qo.numel() == 0:
        return qo, ko
    half = freqs.shape[1] // 2
    n_pass = D - 2 * half
    meta = dict(D=D, HALF=half, BLOCK_HALF=triton.next_power_of_2(half),
                BLOCK_PASS=triton.next_power_of_2(max(n_pass, 1)), HAS_PASS=n_pass > 0, TRANSPOSE=transpose,
                RNE_BF16=rne_flag(q.dtype))
    args = (q, k, qo, ko, freqs, H, L, *q.stride(), *k.stride(), freqs.stride(0))
    launch(_rope_kernel, _rope_kernel_tuned, lambda m: (triton.cdiv(L, m["BLOCK_L"]), B * H), args,
           {"BLOCK_L": _INTERPRETER_BLOCK_L}, **meta)
    return qo, ko


def rope_fwd(q: torch.Tensor, k: torch.Tensor, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k by ``freqs`` in one launch (checked). Shapes/dtypes in the module docstring."""
    _check_inputs(q, k, freqs)
    return _launch(q, k, freqs, transpose=False)


def rope_bwd(dq: torch.Tensor, dk: torch.Tensor, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``rope_fwd`` w.r.t. q and k: the transposed rotation. dq/dk may have any strides."""
    # Incoming gradients may be expanded (stride 0, also in the last dim): the kernel reads through strides.
    return _launch(dq, dk, freqs, transpose=True)


# ---------------------------------------------------------------------------------------------------------
# torch.library glue
# ---------------------------------------------------------------------------------------------------------
@torch.library.custom_op("arc_fast::rope_fwd", mutates_args=())
def rope_fwd_op(q: torch.Tensor, k: torch.Tensor, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return rope_fwd(q, k, freqs)


def _fake(q, k, freqs):
    # Shared by both ops: the backward's (dq, dk) are shaped like its (dq_out, dk_out) inputs.
    q_shape, k_shape = _out_shapes(q.shape, k.shape)
    return q.new_empty(q_shape), k.new_empty(k_shape)


rope_fwd_op.register_fake(_fake)


@torch.library.custom_op("arc_fast::rope_bwd", mutates_args=())
def rope_bwd_op(dq: torch.Tensor, dk: torch.Tensor, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return rope_bwd(dq, dk, freqs)


rope_bwd_op.register_fake(_fake)


def _setup_context(ctx, inputs, output):
    # Unpacked by name, not by position, so a signature change cannot silently shift them.
    q, k, freqs = inputs
    ctx.save_for_backward(freqs)


def _backward(ctx, dq_out, dk_out):
    (freqs,) = ctx.saved_tensors
    dq, dk = rope_bwd_op(dq_out, dk_out, freqs)
    return dq, dk, None


rope_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------------------
# Public functional
# ---------------------------------------------------------------------------------------------------------
def rope(q: torch.Tensor, k: torch.Tensor, freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Partial half-split RoPE on q and k with one Triton launch.

    Args:
        q: (B, H, L, Dh) fp32/fp16/bf16, stride(-1) == 1 (other strides free, e.g. a slice of a packed qkv).
        k: (B, H, L, Dh), same shape and dtype as q.
        freqs: (L, rot_dim) fp32 angle table [theta | theta] (``reference.functional.rope_freqs``); rot_dim
            even and <= Dh. Channels rot_dim..Dh-1 of each head pass through unchanged.

    Returns:
        (q_out, k_out): new contiguous tensors of q's shape and dtype. Differentiable w.r.t. q and k
        (freqs gets no gradient).

    Raises:
        TypeError (a dtype problem) or ValueError (anything else) listing every reason from
        ``not_supported_reasons``; it never falls back silently (the ``arc_fast.ops`` layer chooses backends).
    """
    _check_inputs(q, k, freqs)
    return rope_fwd_op(q, k, freqs)
