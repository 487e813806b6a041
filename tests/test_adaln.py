"""Parity of the adaptive LayerNorm and gated-residual kernels with the eager oracle, forward and backward."""
from __future__ import annotations

import pytest
import torch
from utils import assert_close_to_ref, assert_same_maths

from arc_fast.ops import adaln as ops_adaln
from arc_fast.reference.functional import adaln_modulate, gated_residual, layer_norm

K = ops_adaln.triton_module()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# (B, L, D): L=1, L not a multiple of the row tile (33), D not a power of 2 (100, 1000), B=1.
CASES = [
    pytest.param(1, 1, 64, id="B1-L1-D64"),
    pytest.param(2, 7, 100, id="B2-L7-D100"),
    pytest.param(1, 33, 1000, id="B1-L33-D1000"),
    pytest.param(2, 17, 64, id="B2-L17-D64"),
]
# DiT width 1024 with B=2 (CFG) and T+1 = 257 tokens; the largest supported widths; an odd width.
GPU_CASES = [
    pytest.param(2, 257, 1024, id="sao-small-B2-L257-D1024"),
    pytest.param(8, 1025, 1024, id="B8-L1025-D1024"),
    pytest.param(2, 129, 1536, id="B2-L129-D1536"),
    pytest.param(1, 64, 8192, id="B1-L64-D8192"),
    pytest.param(1, 9, 16384, id="B1-L9-D16384"),
]
DTYPES = [pytest.param(d, id=str(d).split(".")[-1]) for d in K.SUPPORTED_DTYPES]
GRADS = ["random", "sum"]


def make_inputs(B, L, D, dtype, seed=0, mod_shape="B,D", device=DEVICE):
    """x with non-zero mean and non-unit spread; SAO-like gamma, scale and shift; a random cotangent."""
    g = torch.Generator().manual_seed(seed)
    shape = {"B,D": (B, D), "B,1,D": (B, 1, D), "1,D": (1, D), "1,1,D": (1, 1, D)}[mod_shape]
    x = 1.5 + 2.0 * torch.randn(B, L, D, generator=g)
    gamma = 1.0 + 0.2 * torch.randn(D, generator=g)
    scale = 0.5 * torch.randn(shape, generator=g)
    shift = 0.5 * torch.randn(shape, generator=g)
    dy = torch.randn(B, L, D, generator=g)
    return [t.to(device=device, dtype=dtype) for t in (x, gamma, scale, shift, dy)]


def _run(fn, inputs, dy, grad):
    """Forward ``fn(*inputs)`` then backward; returns [out, *grads] (None for inputs that are None)."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    if grad == "random":
        out.backward(dy.to(out.dtype))
    else:
        out.sum().backward()
    return [out] + [None if t is None else t.grad for t in leaves]


def _compare(names, fn, oracle, inputs, dy, dtype, grad):
    got = _run(fn, inputs, dy, grad)
    ref = _run(oracle, [None if t is None else t.float() for t in inputs], dy.float(), grad)
    low = _run(oracle, inputs, dy, grad) if dtype != torch.float32 else [None] * len(got)
    for name, o, r, lo in zip(names, got, ref, low):
        if r is None:
            assert o is None, f"{name}: expected no gradient"
            continue
        assert o is not None, f"{name}: gradient missing"
        assert_close_to_ref(name, o, r, lo, dtype)


def _adaln_triton(x, gamma, scale, shift):
    return ops_adaln.adaln_layer_norm(x, gamma, scale, shift, eps=1e-5, backend="triton")


ADALN_NAMES = ("y", "dx", "dgamma", "dscale", "dshift")


# ----------------------------------------------------------------------------------------------------------
# adaLN
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("grad", GRADS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,L,D", CASES)
def test_fwd_bwd_matches_reference(B, L, D, dtype, grad):
    x, gamma, scale, shift, dy = make_inputs(B, L, D, dtype, seed=B * 100 + L)
    _compare(ADALN_NAMES, _adaln_triton, adaln_modulate, [x, gamma, scale, shift], dy, dtype, grad)


MODES = [
    pytest.param(True, True, True, id="gamma-scale-shift"),
    pytest.param(True, False, False, id="plain-ln-gamma"),
    pytest.param(False, False, False, id="plain-ln-no-gamma"),
    pytest.param(False, True, False, id="scale-only"),
    pytest.param(True, False, True, id="gamma-shift"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("has_gamma,has_scale,has_shift", MODES)
def test_optional_factors(has_gamma, has_scale, has_shift, dtype):
    x, gamma, scale, shift, dy = make_inputs(2, 9, 100, dtype, seed=5)
    inputs = [x, gamma if has_gamma else None, scale if has_scale else None, shift if has_shift else None]
    _compare(ADALN_NAMES, _adaln_triton, adaln_modulate, inputs, dy, dtype, "random")


@pytest.mark.parametrize("shape", [(5, 100), (2, 3, 4, 64), (64,)], ids=["2d", "4d", "1d"])
def test_plain_layer_norm_any_rank(shape):
    """Without modulation x may have any rank: SAO's bias-less LayerNorm in front of every sub-block."""
    g = torch.Generator().manual_seed(11)
    x = (0.7 + 1.3 * torch.randn(shape, generator=g)).to(DEVICE)
    gamma = (1 + 0.2 * torch.randn(shape[-1], generator=g)).to(DEVICE)
    dy = torch.randn(shape, generator=g).to(DEVICE)
    _compare(("y", "dx", "dgamma"), lambda a, w: _adaln_triton(a, w, None, None),
             lambda a, w: layer_norm(a, w, None, 1e-5), [x, gamma], dy, torch.float32, "random")


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtype_contract(dtype):
    x, gamma, scale, shift, dy = make_inputs(2, 5, 64, dtype)
    y, mean, rstd = torch.ops.arc_fast.adaln_fwd(x, gamma, scale, shift, 1e-5)
    assert y.dtype == dtype and y.is_contiguous() and y.shape == x.shape
    assert mean.dtype == rstd.dtype == torch.float32 and mean.shape == rstd.shape == (2, 5)
    torch.testing.assert_close(mean, x.float().mean(-1))
    torch.testing.assert_close(rstd, torch.rsqrt(x.float().var(-1, unbiased=False) + 1e-5))
    outs = _run(_adaln_triton, [x, gamma, scale, shift], dy, "random")
    assert [t.dtype for t in outs] == [dtype] * 5
    assert [t.shape for t in outs[1:]] == [x.shape, gamma.shape, scale.shape, shift.shape]


def test_gradient_subsets():
    """Frozen parameters (no grad) take the path without reductions; x frozen still gives parameter grads."""
    x, gamma, scale, shift, dy = make_inputs(2, 7, 100, torch.float32, seed=2)
    full = _run(_adaln_triton, [x, gamma, scale, shift], dy, "random")
    # Another kernel specialisation (constexpr flags) than the full backward: equal up to fp32 rounding.
    xr = x.clone().requires_grad_()
    _adaln_triton(xr, gamma, scale, shift).backward(dy)
    assert_same_maths("dx (x only)", xr.grad, full[1])
    sr = scale.clone().requires_grad_()
    _adaln_triton(x, gamma, sr, shift).backward(dy)
    assert_same_maths("dscale (scale only)", sr.grad, full[3])


@pytest.mark.parametrize("mod_shape", ["B,D", "B,1,D", "1,D", "1,1,D"])
def test_broadcast_forms(mod_shape):
    x, gamma, scale, shift, dy = make_inputs(3, 6, 100, torch.float32, seed=4, mod_shape=mod_shape)
    _compare(ADALN_NAMES, _adaln_triton, adaln_modulate, [x, gamma, scale, shift], dy, torch.float32, "random")


def test_noncontiguous_inputs():
    """x with padded rows and every other token; scale/shift as chunks of one (B, 6D) projection (SAO adaLN)."""
    B, L, D = 2, 9, 100
    g = torch.Generator().manual_seed(9)
    x = (1.0 + torch.randn(B, 2 * L, D + 12, generator=g)).to(DEVICE)[:, ::2, :D]
    assert x.stride() == (2 * L * (D + 12), 2 * (D + 12), 1)
    mods = torch.randn(B, 6 * D, generator=g).to(DEVICE) * 0.5
    scale, shift, _gate, _, _, _ = mods.chunk(6, dim=-1)
    gamma = (1 + 0.1 * torch.randn(D, generator=g)).to(DEVICE)
    dy = torch.randn(B, L, D, generator=g).to(DEVICE)
    y = _adaln_triton(x, gamma, scale, shift)
    # On the GPU the autotuner may pick another block size for other strides (another reduction order).
    assert_same_maths("strided vs contiguous",
                      y, _adaln_triton(x.contiguous(), gamma, scale.contiguous(), shift.contiguous()))
    _compare(ADALN_NAMES, _adaln_triton, adaln_modulate, [x, gamma, scale, shift], dy, torch.float32, "random")
    dy_t = dy.transpose(1, 2).contiguous().transpose(1, 2)  # a cotangent with non-unit column stride
    _compare(ADALN_NAMES, _adaln_triton, adaln_modulate, [x, gamma, scale, shift], dy_t, torch.float32, "random")


def test_deterministic():
    assert K.IS_DETERMINISTIC
    x, gamma, scale, shift, dy = make_inputs(2, 33, 100, torch.float32, seed=8)
    a = _run(_adaln_triton, [x, gamma, scale, shift], dy, "random")
    b = _run(_adaln_triton, [x, gamma, scale, shift], dy, "random")
    for name, u, v in zip(ADALN_NAMES, a, b):
        assert torch.equal(u, v), name


def test_eager_backend_matches_reference():
    x, gamma, scale, shift, dy = make_inputs(2, 7, 100, torch.float32, seed=3, mod_shape="B,1,D")
    for inputs in ([x, gamma, scale, shift], [x, gamma, None, None], [x, None, scale, None], [x, None, None, shift]):
        got = ops_adaln.adaln_layer_norm(*inputs, eps=1e-5, backend="eager")
        torch.testing.assert_close(got, adaln_modulate(*inputs, eps=1e-5), rtol=1e-6, atol=1e-6)
    _compare(ADALN_NAMES, lambda *t: ops_adaln.adaln_layer_norm(*t, backend="eager"), adaln_modulate,
             [x, gamma, scale, shift], dy, torch.float32, "random")


def _bad_adaln(**over):
    x, gamma, scale, shift, _ = make_inputs(2, 4, 64, torch.float32)
    args = dict(x=x, gamma=gamma, scale=scale, shift=shift)
    args.update({key: (v(args) if callable(v) else v) for key, v in over.items()})
    return args


BAD_ADALN = [
    pytest.param(_bad_adaln(x=torch.zeros(1, 2, K.MAX_D + 1, device=DEVICE), gamma=None, scale=None, shift=None),
                 ValueError, r"x: D = 16385 > MAX_D = 16384", id="D-too-big"),
    pytest.param(_bad_adaln(gamma=lambda a: a["gamma"][:10]), ValueError, r"gamma: expected shape \(64,\)",
                 id="gamma-shape"),
    pytest.param(_bad_adaln(scale=lambda a: torch.zeros(3, 64, device=DEVICE)), ValueError,
                 r"scale: expected shape \(2 or 1, 64\)", id="scale-batch"),
    pytest.param(_bad_adaln(shift=lambda a: a["shift"][:, None, None]), ValueError, r"shift: expected shape",
                 id="shift-rank"),
    pytest.param(_bad_adaln(x=lambda a: a["x"][0]), ValueError, r"scale: needs x of shape \(B, L, D\)",
                 id="modulation-needs-3d-x"),
    pytest.param(_bad_adaln(gamma=lambda a: a["gamma"].double()), TypeError,
                 r"gamma: dtype torch.float64 must equal x's dtype", id="gamma-dtype"),
    pytest.param(_bad_adaln(x=lambda a: a["x"].double(), gamma=None, scale=None, shift=None), TypeError,
                 r"x: dtype torch.float64 not in", id="x-fp64"),
    pytest.param(_bad_adaln(x=lambda a: a["x"].transpose(1, 2).contiguous().transpose(1, 2)), ValueError,
                 r"x: stride\(-1\) must be 1", id="x-stride"),
    pytest.param(_bad_adaln(scale=lambda a: a["scale"].t().contiguous().t()), ValueError,
                 r"scale: stride\(-1\) must be 1", id="scale-stride"),
]


@pytest.mark.parametrize("args,exc,match", BAD_ADALN)
def test_rejects_unsupported(args, exc, match):
    assert K.not_supported_reasons(**args), "not_supported_reasons must list the problem"
    with pytest.raises(exc, match=match):
        K.adaln_layer_norm(**args)
    with pytest.raises(exc, match=match):
        ops_adaln.adaln_layer_norm(**args, backend="triton")


def test_automatic_backend_falls_back_with_warning():
    if DEVICE != "cpu":
        pytest.skip("the automatic CPU choice is only triton under the interpreter")
    x, gamma, scale, shift, _ = make_inputs(2, 4, 64, torch.float64)
    ops_adaln._warned_fallback.discard("adaln_layer_norm")
    with pytest.warns(RuntimeWarning, match="adaln_layer_norm falls back to eager"):
        y = ops_adaln.adaln_layer_norm(x, gamma, scale, shift)
    torch.testing.assert_close(y, adaln_modulate(x, gamma, scale, shift))
    with pytest.raises(NotImplementedError, match="backend 'cuda' is not implemented"):
        ops_adaln.adaln_layer_norm(x, backend="cuda")


# ----------------------------------------------------------------------------------------------------------
# Gated residual
# ----------------------------------------------------------------------------------------------------------
def make_residual_inputs(B, L, D, dtype, seed=0, gate_shape="B,D", device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    shape = {"B,D": (B, D), "B,1,D": (B, 1, D), "1,D": (1, D), "1,1,D": (1, 1, D)}[gate_shape]
    x = 0.5 + torch.randn(B, L, D, generator=g)
    y = torch.randn(B, L, D, generator=g) * 2
    gate = torch.randn(shape, generator=g) * 1.5
    dout = torch.randn(B, L, D, generator=g)
    return [t.to(device=device, dtype=dtype) for t in (x, y, gate, dout)]


GR_NAMES = ("out", "dx", "dy", "dgate")


def _check_gated(B, L, D, dtype, sigmoid_gate, grad, seed):
    x, y, gate, dout = make_residual_inputs(B, L, D, dtype, seed=seed)
    _compare(GR_NAMES, lambda a, b, c: ops_adaln.gated_residual(a, b, c, sigmoid_gate, backend="triton"),
             lambda a, b, c: gated_residual(a, b, c, sigmoid_gate), [x, y, gate], dout, dtype, grad)


@pytest.mark.parametrize("grad", GRADS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,L,D", CASES)
def test_gated_residual_matches_reference(B, L, D, dtype, grad):
    _check_gated(B, L, D, dtype, True, grad, seed=B * 10 + L)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gated_residual_linear_gate(dtype):
    _check_gated(2, 17, 100, dtype, False, "random", seed=21)


@pytest.mark.parametrize("gate_shape", ["B,1,D", "1,D", "1,1,D", "none"])
def test_gated_residual_broadcast_and_no_gate(gate_shape):
    x, y, gate, dout = make_residual_inputs(3, 5, 100, torch.float32, seed=6,
                                            gate_shape="B,D" if gate_shape == "none" else gate_shape)
    inputs = [x, y, None if gate_shape == "none" else gate]
    _compare(GR_NAMES, lambda a, b, c: ops_adaln.gated_residual(a, b, c, True, backend="triton"),
             lambda a, b, c: gated_residual(a, b, c, True), inputs, dout, torch.float32, "random")


def test_gated_residual_noncontiguous_and_contract():
    B, L, D = 2, 9, 100
    g = torch.Generator().manual_seed(12)
    x = torch.randn(B, 2 * L, D, generator=g).to(DEVICE)[:, ::2]
    y = torch.randn(B, L, D + 4, generator=g).to(DEVICE)[..., 2:D + 2]
    gate = torch.randn(B, 6 * D, generator=g).to(DEVICE).chunk(6, dim=-1)[2]
    dout = torch.randn(B, L, D, generator=g).to(DEVICE)
    out = K.gated_residual(x, y, gate)
    assert out.is_contiguous() and out.dtype == x.dtype
    torch.testing.assert_close(out, K.gated_residual(x.contiguous(), y.contiguous(), gate.contiguous()),
                               rtol=0, atol=0)
    _compare(GR_NAMES, K.gated_residual, gated_residual, [x, y, gate], dout, torch.float32, "random")


def _bad_gr(**over):
    x, y, gate, _ = make_residual_inputs(2, 4, 64, torch.float32)
    args = dict(x=x, y=y, gate=gate)
    args.update({key: (v(args) if callable(v) else v) for key, v in over.items()})
    return args


BAD_GR = [
    pytest.param(_bad_gr(y=lambda a: a["y"][:, :3]), ValueError, r"y: shape \(2, 3, 64\) must equal", id="y-shape"),
    pytest.param(_bad_gr(y=lambda a: a["y"].half()), TypeError, r"y: dtype torch.float16 must equal", id="y-dtype"),
    pytest.param(_bad_gr(gate=lambda a: a["gate"][:, :10]), ValueError, r"gate: expected shape", id="gate-shape"),
    pytest.param(_bad_gr(x=lambda a: a["x"][0], y=lambda a: a["y"][0]), ValueError, r"x: expected shape \(B, L, D\)",
                 id="x-2d"),
    pytest.param(_bad_gr(y=lambda a: a["y"].transpose(1, 2).contiguous().transpose(1, 2)), ValueError,
                 r"y: stride\(-1\) must be 1", id="y-stride"),
]


@pytest.mark.parametrize("args,exc,match", BAD_GR)
def test_gated_residual_rejects_unsupported(args, exc, match):
    assert K.gated_residual_not_supported_reasons(**args)
    with pytest.raises(exc, match=match):
        K.gated_residual(**args)


def test_gated_residual_eager_backend():
    x, y, gate, _ = make_residual_inputs(2, 5, 64, torch.float32, seed=1)
    for sg in (True, False):
        torch.testing.assert_close(ops_adaln.gated_residual(x, y, gate, sg, backend="eager"),
                                   gated_residual(x, y, gate, sg), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ops_adaln.gated_residual(x, y, None, backend="eager"), x + y)
    xb, yb, gb, doutb = make_residual_inputs(2, 5, 64, torch.bfloat16, seed=2)
    _compare(GR_NAMES, lambda a, b, c: ops_adaln.gated_residual(a, b, c, True, backend="eager"),
             lambda a, b, c: gated_residual(a, b, c, True), [xb, yb, gb], doutb, torch.bfloat16, "random")


# ----------------------------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------------------------
# The backward ops and the second variant skip the slow aot_dispatch check (the forward ops run it).
QUICK = ("test_schema", "test_autograd_registration", "test_faketensor")


def test_opcheck():
    x, gamma, scale, shift, dy = make_inputs(2, 3, 40, torch.float32, seed=1)
    for t in (x, gamma, scale, shift):
        t.requires_grad_()
    torch.library.opcheck(torch.ops.arc_fast.adaln_fwd.default, (x, gamma, scale, shift, 1e-5))
    torch.library.opcheck(torch.ops.arc_fast.adaln_fwd.default, (x, None, None, None, 1e-5), test_utils=QUICK)
    x, gamma, scale = (t.detach() for t in (x, gamma, scale))  # the backward ops have no autograd formula
    _, mean, rstd = torch.ops.arc_fast.adaln_fwd(x, gamma, scale, shift.detach(), 1e-5)
    torch.library.opcheck(torch.ops.arc_fast.adaln_bwd.default, (dy, x, gamma, scale, mean, rstd, True),
                          test_utils=QUICK)
    xr, yr, gate, dout = make_residual_inputs(2, 3, 40, torch.float32, seed=1)
    for t in (xr, yr, gate):
        t.requires_grad_()
    torch.library.opcheck(torch.ops.arc_fast.gated_residual_fwd.default, (xr, yr, gate, True))
    torch.library.opcheck(torch.ops.arc_fast.gated_residual_bwd.default,
                          (dout, yr.detach(), gate.detach(), True, True), test_utils=QUICK)


def test_compile_fullgraph():
    """The adaLN block update h = adaLN(x); x = x + f(h) * sigmoid(1 - gate) under torch.compile."""
    x, gamma, scale, shift, dy = make_inputs(2, 7, 64, torch.float32, seed=13)
    gate = torch.randn(scale.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)

    def block(x, gamma, scale, shift, gate):
        h = ops_adaln.adaln_layer_norm(x, gamma, scale, shift, backend="triton")
        return ops_adaln.gated_residual(x, torch.tanh(h), gate, True, backend="triton")

    compiled = torch.compile(block, fullgraph=True, backend="eager")
    got = _run(compiled, [x, gamma, scale, shift, gate], dy, "random")
    want = _run(block, [x, gamma, scale, shift, gate], dy, "random")
    for name, a, b in zip(("out", "dx", "dgamma", "dscale", "dshift", "dgate"), got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


# ----------------------------------------------------------------------------------------------------------
# GPU, real sizes
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,L,D", GPU_CASES)
def test_real_size_gpu(B, L, D, dtype):
    x, gamma, scale, shift, dy = make_inputs(B, L, D, dtype, seed=L)
    _compare(ADALN_NAMES, _adaln_triton, adaln_modulate, [x, gamma, scale, shift], dy, dtype, "random")
    xr, y, gate, dout = make_residual_inputs(B, L, D, dtype, seed=L)
    _compare(GR_NAMES, lambda a, b, c: ops_adaln.gated_residual(a, b, c, True, backend="triton"),
             lambda a, b, c: gated_residual(a, b, c, True), [xr, y, gate], dout, dtype, "random")
