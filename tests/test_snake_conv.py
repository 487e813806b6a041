"""Fused SnakeBeta + conv1d / polyphase transposed conv (kernels/snake_conv.py) vs the eager oracle.

On CPU the Triton kernels run under TRITON_INTERPRET=1 (conftest), so shapes stay small; GPU tests at the
decoder's real sizes are marked ``gpu``.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from utils import assert_close_to_ref

from arc_fast.ops import snake_conv as ops
from arc_fast.reference.functional import snake_beta

sc = ops.kernel_module()
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [pytest.param(d, id=str(d).replace("torch.", "")) for d in sc.SUPPORTED_DTYPES]


def ref_conv1d(x, alpha, beta, w, bias, dilation, residual, apply_snake=True):
    s = snake_beta(x, alpha, beta) if apply_snake else x
    y = F.conv1d(s, w, bias, padding=dilation * (w.shape[2] - 1) // 2, dilation=dilation)
    return y if residual is None else y + residual


def ref_tconv1d(x, alpha, beta, w, bias, stride, apply_snake=True):
    s = snake_beta(x, alpha, beta) if apply_snake else x
    return F.conv_transpose1d(s, w, bias, stride=stride, padding=(stride + 1) // 2)


def make_conv_inputs(B, Cin, Cout, T, K, bias=True, residual=True, seed=0, transposed=False, stride=2):
    g = torch.Generator().manual_seed(seed)
    # Non-zero-mean input with a spread of amplitudes; alpha/beta spread around 0 (log scale), as trained.
    x = 0.3 + 1.5 * torch.randn(B, Cin, T, generator=g)
    alpha = 0.5 * torch.randn(Cin, generator=g)
    beta = 0.5 * torch.randn(Cin, generator=g)
    if transposed:
        w = torch.randn(Cin, Cout, 2 * stride, generator=g) / (2 * Cin) ** 0.5
    else:
        w = torch.randn(Cout, Cin, K, generator=g) / (Cin * K) ** 0.5
    b = torch.randn(Cout, generator=g) if bias else None
    r = torch.randn(B, Cout, T, generator=g) if residual and not transposed else None
    return {"x": x, "alpha": alpha, "beta": beta, "w": w, "bias": b, "res": r}


def cast(inputs, dtype, device=DEVICE):
    return {k: None if v is None else v.to(device=device, dtype=dtype) for k, v in inputs.items()}


def up(inputs):
    return {k: None if v is None else v.float() for k, v in inputs.items()}


CONV_CASES = [
    pytest.param(2, 12, 12, 37, 7, 1, True, True, id="B2-C12-T37-k7-d1-res"),
    pytest.param(1, 4, 4, 1, 7, 9, True, True, id="B1-C4-T1-k7-d9-res"),
    pytest.param(2, 12, 4, 37, 7, 3, True, False, id="B2-C12to4-T37-k7-d3"),
    pytest.param(1, 4, 4, 37, 1, 1, True, True, id="B1-C4-T37-k1-res"),
    pytest.param(2, 20, 33, 50, 3, 9, True, False, id="B2-C20to33-T50-k3-d9"),
    pytest.param(1, 12, 2, 37, 7, 1, False, False, id="B1-C12to2-T37-k7-nobias"),
]

TCONV_CASES = [
    pytest.param(2, 12, 12, 37, 2, id="B2-C12-T37-s2"),
    pytest.param(1, 4, 12, 1, 4, id="B1-C4to12-T1-s4"),
    pytest.param(2, 12, 4, 9, 8, id="B2-C12to4-T9-s8"),
    pytest.param(1, 20, 33, 5, 8, id="B1-C20to33-T5-s8"),
    pytest.param(1, 5, 6, 7, 3, id="B1-C5to6-T7-s3-odd"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,Cin,Cout,T,K,dil,has_bias,has_res", CONV_CASES)
def test_conv1d_matches_reference(B, Cin, Cout, T, K, dil, has_bias, has_res, dtype):
    base = make_conv_inputs(B, Cin, Cout, T, K, has_bias, has_res, seed=T + K + dil)
    i = cast(base, dtype)
    out = sc.snake_conv1d(i["x"], i["alpha"], i["beta"], i["w"], i["bias"], dil, i["res"])
    assert out.dtype == dtype and out.shape == (B, Cout, T) and out.is_contiguous()
    i32 = up(i)  # same (rounded) values in fp32: only the computation's error is measured
    ref = ref_conv1d(i32["x"], i32["alpha"], i32["beta"], i32["w"], i32["bias"], dil, i32["res"])
    lowp = ref_conv1d(i["x"], i["alpha"], i["beta"], i["w"], i["bias"], dil, i["res"])
    assert_close_to_ref(f"snake_conv1d[{dtype}]", out, ref, lowp, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,Cin,Cout,T,stride", TCONV_CASES)
def test_conv_transpose1d_matches_reference(B, Cin, Cout, T, stride, dtype):
    base = make_conv_inputs(B, Cin, Cout, T, 0, seed=T + stride, transposed=True, stride=stride)
    i = cast(base, dtype)
    out = sc.snake_conv_transpose1d(i["x"], i["alpha"], i["beta"], i["w"], i["bias"], stride)
    expected_len = (T - 1) * stride - 2 * ((stride + 1) // 2) + 2 * stride
    assert out.shape == (B, Cout, expected_len) and out.dtype == dtype
    if stride % 2 == 0:
        assert expected_len == stride * T
    i32 = up(i)
    ref = ref_tconv1d(i32["x"], i32["alpha"], i32["beta"], i32["w"], i32["bias"], stride)
    lowp = ref_tconv1d(i["x"], i["alpha"], i["beta"], i["w"], i["bias"], stride)
    assert_close_to_ref(f"snake_conv_transpose1d[{dtype}]", out, ref, lowp, dtype)


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "tconv"])
def test_without_snake(transposed):
    i = make_conv_inputs(2, 12, 9, 21, 7, seed=3, transposed=transposed, stride=4)
    i = cast(i, torch.float32)
    if transposed:
        out = sc.snake_conv_transpose1d(i["x"], None, None, i["w"], i["bias"], 4, apply_snake=False)
        ref = ref_tconv1d(i["x"], None, None, i["w"], i["bias"], 4, apply_snake=False)
    else:
        out = sc.snake_conv1d(i["x"], None, None, i["w"], i["bias"], 3, i["res"], apply_snake=False)
        ref = ref_conv1d(i["x"], None, None, i["w"], i["bias"], 3, i["res"], apply_snake=False)
    assert_close_to_ref("no-snake", out, ref)


def test_strided_inputs():
    """x, residual and weight read through arbitrary strides (transposed views, channel slices)."""
    g = torch.Generator().manual_seed(7)
    B, C, T = 2, 12, 29
    x = torch.randn(B, T, C + 3, generator=g).to(DEVICE).transpose(1, 2)[:, 2:2 + C]   # stride_t != 1
    res = torch.randn(B, 2 * C, T, generator=g).to(DEVICE)[:, ::2]                     # stride_c = 2T
    w = torch.randn(7, C, C, generator=g).to(DEVICE).permute(1, 2, 0) / 9.0             # (Cout, Cin, K) view
    alpha, beta, bias = (torch.randn(C, generator=g).to(DEVICE) * 0.4 for _ in range(3))
    assert not x.is_contiguous() and not res.is_contiguous() and not w.is_contiguous()
    out = sc.snake_conv1d(x, alpha, beta, w, bias, 3, res)
    assert_close_to_ref("strided conv", out, ref_conv1d(x, alpha, beta, w, bias, 3, res))
    wt = torch.randn(8, C, C, generator=g).to(DEVICE).permute(2, 1, 0) / 5.0           # (Cin, Cout, 2S) view
    out = sc.snake_conv_transpose1d(x, alpha, beta, wt, bias, 4)
    assert_close_to_ref("strided tconv", out, ref_tconv1d(x, alpha, beta, wt, bias, 4))


def _grad_check(fn_kernel, fn_ref, leaves, cotangent_seed):
    outs = []
    for fn in (fn_kernel, fn_ref):
        ls = [None if t is None else t.detach().clone().requires_grad_(True) for t in leaves]
        y = fn(*ls)
        if cotangent_seed is None:
            y.sum().backward()  # an expanded, stride-0 gradient
        else:
            g = torch.Generator().manual_seed(cotangent_seed)
            y.backward(torch.randn(y.shape, generator=g).to(y.device, y.dtype))
        outs.append([None if t is None else t.grad for t in ls])
    for name, gk, gr in zip(("x", "alpha", "beta", "weight", "bias", "residual"), *outs):
        if gr is None:
            assert gk is None
            continue
        assert_close_to_ref(f"d{name}", gk, gr)


@pytest.mark.parametrize("cotangent", [None, 11], ids=["sum", "random"])
def test_conv1d_backward(cotangent):
    i = cast(make_conv_inputs(2, 12, 8, 23, 7, seed=5), torch.float32)
    leaves = [i["x"], i["alpha"], i["beta"], i["w"], i["bias"], i["res"]]
    _grad_check(lambda x, a, b, w, bias, r: sc.snake_conv1d(x, a, b, w, bias, 3, r),
                lambda x, a, b, w, bias, r: ref_conv1d(x, a, b, w, bias, 3, r), leaves, cotangent)


@pytest.mark.parametrize("cotangent", [None, 13], ids=["sum", "random"])
def test_conv_transpose1d_backward(cotangent):
    i = cast(make_conv_inputs(2, 12, 8, 9, 0, seed=6, transposed=True, stride=4), torch.float32)
    leaves = [i["x"], i["alpha"], i["beta"], i["w"], i["bias"]]
    _grad_check(lambda x, a, b, w, bias: sc.snake_conv_transpose1d(x, a, b, w, bias, 4),
                lambda x, a, b, w, bias: ref_tconv1d(x, a, b, w, bias, 4), leaves, cotangent)


def test_dtype_contract_backward():
    i = cast(make_conv_inputs(1, 4, 4, 9, 7, seed=2), torch.bfloat16)
    i["alpha"], i["beta"] = i["alpha"].float(), i["beta"].float()   # mixed parameter dtypes are allowed
    leaves = {k: v.requires_grad_(True) for k, v in i.items()}
    y = sc.snake_conv1d(leaves["x"], leaves["alpha"], leaves["beta"], leaves["w"], leaves["bias"], 1, leaves["res"])
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    for k, v in leaves.items():
        assert v.grad is not None and v.grad.dtype == v.dtype, k


def test_opcheck():
    i = cast(make_conv_inputs(1, 4, 5, 9, 7, seed=1), torch.float32)
    for t in i.values():
        t.requires_grad_(True)
    torch.library.opcheck(sc.snake_conv1d_op, (i["x"], i["alpha"], i["beta"], i["w"], i["bias"], 3, i["res"], True))
    torch.library.opcheck(sc.snake_conv1d_op, (i["x"], None, None, i["w"], None, 1, None, False))
    t = cast(make_conv_inputs(1, 4, 5, 5, 0, seed=1, transposed=True, stride=2), torch.float32)
    for v in t.values():
        if v is not None:
            v.requires_grad_(True)
    torch.library.opcheck(sc.snake_conv_transpose1d_op, (t["x"], t["alpha"], t["beta"], t["w"], t["bias"], 2, True))


def test_compile_fullgraph():
    i = cast(make_conv_inputs(1, 4, 4, 11, 7, seed=4), torch.float32)

    def f(x, a, b, w, bias, r):
        return sc.snake_conv1d(x, a, b, w, bias, 9, r) * 2.0

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    args = (i["x"], i["alpha"], i["beta"], i["w"], i["bias"], i["res"])
    assert_close_to_ref("compiled", compiled(*args), f(*args))


def test_rejects_unsupported():
    i = cast(make_conv_inputs(1, 4, 4, 9, 7, seed=0), torch.float32)
    x, a, b, w = i["x"], i["alpha"], i["beta"], i["w"]
    with pytest.raises(ValueError, match="kernel size must be odd"):
        sc.snake_conv1d(x, a, b, torch.randn(4, 4, 4, device=DEVICE))
    with pytest.raises(ValueError, match=r"weight: expected Cin=4"):
        sc.snake_conv1d(x, a, b, torch.randn(4, 5, 7, device=DEVICE))
    with pytest.raises(ValueError, match=r"alpha: expected shape \(4,\)"):
        sc.snake_conv1d(x, a[:3], b, w)
    with pytest.raises(ValueError, match="residual: expected shape"):
        sc.snake_conv1d(x, a, b, w, residual=torch.randn(1, 4, 8, device=DEVICE))
    with pytest.raises(ValueError, match="dilation"):
        sc.snake_conv1d(x, a, b, w, dilation=0)
    with pytest.raises(ValueError, match="3 dims"):
        sc.snake_conv1d(x[0], a, b, w)
    with pytest.raises(TypeError, match="dtype"):
        sc.snake_conv1d(x.double(), a, b, w)
    with pytest.raises(ValueError, match=r"kernel size must be 2\*stride=8"):
        sc.snake_conv_transpose1d(x, a, b, torch.randn(4, 4, 6, device=DEVICE), stride=4)
    with pytest.raises(ValueError, match="alpha: required"):
        sc.snake_conv_transpose1d(x, None, b, torch.randn(4, 4, 4, device=DEVICE), stride=2)
    reasons = sc.conv1d_not_supported_reasons(x, a[:3], b, torch.randn(4, 5, 4, device=DEVICE), dilation=-1)
    assert len(reasons) >= 4, reasons   # every problem is listed, not just the first


# ---------------------------------------------------------------------------------------------------------
# Dispatch layer (arc_fast.ops.snake_conv)
# ---------------------------------------------------------------------------------------------------------
def test_ops_eager_is_reference_bitwise():
    i = make_conv_inputs(2, 12, 12, 37, 7, seed=9)
    ref = ref_conv1d(i["x"], i["alpha"], i["beta"], i["w"], i["bias"], 3, i["res"])
    with torch.no_grad():   # the in-place fast path
        fast = ops.snake_conv1d(i["x"], i["alpha"], i["beta"], i["w"], i["bias"], 3, i["res"], backend="eager")
    assert torch.equal(fast, ref)
    x = i["x"].clone().requires_grad_(True)   # the autograd path
    y = ops.snake_conv1d(x, i["alpha"], i["beta"], i["w"], i["bias"], 3, i["res"], backend="eager")
    assert torch.equal(y.detach(), ref)
    y.sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("stride,T", [(2, 37), (3, 7), (4, 1), (8, 9)])
def test_ops_eager_polyphase_transposed_conv(stride, T):
    """The eager no-grad path runs the transposed conv as one polyphase conv1d (packed or not)."""
    t = make_conv_inputs(2, 12, 6, T, 0, seed=stride, transposed=True, stride=stride)
    args = (t["x"], t["alpha"], t["beta"], t["w"], t["bias"], stride)
    ref = ref_tconv1d(*args)
    with torch.inference_mode():
        out = ops.snake_conv_transpose1d(*args, backend="eager")
        packed = ops.pack_polyphase(t["w"], t["bias"], stride)
        out_packed = ops.snake_conv_transpose1d(*args, backend="eager", packed=packed)
    assert out.shape == ref.shape and out.is_contiguous()
    assert_close_to_ref("polyphase eager", out, ref)
    assert torch.equal(out, out_packed)
    x = t["x"].clone().requires_grad_(True)       # the autograd path is F.conv_transpose1d itself
    y = ops.snake_conv_transpose1d(x, *args[1:], backend="eager")
    assert torch.equal(y.detach(), ref)


def test_ops_triton_matches_eager():
    i = cast(make_conv_inputs(1, 12, 12, 19, 7, seed=8), torch.float32)
    args = (i["x"], i["alpha"], i["beta"], i["w"], i["bias"], 9, i["res"])
    assert_close_to_ref("ops triton conv", ops.snake_conv1d(*args, backend="triton"),
                        ops.snake_conv1d(*args, backend="eager"))
    t = cast(make_conv_inputs(1, 12, 6, 5, 0, seed=8, transposed=True, stride=2), torch.float32)
    targs = (t["x"], t["alpha"], t["beta"], t["w"], t["bias"], 2)
    assert_close_to_ref("ops triton tconv", ops.snake_conv_transpose1d(*targs, backend="triton"),
                        ops.snake_conv_transpose1d(*targs, backend="eager"))


def test_ops_backend_errors():
    i = make_conv_inputs(1, 4, 4, 9, 7)
    if "cuda" not in ops.implemented_backends():
        with pytest.raises(NotImplementedError, match="cuda"):
            ops.snake_conv1d(i["x"], i["alpha"], i["beta"], i["w"], backend="cuda")
    with pytest.raises(ValueError, match="unknown backend"):
        ops.snake_conv1d(i["x"], i["alpha"], i["beta"], i["w"], backend="cudnn")
    with pytest.raises(ValueError, match="kernel size must be odd"):
        ops.snake_conv1d(i["x"], i["alpha"], i["beta"], torch.randn(4, 4, 2), backend="eager")
    with pytest.raises(ValueError, match="alpha and beta are required"):
        ops.snake_conv_transpose1d(i["x"], None, None, torch.randn(4, 4, 4), stride=2, backend="eager")
    with pytest.raises(ValueError, match="stride"):
        ops.snake_conv_transpose1d(i["x"], i["alpha"], i["beta"], torch.randn(4, 4, 4), stride=0)


# ---------------------------------------------------------------------------------------------------------
# GPU: real decoder sizes
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C,T,dil", [(128, 65536, 9), (512, 16384, 1), (1024, 2048, 3)])
def test_gpu_conv1d_real_sizes(C, T, dil, dtype):
    i = cast(make_conv_inputs(1, C, C, T, 7, seed=C), dtype, "cuda")
    out = sc.snake_conv1d(i["x"], i["alpha"], i["beta"], i["w"], i["bias"], dil, i["res"])
    i32 = up(i)
    prev = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        ref = ref_conv1d(i32["x"], i32["alpha"], i32["beta"], i32["w"], i32["bias"], dil, i32["res"])
    finally:
        torch.backends.cudnn.allow_tf32 = prev
    lowp = ref_conv1d(i["x"], i["alpha"], i["beta"], i["w"], i["bias"], dil, i["res"])
    assert_close_to_ref("gpu snake_conv1d", out, ref, lowp, dtype, rtol32=3e-4 if prev else 1e-5)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Cin,Cout,T,stride", [(2048, 1024, 256, 8), (256, 128, 65536, 4), (128, 128, 131072, 2)])
def test_gpu_conv_transpose1d_real_sizes(Cin, Cout, T, stride, dtype):
    i = cast(make_conv_inputs(1, Cin, Cout, T, 0, seed=Cin, transposed=True, stride=stride), dtype, "cuda")
    out = sc.snake_conv_transpose1d(i["x"], i["alpha"], i["beta"], i["w"], i["bias"], stride)
    i32 = up(i)
    prev = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        ref = ref_tconv1d(i32["x"], i32["alpha"], i32["beta"], i32["w"], i32["bias"], stride)
    finally:
        torch.backends.cudnn.allow_tf32 = prev
    lowp = ref_tconv1d(i["x"], i["alpha"], i["beta"], i["w"], i["bias"], stride)
    assert_close_to_ref("gpu snake_conv_transpose1d", out, ref, lowp, dtype, rtol32=3e-4 if prev else 1e-5)


# ---------------------------------------------------------------------------------------------------------
# Eager CPU channels-last ("nwc") path: the decoder's CPU inference layout
# ---------------------------------------------------------------------------------------------------------
CL_DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.bfloat16, id="bfloat16")]


@pytest.mark.parametrize("dtype", CL_DTYPES)
@pytest.mark.parametrize("B,Cin,Cout,T,K,dil,has_bias,has_res", CONV_CASES)
def test_ops_eager_channels_last_conv1d(B, Cin, Cout, T, K, dil, has_bias, has_res, dtype):
    i = make_conv_inputs(B, Cin, Cout, T, K, has_bias, has_res, seed=T + K)
    ref = ref_conv1d(i["x"], i["alpha"], i["beta"], i["w"], i["bias"], dil, i["res"])
    lo = cast(i, dtype, "cpu")
    ref_lowp = ref_conv1d(lo["x"], lo["alpha"], lo["beta"], lo["w"], lo["bias"], dil, lo["res"])
    x = ops.to_channels_last_1d(lo["x"])
    res = None if lo["res"] is None else ops.to_channels_last_1d(lo["res"])
    for w in (lo["w"], ops.channels_last_weight(lo["w"])):   # a plain weight is converted per call
        with torch.inference_mode():
            out = ops.snake_conv1d(x, lo["alpha"], lo["beta"], w, lo["bias"], dil, res, backend="eager")
        # T == 1 is both layouts at once and runs the (B, C, T) path
        assert out.dtype == dtype and (T == 1 or ops.is_channels_last_1d(out)), out.stride()
        assert_close_to_ref(f"channels-last conv1d {dtype}", out, ref, ref_lowp, dtype)


@pytest.mark.parametrize("dtype", CL_DTYPES)
@pytest.mark.parametrize("B,Cin,Cout,T,stride", TCONV_CASES)
def test_ops_eager_channels_last_conv_transpose1d(B, Cin, Cout, T, stride, dtype):
    t = make_conv_inputs(B, Cin, Cout, T, 0, seed=stride + T, transposed=True, stride=stride)
    ref = ref_tconv1d(t["x"], t["alpha"], t["beta"], t["w"], t["bias"], stride)
    lo = cast(t, dtype, "cpu")
    ref_lowp = ref_tconv1d(lo["x"], lo["alpha"], lo["beta"], lo["w"], lo["bias"], stride)
    packed = ops.pack_polyphase(lo["w"], lo["bias"], stride)
    packed = packed._replace(weight=ops.channels_last_weight(packed.weight))
    x = ops.to_channels_last_1d(lo["x"])
    with torch.inference_mode():
        out = ops.snake_conv_transpose1d(x, lo["alpha"], lo["beta"], lo["w"], lo["bias"], stride, backend="eager",
                                         packed=packed)
    # The next layer reads it without a copy: channels-last and dense also across the batch (T == 1 inputs are
    # both layouts at once and run the (B, C, T) path).
    assert T == 1 or (ops.is_channels_last_1d(out) and ops.to_channels_last_1d(out) is out), out.stride()
    assert_close_to_ref(f"channels-last conv_transpose1d {dtype}", out, ref, ref_lowp, dtype)


def test_channels_last_layout_helpers():
    x = torch.randn(2, 5, 7)
    cl = ops.to_channels_last_1d(x)
    # a layout copy moves values, computes nothing
    assert torch.equal(cl, x) and cl.stride() == (35, 1, 5) and ops.is_channels_last_1d(cl)
    assert not ops.is_channels_last_1d(x) and ops.to_channels_last_1d(cl) is cl
    w = torch.randn(4, 5, 3)
    wc = ops.channels_last_weight(w)
    assert torch.equal(wc, w) and wc.stride() == (15, 1, 5)


@pytest.mark.parametrize("dtype", CL_DTYPES)
def test_fused_cpu_snake_matches_reference(dtype, monkeypatch):
    """ARC_FAST_CPU_FUSED_SNAKE=1: SnakeBeta as one torch.compile'd CPU loop, equal to the oracle within the dtype's
    rounding, in both layouts; without a working compiler it falls back (warns) to the eager passes."""
    monkeypatch.setenv("ARC_FAST_CPU_FUSED_SNAKE", "1")
    if ops._compiled_snake() is None:
        pytest.skip("torch.compile does not work here (no C++ compiler): the eager SnakeBeta is used")
    i = make_conv_inputs(2, 12, 12, 37, 7, seed=4)
    ref = snake_beta(i["x"], i["alpha"], i["beta"])
    lo = cast(i, dtype, "cpu")
    ref_lowp = snake_beta(lo["x"], lo["alpha"], lo["beta"])
    for x in (lo["x"], ops.to_channels_last_1d(lo["x"])):
        with torch.inference_mode():
            out = ops.snake_activation(x, lo["alpha"], lo["beta"])
        assert out.dtype == dtype and out.shape == ref.shape
        assert_close_to_ref(f"fused snake {dtype}", out, ref, ref_lowp, dtype)
    monkeypatch.setenv("ARC_FAST_CPU_FUSED_SNAKE", "0")       # off: the eager passes, never the compiled loop
    monkeypatch.setattr(ops, "_compiled_snake", lambda: pytest.fail("the fused SnakeBeta ran while switched off"))
    with torch.inference_mode():
        out = ops.snake_activation(lo["x"], lo["alpha"], lo["beta"])
    assert_close_to_ref(f"eager snake {dtype}", out, ref, ref_lowp, dtype)
