"""Drop-in for stable-audio-tools users: ``FastDiT.from_module`` / ``FastOobleckDecoder.from_module`` on the public
package's modules, and ``arc_fast.patch(model)`` inside a ``ConditionedDiffusionModelWrapper`` driven by the
package's own ``generate_diffusion_cond`` (CPU, fp32; stable-audio-tools 0.0.19 and 0.0.20 from ``.sat/``, as
tests/test_interop_sat.py loads them, which skips this module too when they are not installed).

Models are tiny (2 blocks, 64 wide; an 8-channel Oobleck autoencoder, hop 4) with every parameter seeded
random (zero-initialised outputs would hide bugs) and the LayerNorm biases zero, as in every Stable Audio
checkpoint (their beta is a zero buffer).
"""
from __future__ import annotations

import contextlib
import importlib
import io
import warnings

import pytest
import torch

import arc_fast
from arc_fast.models.decoder import FastOobleckDecoder
from arc_fast.models.dit import FastDiT
from test_interop_sat import (B, SAT, SAT_ERRORS, SMALL_DIT, VERSIONS, _assert_close, _dit_inputs, _randomize_,
                              _run_both, _sat_active)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")

# A whole generation (4 sampler steps through 2 blocks, then the decoder) compounds each op's fp32 rounding
# (different summation orders in the fused and the original modules): 1e-4 of the peak, 10x one forward's bound.
GEN_RTOL = 1e-4
AE = {"encoder": {"type": "oobleck", "config": {"in_channels": 2, "channels": 8, "c_mults": [1, 2], "strides": [2, 2],
                                                 "latent_dim": 8, "use_snake": True}},
      "decoder": {"type": "oobleck", "config": {"out_channels": 2, "channels": 8, "c_mults": [1, 2], "strides": [2, 2],
                                                 "latent_dim": 4, "use_snake": True, "final_tanh": False}},
      "bottleneck": {"type": "vae"}, "latent_dim": 4, "downsampling_ratio": 4, "io_channels": 2}


def model_config(objective: str) -> dict:
    """A diffusion_cond config in stable-audio-tools' format: number conditioner only (no T5 download)."""
    dit = {**SMALL_DIT, "io_channels": 4}
    dit.pop("diffusion_objective")
    return {"model_type": "diffusion_cond", "sample_rate": 8000, "sample_size": 64, "audio_channels": 2,
            "model": {"io_channels": 4, "pretransform": {"type": "autoencoder", "config": AE},
                      "conditioning": {"cond_dim": 16, "configs": [
                          {"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": 16}}]},
                      "diffusion": {"type": "dit", "diffusion_objective": objective, "config": dit,
                                    "cross_attention_cond_ids": ["seconds_total"],
                                    "global_cond_ids": ["seconds_total"]}}}


@pytest.fixture(params=VERSIONS)
def sat(request):
    """(version, {"factory": ..., "generation": ...}) of one installed version, active for the test."""
    version = request.param
    if version not in SAT:
        pytest.skip(SAT_ERRORS[version])
    with _sat_active(version), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            mods = {m: importlib.import_module(f"stable_audio_tools.{m}")
                    for m in ("models.factory", "inference.generation", "models.autoencoders")}
        except Exception as exc:  # noqa: BLE001 - a version whose generation code does not import here: say why
            pytest.skip(f"stable-audio-tools {version}: generation does not import ({type(exc).__name__}: {exc}); "
                        f"run `bash scripts/install_sat.sh`")
    with _sat_active(version):
        yield version, mods


def build_model(sat, objective="rectified_flow", seed=0):
    _, mods = sat
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        model = mods["models.factory"].create_model_from_config(model_config(objective))
    _randomize_(model, seed)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith(".beta"):  # Stable Audio's LayerNorm bias: a zero buffer in every checkpoint
                buf.zero_()
    return model.eval()


def generate(sat, model, **kw):
    version, mods = sat
    if version != "0.0.19" and kw.get("cfg_scale", 1.0) != 1.0:
        kw.setdefault("apg_scale", 0.0)  # 0.0.20 guides with APG by default; 0.0 is the vanilla CFG of 0.0.19
    args = dict(steps=4, conditioning=[{"seconds_total": 1.0}], sample_size=64, seed=3, device="cpu", batch_size=1)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mods["inference.generation"].generate_diffusion_cond(model, **{**args, **kw})


def _count_calls(*modules):
    calls = [0]
    handles = [m.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1)) for m in modules]
    return calls, handles


@pytest.mark.parametrize("objective, kw", [
    ("rectified_flow", {"cfg_scale": 1.0}),
    ("rectified_flow", {"cfg_scale": 3.0}),
    ("rf_denoiser", {"cfg_scale": 1.0, "sampler_type": "pingpong"}),
], ids=["rf-cfg1", "rf-cfg3", "arc-pingpong"])
def test_patch_generate_diffusion_cond_same_audio_on_fused_modules(sat, objective, kw):
    model = build_model(sat, objective)
    want = generate(sat, model, **kw)
    dit, dec = model.model.model, model.pretransform.model.decoder
    replaced = arc_fast.patch(model)
    assert replaced == {"model.model": dit, "pretransform.model.decoder": dec}
    fast_dit, fast_dec = model.model.model, model.pretransform.model.decoder
    assert isinstance(fast_dit, FastDiT) and isinstance(fast_dec, FastOobleckDecoder)
    fused, h1 = _count_calls(fast_dit, fast_dec)
    original, h2 = _count_calls(dit, dec)
    got = generate(sat, model, **kw)
    for h in h1 + h2:
        h.remove()
    assert fused[0] >= 4 + 1 and original[0] == 0, (fused, original)   # 4 DiT steps and one decode, all fused
    _assert_close(got, want, f"generate_diffusion_cond patched [{sat[0]} {objective} {kw}]", rtol=GEN_RTOL)
    assert arc_fast.patch(model) == {}                                 # patching twice changes nothing
    arc_fast.patch.restore(model, replaced)
    assert model.model.model is dit and model.pretransform.model.decoder is dec
    assert torch.equal(generate(sat, model, **kw), want)              # same modules, same process: same bytes


def test_patch_refuses_what_it_does_not_implement(sat):
    version, _ = sat
    model = build_model(sat)
    replaced = arc_fast.patch(model, decoder=False)
    assert list(replaced) == ["model.model"]
    if version != "0.0.19":  # APG is 0.0.20's default guidance: refused with the way out, never ignored
        with pytest.raises(NotImplementedError, match="apg_scale=0.0"):
            generate(sat, model, cfg_scale=3.0, apg_scale=1.0)
    x = torch.randn(1, 4, 8)
    with pytest.raises(NotImplementedError, match="return_info"):
        model.model.model(x, torch.full((1,), 0.5), return_info=True)
    with pytest.raises(TypeError, match="ConditionedDiffusionModelWrapper"):
        arc_fast.patch(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        arc_fast.patch("model")


DIT_VARIANTS = {
    "prepend": {},
    "adaLN": {"global_cond_type": "adaLN"},
    "concat_prepend_patch": {"input_concat_dim": 3, "prepend_cond_dim": 5, "patch_size": 2},
    "timestep_concat": {"timestep_cond_type": "input_concat", "timestep_embed_dim": 12},
    "first_cross_layer": {"final_cross_attn_ix": 0, "ff_kwargs": {"no_bias": True, "mult": 2}},
}


@pytest.mark.parametrize("variant", DIT_VARIANTS)
def test_fast_dit_from_stable_audio_module(sat, variant):
    """from_module reads the constructor arguments from the module; the fused DiT gives the same outputs."""
    version, _ = sat
    over = DIT_VARIANTS[variant]
    if version == "0.0.19" and over.get("timestep_cond_type") == "input_concat":
        pytest.skip("stable-audio-tools 0.0.19 cannot run timestep_cond_type='input_concat' (see test_interop_sat)")
    cfg = {**SMALL_DIT, **over}
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = SAT[version]["dit"].DiffusionTransformer(**cfg)
    _randomize_(theirs, 0)
    for name, buf in theirs.named_buffers():
        if name.endswith(".beta"):
            buf.zero_()
    theirs.eval()
    fast = FastDiT.from_module(theirs)
    want = {k: v for k, v in cfg.items() if k not in ("attn_kwargs", "ff_kwargs")}
    assert {k: fast.config_kwargs[k] for k in want} == want
    assert fast.config_kwargs.get("ff_kwargs", {}) == cfg.get("ff_kwargs", {})
    inputs = _dit_inputs()
    keys = ["x", "t", "cross_attn_cond", "global_embed"]
    if "input_concat_dim" in over:  # as test_interop_sat's prepend / input-concat / patch case
        g = torch.Generator().manual_seed(5)
        inputs["x"] = inputs["x"][..., :12]
        inputs["prepend_cond"] = torch.randn(B, 3, 5, generator=g)
        inputs["prepend_cond_mask"] = torch.ones(B, 3, dtype=torch.bool)
        inputs["input_concat_cond"] = torch.randn(B, 3, 12, generator=g)
        keys += ["prepend_cond", "prepend_cond_mask", "input_concat_cond"]
    out, ref = _run_both(sat, theirs, fast, inputs, keys)
    _assert_close(out, ref, f"FastDiT.from_module({version} DiT) [{variant}]")


def test_fast_dit_from_module_names_what_it_lacks(sat):
    version, _ = sat
    mod = SAT[version]["dit"]
    with contextlib.redirect_stdout(io.StringIO()):
        scaled = mod.DiffusionTransformer(**SMALL_DIT, layer_scale=True)
        no_norms = mod.DiffusionTransformer(**SMALL_DIT, **({"remove_norms": True} if version == "0.0.19"
                                                           else {"norm_type": "rms_norm"}))
    with pytest.raises(NotImplementedError, match="layer_scale"):
        FastDiT.from_module(scaled)
    with pytest.raises(NotImplementedError, match="LayerNorm"):
        FastDiT.from_module(no_norms)
    with pytest.raises(TypeError, match="DiffusionTransformer"):
        FastDiT.from_module(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("norm", ["legacy", "parametrized", "removed"])
def test_fast_decoder_from_stable_audio_module(sat, norm):
    """Stable Audio's OobleckDecoder with legacy weight norm (its own), torch's parametrized weight norm, or none."""
    version, mods = sat
    torch.manual_seed(1)
    theirs = _randomize_(mods["models.autoencoders"].OobleckDecoder(**AE["decoder"]["config"]), 1).eval()
    z = torch.randn(2, 4, 9, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = theirs(z)
    if norm != "legacy":
        from torch.nn.utils import parametrizations, remove_weight_norm
        for m in list(theirs.modules()):
            if hasattr(m, "weight_g"):
                remove_weight_norm(m)
                if norm == "parametrized":
                    parametrizations.weight_norm(m)
    assert any(("parametrizations" in k) == (norm == "parametrized") for k in theirs.state_dict())
    fast = FastOobleckDecoder.from_module(theirs, backend="eager")
    with torch.no_grad():
        _assert_close(fast(z), want, f"FastOobleckDecoder.from_module({version}, {norm} weight norm)")
