"""Parity of the fused SwiGLU kernel with the eager oracle, forward and backward."""
from __future__ import annotations

import pytest
import torch
from utils import assert_close_to_ref

from arc_fast.ops import swiglu as ops_swiglu
from arc_fast.reference.functional import swiglu

K = ops_swiglu.triton_module()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# Packed (..., 2F) shapes: F=1, odd F (37), F over several column tiles with a ragged tail (1000),
# rows not a multiple of the row tile (33), 2-D and 4-D inputs.
CASES = [
    pytest.param((1, 1, 2), id="F1"),
    pytest.param((7, 74), id="2d-N7-F37"),
    pytest.param((2, 33, 200), id="B2-L33-F100"),
    pytest.param((1, 5, 2000), id="B1-L5-F1000"),
    pytest.param((2, 3, 5, 128), id="4d-F64"),
]
# SAO Small feed-forward: 1024 -> 2 * 4096, B=2 (CFG) x 257 tokens; a long clip; an odd F.
GPU_CASES = [
    pytest.param((2, 257, 8192), id="sao-small-B2-L257-F4096"),
    pytest.param((1, 4097, 8192), id="long-L4097-F4096"),
    pytest.param((3, 100, 2 * 1531), id="B3-L100-F1531"),
]
DTYPES = [pytest.param(d, id=str(d).split(".")[-1]) for d in K.SUPPORTED_DTYPES]


def make_inputs(shape, dtype, seed=0, device=DEVICE):
    """h spans the saturating and the linear range of silu (|g| up to ~6); a random cotangent."""
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(shape, generator=g) * 2.0 + 0.25).to(device=device, dtype=dtype)
    dout = torch.randn((*shape[:-1], shape[-1] // 2), generator=g).to(device=device, dtype=dtype)
    return h, dout


def _run(fn, h, dout, grad):
    h = h.detach().clone().requires_grad_()
    out = fn(h)
    if grad == "random":
        out.backward(dout.to(out.dtype))
    else:
        out.sum().backward()
    return out, h.grad


def _check(h, dout, dtype, grad, fn=None):
    fn = fn or (lambda t: ops_swiglu.swiglu(t, backend="triton"))
    out, dh = _run(fn, h, dout, grad)
    ref, dref = _run(swiglu, h.float(), dout.float(), grad)
    low, dlow = _run(swiglu, h, dout, grad) if dtype != torch.float32 else (None, None)
    assert_close_to_ref("out", out, ref, low, dtype)
    assert_close_to_ref("dh", dh, dref, dlow, dtype)


@pytest.mark.parametrize("grad", ["random", "sum"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", CASES)
def test_fwd_bwd_matches_reference(shape, dtype, grad):
    _check(*make_inputs(shape, dtype, seed=shape[-1]), dtype, grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtype_contract(dtype):
    h, dout = make_inputs((2, 5, 40), dtype)
    out, dh = _run(K.swiglu, h, dout, "random")
    assert out.dtype == dh.dtype == dtype
    assert out.shape == (2, 5, 20) and dh.shape == h.shape and out.is_contiguous()


def test_value_gate_order():
    """The first half is the value, the second the gate (SAO's FF): a zero gate must zero the output."""
    h = torch.cat([torch.full((3, 8), 5.0), torch.zeros(3, 8)], dim=-1).to(DEVICE)
    assert torch.equal(K.swiglu(h), torch.zeros(3, 8, device=DEVICE))
    h = torch.cat([torch.zeros(3, 8), torch.full((3, 8), 5.0)], dim=-1).to(DEVICE)
    assert torch.equal(K.swiglu(h), torch.zeros(3, 8, device=DEVICE))


def test_noncontiguous_inputs():
    """Every other token of a projection with padded rows: read through the strides, no copy."""
    g = torch.Generator().manual_seed(5)
    h = torch.randn(2, 18, 2 * 37 + 6, generator=g).to(DEVICE)[:, ::2, : 2 * 37]
    assert h.stride(-1) == 1 and not h.is_contiguous()
    dout = torch.randn(2, 9, 37, generator=g).to(DEVICE)
    assert torch.equal(K.swiglu(h), K.swiglu(h.contiguous()))
    _check(h, dout, torch.float32, "random")
    _check(h, dout.transpose(1, 2).contiguous().transpose(1, 2), torch.float32, "random")


def test_eager_backend_matches_reference_exactly():
    h, _ = make_inputs((3, 7, 74), torch.bfloat16)
    assert torch.equal(ops_swiglu.swiglu(h, backend="eager"), swiglu(h))
    with torch.no_grad():  # the in-place inference path
        assert torch.equal(ops_swiglu.swiglu(h, backend="eager"), swiglu(h))
    _check(h, make_inputs((3, 7, 74), torch.bfloat16)[1], torch.bfloat16, "random",
           fn=lambda t: ops_swiglu.swiglu(t, backend="eager"))


BAD = [
    pytest.param(torch.zeros(3, 7), ValueError, r"h: last dim must be even", id="odd-last-dim"),
    pytest.param(torch.zeros(3, 8, dtype=torch.int32), TypeError, r"h: dtype torch.int32 not in", id="int"),
    pytest.param(torch.zeros(3, 8, dtype=torch.float64), TypeError, r"h: dtype torch.float64 not in", id="fp64"),
    pytest.param(torch.zeros(8, 3).t(), ValueError, r"h: stride\(-1\) must be 1", id="stride"),
    pytest.param(torch.zeros(()), ValueError, r"h: expected at least 1 dim", id="scalar"),
]


@pytest.mark.parametrize("h,exc,match", BAD)
def test_rejects_unsupported(h, exc, match):
    h = h.to(DEVICE)
    assert K.not_supported_reasons(h)
    with pytest.raises(exc, match=match):
        K.swiglu(h)
    with pytest.raises(exc, match=match):
        ops_swiglu.swiglu(h, backend="triton")


def test_dispatch_rules():
    h, _ = make_inputs((2, 8), torch.float64)
    with pytest.raises(NotImplementedError, match="swiglu: backend 'cuda' is not implemented"):
        ops_swiglu.swiglu(h, backend="cuda")
    if DEVICE == "cpu":
        ops_swiglu._warned_fallback.discard(ops_swiglu.OP)
        with pytest.warns(RuntimeWarning, match="swiglu falls back to eager"):
            out = ops_swiglu.swiglu(h)
        torch.testing.assert_close(out, swiglu(h))


def test_opcheck():
    h, dout = make_inputs((2, 3, 40), torch.float32)
    torch.library.opcheck(torch.ops.arc_fast.swiglu_fwd.default, (h.requires_grad_(),))
    torch.library.opcheck(torch.ops.arc_fast.swiglu_bwd.default, (dout, h.detach()),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_compile_fullgraph():
    h, dout = make_inputs((2, 7, 74), torch.float32, seed=3)

    def ff(t):
        return ops_swiglu.swiglu(t * 1.5, backend="triton").tanh()

    compiled = torch.compile(ff, fullgraph=True, backend="eager")
    got = _run(compiled, h, dout, "random")
    want = _run(ff, h, dout, "random")
    for name, a, b in zip(("out", "dh"), got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", GPU_CASES)
def test_real_size_gpu(shape, dtype):
    _check(*make_inputs(shape, dtype, seed=1), dtype, "random")
