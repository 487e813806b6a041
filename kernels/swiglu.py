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

import functools

import torch
import triton
import triton.language as tl

try:
    from arc_fast.ops._dispatch import interpreter_active
except ImportError:  # pragma: no cover - kernels used without the package on the path
    import os

    def interpreter_active() -> bool:
        return os.environ.get("TRITON_INTERPRET", "0") == "1"

# ---------------------------------------------------------------------------------------------------------
# Capabilities
# ---------------------------------------------------------------------------------------------------------
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MIN_CAPABILITY = (7, 0)
IS_DETERMINISTIC = True
ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
RTOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}

_MAX_GRID_YZ = 65535
_INTERPRETER_BLOCK_M = 32  # the interpreter pays per operation: few, large tiles
_INTERPRETER_BLOCK_F = 512


# ---------------------------------------------------------------------------------------------------------
# Kernels
@triton.jit
def _rne_bf16(x, ENABLED: tl.constexpr):
    """Round fp32 to the nearest-even bf16 value (kept in fp32) when ENABLED.

    The Triton interpreter casts fp32 -> bf16 by truncation (measured on 3.9), the GPU rounds to nearest
    even. Rounding first makes the interpreter's truncating cast exact, so CPU tests see GPU numerics.
    ENABLED is set only under the interpreter for bf16 outputs; on the GPU this compiles to nothing.
    """
    if ENABLED:
        bits = x.to(tl.uint32, bitcast=True)
        x = (((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16).to(tl.float32, bitcast=True)
    return x

# ---------------------------------------------------------------------------------------------------------
@triton.jit
def _swiglu_fwd_kernel(
    h_ptr,        # (B, M, 2F) packed (value | gate), unit column stride
    o_ptr,        # (B, M, F) out, contiguous
    M, F,         # rows per batch, output features
    s_hb, s_hm,   # h strides of batch and row
    BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr,
    RNE_BF16: tl.constexpr,   # pre-round bf16 outputs (interpreter only)
):
    pid_m = tl.program_id(0)
    pid_f = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
    m = (rows < M)[:, None] & (cols < F)[None, :]
    base = h_ptr + b * s_hb + rows[:, None] * s_hm + cols[None, :]
    v = tl.load(base, mask=m, other=0.0).to(tl.float32)
    g = tl.load(base + F, mask=m, other=0.0).to(tl.float32)
    out = _rne_bf16(v * g * tl.sigmoid(g), RNE_BF16)
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
    pid_m = tl.program_id(0)
    pid_f = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    cols = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
    m = (rows < M)[:, None] & (cols < F)[None, :]
    base = h_ptr + b * s_hb + rows[:, None] * s_hm + cols[None, :]
    v = tl.load(base, mask=m, other=0.0).to(tl.float32)
    g = tl.load(base + F, mask=m, other=0.0).to(tl.float32)
    do = tl.load(do_ptr + b * s_ob + rows[:, None] * s_om + cols[None, :] * s_of, mask=m, other=0.0).to(tl.float32)
    s = tl.sigmoid(g)
    dv = do * g * s
    dg = do * v * s * (1.0 + g * (1.0 - s))
    dv = _rne_bf16(dv, RNE_BF16)
    dg = _rne_bf16(dg, RNE_BF16)
    out = dh_ptr + (b * M + rows[:, None]) * (2 * F) + cols[None, :]
    tl.store(out, dv.to(dh_ptr.dtype.element_ty), mask=m)
    tl.store(out + F, dg.to(dh_ptr.dtype.element_ty), mask=m)


# Memory-bound elementwise kernels: the configs only trade tile shape against per-program overhead.
_CONFIGS = [triton.Config({"BLOCK_M": bm, "BLOCK_F": bf}, num_warps=nw)
            for bm, bf, nw in ((1, 1024, 4), (4, 512, 4), (8, 512, 8), (2, 2048, 8))]
# Keyed on F only: the token count changes with every clip length and must not trigger a re-tune.
_swiglu_fwd_tuned = triton.autotune(configs=_CONFIGS, key=["F"])(_swiglu_fwd_kernel)
_swiglu_bwd_tuned = triton.autotune(configs=_CONFIGS, key=["F"])(_swiglu_bwd_kernel)


def _rne_flag(dtype: torch.dtype) -> bool:
    """Whether kernels must pre-round bf16 outputs (see ``_rne_bf16``)."""
    return dtype == torch.bfloat16 and interpreter_active()


# ---------------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _capability(index: int | None) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def not_supported_reasons(h: torch.Tensor) -> list[str]:
    """Every reason why ``swiglu(h)`` cannot run on the Triton kernel (empty list: it can)."""
    if not isinstance(h, torch.Tensor):
        return [f"h must be a torch.Tensor, got {type(h).__name__}"]
    reasons = []
    if h.device.type == "cpu":
        if not interpreter_active():
            reasons.append("h: CPU tensors need TRITON_INTERPRET=1 for the Triton kernel")
    elif h.device.type == "cuda":
        if _capability(h.device.index) < MIN_CAPABILITY:
            reasons.append(f"h: compute capability {_capability(h.device.index)} < {MIN_CAPABILITY}")
    else:
        reasons.append(f"h: device {h.device} is not supported (cuda, or cpu under TRITON_INTERPRET=1)")
    if h.dtype not in SUPPORTED_DTYPES:
        reasons.append(f"h: dtype {h.dtype} not in {SUPPORTED_DTYPES}")
    if h.dim() == 0:
        return reasons + ["h: expected at least 1 dim (..., 2F), got a scalar"]
    if h.shape[-1] % 2 != 0:
        reasons.append(f"h: last dim must be even (value | gate), got {h.shape[-1]}")
    if h.numel() > 0 and h.stride(-1) != 1:
        reasons.append(f"h: stride(-1) must be 1, got {h.stride(-1)}")
    if h.dim() == 3 and h.shape[0] > _MAX_GRID_YZ:
        reasons.append(f"h: batch {h.shape[0]} > {_MAX_GRID_YZ} (grid axis limit)")
    return reasons


def _raise_if(reasons: list[str]) -> None:
    if reasons:
        kind = TypeError if any("dtype" in r or "must be a torch.Tensor" in r for r in reasons) else ValueError
        raise kind("swiglu: " + "; ".join(reasons))


def _out_shape(h_shape) -> tuple[int, ...]:
    """Output shape for an h of ``h_shape``; shared by the launcher and the fake."""
    return (*h_shape[:-1], h_shape[-1] // 2)


def _as_bm(t: torch.Tensor) -> torch.Tensor:
    """View as (B, M, C): 3-D as is, other ranks as (1, N, C) (a copy only if no view exists)."""
    return t if t.dim() == 3 else t.reshape(1, -1, t.shape[-1])


# ---------------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------------
def _launch(kernel, tuned, grid_shape, args, dtype):
    B, M, F = grid_shape
    if interpreter_active():
        bm, bf = _INTERPRETER_BLOCK_M, min(_INTERPRETER_BLOCK_F, triton.next_power_of_2(F))
        kernel[(triton.cdiv(M, bm), triton.cdiv(F, bf), B)](*args, BLOCK_M=bm, BLOCK_F=bf, num_warps=1,
                                                              RNE_BF16=_rne_flag(dtype))
    else:
        tuned[lambda m: (triton.cdiv(M, m["BLOCK_M"]), triton.cdiv(F, m["BLOCK_F"]), B)](*args, RNE_BF16=False)


def swiglu_fwd(h: torch.Tensor) -> torch.Tensor:
    """Checked forward launch: (..., 2F) -> (..., F) in h.dtype, contiguous."""
    _raise_if(not_supported_reasons(h))
    out = torch.empty(_out_shape(h.shape), dtype=h.dtype, device=h.device)
    if out.numel() == 0:
        return out
    h3 = _as_bm(h)
    B, M, F = h3.shape[0], h3.shape[1], h3.shape[2] // 2
    _launch(_swiglu_fwd_kernel, _swiglu_fwd_tuned, (B, M, F), (h3, out, M, F, h3.stride(0), h3.stride(1)), h.dtype)
    return out


def swiglu_bwd(dout: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Backward launch: dh (..., 2F) in h.dtype, contiguous. dout (..., F) may have any strides."""
    dh = torch.empty(h.shape, dtype=h.dtype, device=h.device)
    if dh.numel() == 0:
        return dh
    h3, do3 = _as_bm(h), _as_bm(dout)
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
    _raise_if(not_supported_reasons(h))
    return swiglu_fwd_op(h)
