"""ARC trainer on a micro model (CPU): step schedule, losses, D learning, FastDiT-vs-reference gradients,
checkpoint resume (bit-exact), NaN guard, export -> load_pipeline -> ping-pong, latent shards, config."""
import copy
import json
import os

import numpy as np
import pytest
import torch

from arc_fast.configs import get_config
from arc_fast.ops import use_backend
from arc_fast.pipeline import build_pipeline, load_pipeline
from arc_fast.train import (ARCDiscriminator, ARCTrainer, LatentDataset, NonFiniteLossError, ShardError, TrainConfig,
                            build_latent_dataset, write_shard)
from arc_fast.train.cli import main as train_main
from arc_fast.train.data import ResumableBatchSampler, collate
from arc_fast.train.distributed import state_digest
from arc_fast.train.dit import make_dit

FRAMES = 8  # latent frames per item (9 tokens with the prepended global token)


def micro_config(depth: int = 2, heads: int = 2) -> dict:
    """The bundled tiny model shrunk further: DiT 64 wide, 2 blocks, 2 heads; text encoder 32 wide."""
    cfg = get_config("tiny")
    cfg["model"]["diffusion"]["config"].update(embed_dim=64, depth=depth, num_heads=heads, cond_token_dim=32,
                                               global_cond_dim=32)
    cfg["model"]["conditioning"]["cond_dim"] = 32
    cfg["model"]["conditioning"]["configs"][0]["config"].update(dim=32, max_length=8, num_heads=2)
    return cfg


def randomize_(module, seed=0, scale=0.1):
    """Random weights everywhere (the DiT's zero-initialised outputs would hide gradient bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: micro models run on one thread


def random_pipeline(depth: int = 2, heads: int = 2):
    p = build_pipeline(micro_config(depth, heads), seed=0)
    randomize_(p.dit, seed=1)
    for blk in p.dit.transformer.layers:  # keep the LayerNorm gains near 1
        for n in (blk.pre_norm, blk.cross_attend_norm, blk.ff_norm):
            n.gamma.data = 1 + 0.1 * n.gamma.data
    return p


@pytest.fixture(scope="module")
def pipe():
    return random_pipeline()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("latents")
    g = torch.Generator().manual_seed(0)
    prompts = ["dog bark", "rain", "piano chord", "snare hit", "wind", "bird song", "engine", "speech"]
    # Structured latents (a per-prompt sinusoid + noise) so that D has something to learn.
    t = torch.linspace(0, 1, FRAMES)
    lat = torch.stack([torch.sin(2 * np.pi * (i + 1) * t).expand(16, FRAMES) * (1 + 0.1 * torch.arange(16)[:, None])
                       for i in range(8)]) + 0.1 * torch.randn(8, 16, FRAMES, generator=g)
    write_shard(str(d / "shard-0.safetensors"), lat[:6], prompts[:6], [1.0] * 6)
    write_shard(str(d / "shard-1.safetensors"), lat[6:], prompts[6:], [2.0] * 2)
    return str(d)


def make_cfg(out_dir, data_dir, **kw):
    base = dict(data=data_dir, out_dir=str(out_dir), dit_impl="fast", ops_backend="eager", batch_size=2, steps=4,
                head_channels=16, exit_layer_ix=1, gradient_checkpointing=False, progress=False, log_every=1,
                ckpt_every=1000, lr_g=1e-3, lr_d=1e-3, tensorboard=False, export_on_finish=False)
    base.update(kw)
    return TrainConfig(**base)


def fixed_batch(data_dir, n=2, start=0):
    ds = LatentDataset(data_dir, latent_channels=16)
    return collate([ds[i] for i in range(start, start + n)])


# ------------------------------------------------------------------------------------------- modules

@use_backend("eager")
def test_discriminator_score_map_and_truncated_trunk(pipe):
    for head, frames in (("convnext", 8), ("conv", 8), ("convnext", 30), ("conv", 1)):
        trunk = make_dit(pipe.dit, "fast")
        disc = ARCDiscriminator(trunk, 0, head=head, head_channels=16, head_c_mults=[1, 2], head_strides=[2, 4])
        assert len(disc.trunk.transformer.layers) == 1  # blocks after the exit are dropped
        cond = pipe.condition(["a", "b"], 1.0)
        out = disc(torch.randn(2, 16, frames), torch.rand(2), **cond)
        assert out.shape == (2, 1, disc.score_length(frames)), (head, frames, out.shape)
        out.sum().backward()
        missing = [n for n, p in disc.named_parameters() if p.grad is None]
        assert not missing, f"{head}: parameters without gradient: {missing[:5]}"
    with pytest.raises(ValueError, match="exit_layer_ix"):
        ARCDiscriminator(make_dit(pipe.dit, "fast"), 2)
    with pytest.raises(ValueError, match="head"):
        ARCDiscriminator(make_dit(pipe.dit, "fast"), 0, head="mlp")


@use_backend("eager")
def test_make_dit_copies_weights_without_aliasing(pipe):
    g = make_dit(pipe.dit, "fast")
    assert state_digest(g) == state_digest(pipe.dit)
    cond = pipe.condition(["a", "b"], 1.0)
    x, t = torch.randn(2, 16, FRAMES, generator=torch.Generator().manual_seed(0)), torch.tensor([0.3, 0.9])
    with torch.no_grad():
        torch.testing.assert_close(g(x, t, **cond), pipe.dit(x, t, **cond), rtol=1e-5, atol=1e-6)
        ema = copy.deepcopy(g)  # the trainer's EMA: must compute with its own weights
        want = ema(x, t, **cond)
        for p in g.transformer.parameters():
            p.add_(0.5)
        torch.testing.assert_close(ema(x, t, **cond), want, rtol=0, atol=0)
        assert not torch.allclose(g(x, t, **cond), want)
    assert state_digest(g) != state_digest(pipe.dit)
    assert all(p.requires_grad for p in g.parameters()) and not any(p.requires_grad for p in pipe.dit.parameters())


@pytest.mark.parametrize("impl", ["fast", "reference"])
@use_backend("eager")
def test_gradient_checkpointing_gives_the_same_gradients(pipe, impl):
    cond = pipe.condition(["a", "b"], 1.0)
    x, t = torch.randn(2, 16, FRAMES, generator=torch.Generator().manual_seed(0)), torch.tensor([0.3, 0.9])
    grads = []
    for ckpt in (False, True):
        m = make_dit(pipe.dit, impl, gradient_checkpointing=ckpt)
        (m(x, t, **cond) ** 2).sum().backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-7, msg=n)


# ------------------------------------------------------------------------------------------ the loop

def test_g_and_d_alternate_and_only_the_stepped_network_changes(pipe, data_dir, tmp_path):
    tr = ARCTrainer(make_cfg(tmp_path, data_dir), pipeline=pipe)
    it = tr._batch_iter()
    digests = lambda: (state_digest(tr.G_raw), state_digest(tr.D_raw), state_digest(tr.ema))  # noqa: E731
    before = digests()
    m0 = tr.train_step(next(it))  # step 0: G
    after_g = digests()
    assert "loss_g" in m0 and "loss_d" not in m0
    assert after_g[0] != before[0] and after_g[1] == before[1] and after_g[2] != before[2]
    m1 = tr.train_step(next(it))  # step 1: D
    after_d = digests()
    assert {"loss_d_rel", "loss_c", "loss_d", "d_acc"} <= set(m1) and "loss_g" not in m1
    assert after_d[0] == after_g[0] and after_d[1] != after_g[1] and after_d[2] == after_g[2]
    for m in (m0, m1):
        assert all(np.isfinite(v) for v in m.values()), m
    assert tr.step == 2 and tr.ema_updates == 1
    # The first EMA update copies G (decay 0).
    assert state_digest(tr.ema) == state_digest(tr.G_raw)


def _eval_d_loss(tr, batch):
    """L_D,rel of ``batch`` with the trainer's random streams pinned (same t, s, noise every call)."""
    saved = (torch.get_rng_state(), tr.t_sampler.state_dict(), tr.s_sampler.state_dict(), tr.noise_gen.get_state())
    m = tr.loss_and_grads(batch, "D")
    torch.set_rng_state(saved[0])
    tr.t_sampler.load_state_dict(saved[1])
    tr.s_sampler.load_state_dict(saved[2])
    tr.noise_gen.set_state(saved[3])
    tr.opt_d.zero_grad(set_to_none=True)
    return m["loss_d_rel"], m["loss_c"]


def test_discriminator_loss_falls_with_generator_frozen(pipe, data_dir, tmp_path):
    tr = ARCTrainer(make_cfg(tmp_path, data_dir, lr_d=3e-3, w_con=0.0), pipeline=pipe)
    batch = fixed_batch(data_dir, 4)
    g0 = state_digest(tr.G_raw)
    rel0, _ = _eval_d_loss(tr, batch)
    for _ in range(8):
        tr.step = 1  # every step a D step: G frozen
        tr.train_step(batch)
    rel1, _ = _eval_d_loss(tr, batch)
    assert state_digest(tr.G_raw) == g0
    assert rel1 < rel0 - 0.05, (rel0, rel1)


def test_contrastive_loss_uses_a_derangement(pipe, data_dir, tmp_path):
    tr = ARCTrainer(make_cfg(tmp_path, data_dir), pipeline=pipe)
    batch = fixed_batch(data_dir, 3)
    cond, parts = tr._condition(batch["prompts"], batch["seconds_total"])
    perm = torch.tensor([2, 0, 1])
    wrong = tr._deranged(parts, perm)
    torch.testing.assert_close(wrong["cross_attn_cond"][:, :8], cond["cross_attn_cond"][perm][:, :8])
    # seconds_total is the sample's own: its token (last) and the global embedding are not permuted.
    torch.testing.assert_close(wrong["cross_attn_cond"][:, 8:], cond["cross_attn_cond"][:, 8:])
    torch.testing.assert_close(wrong["global_embed"], cond["global_embed"])
    with pytest.raises(ValueError, match=">= 2"):
        tr.train_step(fixed_batch(data_dir, 1))


def test_each_sample_reaches_g_and_d_with_its_own_conditioning(pipe, data_dir, tmp_path):
    """Wiring, as the networks see it: every G and D forward of a G step and a D step gets, row by row, the
    conditioning of its own sample (real and fake chunks alike), except the contrastive chunk, whose prompt part
    comes from another sample while its seconds stay its own; the real/fake/wrong chunks share their noise level."""
    from arc_fast.reference.conditioners import assemble_dit_inputs

    tr = ARCTrainer(make_cfg(tmp_path, data_dir, batch_size=4), pipeline=pipe)
    batch = fixed_batch(data_dir, n=4, start=4)          # seconds 1, 1, 2, 2: the seconds token tells rows apart
    own = [assemble_dit_inputs(pipe.conditioner([{"prompt": p, "seconds_start": 0, "seconds_total": sec}], "cpu"),
                               pipe.cross_ids, pipe.global_ids) for p, sec in zip(batch["prompts"], batch["seconds_total"])]
    own_cross = torch.cat([o["cross_attn_cond"] for o in own])
    own_glob = torch.cat([o["global_embed"] for o in own])
    lp = pipe.conditioner.conditioners["prompt"].max_length
    calls = []
    # Batched vs one-sample conditioner calls differ by float rounding (~1e-7); different samples by O(1).
    same = lambda a, b: torch.allclose(a, b, rtol=0, atol=1e-5)  # noqa: E731

    def spy(net, name):
        real = net.forward

        def forward(x, t, **kw):
            calls.append((name, t.detach().clone(), kw["cross_attn_cond"].detach().clone(),
                          kw["global_embed"].detach().clone()))
            return real(x, t, **kw)
        net.forward = forward

    spy(tr.G_raw, "G")
    spy(tr.D_raw, "D")
    tr.loss_and_grads(batch, "G")
    tr.loss_and_grads(batch, "D")
    assert {c[0] for c in calls} == {"G", "D"}
    B = 4
    saw_wrong = False
    for name, t, cross, glob in calls:
        assert cross.shape[0] % B == 0, name
        chunks = cross.shape[0] // B
        for j in range(chunks):
            c, g = cross[j * B:(j + 1) * B], glob[j * B:(j + 1) * B]
            assert same(g, own_glob), f"{name} chunk {j}: global embedding of other samples"
            if same(c, own_cross):
                continue
            # The contrastive chunk (D step): prompts deranged, seconds kept.
            assert name == "D" and j == chunks - 1, f"{name} chunk {j} carries other samples' conditioning"
            for i in range(B):
                src = [k for k in range(B) if same(c[i, :lp], own_cross[k, :lp])]
                assert src and src[0] != i, f"row {i}: prompt tokens are not another sample's"
            assert same(c[:, lp:], own_cross[:, lp:]), "the contrastive chunk changed the seconds tokens"
            saw_wrong = True
        if name == "D" and chunks > 1:
            for j in range(1, chunks):
                assert torch.equal(t[j * B:(j + 1) * B], t[:B]), "chunks of one D forward differ in noise level"
    assert saw_wrong, "no D forward saw deranged prompts (the contrastive term did not run)"


def test_r1r2_penalty_is_logged_and_added(pipe, data_dir, tmp_path):
    tr = ARCTrainer(make_cfg(tmp_path, data_dir, r1r2_gamma=2.0), pipeline=pipe)
    m = tr.loss_and_grads(fixed_batch(data_dir), "D")
    assert m["r1"] > 0 and m["r2"] > 0
    assert m["loss_d"] == pytest.approx(m["loss_d_rel"] + m["loss_c"] + 2.0 * (m["r1"] + m["r2"]) / 2, rel=1e-5)


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_fastdit_triton_gradients_match_reference(data_dir, tmp_path):
    """One G and one D step's gradients: FastDiT on the Triton kernels (interpreter on the CPU) vs the eager
    reference DiT on the same weights. One block, one 64-dim head (half of it rotary): the interpreter runs
    every kernel program in Python."""
    pytest.importorskip("triton")
    one_block = random_pipeline(depth=1, heads=1)
    batch = fixed_batch(data_dir)
    out = {}
    for impl, backend in (("reference", None), ("fast", "triton")):
        tr = ARCTrainer(make_cfg(tmp_path / impl, data_dir, dit_impl=impl, ops_backend=backend, exit_layer_ix=0),
                        pipeline=one_block)
        mg = tr.loss_and_grads(batch, "G")
        md = tr.loss_and_grads(batch, "D")
        out[impl] = (mg, md, _grads(tr.G_raw), _grads(tr.D_raw))
    (mg_r, md_r, gg_r, gd_r), (mg_f, md_f, gg_f, gd_f) = out["reference"], out["fast"]
    assert mg_f["loss_g"] == pytest.approx(mg_r["loss_g"], rel=1e-4)
    assert md_f["loss_d"] == pytest.approx(md_r["loss_d"], rel=1e-4)
    assert gg_r.keys() == gg_f.keys() and gd_r.keys() == gd_f.keys() and len(gd_r) > 0
    for name, ref_g, fast_g in [("G", gg_r, gg_f), ("D", gd_r, gd_f)]:
        for k in ref_g:
            scale = ref_g[k].abs().max().item()
            err = (fast_g[k] - ref_g[k]).abs().max().item()
            assert err <= 2e-4 * scale + 1e-6, f"{name}.{k}: max|diff| {err:.3e} vs max|ref| {scale:.3e}"


def test_resume_is_bit_exact(pipe, data_dir, tmp_path):
    n = 6
    straight = ARCTrainer(make_cfg(tmp_path / "a", data_dir, r1r2_gamma=1.0), pipeline=pipe)
    straight.train(n)
    half = ARCTrainer(make_cfg(tmp_path / "b", data_dir, r1r2_gamma=1.0), pipeline=pipe)
    half.train(n // 2)  # writes last.pt at step 3 (a G step comes next: the parity is restored too)
    del half
    resumed = ARCTrainer(make_cfg(tmp_path / "b", data_dir, r1r2_gamma=1.0), pipeline=pipe, resume=True)
    assert resumed.step == n // 2
    resumed.train(n)
    for what in ("G_raw", "D_raw", "ema"):
        assert state_digest(getattr(resumed, what)) == state_digest(getattr(straight, what)), what
    for opt in ("opt_g", "opt_d"):
        a, b = getattr(straight, opt).state_dict()["state"], getattr(resumed, opt).state_dict()["state"]
        assert all(torch.equal(a[i]["exp_avg_sq"], b[i]["exp_avg_sq"]) for i in a)
    la = [json.loads(x) for x in open(tmp_path / "a" / "metrics.jsonl")]
    lb = [json.loads(x) for x in open(tmp_path / "b" / "metrics.jsonl")]
    strip = lambda m: {k: v for k, v in m.items() if k != "step_time"}  # noqa: E731
    assert [strip(m) for m in la] == [strip(m) for m in lb]  # same losses at every step, across the restart


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(pipe, data_dir, tmp_path):
    tr = ARCTrainer(make_cfg(tmp_path, data_dir, ckpt_every=2, keep_checkpoints=0), pipeline=pipe)
    tr.train(2)
    ckpt = tr.checkpoint_path("last")
    good = torch.load(ckpt, weights_only=True)
    assert good["step"] == 2
    with torch.no_grad():  # simulate a diverged generator
        next(tr.G_raw.parameters()).fill_(float("nan"))
    d_before = state_digest(tr.D_raw)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss_g .* step 2.*last\.pt"):
        tr.train(6)
    assert tr.step == 2 and state_digest(tr.D_raw) == d_before
    again = torch.load(ckpt, weights_only=True)
    assert again["step"] == 2 and all(torch.isfinite(v).all() for v in again["G"].values())
    assert sorted(os.listdir(os.path.dirname(ckpt))) == ["last.pt"]  # no temp files left behind


def test_export_loads_as_arc_model_and_samples_pingpong(pipe, data_dir, tmp_path):
    tr = ARCTrainer(make_cfg(tmp_path, data_dir, export_on_finish=True, log_every=2), pipeline=pipe)
    tr.train(2)
    export = os.path.join(str(tmp_path), "export")
    loaded = load_pipeline(export, device="cpu", fast=False)
    assert loaded.is_arc and loaded.defaults()["sampler"] == "pingpong"
    assert state_digest(loaded.dit) == state_digest(tr.ema)
    assert state_digest(loaded.dit) != state_digest(pipe.dit)  # the EMA moved off the pretrained weights
    cfg = json.load(open(os.path.join(export, "model_config.json")))
    assert cfg["arc_fast"]["arc_post_trained"] is True and cfg["arc_fast"]["arc_training"]["steps"] == 2
    audio, sr = loaded("dog bark", seconds=FRAMES * 2048 / 44100, steps=2, seed=0)
    assert audio.shape == (1, 2, FRAMES * 2048) and torch.isfinite(audio).all()
    lines = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert [m["step"] for m in lines] == [2] and {"loss_g", "loss_d", "d_acc", "grad_norm_g", "grad_norm_d",
                                                  "lr_g", "lr_d", "step_time"} <= set(lines[0])


# ------------------------------------------------------------------------------------------------ data

def test_latent_dataset_reads_shards_and_sidecars(data_dir, tmp_path):
    ds = LatentDataset(data_dir, latent_channels=16)
    assert len(ds) == 8 and ds.frames == FRAMES and ds[6]["prompt"] == "engine" and ds[6]["seconds_total"] == 2.0
    from safetensors.torch import save_file
    save_file({"latents": torch.zeros(2, 16, 4)}, str(tmp_path / "s.safetensors"))
    with open(tmp_path / "s.jsonl", "w") as f:
        f.write(json.dumps({"prompt": "x"}) + "\n" + json.dumps({"prompt": "y", "seconds_total": 3}) + "\n")
    side = LatentDataset(str(tmp_path), default_seconds=1.5)
    assert [side[i]["prompt"] for i in range(2)] == ["x", "y"]
    assert [side[i]["seconds_total"] for i in range(2)] == [1.5, 3.0]


def test_crops_are_reproducible(data_dir):
    ds = LatentDataset(data_dir, crop_frames=5, seed=3)
    full = LatentDataset(data_dir)[2]["latents"]
    starts = set()
    for epoch in range(8):
        a, b = ds[(2, epoch)]["latents"], ds[(2, epoch)]["latents"]
        assert a.shape == (16, 5) and torch.equal(a, b)
        starts |= {i for i in range(FRAMES - 4) if torch.equal(a, full[:, i:i + 5])}
    assert len(starts) > 1  # the offset changes with the epoch


@pytest.mark.parametrize("case, match", [
    ("no_latents", "no 'latents' tensor"),
    ("rank2", r"must be \(N, C, T\)"),
    ("channels", "8 channels, the model expects 16"),
    ("count", "3 prompts for 2 latents"),
    ("no_prompts", "no prompts"),
    ("garbage", "not a readable safetensors"),
    ("int", "floating point"),
])
def test_bad_shards_name_the_file(tmp_path, case, match):
    from safetensors.torch import save_file
    path = str(tmp_path / f"{case}.safetensors")
    meta = {"prompts": json.dumps(["a", "b"])}
    if case == "no_latents":
        save_file({"x": torch.zeros(2, 16, 4)}, path, metadata=meta)
    elif case == "rank2":
        save_file({"latents": torch.zeros(2, 16)}, path, metadata=meta)
    elif case == "channels":
        save_file({"latents": torch.zeros(2, 8, 4)}, path, metadata=meta)
    elif case == "count":
        save_file({"latents": torch.zeros(2, 16, 4)}, path, metadata={"prompts": json.dumps(["a", "b", "c"])})
    elif case == "no_prompts":
        save_file({"latents": torch.zeros(2, 16, 4)}, path)
    elif case == "int":
        save_file({"latents": torch.zeros(2, 16, 4, dtype=torch.int32)}, path, metadata=meta)
    else:
        open(path, "wb").write(b"\x00garbage" * 10)
    with pytest.raises(ShardError, match=match) as err:
        LatentDataset(str(tmp_path), latent_channels=16)
    assert f"{case}.safetensors" in str(err.value)


def test_batch_sampler_splits_ranks_and_resumes():
    full = ResumableBatchSampler(10, 2, seed=1)
    it = iter(full)
    first = [next(it) for _ in range(7)]  # 5 batches per epoch: crosses into epoch 1
    assert [e for b in first for _, e in b] == [0] * 10 + [1] * 4
    assert sorted(i for b in first[:5] for i, _ in b) == list(range(10))
    later = iter(ResumableBatchSampler(10, 2, seed=1, start_batch=4))
    assert [next(later) for _ in range(3)] == first[4:7]
    r0 = [i for b in list(_take(ResumableBatchSampler(10, 2, 0, 2, seed=1), 2)) for i, _ in b]
    r1 = [i for b in list(_take(ResumableBatchSampler(10, 2, 1, 2, seed=1), 2)) for i, _ in b]
    assert not set(r0) & set(r1)
    with pytest.raises(ValueError, match="too small"):
        ResumableBatchSampler(3, 4)


def _take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_build_latent_dataset_encodes_audio(pipe, tmp_path):
    sf = pytest.importorskip("soundfile")   # a package dependency, absent where installed with --no-deps
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    rng = np.random.default_rng(0)
    n = FRAMES * 2048
    sf.write(str(audio_dir / "a.wav"), 0.1 * rng.standard_normal((n, 2)).astype(np.float32), 44100)
    sf.write(str(audio_dir / "b.wav"), 0.1 * rng.standard_normal(n // 2).astype(np.float32), 44100)  # mono, short
    with open(tmp_path / "captions.csv", "w") as f:
        f.write("file,caption\na.wav,white noise\nb.wav,\"quiet, mono\"\n")
    out = tmp_path / "shards"
    paths = build_latent_dataset(pipe, str(audio_dir), str(tmp_path / "captions.csv"), str(out),
                                 seconds=n / 44100, shard_size=1)
    assert len(paths) == 2
    ds = LatentDataset(str(out), latent_channels=16)
    assert [ds[i]["prompt"] for i in range(2)] == ["white noise", "quiet, mono"]
    assert ds[1]["seconds_total"] == pytest.approx(n / 2 / 44100, abs=1e-3)
    wav, _ = sf.read(str(audio_dir / "a.wav"), dtype="float32", always_2d=True)
    want = pipe.autoencoder.encode(torch.from_numpy(wav.T.copy())[None], sample=False)[0]
    torch.testing.assert_close(ds[0]["latents"], want)
    sf.write(str(audio_dir / "c.wav"), np.zeros(4096, np.float32), 22050)
    with open(tmp_path / "c.jsonl", "w") as f:
        f.write(json.dumps({"file": "c.wav", "caption": "x"}) + "\n")
    with pytest.raises(ValueError, match="22050 Hz, the model needs 44100"):
        build_latent_dataset(pipe, str(audio_dir), str(tmp_path / "c.jsonl"), str(tmp_path / "o2"))
    build_latent_dataset(pipe, str(audio_dir), str(tmp_path / "c.jsonl"), str(tmp_path / "o3"), seconds=n / 44100,
                         resample=True)
    item = LatentDataset(str(tmp_path / "o3"))[0]
    assert item["latents"].shape == (16, FRAMES) and item["seconds_total"] == pytest.approx(4096 / 22050, abs=1e-3)


# ---------------------------------------------------------------------------------------------- config

def test_config_rejects_unknown_and_bad_values(tmp_path):
    with pytest.raises(ValueError, match=r"'lr_gen' \(did you mean 'lr_g'\?\)"):
        TrainConfig.from_dict({"lr_gen": 1e-4})
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=1)
    with pytest.raises(ValueError, match="t_dist"):
        TrainConfig(t_dist="cosine")
    with pytest.raises(ValueError, match="s_dist_params"):
        TrainConfig(s_dist="uniform", s_dist_params={"mean": 1})
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"steps": 3, "head": "conv", "betas": [0.5, 0.9]}))
    cfg = TrainConfig.from_json(str(p))
    assert cfg.steps == 3 and cfg.head == "conv" and cfg.betas == [0.5, 0.9] and cfg.batch_size == 4
    assert cfg.replace(steps=5).steps == 5


def test_cli_runs_and_reports_errors_in_one_line(pipe, data_dir, tmp_path, capsys):
    model_dir = tmp_path / "model"
    pipe.save(str(model_dir))
    cfg = make_cfg(tmp_path / "run", data_dir, model=str(model_dir), steps=2, export_on_finish=True).to_dict()
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps(cfg))
    assert train_main(["--config", str(p), "--set", "steps=2"]) == 0
    assert "done at step 2" in capsys.readouterr().out
    assert os.path.isfile(tmp_path / "run" / "export" / "model.safetensors")
    assert train_main(["--config", str(p), "--set", "steps=4", "--resume"]) == 0
    assert json.loads(open(tmp_path / "run" / "metrics.jsonl").readlines()[-1])["step"] == 4
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"stepz": 3}))
    assert train_main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown key(s) 'stepz'" in err
