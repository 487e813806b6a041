"""Interop: ``arc_fast.reference`` against the public ``stable-audio-tools`` package (CPU, fp32).

The package and the few modules its model code imports live in ``.sat/`` (``bash scripts/install_sat.sh``);
``tests/sat_stubs`` stands in for torchaudio / k_diffusion / pytorch_lightning (SPEC.md 7.1). Two versions:

* 0.0.19, the one SPEC.md section 7 was measured on: DiT, Oobleck encoder/decoder, VAE bottleneck,
  autoencoder factory, number conditioner;
* 0.0.20, the newest release: DiT only (its autoencoder module needs scipy, pywt and torchsde). Its CFG
  defaults to APG (``apg_scale=1.0``); the comparisons pass ``apg_scale=0.0``, the vanilla CFG of 0.0.19.

Every test builds a Stable Audio module, fills all its parameters and buffers with seeded random values (zero
initialised outputs would hide bugs), loads the state dict *strictly* into ours and compares outputs at 1e-5
relative to the output's magnitude. SAO-Small-size models are built on the meta device to compare state-dict
keys and shapes only. The package is imported into this process with its folders on ``sys.path`` only during
the import; afterwards every module it brought from ``.sat`` or the stubs is dropped from ``sys.modules`` so
the rest of the test session never sees the stubs.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import math
import os
import sys
import warnings
from pathlib import Path

import pytest
import torch

from arc_fast.reference import autoencoder as ref_ae
from arc_fast.reference import conditioners as ref_cond
from arc_fast.reference import dit as ref_dit

ROOT = Path(__file__).resolve().parents[1]
SAT_DIR = ROOT / ".sat"
STUBS = Path(__file__).resolve().parent / "sat_stubs"
INSTALL_HINT = "run `bash scripts/install_sat.sh` (installs stable-audio-tools into .sat/)"
VERSIONS = ("0.0.19", "0.0.20")
RTOL = 1e-5


_MODULES: dict[str, dict] = {}  # version -> every module its import brought from .sat or the stubs


def _sat_paths(version: str) -> list[str]:
    return [str(SAT_DIR / f"sat-{version}"), str(SAT_DIR / "site"), str(STUBS)]


def _is_sat_module(name: str) -> bool:
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None) or ""
    return name.split(".")[0] == "stable_audio_tools" or file.startswith((str(SAT_DIR), str(STUBS)))


@contextlib.contextmanager
def _sat_active(version: str):
    """Put one installed version (its modules and folders) in place for the duration of the block.

    Outside these blocks neither ``sys.path`` nor ``sys.modules`` holds anything from ``.sat`` or the stubs,
    so two versions can live in one process and the rest of the session never sees a stub. Inside, lazy
    imports in the package's functions (``from .bottleneck import ...``) resolve to the right version.
    """
    saved_path = list(sys.path)
    sys.path[:0] = _sat_paths(version)
    sys.modules.update(_MODULES.setdefault(version, {}))
    try:
        yield
    finally:
        for name in [n for n in sys.modules if _is_sat_module(n)]:
            _MODULES[version][name] = sys.modules.pop(name)
        sys.path[:] = saved_path


def _import_sat(version: str, modules: tuple[str, ...]) -> dict:
    """Import ``stable_audio_tools.models.<m>`` for each m from ``.sat/sat-<version>``; returns {m: module}."""
    if not (SAT_DIR / f"sat-{version}").is_dir():
        raise ImportError(f"{SAT_DIR / f'sat-{version}'} does not exist")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # The package prints flash-attn notices and triggers deprecation warnings on import: not ours to fix.
    with _sat_active(version), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {m: importlib.import_module(f"stable_audio_tools.models.{m}") for m in modules}


try:
    SAT = {"0.0.19": _import_sat("0.0.19", ("dit", "autoencoders", "bottleneck", "conditioners"))}
except Exception as exc:  # noqa: BLE001 - any import failure means "not installed here": skip, say why
    _failed = (SAT_DIR / "install.log").exists() and not (SAT_DIR / "stamp").exists()
    pytest.skip(f"stable-audio-tools 0.0.19 is not importable ({type(exc).__name__}: {exc}); {INSTALL_HINT}"
                + ("; the last install failed, see .sat/install.log" if _failed else ""), allow_module_level=True)
SAT_ERRORS = {}
try:
    SAT["0.0.20"] = _import_sat("0.0.20", ("dit",))
except Exception as exc:  # noqa: BLE001
    SAT_ERRORS["0.0.20"] = f"stable-audio-tools 0.0.20 DiT is not importable ({type(exc).__name__}: {exc}); " \
                           f"{INSTALL_HINT}"

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These models are tiny: intra-op threads only add barrier waits, and on a shared CPU those waits made
    # the module 3x slower. Restored afterwards for the rest of the session.
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(params=VERSIONS)
def sat_dit(request):
    """(version, ``stable_audio_tools.models.dit``) of one version, active for the test; skips if missing."""
    if request.param not in SAT:
        pytest.skip(SAT_ERRORS[request.param])
    with _sat_active(request.param):
        yield request.param, SAT[request.param]["dit"]


@pytest.fixture
def sat19():
    """The 0.0.19 modules (dit, autoencoders, bottleneck, conditioners), active for the test."""
    with _sat_active("0.0.19"):
        yield SAT["0.0.19"]


# ---------------------------------------------------------------------------------------------------- helpers

def _randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill every float parameter/buffer with seeded values of a sensible scale (except RoPE inv_freq)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            if not t.is_floating_point() or name.endswith("inv_freq"):
                continue
            leaf = name.rsplit(".", 1)[-1]
            noise = torch.randn(t.shape, generator=g)
            if leaf in ("gamma", "weight_g") or (t.dim() == 1 and leaf == "weight"):
                t.copy_(1 + 0.1 * noise)  # norm gains and weight-norm magnitudes: around 1
            elif t.dim() >= 2:
                t.copy_(noise / math.sqrt(t[0].numel()))
            else:
                t.copy_(0.1 * noise)
    return model


def _assert_close(ours: torch.Tensor, ref: torch.Tensor, what: str, rtol: float = RTOL) -> None:
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} vs Stable Audio {tuple(ref.shape)}"
    assert torch.isfinite(ref).all(), f"{what}: Stable Audio output is not finite"
    scale = ref.abs().max().item()
    assert scale > 1e-3, f"{what}: Stable Audio output is ~0 (max {scale:.2e}): the comparison would be void"
    err = (ours - ref).abs().max().item()
    assert err <= rtol * scale, f"{what}: max|ours - Stable Audio| = {err:.3e} > {rtol:g} * max|ref| ({scale:.3e})"


def _assert_differs(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert (a - b).abs().max().item() > 1e-3 * b.abs().max().item(), f"{what} had no effect on the output"


def _pair(sat_cls, ours_cls, cfg: dict, seed: int):
    """Build Stable Audio's module, randomise it, load it strictly into ours; both in eval mode."""
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = sat_cls(**cfg)
    _randomize_(theirs, seed)
    ours = ours_cls(**cfg)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs.eval(), ours.eval()


# ------------------------------------------------------------------------------------------------------- DiT

SMALL_DIT = dict(io_channels=8, embed_dim=64, depth=2, num_heads=2, cond_token_dim=16, global_cond_dim=16,
                 transformer_type="continuous_transformer", attn_kwargs={"qk_norm": "ln"},
                 diffusion_objective="rectified_flow")
B, T, S = 2, 13, 5  # odd latent length and cond length on purpose


def _dit_pair(sat_dit, seed=0, **overrides):
    _, mod = sat_dit
    return _pair(mod.DiffusionTransformer, ref_dit.DiffusionTransformer, {**SMALL_DIT, **overrides}, seed)


def _dit_inputs(seed=1, cfg=SMALL_DIT):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[0, 3:] = False
    mask[1, 1:] = False
    return dict(x=torch.randn(B, cfg["io_channels"], T, generator=g),
                t=torch.rand(B, generator=g) * 0.9 + 0.05,
                cross_attn_cond=torch.randn(B, S, cfg["cond_token_dim"], generator=g),
                cross_attn_cond_mask=mask,
                global_embed=torch.randn(B, cfg["global_cond_dim"], generator=g),
                negative_cross_attn_cond=torch.randn(B, S, cfg["cond_token_dim"], generator=g))


def _sat_kwargs(version: str, kwargs: dict) -> dict:
    # 0.0.20's CFG defaults to APG (apg_scale=1); apg_scale=0 is the vanilla CFG of 0.0.19 and arc_fast.
    return {**kwargs, "apg_scale": 0.0} if version != "0.0.19" and kwargs.get("cfg_scale", 1.0) != 1.0 else kwargs


def _run_both(sat_dit, theirs, ours, inputs, keys, **kwargs):
    version, _ = sat_dit
    args = {k: inputs[k] for k in keys}
    with torch.no_grad():
        ref = theirs(**args, **_sat_kwargs(version, kwargs))
        out = ours(**args, **kwargs)
    return out, ref


DIT_CASES = {
    "t_only": ("x", "t"),
    "cross": ("x", "t", "cross_attn_cond"),
    "cross_mask": ("x", "t", "cross_attn_cond", "cross_attn_cond_mask"),
    "global": ("x", "t", "global_embed"),
    "all": ("x", "t", "cross_attn_cond", "cross_attn_cond_mask", "global_embed"),
}


@pytest.mark.parametrize("case", DIT_CASES)
def test_dit_forward_matches(sat_dit, case):
    theirs, ours = _dit_pair(sat_dit)
    inputs = _dit_inputs()
    out, ref = _run_both(sat_dit, theirs, ours, inputs, DIT_CASES[case])
    _assert_close(out, ref, f"DiT forward [{case}]")


def test_dit_mask_is_ignored_like_stable_audio(sat_dit):
    """Stable Audio drops cross_attn_cond_mask: padded tokens are attended to (SPEC 7.3); so must we."""
    theirs, ours = _dit_pair(sat_dit)
    inputs = _dit_inputs()
    masked, ref = _run_both(sat_dit, theirs, ours, inputs, DIT_CASES["all"])
    unmasked, _ = _run_both(sat_dit, theirs, ours, inputs, ("x", "t", "cross_attn_cond", "global_embed"))
    _assert_close(masked, ref, "DiT with mask")
    torch.testing.assert_close(masked, unmasked, rtol=0, atol=0)


def test_dit_without_checkpointing_matches(sat_dit):
    """Stable Audio runs blocks through torch.utils.checkpoint by default; its plain path must agree too."""
    theirs, ours = _dit_pair(sat_dit)
    inputs = _dit_inputs()
    out, ref = _run_both(sat_dit, theirs, ours, inputs, DIT_CASES["all"])
    with torch.no_grad():
        ref_plain = theirs(**{k: inputs[k] for k in DIT_CASES["all"]}, use_checkpointing=False)
    _assert_close(out, ref_plain, "DiT forward vs Stable Audio use_checkpointing=False")
    _assert_close(out, ref, "DiT forward vs Stable Audio use_checkpointing=True")


@pytest.mark.parametrize("extra", [{}, {"scale_phi": 0.7}, {"negative": True}, {"negative": True, "neg_mask": True}],
                         ids=["cfg3", "cfg3_rescale", "cfg3_negative", "cfg3_negative_masked"])
def test_dit_cfg_matches(sat_dit, extra):
    version, _ = sat_dit
    extra = dict(extra)
    theirs, ours = _dit_pair(sat_dit)
    inputs = _dit_inputs()
    keys = ["x", "t", "cross_attn_cond", "cross_attn_cond_mask", "global_embed"]
    kwargs = {"cfg_scale": 3.0, **({"scale_phi": extra["scale_phi"]} if "scale_phi" in extra else {})}
    if extra.get("negative"):
        keys.append("negative_cross_attn_cond")
    if extra.get("neg_mask"):
        if version != "0.0.19":
            pytest.skip(f"stable-audio-tools {version} ignores negative_cross_attn_mask (0.0.19 zeroes masked tokens)")
        inputs["negative_cross_attn_mask"] = inputs["cross_attn_cond_mask"]
        keys.append("negative_cross_attn_mask")
    out, ref = _run_both(sat_dit, theirs, ours, inputs, keys, **kwargs)
    _assert_close(out, ref, f"DiT CFG {extra or ''}")
    plain, _ = _run_both(sat_dit, theirs, ours, inputs, keys)
    _assert_differs(out, plain, "cfg_scale=3")


def test_dit_cfg_interval_uses_sigma(sat_dit):
    """v objective: CFG applies when cfg_interval holds sigma = sin(pi t / 2), not t."""
    theirs, ours = _dit_pair(sat_dit, diffusion_objective="v")
    inputs = _dit_inputs()
    keys = ("x", "t", "cross_attn_cond", "global_embed")
    for t0, expect_cfg in ((0.4, False), (0.2, True)):  # sin(0.2 pi) = 0.59 > 0.5; sin(0.1 pi) = 0.31
        inputs["t"] = torch.full((B,), t0)
        out, ref = _run_both(sat_dit, theirs, ours, inputs, keys, cfg_scale=3.0, cfg_interval=(0.0, 0.5))
        _assert_close(out, ref, f"DiT v-objective CFG interval at t={t0}")
        plain, _ = _run_both(sat_dit, theirs, ours, inputs, keys)
        assert (out - plain).abs().max().item() > 1e-4 if expect_cfg else torch.equal(out, plain)


def test_dit_cfg_dropout_matches(sat_dit):
    """Training-time CFG dropout (cfg_scale 1): same seed, same Bernoulli draws, same output."""
    theirs, ours = _dit_pair(sat_dit)
    inputs = _dit_inputs()
    args = {k: inputs[k] for k in ("x", "t", "cross_attn_cond", "global_embed")}
    with torch.no_grad():
        torch.manual_seed(123)
        ref = theirs(**args, cfg_dropout_prob=0.5)
        torch.manual_seed(123)
        out = ours(**args, cfg_dropout_prob=0.5)
        plain = ours(**args)
    _assert_close(out, ref, "DiT cfg_dropout_prob=0.5")
    _assert_differs(out, plain, "cfg_dropout_prob=0.5 (seed 123)")


def test_dit_cfg_dropout_ignored_when_guiding(sat_dit):
    """Stable Audio applies cfg_dropout_prob only when cfg_scale == 1: with CFG on, no condition is dropped."""
    theirs, ours = _dit_pair(sat_dit)
    inputs = _dit_inputs()
    keys = ("x", "t", "cross_attn_cond", "global_embed")
    torch.manual_seed(0)
    out, ref = _run_both(sat_dit, theirs, ours, inputs, keys, cfg_scale=3.0, cfg_dropout_prob=0.99)
    _assert_close(out, ref, "DiT cfg_scale=3 with cfg_dropout_prob=0.99 (Stable Audio ignores the dropout)")


def test_dit_adaln_matches(sat_dit):
    theirs, ours = _dit_pair(sat_dit, global_cond_type="adaLN")
    assert any("to_scale_shift_gate" in k for k in theirs.state_dict())
    inputs = _dit_inputs()
    for keys, kwargs in ((DIT_CASES["all"], {}), (DIT_CASES["t_only"], {}), (DIT_CASES["all"], {"cfg_scale": 3.0})):
        out, ref = _run_both(sat_dit, theirs, ours, inputs, keys, **kwargs)
        _assert_close(out, ref, f"adaLN DiT {keys} {kwargs}")


@pytest.mark.parametrize("layer", [0, 1])
def test_dit_exit_layer_hidden_states(sat_dit, layer):
    """exit_layer_ix=k: hidden states after block k, (B, prepend + T, embed_dim), prepend token included."""
    theirs, ours = _dit_pair(sat_dit)
    inputs = _dit_inputs()
    out, ref = _run_both(sat_dit, theirs, ours, inputs, DIT_CASES["all"], exit_layer_ix=layer)
    assert ref.shape == (B, 1 + T, SMALL_DIT["embed_dim"])
    _assert_close(out, ref, f"DiT hidden states at exit_layer_ix={layer}")


def test_dit_prepend_input_concat_patch_matches(sat_dit):
    """Rarer paths: prepend_cond (+ its CFG nulling), input_concat_cond and patch_size 2."""
    cfg = dict(prepend_cond_dim=12, input_concat_dim=3, patch_size=2)
    theirs, ours = _dit_pair(sat_dit, **cfg)
    g = torch.Generator().manual_seed(5)
    inputs = _dit_inputs()
    inputs["x"] = inputs["x"][..., :12]  # a multiple of the patch size
    inputs["prepend_cond"] = torch.randn(B, 3, 12, generator=g)
    # Stable Audio needs prepend_cond_mask whenever a global embedding is prepended after prepend_cond.
    inputs["prepend_cond_mask"] = torch.ones(B, 3, dtype=torch.bool)
    inputs["input_concat_cond"] = torch.randn(B, 3, 12, generator=g)
    keys = ("x", "t", "cross_attn_cond", "global_embed", "prepend_cond", "prepend_cond_mask", "input_concat_cond")
    for kwargs in ({}, {"cfg_scale": 3.0}):
        out, ref = _run_both(sat_dit, theirs, ours, inputs, keys, **kwargs)
        _assert_close(out, ref, f"DiT prepend/input-concat/patch {kwargs}")
    out, ref = _run_both(sat_dit, theirs, ours, inputs, keys, exit_layer_ix=1)
    assert ref.shape == (B, 3 + 1 + 6, SMALL_DIT["embed_dim"])
    _assert_close(out, ref, "DiT prepend hidden states")


def test_dit_timestep_input_concat_matches(sat_dit):
    version, _ = sat_dit
    if version == "0.0.19":
        pytest.skip("stable-audio-tools 0.0.19 cannot run timestep_cond_type='input_concat' (it expands "
                    "timestep_embed.unsqueeze(1) over time; fixed to unsqueeze(2) in 0.0.20)")
    theirs, ours = _dit_pair(sat_dit, timestep_cond_type="input_concat", timestep_embed_dim=6)
    inputs = _dit_inputs()
    out, ref = _run_both(sat_dit, theirs, ours, inputs, DIT_CASES["all"])
    _assert_close(out, ref, "DiT timestep_cond_type=input_concat")


def test_dit_gradients_match(sat_dit):
    """Backward through Stable Audio's checkpointed blocks vs ours: input and every parameter gradient."""
    version, _ = sat_dit
    theirs, ours = _dit_pair(sat_dit, global_cond_type="adaLN")
    theirs.train(), ours.train()
    inputs = _dit_inputs()
    g = torch.Generator().manual_seed(9)
    cot = torch.randn(B, SMALL_DIT["io_channels"], T, generator=g)
    grads = []
    for model in (theirs, ours):
        x = inputs["x"].clone().requires_grad_(True)
        out = model(x=x, t=inputs["t"], cross_attn_cond=inputs["cross_attn_cond"],
                    global_embed=inputs["global_embed"])
        (out * cot).sum().backward()
        grads.append({"x": x.grad, **{n: p.grad for n, p in model.named_parameters()}})
    theirs_g, ours_g = grads
    only_ours = set(ours_g) - set(theirs_g)
    # 0.0.20 made the Fourier timestep features a fixed buffer (0.0.19 and arc_fast learn them).
    assert only_ours == ({"timestep_features.weight"} if version != "0.0.19" else set()), only_ours
    assert not set(theirs_g) - set(ours_g)
    overall = max(v.abs().max().item() for v in theirs_g.values())
    for name, ref in theirs_g.items():
        got = ours_g[name]
        assert ref is not None and got is not None, f"no gradient for {name}"
        # Some gradients are ~0 by symmetry (a cross-attention k_norm bias shifts every key's logit by the
        # same amount); those are held to the global gradient scale instead of their own.
        err, scale = (got - ref).abs().max().item(), max(ref.abs().max().item(), 1e-3 * overall)
        assert err <= 1e-4 * scale, f"grad {name}: max|ours - Stable Audio| = {err:.3e}, scale {scale:.3e}"


# SAO Small DiT (SPEC 7.2): the official small config's diffusion block.
SAO_SMALL_DIT = dict(io_channels=64, embed_dim=1024, depth=16, num_heads=8, cond_token_dim=768, global_cond_dim=768,
                     transformer_type="continuous_transformer", attn_kwargs={"qk_norm": "ln"},
                     diffusion_objective="rectified_flow")


def _meta_layout(model: torch.nn.Module) -> dict:
    params = {n: tuple(p.shape) for n, p in model.named_parameters()}
    buffers = {n: tuple(b.shape) for n, b in model.state_dict(keep_vars=True).items() if n not in params}
    return {"params": params, "buffers": buffers}


def _assert_same_layout(ours: torch.nn.Module, theirs: torch.nn.Module, what: str, param_as_buffer=()) -> dict:
    """Same state-dict keys and shapes, split the same way into parameters and persistent buffers.

    ``param_as_buffer``: names that are a parameter in ours but a buffer in Stable Audio (a known change).
    """
    a, b = _meta_layout(ours), _meta_layout(theirs)
    for name in param_as_buffer:
        assert name in a["params"] and name in b["buffers"], name
        b["params"][name] = b["buffers"].pop(name)
    for kind in ("params", "buffers"):
        only_ours = sorted(set(a[kind]) - set(b[kind]))
        only_theirs = sorted(set(b[kind]) - set(a[kind]))
        assert not only_ours and not only_theirs, f"{what} {kind}: only ours {only_ours[:5]}, only SAT {only_theirs[:5]}"
        bad = {k: (a[kind][k], b[kind][k]) for k in a[kind] if a[kind][k] != b[kind][k]}
        assert not bad, f"{what} {kind} shapes differ (ours, SAT): {dict(list(bad.items())[:5])}"
    return a


@pytest.mark.parametrize("global_cond_type", ["prepend", "adaLN"])
def test_sao_small_dit_layout(sat_dit, global_cond_type):
    version, mod = sat_dit
    cfg = {**SAO_SMALL_DIT, "global_cond_type": global_cond_type}
    with torch.device("meta"), contextlib.redirect_stdout(io.StringIO()):
        theirs = mod.DiffusionTransformer(**cfg)
        ours = ref_dit.DiffusionTransformer(**cfg)
    layout = _assert_same_layout(ours, theirs, f"SAO Small DiT ({global_cond_type})",
                                 param_as_buffer=() if version == "0.0.19" else ("timestep_features.weight",))
    if global_cond_type == "prepend":
        n_params = sum(math.prod(s) for s in layout["params"].values())
        assert n_params == 340_879_488, n_params
        assert len(layout["params"]) + len(layout["buffers"]) == 382


# ----------------------------------------------------------------------------------------------- autoencoder

TINY_ENC = dict(in_channels=2, channels=4, c_mults=[1, 2], strides=[2, 4], latent_dim=8, use_snake=True)
TINY_DEC = dict(out_channels=2, channels=4, c_mults=[1, 2], strides=[2, 4], latent_dim=8, use_snake=True,
                final_tanh=False)


@pytest.mark.parametrize("use_snake", [True, False], ids=["snake", "elu"])
def test_oobleck_encoder_matches(sat19, use_snake):
    cfg = {**TINY_ENC, "use_snake": use_snake}
    theirs, ours = _pair(sat19["autoencoders"].OobleckEncoder, ref_ae.OobleckEncoder, cfg, seed=3)
    audio = torch.randn(2, 2, 8 * 7, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        _assert_close(ours(audio), theirs(audio), f"OobleckEncoder use_snake={use_snake}")


@pytest.mark.parametrize("use_snake,final_tanh", [(True, False), (False, True)], ids=["snake", "elu_tanh"])
def test_oobleck_decoder_matches(sat19, use_snake, final_tanh):
    cfg = {**TINY_DEC, "use_snake": use_snake, "final_tanh": final_tanh}
    theirs, ours = _pair(sat19["autoencoders"].OobleckDecoder, ref_ae.OobleckDecoder, cfg, seed=5)
    z = torch.randn(2, 8, 7, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        _assert_close(ours(z), theirs(z), f"OobleckDecoder use_snake={use_snake} final_tanh={final_tanh}")


def test_vae_bottleneck_matches(sat19):
    """mean | scale split, stdev = softplus(scale) + 1e-4, the same N(0,1) draw under one seed, and the KL."""
    theirs, ours = sat19["bottleneck"].VAEBottleneck(), ref_ae.VAEBottleneck()
    pre = torch.randn(2, 16, 7, generator=torch.Generator().manual_seed(7)) * 2
    torch.manual_seed(11)
    ref, ref_info = theirs.encode(pre, return_info=True)
    torch.manual_seed(11)
    out, info = ours.encode(pre, return_info=True)
    _assert_close(out, ref, "VAE latents")
    _assert_close(info["kl"], ref_info["kl"], "VAE kl")
    _assert_close(ours.encode(pre, sample=False), pre[:, :8], "VAE mean")
    torch.testing.assert_close(ours.decode(out), theirs.decode(out), rtol=0, atol=0)


def _ae_config(enc: dict, dec: dict) -> dict:
    return {"encoder": {"type": "oobleck", "config": {**enc, "latent_dim": 2 * dec["latent_dim"]}},
            "decoder": {"type": "oobleck", "config": dec}, "bottleneck": {"type": "vae"},
            "latent_dim": dec["latent_dim"], "downsampling_ratio": math.prod(dec["strides"]), "io_channels": 2}


def test_autoencoder_factory_matches(sat19):
    """Stable Audio's create_autoencoder_from_config vs our autoencoder_from_config: keys, encode, decode."""
    cfg = _ae_config(TINY_ENC, TINY_DEC)
    torch.manual_seed(0)
    theirs = _randomize_(sat19["autoencoders"].create_autoencoder_from_config({"model": cfg, "sample_rate": 44100}), 12).eval()
    ours = ref_ae.autoencoder_from_config({"type": "autoencoder", "config": cfg}).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    audio = torch.randn(2, 2, 8 * 5, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        torch.manual_seed(21)
        ref = theirs.encode(audio)
        torch.manual_seed(21)
        out = ours.encode(audio)
        _assert_close(out, ref, "AudioAutoencoder.encode (sampled)")
        _assert_close(ours.decode(ref), theirs.decode(ref), "AudioAutoencoder.decode")


# SAO VAE (SPEC 7.4).
SAO_DEC = dict(out_channels=2, channels=128, c_mults=[1, 2, 4, 8, 16], strides=[2, 4, 4, 8, 8], latent_dim=64,
               use_snake=True, final_tanh=False)
SAO_ENC = dict(in_channels=2, channels=128, c_mults=[1, 2, 4, 8, 16], strides=[2, 4, 4, 8, 8], latent_dim=128,
               use_snake=True)


def test_sao_vae_layout(sat19):
    cfg = _ae_config({k: v for k, v in SAO_ENC.items() if k != "latent_dim"}, SAO_DEC)
    with torch.device("meta"), contextlib.redirect_stdout(io.StringIO()):
        theirs = sat19["autoencoders"].create_autoencoder_from_config({"model": cfg, "sample_rate": 44100})
        ours = ref_ae.autoencoder_from_config({"type": "autoencoder", "config": cfg})
    _assert_same_layout(ours, theirs, "SAO VAE")
    for part, count, entries in (("decoder", 78_122_626, 182), ("encoder", 77_989_888, 183)):
        layout = _meta_layout(getattr(ours, part))
        assert sum(math.prod(s) for s in layout["params"].values()) == count, part
        assert len(layout["params"]) + len(layout["buffers"]) == entries, part


# ----------------------------------------------------------------------------------------------- conditioner

def test_number_conditioner_matches(sat19):
    """seconds_total conditioner: clamp to [min, max], normalise, learned Fourier embedding; mask of ones."""
    cfg = dict(output_dim=16, min_val=0, max_val=256)
    theirs, ours = _pair(sat19["conditioners"].NumberConditioner, ref_cond.NumberConditioner, cfg, seed=8)
    values = [0.0, 10.5, 255.9, 400.0, -3.0]
    with torch.no_grad():
        ref, ref_mask = theirs(values, device="cpu")
        out, mask = ours(values, device="cpu")
    _assert_close(out, ref, "NumberConditioner embedding")
    torch.testing.assert_close(mask.float(), ref_mask.float())
