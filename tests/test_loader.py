"""Checkpoint layouts through ``load_pipeline``: unwrapped, Lightning with EMA + discriminator + pickled
training state, ARC training, the arc_fast trainer, separate DiT / autoencoder files, number-conditioner-only
configs, SAO Small / SAO 1.0 key layouts on the meta device; strict errors that name the key; the inert
unpickler. Models are micro-sized (8 kHz, hop 32, 64 latent frames) so that every test runs in a second."""
import copy
import json
import os
import pathlib
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from utils import assert_same_maths

from arc_fast.configs import get_config
from arc_fast.loader import (PREFIXES, CheckpointError, Int8Linear, build_models, check_state_dict, read_component,
                             read_file, resolve_layout)
from arc_fast.pipeline import build_pipeline, load_pipeline

_CALLED = []


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: micro models run on one thread


def micro_config(text: bool = True, objective: str = "rectified_flow", arc: bool | None = True) -> dict:
    """A complete diffusion_cond config, micro-sized: stereo 8 kHz, Oobleck 4 ch / strides (4, 8) (hop 32),
    8 latent channels, 64-frame window (0.256 s), DiT 32 wide x 2 blocks x 1 head (RoPE needs 32-dim heads),
    hash text + seconds_total."""
    cfg = get_config("tiny")
    cfg["sample_rate"], cfg["sample_size"] = 8000, 2048
    pre = cfg["model"]["pretransform"]["config"]
    for part, lat in (("encoder", 16), ("decoder", 8)):
        pre[part]["config"].update(channels=4, c_mults=[1, 2], strides=[4, 8], latent_dim=lat)
    pre.update(latent_dim=8, downsampling_ratio=32)
    cfg["model"]["io_channels"] = 8
    cond = cfg["model"]["conditioning"]
    cond["cond_dim"] = 16
    cond["configs"][0]["config"].update(dim=16, max_length=8, num_heads=2, vocab_size=64)
    diff = cfg["model"]["diffusion"]
    diff["diffusion_objective"] = objective
    diff["config"].update(io_channels=8, embed_dim=32, depth=2, num_heads=1, cond_token_dim=16, global_cond_dim=16)
    if not text:
        cond["configs"] = [c for c in cond["configs"] if c["type"] == "number"]
        cond["configs"].append({"id": "seconds_start", "type": "number", "config": {"min_val": 0, "max_val": 16}})
        diff["cross_attention_cond_ids"] = ["seconds_start", "seconds_total"]
        diff["global_cond_ids"] = ["seconds_start", "seconds_total"]
        diff["config"]["global_cond_dim"] = 32
    cfg["arc_fast"] = {} if arc is None else {"arc_post_trained": arc}
    return cfg


def randomize_(module, seed=0, scale=0.2):
    """Random weights everywhere (zero-initialised DiT outputs would make every layout look equal)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.state_dict().items():
            if not p.is_floating_point() or name.endswith("inv_freq") or ("norm" in name and name.endswith("beta")):
                continue  # keep RoPE frequencies and the (bias-less) LayerNorms' zero beta
            if name.endswith(("gamma", "weight_g")):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module


def random_pipeline(config=None, seed=0):
    p = build_pipeline(config or micro_config(), seed=seed)
    randomize_(p.dit, seed + 1)
    randomize_(p.conditioner, seed + 2, 0.1)
    return p


def save_model(pipe, directory, name="model.safetensors", sd=None, config=None):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "model_config.json"), "w") as f:
        json.dump(config or pipe.config, f)
    sd = pipe.state_dict() if sd is None else sd
    path = os.path.join(directory, name)
    if name.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    else:
        torch.save(sd, path)
    return path


def dit_out(pipe, seed=0, dit=None):
    """One DiT forward (``pipe.dit`` or ``dit``) on seeded inputs conditioned by ``pipe``'s conditioner."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, pipe.latent_channels, 16, generator=g)
    t = torch.tensor([0.3, 0.9])
    with torch.no_grad():
        cond = pipe.condition(["a dog", "rain"], 0.2)
        return (dit or pipe.dit)(x, t, **cond)


# Loaded weights are the same bytes as the saved ones (``same_weights``: bitwise), but they may sit in memory
# with another alignment (a memory-mapped file) and the CPU's BLAS picks its blocking from the CPU model and the
# alignment: outputs computed from them are compared to fp32 rounding (``assert_same_maths``), not bitwise.
def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class Marker:  # pickled into a "training state": must come back as an inert placeholder
    def __init__(self):
        self.path = pathlib.Path("/nonexistent")


def _record_call(*args):
    _CALLED.append(args)
    return "called"


class Evil:
    def __reduce__(self):
        return (_record_call, ("pwned",))


@pytest.fixture(scope="module")
def base():
    return random_pipeline()


def test_unwrapped_round_trip_equal_outputs(base, tmp_path):
    save_model(base, tmp_path / "m")
    q = load_pipeline(str(tmp_path / "m"), device="cpu", fast=False)
    assert same_weights(q.dit, base.dit) and same_weights(q.autoencoder, base.autoencoder)
    assert same_weights(q.conditioner, base.conditioner)
    assert_same_maths("DiT output after the round trip", dit_out(q), dit_out(base))
    z = torch.randn(1, 8, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_same_maths("decoder output after the round trip", q.decode(z), base.decode(z))
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in q.dit.parameters())


def test_lightning_ema_discriminator_and_pickled_training_state(base, tmp_path):
    online = random_pipeline(seed=7)  # the "online" weights differ from the EMA (= base)
    sd = {"diffusion." + k: v for k, v in online.state_dict().items()}
    sd.update({"diffusion_ema.ema_model." + k[len("model."):]: v for k, v in base.state_dict().items()
               if k.startswith(PREFIXES["dit"])})
    sd["diffusion_ema.initted"] = torch.tensor([1.0])
    sd["diffusion_ema.step"] = torch.tensor([12])
    sd["discriminator.model.model.transformer.project_in.weight"] = torch.zeros(3, 3)
    sd["discriminator_head.convs.0.weight"] = torch.zeros(2, 2)
    ckpt = {"state_dict": sd, "epoch": 3, "global_step": 100,
            "callbacks": {"ModelCheckpoint": Marker(), "rng": np.random.get_state()},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4}]}], "evil": Evil()}
    save_model(base, tmp_path / "m", "model.ckpt", sd=ckpt)
    _CALLED.clear()
    q = load_pipeline(str(tmp_path / "m"), device="cpu", fast=False)
    assert not _CALLED, "the checkpoint ran code while loading"
    notes = " | ".join(q.load_notes)
    assert "EMA" in notes and "discriminator" in notes and "no code from the file was run" in notes
    assert same_weights(q.dit, base.dit) and same_weights(q.autoencoder, online.autoencoder)
    assert same_weights(q.conditioner, online.conditioner)
    assert_same_maths("DiT output with the EMA weights", dit_out(q), dit_out(q, dit=base.dit))
    assert q.is_arc and "ARC training checkpoint" in notes
    r = load_pipeline(str(tmp_path / "m"), device="cpu", fast=False, ema=False, arc_post_trained=False)
    assert same_weights(r.dit, online.dit) and not r.is_arc
    assert r.defaults() == {"sampler": "euler", "steps": 100, "cfg_scale": 7.0}


def test_plain_lightning_checkpoint_without_ema_is_base_per_config(tmp_path):
    p = random_pipeline(micro_config(arc=None), seed=2)
    torch.save({"state_dict": {"diffusion." + k: v for k, v in p.state_dict().items()}}, tmp_path / "x.ckpt")
    save_model(p, tmp_path, "unused.safetensors")
    q = load_pipeline(str(tmp_path / "x.ckpt"), device="cpu", fast=False)
    assert same_weights(q.dit, p.dit) and not q.is_arc
    with pytest.raises(CheckpointError, match="EMA"):
        load_pipeline(str(tmp_path / "x.ckpt"), device="cpu", fast=False, ema=True)


def test_separate_dit_and_autoencoder_files(base, tmp_path):
    sd = base.state_dict()
    d = tmp_path / "parts"
    d.mkdir()
    with open(d / "model_config.json", "w") as f:
        json.dump(base.config, f)
    # DiT with plain DiffusionTransformer keys + the conditioner; autoencoder as a Lightning AE checkpoint.
    save_file({**{k[len("model.model."):]: v for k, v in sd.items() if k.startswith("model.model.")}}, d / "dit.st")
    cond = {k: v for k, v in sd.items() if k.startswith("conditioner.")}
    ae = {"autoencoder." + k[len("pretransform.model."):]: v for k, v in sd.items() if k.startswith("pretransform.")}
    ae["discriminator.disc.0.weight"] = torch.zeros(2)
    torch.save({"state_dict": ae}, d / "vae.ckpt")
    save_file(cond, d / "cond_only.safetensors")  # main checkpoint holding only the conditioner
    q = load_pipeline(str(d / "cond_only.safetensors"), device="cpu", fast=False, dit=str(d / "dit.st"),
                      autoencoder=str(d / "vae.ckpt"))
    assert same_weights(q.dit, base.dit) and same_weights(q.autoencoder, base.autoencoder)
    assert_same_maths("DiT output after the round trip", dit_out(q), dit_out(base))
    assert any("autoencoder-training" in n for n in q.load_notes)
    # A separate file replaces the component of a full checkpoint.
    other = random_pipeline(seed=11)
    save_model(other, tmp_path / "full")
    r = load_pipeline(str(tmp_path / "full"), device="cpu", fast=False, dit=str(d / "dit.st"))
    assert same_weights(r.dit, base.dit) and same_weights(r.autoencoder, other.autoencoder)
    assert any("replace" in n for n in r.load_notes)


def test_number_conditioner_only_config(tmp_path):
    p = random_pipeline(micro_config(text=False), seed=3)
    save_model(p, tmp_path / "m")
    q = load_pipeline(str(tmp_path / "m"), device="cpu", fast=False)
    assert not q.has_text and set(q.conditioner.conditioners) == {"seconds_total", "seconds_start"}
    assert_same_maths("DiT output after the round trip", dit_out(q), dit_out(p))
    with pytest.warns(UserWarning, match="no text conditioner"):
        audio, sr = q("ignored", seconds=0.1, steps=2, seed=0)
    assert audio.shape == (1, 2, 800) and sr == 8000


def test_missing_or_renamed_key_is_named(base, tmp_path):
    sd = dict(base.state_dict())
    sd["pretransform.model.decoder.layers.0.weight_gX"] = sd.pop("pretransform.model.decoder.layers.0.weight_g")
    save_model(base, tmp_path / "m", sd=sd)
    with pytest.raises(CheckpointError) as e:
        load_pipeline(str(tmp_path / "m"), device="cpu", fast=False)
    msg = str(e.value)
    assert "decoder.layers.0.weight_g" in msg and "weight_gX" in msg
    # no autoencoder weights at all: the error says to give the autoencoder file
    sd = {k: v for k, v in base.state_dict().items() if not k.startswith("pretransform.")}
    save_model(base, tmp_path / "n", sd=sd)
    with pytest.raises(CheckpointError, match="no autoencoder weights at all"):
        load_pipeline(str(tmp_path / "n"), device="cpu", fast=False)
    # shape mismatch and a key outside the layout
    sd = dict(base.state_dict())
    sd["model.model.transformer.project_in.weight"] = torch.zeros(3, 3)
    sd["ema.stray"] = torch.zeros(1)
    save_model(base, tmp_path / "o", sd=sd)
    with pytest.raises(CheckpointError) as e:
        load_pipeline(str(tmp_path / "o"), device="cpu", fast=False)
    assert "project_in.weight" in str(e.value) and "ema.stray" in str(e.value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = load_pipeline(str(tmp_path / "o"), device="cpu", fast=False, allow_partial=True)
    said = " | ".join(str(w.message) for w in caught if issubclass(w.category, RuntimeWarning))
    assert "shape mismatch" in said and "ema.stray" in said, said
    assert q.dit.transformer.project_in.weight.shape != (3, 3)


def test_checkpoint_without_encoder_loads_for_text_to_audio(base, tmp_path):
    sd = {k: v for k, v in base.state_dict().items() if not k.startswith("pretransform.model.encoder.")}
    save_model(base, tmp_path / "m", sd=sd)
    q = load_pipeline(str(tmp_path / "m"), device="cpu", fast=False)
    assert not q.has_encoder and any("no encoder weights" in n for n in q.load_notes)
    q("x", seconds=0.05, steps=1, short_window=True)
    with pytest.raises(ValueError, match="no encoder weights"):
        q("x", seconds=0.05, steps=1, init_audio=torch.zeros(2, 400), short_window=True)


def test_arc_fast_trainer_checkpoint(base, tmp_path):
    save_model(base, tmp_path / "base")
    g = random_pipeline(seed=5)
    state = {"format": 1, "step": 42, "config": {"model": str(tmp_path / "base")}, "fsdp": False,
             "G": g.dit.state_dict(), "ema": base.dit.state_dict(), "D": {"head.w": torch.zeros(2)},
             "opt_g": {"state": {}, "param_groups": []}, "ranks": [{"rng": {"numpy": np.random.get_state()}}]}
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "run" / "checkpoints" / "last.pt")
    q = load_pipeline(str(tmp_path / "run" / "checkpoints" / "last.pt"), device="cpu", fast=False)
    assert same_weights(q.dit, base.dit) and same_weights(q.autoencoder, base.autoencoder)
    assert q.is_arc and any("trainer checkpoint (step 42)" in n for n in q.load_notes)
    r = load_pipeline(str(tmp_path / "run" / "checkpoints" / "last.pt"), device="cpu", fast=False, ema=False)
    assert same_weights(r.dit, g.dit)


def test_trainer_export_folder_loads_as_arc(base, tmp_path):
    from arc_fast.pipeline import Pipeline
    cfg = copy.deepcopy(base.config)
    cfg["arc_fast"] = {}
    Pipeline(cfg, base.dit, base.autoencoder, base.conditioner).save(str(tmp_path / "export"))
    q = load_pipeline(str(tmp_path / "export"), device="cpu", fast=False)
    assert same_weights(q.dit, base.dit)


def test_model_kind_sources(base, tmp_path):
    cfg = micro_config(arc=None)
    save_model(base, tmp_path / "m", config=cfg)
    assert not load_pipeline(str(tmp_path / "m"), device="cpu", fast=False).is_arc
    (tmp_path / "m" / "manifest.json").write_text(json.dumps({"arc_post_trained": True}))
    assert load_pipeline(str(tmp_path / "m"), device="cpu", fast=False).is_arc
    cfg["model"]["diffusion"]["diffusion_objective"] = "rf_denoiser"  # Stable Audio's ARC marker
    save_model(base, tmp_path / "n", config=cfg)
    q = load_pipeline(str(tmp_path / "n"), device="cpu", fast=False)
    assert q.is_arc and q.defaults()["sampler"] == "pingpong"


def test_read_component_prefix_forms(base, tmp_path):
    sd = base.state_dict()
    dit = {k: v for k, v in sd.items() if k.startswith("model.model.")}
    for name, keys in (("a", dit), ("b", {k[len("model."):]: v for k, v in dit.items()}),
                       ("c", {"diffusion." + k: v for k, v in dit.items()})):
        save_file(keys, tmp_path / f"{name}.safetensors")
        got = read_component(str(tmp_path / f"{name}.safetensors"), "dit").state_dict
        assert got.keys() == dit.keys(), name
    ae = {k[len("pretransform.model."):]: v for k, v in sd.items() if k.startswith("pretransform.")}
    save_file(ae, tmp_path / "ae.safetensors")
    got = read_component(str(tmp_path / "ae.safetensors"), "autoencoder").state_dict
    assert all(k.startswith("pretransform.model.") for k in got) and len(got) == len(ae)


def _stub_t5(monkeypatch):
    from arc_fast.reference import conditioners as C

    class StubT5(C.Conditioner):  # T5 weights are not part of a Stable Audio checkpoint
        def __init__(self, output_dim, t5_model_name="t5-base", max_length=128, **kw):
            super().__init__(C.T5Conditioner.T5_MODEL_DIMS.get(t5_model_name, 768), output_dim)

    monkeypatch.setitem(C.CONDITIONER_TYPES, "t5", StubT5)


def _meta_state_dict(config):
    dit, ae, cond = build_models(config, meta=True)
    sd = {}
    for name, m in (("dit", dit), ("autoencoder", ae), ("conditioner", cond)):
        sd.update({PREFIXES[name] + k: v for k, v in m.state_dict().items()})
    return dit, ae, cond, sd


def test_sao_small_and_sao_1_0_layouts_on_meta(monkeypatch):
    _stub_t5(monkeypatch)
    dit, ae, cond, sd = _meta_state_dict(get_config("sao_small"))
    assert sum(p.numel() for p in dit.parameters()) == 340_879_488
    wrapped = {"diffusion." + k: v for k, v in sd.items()}
    wrapped.update({"diffusion_ema.ema_model." + k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")})
    res = resolve_layout({"state_dict": wrapped})
    report = check_state_dict({"dit": dit, "autoencoder": ae, "conditioner": cond}, res.state_dict)
    assert report.problems == [] and any("EMA" in n for n in res.notes)
    # Stable Audio Open 1.0: v objective, 1536 wide x 24, seconds_start + seconds_total, unprojected cond tokens.
    sao1 = get_config("sao_small")
    sao1["sample_size"] = 2097152
    sao1["model"]["conditioning"]["configs"] = [
        {"id": "prompt", "type": "t5", "config": {"t5_model_name": "t5-base", "max_length": 128}},
        {"id": "seconds_start", "type": "number", "config": {"min_val": 0, "max_val": 512}},
        {"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": 512}}]
    diff = sao1["model"]["diffusion"]
    diff.pop("diffusion_objective")
    diff["cross_attention_cond_ids"] = ["prompt", "seconds_start", "seconds_total"]
    diff["global_cond_ids"] = ["seconds_start", "seconds_total"]
    diff["config"] = {"io_channels": 64, "embed_dim": 1536, "depth": 24, "num_heads": 24, "cond_token_dim": 768,
                      "global_cond_dim": 1536, "project_cond_tokens": False,
                      "transformer_type": "continuous_transformer"}
    sao1["model"]["pretransform"]["config"]["encoder"]["requires_grad"] = False
    del sao1["arc_fast"]
    dit, ae, cond, sd = _meta_state_dict(sao1)
    n = sum(p.numel() for p in dit.parameters())
    assert 1.0e9 < n < 1.15e9, n
    report = check_state_dict({"dit": dit, "autoencoder": ae, "conditioner": cond}, sd)
    assert report.problems == []
    assert "conditioner.conditioners.seconds_start.embedder.embedding.0.weights" in sd


def test_sao_1_0_like_micro_model_generates(tmp_path):
    """The SAO 1.0 structure (v objective, unprojected cond tokens, two number conditioners) end to end."""
    cfg = micro_config(objective="v", arc=None)
    cond = cfg["model"]["conditioning"]
    cond["configs"].insert(1, {"id": "seconds_start", "type": "number", "config": {"min_val": 0, "max_val": 16}})
    diff = cfg["model"]["diffusion"]
    diff["cross_attention_cond_ids"] = ["prompt", "seconds_start", "seconds_total"]
    diff["global_cond_ids"] = ["seconds_start", "seconds_total"]
    # Unprojected 32-wide cond tokens with 32-dim heads: one kv head for two query heads, as SAO 1.0 (12 vs 24).
    cond["cond_dim"] = 32
    diff["config"].update(project_cond_tokens=False, embed_dim=64, num_heads=2, cond_token_dim=32, global_cond_dim=64)
    p = random_pipeline(cfg, seed=9)
    save_model(p, tmp_path / "m")
    q = load_pipeline(str(tmp_path / "m"), device="cpu", fast=False)
    assert q.objective == "v" and not q.is_arc and q.defaults()["sampler"] == "euler"
    a, _ = q("a", seconds=0.1, steps=3, cfg_scale=3.0, seed=1)
    b, _ = q("a", seconds=0.1, steps=3, cfg_scale=3.0, seed=1, sampler="pingpong")
    assert torch.isfinite(a).all() and a.shape == (1, 2, 800) and not torch.equal(a, b)


def test_inert_unpickler_reads_tensors_only(tmp_path):
    obj = {"w": torch.arange(4.0), "evil": Evil(), "marker": Marker(), "np": np.arange(3)}
    torch.save(obj, tmp_path / "x.pt")
    _CALLED.clear()
    got, meta, notes = read_file(str(tmp_path / "x.pt"))
    assert not _CALLED and torch.equal(got["w"], torch.arange(4.0)) and meta == {}
    assert "no code from the file was run" in notes[0]
    with pytest.raises(CheckpointError, match="no tensors"):
        resolve_layout({"a": 1})
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_file(str(tmp_path / "bad.safetensors"))


def test_int8_linear_matches_float_linear():
    lin = torch.nn.Linear(40, 24)
    q = Int8Linear.from_linear(lin)
    assert q.weight.dtype == torch.int8 and q.weight.abs().max() <= 127
    torch.testing.assert_close(q.dequantized(), lin.weight.detach(), atol=float(q.weight_scale.max()) / 2 + 1e-7,
                               rtol=0)
    x = torch.randn(3, 7, 40)
    with torch.no_grad():
        ref, got = lin(x), q(x)
    assert got.shape == ref.shape and float((got - ref).norm() / ref.norm()) < 0.05
    got_dq = q(x).detach()  # grad mode: the dequantized path
    assert float((got_dq - ref).norm() / ref.norm()) < 0.01
