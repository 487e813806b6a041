"""Shared comparators for parity tests (imported as ``from utils import ...``)."""
from __future__ import annotations

import torch

# Rounding floor per dtype, added to the "k x PyTorch's own error" bound.
FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def _stats(out: torch.Tensor, ref: torch.Tensor) -> str:
    d = (out.float() - ref.float())
    nan = int(torch.isnan(out.float()).sum())
    inf = int(torch.isinf(out.float()).sum())
    rms = d.pow(2).mean().sqrt().item() / max(ref.float().pow(2).mean().sqrt().item(), 1e-30)
    return f"max|diff|={d.abs().max().item():.3e} rel_rms={rms:.3e} nan={nan} inf={inf} shape={tuple(out.shape)}"


def assert_close_to_ref(name: str, out: torch.Tensor, ref_fp32: torch.Tensor, ref_lowp: torch.Tensor | None = None,
                        dtype: torch.dtype = torch.float32, k: float = 2.0, rtol32: float = 1e-5,
                        metric: str = "max", scale: float | None = None) -> None:
    """Assert ``out`` is as close to the fp32 reference as PyTorch itself is in ``dtype``.

    fp32: err <= rtol32 * scale + floor. Low precision: err <= k * err(ref_lowp) + floor(dtype), where ref_lowp
    is the eager op run in ``dtype`` (flash-attention's rule). err is max|out - ref| (``metric="max"``) or the
    RMS of out - ref (``metric="rms"``: for vectors of long reductions, e.g. norm-parameter grads summed over
    1e5 rows, whose max error over a few hundred sums is one element's luck). scale: the magnitude errors are
    measured against, default max|ref|; give the size of the summed terms where the reference is a cancellation
    (a gradient that is zero in exact arithmetic, whose fp32 value is rounding noise).
    """
    assert out.shape == ref_fp32.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref_fp32.shape)}"
    assert torch.isfinite(out.float()).all(), f"{name}: non-finite values; {_stats(out, ref_fp32)}"

    def error(a: torch.Tensor) -> float:
        d = (a.float() - ref_fp32.float())
        return (d.abs().max() if metric == "max" else d.pow(2).mean().sqrt()).item()

    err = error(out)
    if scale is None:
        scale = ref_fp32.float().abs().max().item()
    if dtype == torch.float32 or ref_lowp is None:
        bound = rtol32 * scale + FLOOR[torch.float32] * (1 if dtype == torch.float32 else 0) + (
            0 if dtype == torch.float32 else FLOOR[dtype] * max(scale, 1.0))
    else:
        bound = k * error(ref_lowp) + FLOOR[dtype] * max(scale, 1.0) * 0.25
    assert err <= bound, f"{name}: {metric} error {err:.3e} > bound {bound:.3e}; {_stats(out, ref_fp32)}"


# Units in the last place of the result that two orderings of the same sums may differ by, relative to the
# tensor's scale. fp32: reordered reductions (another kernel variant, BLAS blocking picked by the CPU model or
# the operands' memory alignment, another thread count) differ by a few ulps per sum; 64 leaves room for a
# chain of layers. fp16/bf16 results: the fp32 intermediates differ by a few ulps, which flips the final
# rounding of some elements by one unit of the output dtype; 2 units of the max allow it.
SAME_MATHS_ULPS = {torch.float32: 64, torch.float64: 64, torch.float16: 2, torch.bfloat16: 2}


def assert_same_maths(name: str, got: torch.Tensor, want: torch.Tensor, ulps: float | None = None) -> None:
    """Assert two computations of the same maths agree to the rounding of their dtype.

    For results that are NOT the same bytes through the same kernels in one process (a file round trip, another
    kernel or backend, strided vs contiguous operands, another CPU): bitwise equality would test the machine,
    not the code. Passes if ``max|got - want| <= ulps * eps(dtype) * max(max|want|, tiny)``, ``ulps`` from
    ``SAME_MATHS_ULPS`` unless given (say why in the caller when you give it). got/want: any shape, same
    shape and dtype."""
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    assert torch.isfinite(got).all() and torch.isfinite(want).all(), f"{name}: non-finite values; {_stats(got, want)}"
    ulps = SAME_MATHS_ULPS[want.dtype] if ulps is None else ulps
    scale = max(want.float().abs().max().item(), torch.finfo(want.dtype).tiny) if want.numel() else 0.0
    bound = ulps * torch.finfo(want.dtype).eps * scale
    err = (got.float() - want.float()).abs().max().item() if want.numel() else 0.0
    assert err <= bound, f"{name}: max|diff| {err:.3e} > {ulps} ulps of max|want| ({bound:.3e}); {_stats(got, want)}"
