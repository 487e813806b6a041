"""The eager reference DiT: SAO Small layout, conditioning modes, CFG, early exit, input checks."""
import pytest
import torch

from arc_fast.configs import get_config
from arc_fast.reference.dit import DiffusionTransformer
from utils import assert_same_maths

SMALL = dict(io_channels=8, embed_dim=64, depth=2, num_heads=2, cond_token_dim=16, global_cond_dim=16,
             transformer_type="continuous_transformer", attn_kwargs={"qk_norm": "ln"},
             diffusion_objective="rectified_flow")


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    # Zero-initialised outputs would make most comparisons trivially pass.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _inputs(b=2, t=10, s=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 8, t, generator=g), torch.rand(b, generator=g),
            torch.randn(b, s, 16, generator=g), torch.randn(b, 16, generator=g))


def test_sao_small_parameter_count_and_keys():
    cfg = get_config("sao_small")["model"]["diffusion"]["config"]
    with torch.device("meta"):
        m = DiffusionTransformer(**cfg)
    sd = m.state_dict()
    assert sum(p.numel() for p in m.parameters()) == 340_879_488
    assert len(sd) == 382
    expect = {
        "timestep_features.weight": (128, 1), "to_timestep_embed.0.weight": (1024, 256),
        "to_timestep_embed.2.bias": (1024,), "to_cond_embed.0.weight": (1024, 768),
        "to_global_embed.2.weight": (1024, 1024), "transformer.project_in.weight": (1024, 64),
        "transformer.project_out.weight": (64, 1024), "transformer.rotary_pos_emb.inv_freq": (32,),
        "preprocess_conv.weight": (64, 64, 1), "postprocess_conv.weight": (64, 64, 1),
        "transformer.layers.15.pre_norm.gamma": (1024,), "transformer.layers.15.pre_norm.beta": (1024,),
        "transformer.layers.3.self_attn.to_qkv.weight": (3072, 1024),
        "transformer.layers.3.self_attn.q_norm.bias": (128,), "transformer.layers.3.cross_attn.to_kv.weight": (2048, 1024),
        "transformer.layers.3.cross_attn.to_q.weight": (1024, 1024), "transformer.layers.0.ff.ff.0.proj.weight": (8192, 1024),
        "transformer.layers.0.ff.ff.0.proj.bias": (8192,), "transformer.layers.0.ff.ff.2.weight": (1024, 4096),
    }
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    assert not any("bias" in k for k in sd if "to_cond_embed" in k or "to_global_embed" in k or "self_attn.to_" in k)


def test_zero_initialised_outputs():
    m = DiffusionTransformer(**SMALL)
    for name in ("preprocess_conv.weight", "postprocess_conv.weight", "transformer.layers.0.self_attn.to_out.weight",
                 "transformer.layers.1.ff.ff.2.weight", "transformer.layers.1.ff.ff.2.bias"):
        assert m.state_dict()[name].abs().max() == 0, name
    x, t, c, g = _inputs()
    assert m(x, t, cross_attn_cond=c, global_embed=g).abs().max() > 0  # project_out is not zero-initialised


def test_state_dict_round_trip_and_strict_errors(tmp_path):
    from safetensors.torch import load_file, save_file
    m = DiffusionTransformer(**SMALL)
    _randomise(m)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, tmp_path / "dit.safetensors")
    m2 = DiffusionTransformer(**SMALL)
    m2.load_state_dict(load_file(tmp_path / "dit.safetensors"), strict=True)
    assert all(torch.equal(v, m2.state_dict()[k]) for k, v in m.state_dict().items())  # the bytes round-trip
    x, t, c, g = _inputs()
    # The outputs of two modules (other parameter buffers) agree to fp32 rounding on any CPU, not bitwise.
    assert_same_maths("round-tripped DiT", m2(x, t, cross_attn_cond=c, global_embed=g),
                      m(x, t, cross_attn_cond=c, global_embed=g))
    sd = m.state_dict()
    sd.pop("transformer.layers.0.self_attn.to_qkv.weight")
    sd["transformer.layers.0.extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="to_qkv.weight") as e:
        m2.load_state_dict(sd, strict=True)
    assert "transformer.layers.0.extra" in str(e.value)


def test_prepend_token_and_exit_layer():
    m = DiffusionTransformer(**SMALL)
    _randomise(m)
    x, t, c, g = _inputs(t=11)
    assert m(x, t, cross_attn_cond=c, global_embed=g).shape == (2, 8, 11)
    h0 = m(x, t, cross_attn_cond=c, global_embed=g, exit_layer_ix=0)
    h1 = m(x, t, cross_attn_cond=c, global_embed=g, exit_layer_ix=1)
    assert h0.shape == (2, 12, 64) and h1.shape == (2, 12, 64)  # prepend token included
    assert not torch.allclose(h0, h1)


def test_cross_attention_mask_ignored_by_default_and_opt_in():
    m = DiffusionTransformer(**SMALL)
    _randomise(m)
    x, t, c, g = _inputs()
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[:, 3:] = False
    c = c * mask[..., None]  # padding rows zeroed, as T5 does
    out_nomask = m(x, t, cross_attn_cond=c, global_embed=g)
    out_mask = m(x, t, cross_attn_cond=c, cross_attn_cond_mask=mask, global_embed=g)
    torch.testing.assert_close(out_nomask, out_mask, rtol=0, atol=0)  # reference semantics: mask ignored
    out_trunc = m(x, t, cross_attn_cond=c[:, :3], global_embed=g)
    assert not torch.allclose(out_nomask, out_trunc, atol=1e-5)  # padded tokens really take part
    m.use_cross_attn_mask = True
    out_opt = m(x, t, cross_attn_cond=c, cross_attn_cond_mask=mask, global_embed=g)
    torch.testing.assert_close(out_opt, out_trunc, rtol=1e-5, atol=1e-5)


def test_cfg_batched_matches_two_passes_and_scale_one_is_unguided():
    m = DiffusionTransformer(**SMALL)
    _randomise(m)
    x, t, c, g = _inputs()
    t = torch.full((2,), 0.7)
    cond = m(x, t, cross_attn_cond=c, global_embed=g)
    uncond = m(x, t, cross_attn_cond=torch.zeros_like(c), global_embed=g)
    guided = m(x, t, cross_attn_cond=c, global_embed=g, cfg_scale=4.0)
    torch.testing.assert_close(guided, uncond + 4.0 * (cond - uncond), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m(x, t, cross_attn_cond=c, global_embed=g, cfg_scale=1.0), cond, rtol=0, atol=0)


def test_adaln_mode():
    m = DiffusionTransformer(**{**SMALL, "global_cond_type": "adaLN"})
    sd = m.state_dict()
    assert sd["transformer.layers.0.to_scale_shift_gate"].shape == (6 * 64,)
    assert sd["transformer.global_cond_embedder.2.weight"].shape == (6 * 64, 64)
    _randomise(m)
    x, t, c, g = _inputs()
    out = m(x, t, cross_attn_cond=c, global_embed=g)
    assert out.shape == x.shape
    # No prepend token in adaLN mode: the hidden states have exactly T tokens.
    assert m(x, t, cross_attn_cond=c, global_embed=g, exit_layer_ix=0).shape == (2, 10, 64)
    # The global embedding matters through the modulation.
    assert not torch.allclose(out, m(x, t, cross_attn_cond=c, global_embed=g + 1))


@pytest.mark.parametrize("bad, match", [
    (dict(x=torch.randn(2, 7, 10)), "latent channels"),
    (dict(x=torch.randn(8, 10)), "must be a"),
    (dict(t=torch.rand(3)), "t must have shape"),
    (dict(c=torch.randn(2, 5, 15)), "cross_attn_cond must have shape"),
    (dict(g=torch.randn(2, 17)), "global_embed must have shape"),
])
def test_bad_inputs_raise_clear_errors(bad, match):
    m = DiffusionTransformer(**SMALL)
    x, t, c, g = _inputs()
    kw = dict(x=x, t=t, c=c, g=g) | bad
    with pytest.raises(ValueError, match=match):
        m(kw["x"], kw["t"], cross_attn_cond=kw["c"], global_embed=kw["g"])


def test_model_dtype_cast():
    m = DiffusionTransformer(**SMALL).to(torch.float64)
    x, t, c, g = _inputs()
    assert m(x, t, cross_attn_cond=c, global_embed=g).dtype == torch.float64
