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
