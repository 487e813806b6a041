"""Parity of the fused RoPE kernel (q and k in one launch) with the eager oracle, forward and backward."""
from __future__ import annotations

import pytest
import torch
from utils import assert_close_to_ref

from arc_fast.ops import rope as ops_rope
from arc_fast.reference.functional import apply_rotary, rope_freqs

K = ops_rope.triton_module()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# (B, H, L, Dh, rot_dim). rot 64 of Dh 128 is SAO Small; rot 32 of 64 the small DiT; rot 18 gives a
# non-power-of-2 half; Dh 100 a pass-through tail that is not a power of 2; L 33 is not a block multiple.
CASES = [
    pytest.param(1, 1, 1, 16, 16, id="B1-H1-L1-D16-rot16"),
    pytest.param(2, 3, 7, 64, 32, id="B2-H3-L7-D64-rot32"),
    pytest.param(1, 2, 33, 128, 64, id="B1-H2-L33-D128-rot64"),
    pytest.param(2, 1, 17, 100, 64, id="B2-H1-L17-D100-rot64"),
    pytest.param(1, 2, 9, 66, 18, id="B1-H2-L9-D66-rot18"),
]
GPU_CASES = [
    pytest.param(2, 16, 257, 128, 64, id="sao-small-cfg-B2-H16-L257"),
    pytest.param(4, 8, 1025, 64, 32, id="B4-H8-L1025-D64"),
    pytest.param(1, 24, 4097, 128, 64, id="long-L4097"),
]
DTYPES = [pytest.param(d, id=str(d).split(".")[-1]) for d in K.SUPPORTED_DTYPES]


def make_inputs(B, H, L, D, rot, dtype, seed=0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(B, H, L, D, generator=g) + 0.3).to(dtype)
    k = (torch.randn(B, H, L, D, generator=g) - 0.2).to(dtype)
    inv_freq = 10000.0 ** (-torch.arange(0, rot, 2, dtype=torch.float32) / rot)
    freqs = rope_freqs(L, inv_freq)
    dq = torch.randn(B, H, L, D, generator=g).to(dtype)
    dk = torch.randn(B, H, L, D, generator=g).to(dtype)
    return [t.to(device) for t in (q, k, freqs, dq, dk)]


def _run(fn, q, k, freqs, dq, dk, grad):
    """(q_out, k_out, dq, dk) of ``fn`` with a random (``grad="random"``) or ``.sum()`` cotangent."""
    q = q.detach().clone().requires_grad_()
    k = k.detach().clone().requires_grad_()
    qo, ko = fn(q, k, freqs)
    if grad == "random":
        torch.autograd.backward((qo, ko), (dq.to(qo.dtype), dk.to(ko.dtype)))
    else:
        (qo.sum() + ko.sum()).backward()
    return qo, ko, q.grad, k.grad


def _oracle(q, k, freqs):
    return apply_rotary(q, freqs), apply_rotary(k, freqs)


def _check_against_oracle(q, k, freqs, dq, dk, dtype, grad, backend="triton"):
    out = _run(lambda a, b, f: ops_rope.rope(a, b, f, backend=backend), q, k, freqs, dq, dk, grad)
    ref = _run(_oracle, q.float(), k.float(), freqs, dq.float(), dk.float(), grad)
    low = _run(_oracle, q, k, freqs, dq, dk, grad) if dtype != torch.float32 else (None,) * 4
    for name, o, r, lo in zip(("q_out", "k_out", "dq", "dk"), out, ref, low):
        assert_close_to_ref(name, o, r, lo, dtype)


@pytest.mark.parametrize("grad", ["random", "sum"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H,L,D,rot", CASES)
def test_fwd_bwd_matches_reference(B, H, L, D, rot, dtype, grad):
    _check_against_oracle(*make_inputs(B, H, L, D, rot, dtype, seed=B * 1000 + L), dtype, grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtype_contract(dtype):
    q, k, freqs, dq, dk = make_inputs(2, 2, 5, 64, 32, dtype)
    qo, ko, gq, gk = _run(K.rope, q, k, freqs, dq, dk, "random")
    assert (qo.dtype, ko.dtype, gq.dtype, gk.dtype) == (dtype,) * 4
    assert qo.is_contiguous() and ko.is_contiguous()
    assert qo.shape == q.shape and ko.shape == k.shape


def test_pass_through_channels_are_bit_exact():
    q, k, freqs, _, _ = make_inputs(1, 2, 9, 100, 64, torch.bfloat16)
    qo, ko = K.rope(q, k, freqs)
    assert torch.equal(qo[..., 64:], q[..., 64:]) and torch.equal(ko[..., 64:], k[..., 64:])
    assert not torch.equal(qo[..., :64], q[..., :64])


def test_position_zero_is_identity():
    q, k, freqs, _, _ = make_inputs(1, 1, 4, 32, 32, torch.float32)
    qo, ko = K.rope(q, k, freqs)
    assert torch.equal(qo[:, :, 0], q[:, :, 0]) and torch.equal(ko[:, :, 0], k[:, :, 0])


def test_gradient_of_non_standard_table():
    """With first and second half angles that differ, the backward must be the transpose, not rotation by -theta."""
    q, k, _, dq, dk = make_inputs(2, 1, 6, 48, 32, torch.float32)
    freqs = torch.randn(6, 32, generator=torch.Generator().manual_seed(3)).to(DEVICE) * 3
    _check_against_oracle(q, k, freqs, dq, dk, torch.float32, "random")


def test_noncontiguous_inputs():
    """q and k sliced out of a packed (B, L, 3, H, Dh) qkv projection, as attention layers produce them."""
    B, H, L, D, rot = 2, 3, 11, 64, 32
    g = torch.Generator().manual_seed(7)
    qkv = torch.randn(B, L, 3, H, D, generator=g).to(DEVICE)
    q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
    assert not q.is_contiguous()
    _, _, freqs, dq, dk = make_inputs(B, H, L, D, rot, torch.float32)
    qo, ko = K.rope(q, k, freqs)
    qc, kc = K.rope(q.contiguous(), k.contiguous(), freqs)
    assert torch.equal(qo, qc) and torch.equal(ko, kc)
    _check_against_oracle(q, k, freqs, dq, dk, torch.float32, "random")
    # Non-contiguous cotangents (a transposed view) go through the strided backward too.
    dq_t = dq.transpose(2, 3).contiguous().transpose(2, 3)
    _check_against_oracle(q, k, freqs, dq_t, dk, torch.float32, "random")


def test_eager_backend_matches_reference_exactly():
    q, k, freqs, dq, dk = make_inputs(2, 2, 9, 100, 64, torch.bfloat16)
    qe, ke = ops_rope.rope(q, k, freqs, backend="eager")
    qr, kr = _oracle(q, k, freqs)
    assert torch.equal(qe, qr) and torch.equal(ke, kr)
    _check_against_oracle(q, k, freqs, dq, dk, torch.bfloat16, "random", backend="eager")


def _bad(**over):
    """Valid inputs with some replaced; a callable override receives the valid inputs."""
    q, k, freqs, _, _ = make_inputs(1, 2, 8, 64, 32, torch.float32)
    args = dict(q=q, k=k, freqs=freqs)
    args.update({key: (v(args) if callable(v) else v) for key, v in over.items()})
    return args


BAD = [
    pytest.param(_bad(freqs=lambda a: a["freqs"][:, :31]), ValueError, r"rot_dim must be even", id="odd-rot"),
    pytest.param(_bad(freqs=torch.zeros(8, 66, device=DEVICE)), ValueError, r"rot_dim .* Dh=64", id="rot-too-big"),
    pytest.param(_bad(freqs=lambda a: a["freqs"].half()), TypeError, r"freqs: dtype must be torch.float32",
                 id="freqs-fp16"),
    pytest.param(_bad(k=lambda a: a["k"].half()), TypeError, r"k: dtype torch.float16 must equal", id="k-dtype"),
    pytest.param(_bad(q=lambda a: a["q"].int(), k=lambda a: a["k"].int()), TypeError, r"q: dtype torch.int32",
                 id="int-dtype"),
    pytest.param(_bad(k=lambda a: a["k"][:, :1]), ValueError, r"k: shape \(1, 1, 8, 64\) must equal", id="k-shape"),
    pytest.param(_bad(freqs=lambda a: a["freqs"][:5]), ValueError, r"freqs: expected 8 rows", id="freqs-rows"),
    pytest.param(_bad(q=lambda a: a["q"][0], k=lambda a: a["k"][0]), ValueError, r"q: expected 4 dims", id="q-3d"),
    pytest.param(_bad(q=lambda a: a["q"].transpose(2, 3).contiguous().transpose(2, 3)), ValueError,
                 r"q: stride\(-1\) must be 1", id="q-stride"),
]


@pytest.mark.parametrize("args,exc,match", BAD)
def test_rejects_unsupported(args, exc, match):
    assert K.not_supported_reasons(**args), "not_supported_reasons must list the problem"
    with pytest.raises(exc, match=match):
        K.rope(**args)
    with pytest.raises(exc, match=match):
        ops_rope.rope(**args, backend="triton")


def test_dispatch_rules():
    q, k, freqs, _, _ = make_inputs(1, 1, 3, 32, 32, torch.float32)
    with pytest.raises(NotImplementedError, match="rope: backend 'cuda' is not implemented"):
        ops_rope.rope(q, k, freqs, backend="cuda")
    if DEVICE == "cpu":
        # Automatic choice under the interpreter is triton; unsupported inputs fall back to eager with a warning.
        ops_rope._warned_fallback.discard(ops_rope.OP)
        with pytest.warns(RuntimeWarning, match="falls back to eager"):
            qo, _ = ops_rope.rope(q.double(), k.double(), freqs)
        assert qo.dtype == torch.float64
        torch.testing.assert_close(qo, apply_rotary(q.double(), freqs))


def test_opcheck():
    q, k, freqs, dq, dk = make_inputs(1, 2, 5, 48, 32, torch.float32)
    q.requires_grad_()
    k.requires_grad_()
    torch.library.opcheck(torch.ops.arc_fast.rope_fwd.default, (q, k, freqs))
    # The backward op has no autograd formula of its own: the slow aot_dispatch check is for the forward.
    torch.library.opcheck(torch.ops.arc_fast.rope_bwd.default, (dq, dk, freqs),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_compile_fullgraph():
    q, k, freqs, dq, dk = make_inputs(2, 2, 7, 64, 32, torch.float32)

    def f(a, b, fr):
        qo, ko = ops_rope.rope(a, b, fr, backend="triton")
        return qo * 2.0, ko + 1.0

    compiled = torch.compile(f, fullgraph=True, backend="eager")
    got = _run(compiled, q, k, freqs, dq, dk, "random")
    want = _run(f, q, k, freqs, dq, dk, "random")
    for name, a, b in zip(("q_out", "k_out", "dq", "dk"), got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H,L,D,rot", GPU_CASES)
def test_real_size_gpu(B, H, L, D, rot, dtype):
    _check_against_oracle(*make_inputs(B, H, L, D, rot, dtype, seed=L), dtype, "random")
