"""CPU fast path: the per-stage precision ``auto`` picks (mocked capabilities, so no test depends on this machine's
CPU), the probe cache, torchao int8, and the quality of every CPU setting on the bundled trained model."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from arc_fast import cpu
from arc_fast.cpu import CPUFeatures, choose_precisions


def features(flags=(), mkldnn=True, mkldnn_bf16=None) -> CPUFeatures:
    flags = frozenset(flags)
    if mkldnn_bf16 is None:
        mkldnn_bf16 = bool({"avx512_bf16", "amx_bf16"} & flags)
    return CPUFeatures(model="Mock CPU", flags=flags, capability="AVX512" if "avx512f" in flags else "AVX2",
                       mkldnn=mkldnn, mkldnn_bf16=mkldnn_bf16, quantized_engines=("x86", "fbgemm"),
                       physical_cores=2)


@pytest.fixture
def auto(monkeypatch):
    """dtype auto as a user gets it (the suite pins ARC_FAST_CPU_DTYPE=fp32 for machine independence)."""
    monkeypatch.setenv("ARC_FAST_CPU_DTYPE", "auto")


AVX512_BF16 = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16")
FAST = {"linear_bf16_speedup": 2.4, "conv_bf16_speedup": 3.9}


@pytest.mark.parametrize("flags, mkldnn_bf16, probed, want", [
    pytest.param(AVX512_BF16, None, FAST, ("bf16", "bf16"), id="avx512bf16-probed-fast"),
    pytest.param(AVX512_BF16, None, None, ("bf16", "bf16"), id="avx512bf16-not-probed"),
    pytest.param(("avx2", "amx_tile", "amx_bf16"), None, FAST, ("bf16", "bf16"), id="amx"),
    pytest.param(AVX512_BF16, None, {"linear_bf16_speedup": 1.1, "conv_bf16_speedup": 3.0}, ("fp32", "bf16"),
                 id="slow-bf16-matmul"),
    pytest.param(AVX512_BF16, None, {"linear_bf16_speedup": 2.0, "conv_bf16_speedup": 0.9}, ("bf16", "fp32"),
                 id="slow-bf16-conv"),
    pytest.param(("avx2", "avx512f", "avx512_vnni"), None, FAST, ("fp32", "fp32"), id="avx512-no-bf16"),
    pytest.param(("avx2",), None, FAST, ("fp32", "fp32"), id="avx2-only"),
    pytest.param(AVX512_BF16, False, FAST, ("fp32", "fp32"), id="onednn-without-bf16"),
])
def test_auto_picks_by_capability(auto, flags, mkldnn_bf16, probed, want):
    p = choose_precisions(features(flags, mkldnn_bf16=mkldnn_bf16), probed)
    assert (p.dit, p.decoder) == want
    assert set(p.reasons) == {"dit", "decoder"}
    for stage, dt in zip(("dit", "decoder"), want):
        assert p.reasons[stage].startswith(dt)     # every choice says why
    assert p.dtypes() == tuple({"fp32": torch.float32, "bf16": torch.bfloat16}[d] for d in want)


def test_auto_never_bf16_without_native_support_even_if_probe_says_so(auto, monkeypatch):
    monkeypatch.setattr(cpu, "probe", lambda: pytest.fail("no probe without native bf16"))
    p = choose_precisions(features(("avx2", "avx512f")))
    assert (p.dit, p.decoder) == ("fp32", "fp32") and "AVX512-BF16" in p.reasons["dit"]


def test_env_override(monkeypatch):
    for forced in ("fp32", "bf16"):
        monkeypatch.setenv("ARC_FAST_CPU_DTYPE", forced)
        p = choose_precisions(features(AVX512_BF16), FAST)
        assert (p.dit, p.decoder) == (forced, forced) and "ARC_FAST_CPU_DTYPE" in p.reasons["dit"]
    monkeypatch.setenv("ARC_FAST_CPU_DTYPE", "fp16")
    with pytest.raises(ValueError, match="ARC_FAST_CPU_DTYPE"):
        choose_precisions(features(AVX512_BF16), FAST)


def test_probe_is_measured_once_and_cached_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("ARC_FAST_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("ARC_FAST_CPU_PROBE", "1")
    monkeypatch.setattr(cpu, "cpu_features", lambda: features(AVX512_BF16))
    calls = []
    monkeypatch.setattr(cpu, "_measure", lambda: calls.append(1) or dict(FAST))
    cpu.probe.cache_clear()
    try:
        first = cpu.probe()
        cpu.probe.cache_clear()
        second = cpu.probe()
        assert len(calls) == 1 and first["linear_bf16_speedup"] == second["linear_bf16_speedup"] == 2.4
        data = json.loads((tmp_path / "cpu_probe.json").read_text())
        (key,) = data
        assert "Mock CPU" in key and "avx512_bf16" in key and torch.__version__ in key
        # A damaged cache is measured again (and rewritten), never trusted or fatal.
        (tmp_path / "cpu_probe.json").write_text("{not json")
        cpu.probe.cache_clear()
        assert cpu.probe()["conv_bf16_speedup"] == 3.9 and len(calls) == 2
        assert json.loads((tmp_path / "cpu_probe.json").read_text())[key]["conv_bf16_speedup"] == 3.9
        # Probing off: nothing measured, features alone decide.
        monkeypatch.setenv("ARC_FAST_CPU_PROBE", "0")
        cpu.probe.cache_clear()
        assert cpu.probe() is None and len(calls) == 2
    finally:
        cpu.probe.cache_clear()


def test_measure_returns_positive_ratios():
    m = cpu._measure()
    assert m["linear_bf16_speedup"] > 0 and m["conv_bf16_speedup"] > 0 and math.isfinite(m["linear_fp32_gflops"])


def test_features_of_this_machine_are_well_formed():
    f = cpu.cpu_features()
    assert f.physical_cores >= 1 and isinstance(f.native_bf16, bool)
    assert f.model in f.summary() and "physical cores" in f.summary()


def test_load_pipeline_auto_follows_the_choice(auto, monkeypatch):
    from arc_fast.pipeline import load_pipeline
    for want in (("bf16", "bf16"), ("fp32", "bf16"), ("fp32", "fp32")):
        monkeypatch.setattr(cpu, "choose_precisions",
                            lambda w=want: cpu.Precisions(w[0], w[1], {"dit": f"{w[0]}: mocked",
                                                                       "decoder": f"{w[1]}: mocked"}))
        pipe = load_pipeline(device="cpu")
        got = (pipe.dit_precision, {torch.float32: "fp32", torch.bfloat16: "bf16"}[pipe.autoencoder_dtype])
        assert got == want
        assert next(pipe.dit.parameters()).dtype == {"fp32": torch.float32, "bf16": torch.bfloat16}[want[0]]
        assert any("CPU precision (auto): DiT" in n for n in pipe.load_notes)
    pipe = load_pipeline(device="cpu", dtype="fp32")        # an explicit dtype is not second-guessed
    assert pipe.dit_precision == "fp32" and pipe.autoencoder_dtype == torch.float32


# ------------------------------------------------------------------------------------------------ int8
def _needs_torchao():
    pytest.importorskip("torchao", reason="the int8 path is torchao's (pip install 'arc-fast[int8]')")


def test_int8_fast_dit_runs_torchao_gemms_close_to_fp32():
    _needs_torchao()
    from arc_fast.configs import get_config
    from arc_fast.models.dit import FastDiT
    from arc_fast.pipeline import build_pipeline
    p = build_pipeline(get_config("tiny"), seed=1)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():     # the DiT's output projections start at zero: give every weight a value
        for prm in p.dit.parameters():
            prm.copy_(torch.randn(prm.shape, generator=g) / max(1, prm.shape[-1]) ** 0.5)
    ref = FastDiT.from_module(p.dit).eval()
    q = cpu.quantize_dit_int8(copy.deepcopy(ref))
    assert cpu.is_int8(q) and not cpu.is_int8(ref)
    names = [n for n, m in q.named_modules() if isinstance(m, torch.nn.Linear)]
    qnames = [n for n in names if type(q.get_submodule(n).weight).__name__ not in ("Parameter", "Tensor")]
    assert qnames and all(n.startswith("transformer.layers.") for n in qnames)
    assert len(qnames) == len([n for n in names if n.startswith("transformer.layers.")])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, p.latent_channels, 12, generator=g)
    t = torch.tensor([0.3, 0.8])
    cond = p.condition(["a low sine tone at 220 Hz", "noise"], 1.0)
    with torch.inference_mode():
        want, got = ref(x, t, **cond), q(x, t, **cond)
    err = float((got - want).norm() / want.norm())
    assert 0 < err < 0.05, err    # measured ~1e-2: per-token int8 activations, per-channel int8 weights


def test_int8_rejects_non_fp32_and_missing_torchao(monkeypatch):
    lin = torch.nn.Sequential(torch.nn.Linear(4, 4)).bfloat16()
    _needs_torchao()
    with pytest.raises(ValueError, match="float32"):
        cpu.quantize_dit_int8(lin)
    monkeypatch.setattr(cpu, "torchao_available", lambda: "torchao is not usable (mocked); install it")
    with pytest.raises(RuntimeError, match="torchao"):
        cpu.quantize_dit_int8(torch.nn.Sequential(torch.nn.Linear(4, 4)))


# ------------------------------------------------------------------------------------------------ quality
PROMPTS = ["a low sine tone at 220 Hz", "fast hi-hat pattern", "a major chord on a piano"]


def _snr_db(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).sum() / (out - ref).pow(2).sum().clamp_min(1e-30)))


@pytest.fixture(scope="module")
def fp32_audio():
    from arc_fast.ops import use_backend
    from arc_fast.pipeline import load_pipeline
    ref = load_pipeline(device="cpu", dtype="fp32")
    with use_backend("eager"):   # the CPU path users run (the suite's default would be the Triton interpreter)
        return {p: ref(p, seed=i)[0] for i, p in enumerate(PROMPTS)}


@pytest.mark.parametrize("dtype, ae_dtype", [
    pytest.param("bf16", "bf16", id="bf16"),          # what auto picks on a CPU with native bf16
    pytest.param("bf16", "fp32", id="bf16-dit"),
    pytest.param("fp32", "bf16", id="bf16-decoder"),
    pytest.param("int8", "fp32", id="int8-dit"),
    pytest.param("int8", "bf16", id="int8-dit-bf16-decoder"),
])
def test_every_cpu_setting_is_within_its_audio_bound_on_the_bundled_model(fp32_audio, dtype, ae_dtype):
    """Measured on the bundled model (seeds 0-2): 28-41 dB for these prompts in every setting; the public code's
    own bf16 run (reference modules) 28.6-33.6 dB. Each setting must keep >= cpu.MIN_AUDIO_SNR_DB (20 dB)."""
    if dtype == "int8":
        _needs_torchao()
    from arc_fast.ops import use_backend
    from arc_fast.pipeline import load_pipeline
    pipe = load_pipeline(device="cpu", dtype=dtype, autoencoder_dtype=ae_dtype)
    for i, prompt in enumerate(PROMPTS):
        with use_backend("eager"):
            audio, _ = pipe(prompt, seed=i)
        assert torch.isfinite(audio).all() and audio.dtype == torch.float32
        snr = _snr_db(audio, fp32_audio[prompt])
        assert snr >= cpu.MIN_AUDIO_SNR_DB, f"{dtype}/{ae_dtype} {prompt!r}: {snr:.1f} dB < {cpu.MIN_AUDIO_SNR_DB}"
        assert snr < 200, "not a different precision at all"   # the setting must really run in low precision


def test_info_reports_cpu_features_and_the_auto_choice(auto, monkeypatch):
    from arc_fast import info
    monkeypatch.setattr(cpu, "cpu_features", lambda: features(AVX512_BF16))
    monkeypatch.setattr(cpu, "probe", lambda: dict(FAST))
    text = "\n".join(info.cpu_report())
    assert "Mock CPU" in text and "AVX512-BF16 yes" in text and "AMX-BF16 no" in text
    assert "bf16 matmul 2.4x" in text and "DiT bf16: native bf16" in text and "decoder bf16" in text
    monkeypatch.setattr(cpu, "cpu_features", lambda: features(("avx2",)))
    monkeypatch.setattr(cpu, "probe", lambda: None)
    text = "\n".join(info.cpu_report())
    assert "AVX512-BF16 no" in text and "DiT fp32: no AVX512-BF16" in text
