"""The recipe of the bundled tiny model: its config and the training stages run by ``scripts/train_tiny``.

Stages (each a function here, a thin CLI in ``scripts/train_tiny/0N_*.py``, a seconds-long version in
``tests/test_tiny_training.py``):

1. ``train_autoencoder``: a small Oobleck VAE on random crops of synthetic clips, multi-resolution STFT +
   time-domain L1 + a small KL term (no adversarial loss); the latent scale is folded into the weights so
   the latents have unit standard deviation. ``encode_dataset`` then writes latent shards (the ARC trainer's
   format, ``arc_fast.train.data``).
2. ``pretrain_dit``: rectified-flow pretraining of a fresh DiT jointly with the hash text encoder and the
   ``seconds_total`` embedder, CFG dropout 0.1, EMA; writes a base (non-ARC) model folder.
3. ``arc_posttrain``: ARC with the project's ``ARCTrainer`` from the base model (``w_con=0`` for the
   ablation without the contrastive loss); writes an ARC model folder.

Everything is seeded; the numbers each run produced are written beside its outputs (``*.json``).
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
import typing as tp

import numpy as np
import torch
import torch.nn.functional as F

from ..configs import diffusion_cond_config
from .synthetic import SAMPLE_RATE, WINDOW, make_clip

#: The trained tiny model: SAO Small's architecture family scaled down (Oobleck VAE with hop 32 and 16 latent
#: channels, hash text encoder + seconds_total, a 4-block DiT of width 128 on 8-frame patches), window 65536.
#: Patches of 8 frames (256 tokens): the DiT has no skip from its input to its output, so its 128-wide trunk
#: must carry the noise it predicts (v = eps - x0); a patch of p frames holds 16 p values, and with p = 64 or
#: 16 (1024 or 256 values) the loss plateaued (~1.05 / ~0.8). p = 4 learned more per step but each step cost
#: 2.3x as much; in equal CPU time p = 8 reached the lower loss.
TINY_TRAINED: dict = diffusion_cond_config(
    sample_size=WINDOW, sample_rate=SAMPLE_RATE, ae_channels=8, c_mults=[2, 4, 8], strides=[2, 4, 4], latent_dim=16,
    prompt={"type": "hash_text", "config": {"dim": 64, "max_length": 16, "num_layers": 1, "num_heads": 4,
                                            "vocab_size": 1024}},
    cond_dim=64, max_seconds=2, dit={"patch_size": 8, "embed_dim": 128, "depth": 4, "num_heads": 4},
    arc_post_trained=False)


def tiny_config() -> dict:
    """A deep copy of ``TINY_TRAINED``."""
    return copy.deepcopy(TINY_TRAINED)


def _log(path: str | None, rec: dict) -> None:
    line = json.dumps(rec)
    print(line, flush=True)
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def _write_json(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------- stage 1: VAE

def stft_mag(x: torch.Tensor, n_fft: int) -> torch.Tensor:
    """|STFT| of x (B, N) with a Hann window, hop n_fft/4: (B, n_fft/2 + 1, frames)."""
    win = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    return torch.stft(x, n_fft, hop_length=n_fft // 4, window=win, return_complex=True).abs()


def mrstft_loss(y: torch.Tensor, x: torch.Tensor, ffts: tp.Sequence[int] = (2048, 512, 128)) -> torch.Tensor:
    """Multi-resolution STFT loss of reconstruction y vs target x, both (B, C, N): per resolution,
    spectral convergence ||X| - |Y||_F / ||X||_F plus mean |log(|X| + 1e-3) - log(|Y| + 1e-3)|; averaged."""
    y2, x2 = y.reshape(-1, y.shape[-1]), x.reshape(-1, x.shape[-1])
    total = y.new_zeros(())
    for n in ffts:
        ym, xm = stft_mag(y2, n), stft_mag(x2, n)
        sc = torch.linalg.norm(xm - ym) / (torch.linalg.norm(xm) + 1e-7)
        lm = (torch.log(xm + 1e-3) - torch.log(ym + 1e-3)).abs().mean()
        total = total + sc + lm
    return total / len(ffts)


def _crop_batch(pool: np.ndarray, seconds: np.ndarray, rng: np.random.Generator, batch: int, crop: int) -> torch.Tensor:
    """Random crops (batch, 2, crop) from a pool of clips, mostly inside the sounding part."""
    out = np.empty((batch, 2, crop), dtype=np.float32)
    for b in range(batch):
        i = int(rng.integers(pool.shape[0]))
        sound = int(seconds[i] * SAMPLE_RATE)
        hi = max(1, min(pool.shape[-1] - crop, sound - crop // 2))
        s = int(rng.integers(0, hi + 1))
        out[b] = pool[i, :, s:s + crop]
    return torch.from_numpy(out)


def _budget_cosine(opt, steps: int, time_limit: float | None, t0: float, warm: int, floor: float):
    """Linear warm-up over ``warm`` steps, then a cosine from 1 to ``floor`` over whichever budget runs out first
    (``steps``, or ``time_limit`` seconds from ``t0``): a run stopped by its time limit still ends at a low
    learning rate instead of mid-schedule."""
    def factor(n: int) -> float:
        prog = min(n, steps) / steps
        if time_limit:
            prog = max(prog, min(1.0, (time.time() - t0) / time_limit))
        return min(1.0, (n + 1) / warm) * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * prog)))
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def make_pool(n: int, seed: int, split: str = "train", window: int = WINDOW, tone_share: float = 0.0):
    """n clips as (audio (n, 2, window) float32, seconds (n,), captions, params).

    tone_share: the first ``round(n * tone_share)`` clips are forced to be tones (index-seeded as usual), the rest
    follow the dataset's family mix; pitch is what the evaluation measures, so the VAE can be shown more of it.
    """
    n_tone = int(round(n * tone_share))
    clips = [make_clip(seed, i, split, window, family="tone" if i < n_tone else None) for i in range(n)]
    return (np.stack([c.audio for c in clips]), np.array([c.seconds for c in clips]),
            [c.caption for c in clips], [c.params for c in clips])


def build_autoencoder(config: dict | None = None, seed: int = 0):
    """A freshly initialised Oobleck VAE for ``config`` (default ``TINY_TRAINED``)."""
    from ..reference.autoencoder import autoencoder_from_config
    torch.manual_seed(seed)
    return autoencoder_from_config((config or TINY_TRAINED)["model"]["pretransform"])


def train_autoencoder(out_dir: str, steps: int = 600, batch: int = 8, crop: int = 8192, lr: float = 1e-3,
                      kl_weight: float = 1e-4, l1_weight: float = 0.1, pool_clips: int = 384, seed: int = 0,
                      log_every: int = 25, time_limit: float | None = None, init: str | None = None,
                      ffts: tp.Sequence[int] = (2048, 512, 128), grad_clip: float = 5.0,
                      freeze_encoder: bool = False, tone_share: float = 0.0, latent_noise: float = 0.0) -> dict:
    """Train the VAE (from ``init``, a saved state dict, when given); writes ``<out_dir>/autoencoder.pt`` (state dict, latent scale folded in) and
    ``autoencoder.json`` (settings, steps done, final losses, latent std before folding). Returns that dict.

    time_limit: stop early after this many seconds (the steps actually done are recorded).
    freeze_encoder: fine-tune the decoder only (latents already encoded with ``init`` stay valid; no KL term,
    no scale folding).
    latent_noise: decode latents + N(0, s^2) with s ~ U(0, latent_noise) per clip (0: plain reconstruction).
    """
    os.makedirs(out_dir, exist_ok=True)
    log_path = os.path.join(out_dir, "autoencoder_log.jsonl")
    if os.path.exists(log_path):
        os.remove(log_path)
    ae = build_autoencoder(seed=seed).train()
    if init:
        ae.load_state_dict(torch.load(init, map_location="cpu", weights_only=True))
    if freeze_encoder:
        ae.encoder.requires_grad_(False).eval()
    pool, seconds, _, _ = make_pool(pool_clips, seed, tone_share=tone_share)
    rng = np.random.default_rng([seed, 1])
    opt = torch.optim.AdamW([p for p in ae.parameters() if p.requires_grad], lr=lr, betas=(0.8, 0.99), weight_decay=0.0)
    t0 = time.time()

    sched = _budget_cosine(opt, steps, time_limit, t0, warm=50, floor=0.1)
    gen = torch.Generator().manual_seed(seed)
    hist: dict[str, list] = {}
    done = 0
    for step in range(steps):
        x = _crop_batch(pool, seconds, rng, batch, crop)
        with torch.set_grad_enabled(not freeze_encoder):
            z, info = ae.encode(x, return_info=True, generator=gen)
        if latent_noise > 0:
            # Generated latents are never exactly on the encoder's manifold; a decoder that has seen noisy
            # latents renders small errors as small errors instead of a buzz at the latent frame rate.
            level = latent_noise * torch.rand(z.shape[0], 1, 1, generator=gen)
            z = z + level * torch.randn(z.shape, generator=gen)
        y = ae.decode(z)
        spec = mrstft_loss(y, x, ffts)
        l1 = (y - x).abs().mean()
        loss = spec + l1_weight * l1 + (0.0 if freeze_encoder else kl_weight) * info["kl"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(ae.parameters(), grad_clip)
        if not torch.isfinite(loss):
            raise RuntimeError(f"autoencoder: non-finite loss at step {step}")
        if float(gn) > 100 * grad_clip:
            # A rare exploding batch: skip it rather than let a clipped but huge update through.
            opt.zero_grad(set_to_none=True)
            sched.step()
            continue
        opt.step()
        sched.step()
        done = step + 1
        for k, v in (("spec", spec), ("l1", l1), ("kl", info["kl"]), ("grad_norm", gn)):
            hist.setdefault(k, []).append(float(v.detach()))
        if done % log_every == 0 or done == steps:
            _log(log_path, {"step": done, "time": round(time.time() - t0, 1),
                            **{k: round(float(np.mean(v[-log_every:])), 5) for k, v in hist.items()}})
        if time_limit is not None and time.time() - t0 > time_limit:
            break
    ae.eval()
    with torch.no_grad():
        lat = torch.cat([ae.encode(torch.from_numpy(pool[i:i + 16]), sample=False) for i in range(0, min(64, pool_clips), 16)])
    std = float(lat.std())
    if not freeze_encoder:
        fold_latent_scale(ae, std)
    summary = {"steps_requested": steps, "steps_done": done, "batch": batch, "crop": crop, "lr": lr, "init": init,
               "ffts": list(ffts), "grad_clip": grad_clip, "freeze_encoder": freeze_encoder, "tone_share": tone_share,
               "latent_noise": latent_noise, "time_limit": time_limit,
               "kl_weight": kl_weight, "l1_weight": l1_weight, "pool_clips": pool_clips, "seed": seed,
               "seconds": round(time.time() - t0, 1), "latent_std_before_fold": std,
               "final": {k: float(np.mean(v[-log_every:])) for k, v in hist.items()}}
    torch.save(ae.state_dict(), os.path.join(out_dir, "autoencoder.pt"))
    _write_json(os.path.join(out_dir, "autoencoder.json"), summary)
    return summary


@torch.no_grad()
def fold_latent_scale(ae, scale: float) -> None:
    """Make the VAE's latents ``1/scale`` times smaller without changing its reconstructions: the encoder's
    mean rows are divided by ``scale`` and the decoder's first convolution multiplied by it (exact for the
    posterior mean; the posterior stdev is left as it is)."""
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    last = ae.encoder.layers[-1]
    d = ae.latent_dim
    last.weight_g[:d] /= scale
    if last.bias is not None:
        last.bias[:d] /= scale
    ae.decoder.layers[0].weight_g *= scale


@torch.no_grad()
def encode_dataset(ae, out_dir: str, n: int, seed: int = 0, split: str = "train", batch: int = 16,
                   shard_size: int = 512) -> list[str]:
    """Encode ``n`` synthetic clips of ``(seed, split)`` into latent shards (posterior means) under ``out_dir``;
    a ``params.jsonl`` beside them keeps every clip's parameters. Returns the shard paths."""
    from ..train.data import write_shard
    os.makedirs(out_dir, exist_ok=True)
    ae.eval()
    paths, lats, prompts, secs = [], [], [], []
    with open(os.path.join(out_dir, "params.jsonl"), "w") as pf:
        for i0 in range(0, n, batch):
            clips = [make_clip(seed, i, split) for i in range(i0, min(n, i0 + batch))]
            z = ae.encode(torch.from_numpy(np.stack([c.audio for c in clips])), sample=False)
            lats.append(z.float())
            for c in clips:
                prompts.append(c.caption)
                secs.append(c.seconds)
                pf.write(json.dumps({"prompt": c.caption, "seconds_total": c.seconds, "params": c.params}) + "\n")
            if sum(x.shape[0] for x in lats) >= shard_size or i0 + batch >= n:
                allz = torch.cat(lats)
                p = os.path.join(out_dir, f"shard-{len(paths):05d}.safetensors")
                paths.append(write_shard(p, allz, prompts, secs))
                lats, prompts, secs = [], [], []
    return paths


def load_autoencoder(path: str, config: dict | None = None):
    ae = build_autoencoder(config)
    ae.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return ae.eval()


# ----------------------------------------------------------------------------------- stage 2: RF pretrain

def _load_latents(folder: str):
    from ..train.data import LatentDataset
    ds = LatentDataset(folder)
    lat = torch.stack([ds[i]["latents"] for i in range(len(ds))])
    prompts = [ds.records[i]["prompt"] for i in range(len(ds))]
    secs = [float(ds.records[i]["seconds_total"] or 0.0) for i in range(len(ds))]
    return lat, prompts, secs


def pretrain_dit(out_dir: str, autoencoder_path: str, latents_dir: str, steps: int = 3000, batch: int = 32,
                 lr: float = 1e-3, cfg_dropout: float = 0.1, ema_beta: float = 0.999, seed: int = 0,
                 log_every: int = 50, time_limit: float | None = None, check_steps: int = 25,
                 snapshot_every: int = 0, tone_weight: float = 1.0, patch_size: int | None = None) -> dict:
    """Rectified-flow pretraining: v = eps - x0 regressed at t ~ 0.5 logit-normal(0, 1) + 0.5 U(0, 1),
    DiT + text/seconds conditioners trained jointly (AdamW, warm-up, cosine), EMA of both.

    Writes ``<out_dir>/model_ema`` and ``<out_dir>/model_raw``, copies the one with the better ``pitch_check``
    (Euler ``check_steps`` steps, CFG 4) to the base model folder ``<out_dir>/model``, and writes
    ``<out_dir>/pretrain.json``. Returns the summary dict.
    """
    from ..pipeline import Pipeline, build_models
    from ..reference.conditioners import assemble_dit_inputs
    os.makedirs(out_dir, exist_ok=True)
    log_path = os.path.join(out_dir, "pretrain_log.jsonl")
    if os.path.exists(log_path):
        os.remove(log_path)
    config = tiny_config()
    if patch_size is not None:
        config["model"]["diffusion"]["config"]["patch_size"] = patch_size
    torch.manual_seed(seed)
    dit, ae, cond = build_models(config)
    ae.load_state_dict(torch.load(autoencoder_path, map_location="cpu", weights_only=True))
    ae.eval().requires_grad_(False)
    lat, prompts, secs = _load_latents(latents_dir)
    pipe = Pipeline(config, dit, ae, cond)
    params = list(dit.parameters()) + list(cond.parameters())
    ema_dit, ema_cond = copy.deepcopy(dit).eval(), copy.deepcopy(cond).eval()
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.01)
    warm = max(1, min(200, steps // 10))
    t0 = time.time()

    sched = _budget_cosine(opt, steps, time_limit, t0, warm=warm, floor=0.05)
    gen = torch.Generator().manual_seed(seed)
    dit.train()
    cond.train()
    hist: list[float] = []
    done = 0
    n = lat.shape[0]
    # Pitch is the hardest thing for a hop-32 DiT to pick up (it must shape the waveform itself), so tones
    # can be drawn ``tone_weight`` times as often as other clips.
    weights = torch.tensor([tone_weight if " tone at " in p else 1.0 for p in prompts], dtype=torch.float64)
    for step in range(steps):
        idx = (torch.randint(0, n, (batch,), generator=gen) if tone_weight == 1.0
               else torch.multinomial(weights, batch, replacement=True, generator=gen))
        x0 = lat[idx]
        meta = [{"prompt": prompts[i], "seconds_start": 0, "seconds_total": secs[i]} for i in idx.tolist()]
        parts = cond(meta, "cpu")
        c = assemble_dit_inputs(parts, pipe.cross_ids, pipe.global_ids)
        u = torch.rand(batch, generator=gen)
        ln = torch.sigmoid(torch.randn(batch, generator=gen))
        t = torch.where(torch.rand(batch, generator=gen) < 0.5, ln, u)
        eps = torch.randn(x0.shape, generator=gen)
        tt = t.view(-1, 1, 1)
        x_t = (1 - tt) * x0 + tt * eps
        # Conditioning dropout drawn here (not inside the DiT) so it follows this generator.
        drop = (torch.rand(batch, generator=gen) < cfg_dropout).view(-1, 1, 1)
        c["cross_attn_cond"] = torch.where(drop, torch.zeros_like(c["cross_attn_cond"]), c["cross_attn_cond"])
        v = dit(x_t, t, **c)
        loss = F.mse_loss(v, eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        if not torch.isfinite(loss):
            raise RuntimeError(f"pretrain: non-finite loss at step {step}")
        opt.step()
        sched.step()
        decay = min(ema_beta, 1 - (1 + step) ** -0.75) if step > 0 else 0.0
        with torch.no_grad():
            for src, dst in ((dit, ema_dit), (cond, ema_cond)):
                for p, q in zip(src.parameters(), dst.parameters()):
                    q.lerp_(p, 1 - decay)
        done = step + 1
        hist.append(float(loss.detach()))
        if done % log_every == 0 or done == steps:
            _log(log_path, {"step": done, "time": round(time.time() - t0, 1), "loss": round(float(np.mean(hist[-log_every:])), 5),
                            "lr": opt.param_groups[0]["lr"]})
        if snapshot_every and done % snapshot_every == 0:
            # Lets a second process check prompt adherence mid-run without stopping this one.
            torch.save({"step": done, "dit": ema_dit.state_dict(), "cond": ema_cond.state_dict(),
                        "raw_dit": dit.state_dict(), "raw_cond": cond.state_dict()},
                       os.path.join(out_dir, "snapshot.pt"))
        if time_limit is not None and time.time() - t0 > time_limit:
            break
    seconds = round(time.time() - t0, 1)
    config["arc_fast"] = {"arc_post_trained": False, "note": "tiny base model (rectified flow), arc_fast.data.tiny"}
    # Both the EMA and the raw weights are saved; the base model is the one that follows pitch prompts better
    # (an EMA over a short run can still lag behind what the raw weights have learned).
    checks = {}
    for name, (d, c) in {"ema": (ema_dit, ema_cond), "raw": (dit, cond)}.items():
        d.eval().requires_grad_(False)
        c.eval().requires_grad_(False)
        folder = os.path.join(out_dir, "model_" + name)
        Pipeline(config, d, ae, c).save(folder)
        checks[name] = pitch_check(Pipeline(config, d, ae, c), sampler="euler", steps=check_steps, cfg_scale=4.0)
        _log(log_path, {"pitch_check": name, **checks[name]})
    chosen = min(checks, key=lambda k: (checks[k]["within_50c"] * -1, checks[k]["cents_median"]))
    if os.path.isdir(os.path.join(out_dir, "model")):
        shutil.rmtree(os.path.join(out_dir, "model"))
    shutil.copytree(os.path.join(out_dir, "model_" + chosen), os.path.join(out_dir, "model"))
    summary = {"steps_requested": steps, "steps_done": done, "batch": batch, "lr": lr, "cfg_dropout": cfg_dropout,
               "ema_beta": ema_beta, "seed": seed, "seconds": seconds, "clips": n, "time_limit": time_limit,
               "tone_weight": tone_weight, "patch_size": config["model"]["diffusion"]["config"]["patch_size"],
               "final_loss": float(np.mean(hist[-log_every:])) if hist else None,
               "pitch_check": checks, "chosen_weights": chosen}
    _write_json(os.path.join(out_dir, "pretrain.json"), summary)
    return summary


# ---------------------------------------------------------------------------------------- stage 3: ARC

def arc_settings(**overrides) -> dict:
    """The TrainConfig fields used for the tiny model (CPU: eager ops, fp32; a small ConvNeXt head)."""
    d = dict(dit_impl="fast", ops_backend="eager", precision="fp32", gradient_checkpointing=False, batch_size=16, lr_g=1e-4, lr_d=1e-4,
             head_channels=32, head_c_mults=[1, 2, 4], head_strides=[2, 4, 4], exit_layer_ix=1,
             t_dist="logsnr_uniform", s_dist="logit_normal", ema_beta=0.999, log_every=20, ckpt_every=100000,
             keep_checkpoints=0, progress=False, tensorboard=False, seed=0, steps=1000)
    d.update(overrides)
    return d


def arc_posttrain(base_dir: str, latents_dir: str, out_dir: str, steps: int = 1000, w_con: float = 1.0,
                  seed: int = 0, **overrides) -> dict:
    """ARC post-training with ``arc_fast.train.ARCTrainer`` from the base model folder; the EMA generator
    is exported to ``<out_dir>/export``. Returns {"settings", "metrics", "seconds", "export"}."""
    from ..train import ARCTrainer, TrainConfig
    settings = arc_settings(model=base_dir, data=latents_dir, out_dir=out_dir, steps=steps, w_con=w_con, seed=seed,
                            **overrides)
    cfg = TrainConfig.from_dict(settings)
    t0 = time.time()
    trainer = ARCTrainer(cfg, device="cpu")
    try:
        metrics = trainer.train()
    finally:
        trainer.close()
    summary = {"settings": settings, "metrics": metrics, "seconds": round(time.time() - t0, 1),
               "export": os.path.join(out_dir, "export")}
    _write_json(os.path.join(out_dir, "arc.json"), summary)
    return summary


@torch.no_grad()
def reconstruction_report(ae, seed: int = 5) -> dict:
    """How well the VAE keeps what the evaluation measures: the pitch of every (wave, pitch) tone after
    encode/decode (median and max error in cents) and the multi-resolution STFT loss on one clip per family."""
    from ..eval.metrics import cents, estimate_f0
    from .synthetic import FAMILIES, PITCHES, WAVES
    errs = []
    for wave in WAVES:
        clips = [make_clip(seed, i, "test", params={"family": "tone", "wave": wave, "pitch": f, "mod": None})
                 for i, f in enumerate(PITCHES)]
        x = torch.from_numpy(np.stack([c.audio for c in clips]))
        y = ae.decode(ae.encode(x, sample=False))
        for c, yy in zip(clips, y):
            errs.append(cents(estimate_f0(yy[:, :SAMPLE_RATE]), c.params["pitch"]))
    fam = [make_clip(seed, 100 + i, "test", family=f) for i, f in enumerate(FAMILIES)]
    x = torch.from_numpy(np.stack([c.audio for c in fam]))
    y = ae.decode(ae.encode(x, sample=False))
    return {"pitch_cents_median": float(np.median(errs)), "pitch_cents_max": float(np.max(errs)),
            "tones_within_50c": float(np.mean(np.array(errs) < 50)), "mrstft": float(mrstft_loss(y, x))}


#: Sine prompts whose pitch ``pitch_check`` measures: low, middle and high pitches of the training set.
CHECK_PROMPTS = (("a low sine tone at 110 Hz", 110.0), ("a low sine tone at 220 Hz", 220.0),
                 ("a mid sine tone at 440 Hz", 440.0))


@torch.no_grad()
def pitch_check(pipe, seeds: tp.Sequence[int] = (0, 1), **sampling) -> dict:
    """Does a model follow pitch prompts? Generates each of ``CHECK_PROMPTS`` for every seed (``sampling``:
    the pipeline's sampler/steps/cfg_scale) and measures the pitch of the first second (``arc_fast.eval``).
    Returns {"f0": {prompt: [Hz per seed]}, "cents_median", "within_50c"} (share of clips within 50 cents)."""
    from ..eval.metrics import cents, estimate_f0
    f0s, errs = {}, []
    for prompt, hz in CHECK_PROMPTS:
        f0s[prompt] = []
        for seed in seeds:
            audio, sr = pipe(prompt, seed=seed, **sampling)
            f = estimate_f0(audio[0, :, :sr], sr)
            f0s[prompt].append(round(f, 1))
            errs.append(cents(f, hz) if np.isfinite(f) else 1e4)
    return {"f0": f0s, "cents_median": float(np.median(errs)), "within_50c": float(np.mean(np.array(errs) < 50))}


def latent_power_report(latents_dir: str, frames: int = 1300, per_family: int = 40) -> dict:
    """Mean-square and time-varying (AC) power of the latents per kind of clip, over the first ``frames``
    frames (the sounding part of every clip): {kind: {"n", "mean_square", "ac", "ac_share"}}.

    Why it matters: a DiT's errors are spread over all latents at roughly one level, so a kind of sound
    whose pitch lives in a tiny AC component (a sine tone, with this recipe's hop-32 VAE) cannot come out
    with the right pitch until those errors are far below that component.
    """
    lat, prompts, _ = _load_latents(latents_dir)
    kinds = ("sine tone", "square tone", "sawtooth tone", "chord", "sweep", "noise", "hi-hat", "kick", "snare")
    out = {}
    for kind in kinds:
        idx = [i for i, p in enumerate(prompts) if kind in p][:per_family]
        if not idx:
            continue
        x = lat[idx][:, :, :frames].double()
        ms = float(x.pow(2).mean())
        ac = float((x - x.mean(-1, keepdim=True)).pow(2).mean())
        out[kind] = {"n": len(idx), "mean_square": ms, "ac": ac, "ac_share": ac / ms if ms > 0 else float("nan")}
    return out
