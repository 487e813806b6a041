"""FastDiT is a drop-in for the reference DiT: same keys, same outputs and gradients, on every backend."""
import pytest
import torch

from arc_fast.models.dit import FastDiT
from arc_fast.ops import use_backend
from arc_fast.reference.dit import DiffusionTransformer
from utils import assert_close_to_ref

SMALL = dict(io_channels=8, embed_dim=64, depth=2, num_heads=2, cond_token_dim=16, global_cond_dim=16,
             transformer_type="continuous_transformer", attn_kwargs={"qk_norm": "ln"},
             diffusion_objective="rectified_flow")

CASES = [
    pytest.param({}, id="prepend"),
    pytest.param({"global_cond_type": "adaLN"}, id="adaLN"),
    pytest.param({"use_cross_attn_mask": True}, id="masked-cross"),
]


def _pair(extra, seed=0):
    torch.manual_seed(seed)
    ref = DiffusionTransformer(**SMALL, **extra)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():  # zero-init outputs would hide bugs
            p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    return ref, FastDiT.from_module(ref)


def _inputs(b=2, t=10, s=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, s, dtype=torch.bool)
    mask[0, 3:] = False
    return dict(x=torch.randn(b, 8, t, generator=g) + 0.3, t=torch.rand(b, generator=g),
                cross_attn_cond=torch.randn(b, s, 16, generator=g), cross_attn_cond_mask=mask,
                global_embed=torch.randn(b, 16, generator=g))


def test_same_keys_and_constructor():
    ref, fast = _pair({})
    assert list(ref.state_dict()) == list(fast.state_dict())
    fresh = FastDiT(**SMALL)
    fresh.load_state_dict(ref.state_dict(), strict=True)
    assert fast.config_kwargs == ref.config_kwargs


@pytest.mark.parametrize("backend", ["eager", "triton"])
@pytest.mark.parametrize("extra", CASES)
def test_forward_and_backward_match_reference(extra, backend):
    ref, fast = _pair(extra)
    inp = _inputs()
    out_ref = ref(**{k: v for k, v in inp.items() if k not in ("x", "t")}, x=inp["x"], t=inp["t"])
    with use_backend(backend):
        x = inp["x"].clone().requires_grad_(True)
        out = fast(x, inp["t"], cross_attn_cond=inp["cross_attn_cond"], cross_attn_cond_mask=inp["cross_attn_cond_mask"],
                   global_embed=inp["global_embed"])
        assert_close_to_ref("out", out, out_ref, dtype=torch.float32, rtol32=2e-5)
        dy = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
        (out * dy).sum().backward()
    xr = inp["x"].clone().requires_grad_(True)
    (ref(xr, inp["t"], cross_attn_cond=inp["cross_attn_cond"], cross_attn_cond_mask=inp["cross_attn_cond_mask"],
         global_embed=inp["global_embed"]) * dy).sum().backward()
    assert_close_to_ref("dx", x.grad, xr.grad, dtype=torch.float32, rtol32=5e-5)
    ref_grads = dict(ref.named_parameters())
    # Some grads are analytically ~0 (a k-norm bias shifts every key equally: softmax ignores it), so the
    # bound is relative to the largest gradient of the model, not of each tensor.
    scale = max(g.grad.abs().max().item() for g in ref_grads.values() if g.grad is not None)
    for name, p in fast.named_parameters():
        r = ref_grads[name].grad
        if r is None:
            assert p.grad is None or p.grad.abs().max() == 0, name
            continue
        err = (p.grad - r).abs().max().item()
        assert err <= 5e-5 * r.abs().max().item() + 2e-6 * scale, f"d{name}: max|diff| {err:.3e}, max|ref| {r.abs().max():.3e}"


def test_cfg_and_exit_layer_match_reference():
    ref, fast = _pair({})
    inp = _inputs()
    kw = dict(cross_attn_cond=inp["cross_attn_cond"], global_embed=inp["global_embed"])
    t = torch.full((2,), 0.6)
    torch.testing.assert_close(fast(inp["x"], t, cfg_scale=3.0, **kw), ref(inp["x"], t, cfg_scale=3.0, **kw),
                               rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(fast(inp["x"], t, exit_layer_ix=0, **kw), ref(inp["x"], t, exit_layer_ix=0, **kw),
                               rtol=2e-5, atol=2e-5)


def test_nonzero_layernorm_beta_is_refused():
    ref, fast = _pair({})
    sd = fast.state_dict()
    sd["transformer.layers.1.ff_norm.beta"] = torch.ones(64)
    fast.load_state_dict(sd)
    inp = _inputs()
    with pytest.raises(ValueError, match="ff_norm.beta"):
        fast(inp["x"], inp["t"], cross_attn_cond=inp["cross_attn_cond"], global_embed=inp["global_embed"])


def test_from_module_rejects_other_types():
    with pytest.raises(TypeError, match="DiffusionTransformer"):
        FastDiT.from_module(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_compile_fullgraph_matches(backend):
    ref, fast = _pair({})
    inp = _inputs()
    kw = dict(cross_attn_cond=inp["cross_attn_cond"], global_embed=inp["global_embed"])
    torch._dynamo.reset()
    with use_backend(backend), torch.no_grad():
        expect = fast(inp["x"], inp["t"], **kw)
        compiled = torch.compile(fast, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(inp["x"], inp["t"], **kw), expect, rtol=1e-6, atol=1e-6)
        # A traced call never memoizes, and the scope's state is not guarded on: a new scope per generation
        # must not recompile (nor break the graph).
        with torch._dynamo.config.patch(error_on_recompile=True):
            for _ in range(2):
                with fast.reuse_conditioning():
                    torch.testing.assert_close(compiled(inp["x"], inp["t"], **kw), expect, rtol=1e-6, atol=1e-6)
                    assert fast._context_memos == {}


# ------------------------------------------------------------------ reuse_conditioning (the samplers' scope)
def _count_embeds(dit):
    calls = []
    handle = dit.to_cond_embed.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("sampler,cfg", [("pingpong", 1.0), ("euler", 3.0)])
@pytest.mark.parametrize("extra", [CASES[0], CASES[2]])
def test_sampler_reuses_the_text_context_bitwise(extra, sampler, cfg):
    """Inside the samplers' scope the context embedding runs once for all steps and every block reuses its
    cross-attention keys/values; the latents are bitwise those of a run that recomputes them every step."""
    from arc_fast import sampling

    _, fast = _pair(extra)
    inp = _inputs()
    cond = dict(cross_attn_cond=inp["cross_attn_cond"], cross_attn_cond_mask=inp["cross_attn_cond_mask"],
                global_embed=inp["global_embed"])
    fn = sampling.SAMPLERS[sampler]
    kw = dict(steps=4, cfg_scale=cfg, **cond)

    def run(model):
        if sampler == "pingpong":
            kw["generator"] = sampling.make_generator(5)
        with use_backend("eager"), torch.inference_mode():
            return fn(model, inp["x"], **kw)

    calls, handle = _count_embeds(fast)
    plain = run(lambda x, t, **k: fast(x, t, **k))      # a lambda has no scope: recomputed every step
    assert len(calls) == 4
    calls.clear()
    memos = []
    real_forward = fast.forward

    def spy(*a, **k):
        memos.append(fast._context_memos)
        return real_forward(*a, **k)

    fast.forward = spy
    reused = run(fast)
    del fast.forward
    handle.remove()
    assert len(calls) == 1, f"the context was embedded {len(calls)} times in 4 steps"
    memo = next(iter(memos[-1].values()))
    assert len(memo.kv) == SMALL["depth"]           # every block's keys/values came from the memo
    assert fast._context_memos is None              # the scope closed
    assert torch.equal(reused, plain)


def test_reuse_conditioning_keys_on_the_conditioning_tensors():
    """A different conditioning tensor, a guided call and a call with gradients each compute their own context:
    the results inside the scope equal those outside it."""
    _, fast = _pair({})
    inp = _inputs()
    other = inp["cross_attn_cond"] + 1.0
    kw = dict(global_embed=inp["global_embed"])
    with use_backend("eager"), torch.no_grad():
        want_a = fast(inp["x"], inp["t"], cross_attn_cond=inp["cross_attn_cond"], **kw)
        want_b = fast(inp["x"], inp["t"], cross_attn_cond=other, **kw)
        want_cfg = fast(inp["x"], inp["t"], cross_attn_cond=other, cfg_scale=2.5, **kw)
        with fast.reuse_conditioning():
            with fast.reuse_conditioning():          # nested: shares the outer memo
                a = fast(inp["x"], inp["t"], cross_attn_cond=inp["cross_attn_cond"], **kw)
            b = fast(inp["x"], inp["t"], cross_attn_cond=other, **kw)
            cfg = fast(inp["x"], inp["t"], cross_attn_cond=other, cfg_scale=2.5, **kw)
            a2 = fast(inp["x"], inp["t"], cross_attn_cond=inp["cross_attn_cond"], **kw)
            assert len(fast._context_memos) == 3     # a, b, and b's guided (cond + uncond) batch
            with torch.enable_grad():                # training-style call: never memoized
                x = inp["x"].clone().requires_grad_(True)
                fast(x, inp["t"], cross_attn_cond=inp["cross_attn_cond"], **kw).sum().backward()
                assert x.grad is not None and len(fast._context_memos) == 3
    for got, want in ((a, want_a), (b, want_b), (cfg, want_cfg), (a2, want_a)):
        assert torch.equal(got, want)
    assert not any(blk.cross_kv for blk in fast.transformer.layers)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_sampler_reuses_the_text_context_bitwise(dtype):
    """On the GPU kernels (Triton attention reading the memoized K/V views): the same latents, bit for bit."""
    from arc_fast import sampling

    _, fast = _pair({"use_cross_attn_mask": True})
    fast = fast.cuda().to(dtype)
    inp = {k: v.cuda() for k, v in _inputs(b=2, t=40, s=9).items()}
    cond = dict(cross_attn_cond=inp["cross_attn_cond"].to(dtype), cross_attn_cond_mask=inp["cross_attn_cond_mask"],
                global_embed=inp["global_embed"].to(dtype))
    x = inp["x"].to(dtype)
    with torch.inference_mode():
        plain = sampling.sample_pingpong(lambda a, b, **k: fast(a, b, **k), x, steps=4,
                                         generator=sampling.make_generator(1), **cond)
        reused = sampling.sample_pingpong(fast, x, steps=4, generator=sampling.make_generator(1), **cond)
    assert torch.equal(reused, plain)
