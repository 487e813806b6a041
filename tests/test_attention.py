"""Parity tests of the fused attention kernel (kernels/attention.py) and the attention op dispatch.

Single source of truth: ``arc_fast.reference.functional.qk_norm_rope_attention``. On CPU the Triton kernels run
under TRITON_INTERPRET=1 (set by conftest) with 16 x 16 blocks, so the odd lengths below (17, 19, 33) cross
several blocks and exercise the tail masking. ``pytest -m gpu`` runs real DiT sizes on CUDA.
"""
from __future__ import annotations

import math

import pytest
import torch
from utils import assert_close_to_ref

from arc_fast.ops import attention as ops_attention
from arc_fast.reference import functional as ref

K = ops_attention._kernels()  # arc_fast.kernels.attention (or kernels/attention.py in a source checkout)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DTYPES = [pytest.param(d, id=str(d).replace("torch.", "")) for d in K.SUPPORTED_DTYPES]


# --------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------
def make_inputs(B, H, Lq, Lk, D, *, q_norm=False, k_norm=False, bias=True, rope=False, rot=None, mask=None, seed=0,
                device="cpu"):
    """fp32 leaf tensors with non-zero means and realistic scales. rope: rotate ``rot`` channels (default D/2, the
    DiT's rule). mask: None | "random" | "row" (random keys plus one batch element with every key masked)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, mean=0.0, std=1.0):
        return (torch.randn(*shape, generator=g) * std + mean).to(device)

    x = {
        "q": rnd(B, H, Lq, D, mean=0.3, std=1.5),
        "k": rnd(B, H, Lk, D, mean=-0.2, std=1.2),
        "v": rnd(B, H, Lk, D, mean=0.1),
    }
    if q_norm:
        x["q_norm_weight"] = rnd(D, mean=1.0, std=0.3)
        if bias:
            x["q_norm_bias"] = rnd(D, std=0.2)
    if k_norm:
        x["k_norm_weight"] = rnd(D, mean=1.0, std=0.3)
        if bias:
            x["k_norm_bias"] = rnd(D, std=0.2)
    for t in x.values():
        t.requires_grad_(True)
    if rope:
        assert Lq == Lk
        rot = rot or D // 2
        inv_freq = 1.0 / (10000 ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot))
        x["freqs"] = ref.rope_freqs(Lq, inv_freq, offset=3).to(device)
    if mask is not None:
        m = torch.rand(B, Lk, generator=g) > 0.35
        m[:, 0] = True
        if mask == "row":
            m[-1] = False
        x["key_padding_mask"] = m.to(device)
    return x


def cast(x: dict, dtype) -> dict:
    """Fresh leaves in ``dtype`` (freqs stay fp32, the mask bool)."""
    out = {}
    for name, t in x.items():
        if t.is_floating_point() and name != "freqs":
            out[name] = t.detach().to(dtype).requires_grad_(True)
        else:
            out[name] = t
    return out


def grad_names(x: dict) -> list[str]:
    return [n for n, t in x.items() if t.requires_grad]


def call_ref(x: dict):
    return ref.qk_norm_rope_attention(
        x["q"], x["k"], x["v"], x.get("q_norm_weight"), x.get("q_norm_bias"), x.get("k_norm_weight"),
        x.get("k_norm_bias"), freqs=x.get("freqs"), key_padding_mask=x.get("key_padding_mask"))


def call_kernel(x: dict):
    kw = {n: t for n, t in x.items() if n not in ("q", "k", "v")}
    return K.attention(x["q"], x["k"], x["v"], **kw)


def fwd_bwd(fn, x: dict, do: torch.Tensor | None):
    out = fn(x)
    names = grad_names(x)
    if do is None:
        grads = torch.autograd.grad(out.sum(), [x[n] for n in names])
    else:
        grads = torch.autograd.grad(out, [x[n] for n in names], do.to(out.dtype))
    return out, dict(zip(names, grads))


def check_against_reference(x32: dict, dtype, do: torch.Tensor | None, fn=call_kernel):
    """Run ``fn`` in ``dtype`` and compare output and every grad with the oracle (fp32 and in ``dtype``)."""
    out, grads = fwd_bwd(fn, cast(x32, dtype), do)
    ref32, rgrads32 = fwd_bwd(call_ref, cast(x32, torch.float32), do)
    if dtype == torch.float32:
        reflp, rgradslp = ref32, rgrads32
    else:
        reflp, rgradslp = fwd_bwd(call_ref, cast(x32, dtype), do)
    assert out.dtype == dtype
    assert_close_to_ref("out", out, ref32, reflp, dtype)
    for n, g in grads.items():
        assert g.dtype == dtype, f"d{n} dtype {g.dtype}"
        kw = {}
        if n.endswith(("norm_weight", "norm_bias")):
            kw["metric"] = "rms"       # each element sums B*H*L rows
        if n == "k_norm_bias":
            # Softmax ignores a shift shared by all keys, so this grad is 0 in exact arithmetic: measure its
            # rounding noise against the terms it sums, of the size of the k_norm_weight grad's.
            kw["scale"] = rgrads32["k_norm_weight"].float().abs().max().item()
        assert_close_to_ref(f"d{n}", g, rgrads32[n], rgradslp[n], dtype, **kw)
    return out, grads


# --------------------------------------------------------------------------------------------------------------
# Parity: forward and every gradient
# --------------------------------------------------------------------------------------------------------------
# (B, H, Lq, Lk, D, options); ids say what each case exercises.
CASES = [
    pytest.param(1, 2, 17, 17, 64, dict(q_norm=True, k_norm=True, rope=True), id="self-norm-rope-L17-D64"),
    pytest.param(2, 1, 33, 33, 16, dict(q_norm=True, k_norm=True, rope=True, mask="row"),
                 id="self-norm-rope-maskrow-L33-D16"),
    pytest.param(2, 2, 33, 5, 64, dict(q_norm=True, k_norm=True, mask="row"), id="cross-norm-maskrow-Lq33-Lk5-D64"),
    pytest.param(2, 1, 1, 19, 32, dict(q_norm=True, k_norm=True, bias=False, mask="random"),
                 id="cross-norm-nobias-mask-Lq1-Lk19-D32"),
    pytest.param(1, 2, 17, 19, 32, dict(), id="plain-Lq17-Lk19-D32"),
    pytest.param(1, 2, 1, 1, 64, dict(rope=True, k_norm=True), id="rope-knorm-only-L1-D64"),
    pytest.param(1, 1, 6, 6, 32, dict(rope=True, rot=32), id="full-rotary-L6-D32"),
    pytest.param(1, 1, 5, 5, 128, dict(q_norm=True, k_norm=True, rope=True), id="self-norm-rope-L5-D128"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H,Lq,Lk,D,opts", CASES)
def test_fwd_bwd_matches_reference(B, H, Lq, Lk, D, opts, dtype):
    x = make_inputs(B, H, Lq, Lk, D, seed=Lq * 100 + Lk, **opts)
    do = torch.randn(B, H, Lq, D, generator=torch.Generator().manual_seed(1))
    out, grads = check_against_reference(x, dtype, do)
    if opts.get("mask") == "row":
        # The last batch element has no key: output 0 and exactly zero gradients, no NaN.
        assert torch.equal(out[-1].float(), torch.zeros_like(out[-1].float()))
        assert torch.equal(grads["q"][-1].float(), torch.zeros_like(grads["q"][-1].float()))
        assert torch.equal(grads["v"][-1].float(), torch.zeros_like(grads["v"][-1].float()))


def test_sum_backward_expanded_grad():
    """``.sum()`` hands the backward a stride-0 gradient."""
    x = make_inputs(2, 1, 17, 17, 32, q_norm=True, k_norm=True, rope=True, mask="random", seed=7)
    check_against_reference(x, torch.float32, None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_noncontiguous_packed_qkv(dtype):
    """q, k, v as permuted slices of one packed (B, L, 3, H, D) projection, grads flow back into it."""
    B, L, H, D = 2, 19, 2, 32
    g = torch.Generator().manual_seed(3)
    packed32 = torch.randn(B, L, 3, H, D, generator=g) + 0.2
    base = make_inputs(B, H, L, L, D, q_norm=True, k_norm=True, rope=True, seed=3)
    do = torch.randn(B, H, L, D, generator=g)

    def run(fn, dt):
        packed = packed32.to(dt).requires_grad_(True)
        q, k, v = (packed[:, :, i].permute(0, 2, 1, 3) for i in range(3))
        assert q.stride(-1) == 1 and not q.is_contiguous()
        x = cast(base, dt)
        x.update(q=q, k=k, v=v)
        out = fn(x)
        names = ["q_norm_weight", "q_norm_bias", "k_norm_weight", "k_norm_bias"]
        grads = torch.autograd.grad(out, [packed] + [x[n] for n in names], do.to(dt))
        return out, dict(zip(["packed"] + names, grads))

    out, grads = run(call_kernel, dtype)
    ref32, rgrads32 = run(call_ref, torch.float32)
    reflp, rgradslp = run(call_ref, dtype)
    assert_close_to_ref("out", out, ref32, reflp, dtype)
    for n in grads:
        assert_close_to_ref(f"d{n}", grads[n], rgrads32[n], rgradslp[n], dtype)


def test_mixed_param_dtype_and_scale():
    """bf16 activations with fp32 norm parameters (autocast-style): grads keep each input's dtype; custom scale."""
    x = make_inputs(1, 2, 17, 17, 32, q_norm=True, k_norm=True, rope=True, seed=11)
    xb = cast(x, torch.bfloat16)
    for n in ("q_norm_weight", "q_norm_bias", "k_norm_weight", "k_norm_bias"):
        xb[n] = x[n].detach().clone().requires_grad_(True)
    kw = {n: t for n, t in xb.items() if n not in ("q", "k", "v")}
    out = K.attention(xb["q"], xb["k"], xb["v"], scale=0.3, **kw)
    grads = torch.autograd.grad(out.float().square().sum(), [xb[n] for n in grad_names(xb)])
    x32 = cast(x, torch.float32)
    refo = ref.qk_norm_rope_attention(x32["q"], x32["k"], x32["v"], x32["q_norm_weight"], x32["q_norm_bias"],
                                      x32["k_norm_weight"], x32["k_norm_bias"], freqs=x32["freqs"], scale=0.3)
    rgrads = torch.autograd.grad(refo.square().sum(), [x32[n] for n in grad_names(x32)])
    assert out.dtype == torch.bfloat16
    tol = dict(rtol=0, atol=0)
    for n, gk, gr in zip(grad_names(xb), grads, rgrads):
        assert gk.dtype == xb[n].dtype, n
        # bf16 rounding of the inputs dominates; bound it by 3% of the grad's scale.
        tol["atol"] = 0.03 * gr.abs().max().item()
        torch.testing.assert_close(gk.float(), gr, **tol, msg=lambda m: f"d{n}: {m}")
    torch.testing.assert_close(out.float(), refo, rtol=0, atol=0.03 * refo.abs().max().item())


def test_lse_and_empty_rows():
    """The saved log-sum-exp is the natural lse of the scaled masked scores; +inf for a row without keys."""
    x = make_inputs(2, 1, 5, 19, 16, mask="row", seed=5)
    q, k, v, m = (x[n].detach() for n in ("q", "k", "v", "key_padding_mask"))
    o, lse, o_acc = K.attention_fwd(q, k, v, key_padding_mask=m)
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(16)
    s = s.masked_fill(~m[:, None, None, :], float("-inf"))
    expect = torch.logsumexp(s, dim=-1)
    torch.testing.assert_close(lse[0], expect[0], rtol=1e-5, atol=1e-5)
    assert torch.isinf(lse[1]).all() and (lse[1] > 0).all()
    assert lse.dtype == torch.float32 and o.is_contiguous() and o_acc.numel() == 0  # fp32: O itself is fp32
    o16, _, acc16 = K.attention_fwd(q.half(), k.half(), v.half(), key_padding_mask=m)
    assert o16.dtype == torch.float16 and acc16.dtype == torch.float32
    assert torch.equal(acc16.half(), o16)


# --------------------------------------------------------------------------------------------------------------
# Checks and capabilities
# --------------------------------------------------------------------------------------------------------------
def _base(**over):
    x = {"q": torch.randn(1, 2, 5, 16), "k": torch.randn(1, 2, 5, 16), "v": torch.randn(1, 2, 5, 16)}
    x.update(over)
    return x


BAD = [
    pytest.param(_base(k=torch.randn(1, 2, 5, 16, dtype=torch.float16)), TypeError, "k: expected dtype", id="k-dtype"),
    pytest.param(_base(q=torch.randn(1, 2, 5, 48), k=torch.randn(1, 2, 5, 48), v=torch.randn(1, 2, 5, 48)), ValueError,
                 "head dim", id="D48"),
    pytest.param(_base(q=torch.randn(1, 2, 5)), ValueError, "q: expected 4 dims", id="q-3d"),
    pytest.param(_base(v=torch.randn(1, 2, 6, 16)), ValueError, "v: expected the shape of k", id="v-shape"),
    pytest.param(_base(k=torch.randn(1, 2, 16, 5).transpose(-1, -2)), ValueError, "k: expected stride", id="k-stride"),
    pytest.param(_base(q=torch.randn(1, 2, 5, 16, dtype=torch.float64), k=torch.randn(1, 2, 5, 16, dtype=torch.float64),
                       v=torch.randn(1, 2, 5, 16, dtype=torch.float64)), TypeError, "q: expected dtype", id="fp64"),
    pytest.param(_base(key_padding_mask=torch.ones(1, 4, dtype=torch.bool)), ValueError,
                 "key_padding_mask: expected shape",
                 id="mask-shape"),
    pytest.param(_base(key_padding_mask=torch.ones(1, 5)), TypeError, "key_padding_mask: expected a torch.bool",
                 id="mask-dtype"),
    pytest.param(_base(q_norm_weight=torch.ones(8)), ValueError, "q_norm_weight: expected shape", id="qw-shape"),
    pytest.param(_base(k_norm_bias=torch.zeros(16)), ValueError, "k_norm_bias: given without", id="bias-no-weight"),
    pytest.param(_base(freqs=torch.zeros(5, 8, dtype=torch.float64)), TypeError, "freqs: expected a float32",
                 id="freqs-dtype"),
    pytest.param(_base(freqs=torch.zeros(5, 7)), ValueError, "freqs: expected shape", id="freqs-odd"),
    pytest.param(_base(k=torch.randn(1, 2, 6, 16), v=torch.randn(1, 2, 6, 16), freqs=torch.zeros(5, 8)), ValueError,
                 "freqs: RoPE needs self-attention", id="rope-cross"),
]


@pytest.mark.parametrize("kwargs,exc,match", BAD)
def test_rejects_bad_inputs(kwargs, exc, match):
    x = dict(kwargs)
    q, k, v = x.pop("q"), x.pop("k"), x.pop("v")
    assert any(match in r for r in K.not_supported_reasons(q, k, v, **x))
    with pytest.raises(exc, match=match):
        K.attention(q, k, v, **x)


def test_not_supported_reasons_lists_all():
    q = torch.randn(1, 2, 5, 48)
    reasons = K.not_supported_reasons(q, q.half(), q, q_norm_weight=torch.ones(3))
    assert len(reasons) >= 3, reasons
    assert K.not_supported_reasons(torch.randn(1, 2, 5, 64), torch.randn(1, 2, 7, 64), torch.randn(1, 2, 7, 64)) == []
    assert set(K.SUPPORTED_HEAD_DIMS) >= {64, 128} and torch.bfloat16 in K.SUPPORTED_DTYPES


# --------------------------------------------------------------------------------------------------------------
# torch.library integration
# --------------------------------------------------------------------------------------------------------------
def test_opcheck():
    x = make_inputs(1, 1, 5, 5, 16, q_norm=True, k_norm=True, rope=True, mask="random", seed=2)
    args = (x["q"], x["k"], x["v"], x["key_padding_mask"], x["q_norm_weight"], x["q_norm_bias"], x["k_norm_weight"],
            x["k_norm_bias"], x["freqs"], 1e-6, 0.25)
    torch.library.opcheck(torch.ops.arc_fast.attention_fwd.default, args)
    o, lse, _ = torch.ops.arc_fast.attention_fwd(*[a.detach() if isinstance(a, torch.Tensor) else a for a in args])
    bargs = (torch.randn_like(o), *[a.detach() for a in args[:3]], o, lse, *[a.detach() for a in args[3:9]], 1e-6,
             0.25)
    torch.library.opcheck(torch.ops.arc_fast.attention_bwd.default, bargs,
                          test_utils=("test_schema", "test_faketensor"))


def test_opcheck_optional_none():
    x = make_inputs(1, 1, 3, 4, 16, seed=4)
    args = (x["q"], x["k"], x["v"], None, None, None, None, None, None, 1e-6, 0.25)
    torch.library.opcheck(torch.ops.arc_fast.attention_fwd.default, args)


def test_compile_fullgraph():
    """The op traces without graph breaks (fake kernel + registered autograd) and matches eager, grads included."""
    x = make_inputs(1, 2, 17, 17, 16, q_norm=True, k_norm=True, rope=True, mask="random", seed=9)
    compiled = torch.compile(call_kernel, fullgraph=True, backend="eager")
    out_c = compiled(x)
    grads_c = torch.autograd.grad(out_c.square().sum(), [x[n] for n in grad_names(x)])
    out_e = call_kernel(x)
    grads_e = torch.autograd.grad(out_e.square().sum(), [x[n] for n in grad_names(x)])
    torch.testing.assert_close(out_c, out_e, rtol=0, atol=0)
    for gc, ge in zip(grads_c, grads_e):
        torch.testing.assert_close(gc, ge, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------------------
# The op layer (arc_fast.ops.attention)
# --------------------------------------------------------------------------------------------------------------
def call_op(backend):
    def fn(x):
        kw = {n: t for n, t in x.items() if n not in ("q", "k", "v")}
        return ops_attention.attention(x["q"], x["k"], x["v"], backend=backend, **kw)
    return fn


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_op_eager_matches_reference(backend, dtype):
    x = make_inputs(2, 2, 9, 9, 32, q_norm=True, k_norm=True, rope=True, mask="row", seed=13)
    do = torch.randn(2, 2, 9, 32, generator=torch.Generator().manual_seed(2))
    out, grads = check_against_reference(x, dtype, do, fn=call_op(backend))
    assert torch.equal(out[-1].float(), torch.zeros_like(out[-1].float()))
    assert all(torch.isfinite(g.float()).all() for g in grads.values())


def test_op_triton_backend_dispatch():
    x = make_inputs(1, 1, 5, 7, 16, q_norm=True, k_norm=True, mask="random", seed=6)
    torch.testing.assert_close(call_op("triton")(x), call_kernel(x), rtol=0, atol=0)
    torch.testing.assert_close(call_op(None)(x), call_ref(x), rtol=1e-5, atol=1e-5)


def test_op_flash_attn_backend_errors_clearly():
    x = make_inputs(1, 1, 4, 4, 16, seed=1)
    with pytest.raises((RuntimeError, ValueError), match="flash"):
        call_op("flash_attn")(x)
    with pytest.raises(ValueError, match="unknown backend"):
        call_op("nope")(x)


# --------------------------------------------------------------------------------------------------------------
# GPU: real DiT sizes (SAO Small: H = 8 here, D = 128, 257 tokens, rot_dim 64; text keys 65)
# --------------------------------------------------------------------------------------------------------------
GPU_CASES = [
    pytest.param(1, 8, 257, 257, dict(q_norm=True, k_norm=True, rope=True), id="self-B1"),
    pytest.param(8, 8, 257, 257, dict(q_norm=True, k_norm=True, rope=True), id="self-B8"),
    pytest.param(4, 8, 257, 65, dict(q_norm=True, k_norm=True, mask="row"), id="cross-mask-B4"),
    pytest.param(2, 8, 257, 65, dict(), id="plain-cross-B2"),
]


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H,Lq,Lk,opts", GPU_CASES)
def test_gpu_real_size(B, H, Lq, Lk, opts, dtype):
    x = make_inputs(B, H, Lq, Lk, 128, seed=B + Lk, device="cuda", **opts)
    do = torch.randn(B, H, Lq, 128, generator=torch.Generator().manual_seed(0)).cuda()
    check_against_reference(x, dtype, do)
    check_against_reference(x, dtype, None)
