"""Suite ``train-step``: one ARC post-training step (``arc_fast.train.ARCTrainer.train_step``), G and D.

Steps alternate G (even) and D (odd); each is timed on its own (wall time around ``train_step``, which ends
with a host sync for the finiteness check). Providers: ``arc_fast`` (G and D are FastDiTs: fused ops forward
and backward) and ``reference`` (the eager reference DiT), same weights and batch. Throughput in latent
tokens per second (batch x latent frames / step time).

CUDA: SAO Small (seeded weights, hash-text conditioner with T5's shapes), bf16 autocast, 256 frames, batch 4,
no gradient checkpointing. CPU: the TINY config (SAO's layout scaled down), fp32, batch 2, eager ops.
Skipped with a reason when ``arc_fast.train`` cannot be imported.
"""
from __future__ import annotations

import tempfile

import torch

from . import configs, models
from .common import Context, Row, failed, skipped, summarize

SUITE = "train-step"
PROMPTS = ["dog bark", "rain on a tin roof", "piano chord", "snare hit", "wind", "bird song", "engine", "speech"]


def _batch(B: int, channels: int, frames: int, seconds: float) -> dict:
    g = torch.Generator().manual_seed(11)
    return {"latents": torch.randn(B, channels, frames, generator=g), "prompts": PROMPTS[:B] * (B // len(PROMPTS) + 1)
            if B > len(PROMPTS) else PROMPTS[:B], "seconds_total": [seconds] * B}


def run(ctx: Context) -> list:
    quick, dev = ctx.quick, ctx.device
    if dev == "cuda" and not quick:
        cfg, frames, B, precision = configs.sao_config(), configs.FULL_FRAMES, 4, "bf16"
    else:
        cfg, frames, B, precision = configs.tiny_config(), (4 if quick else 32), 2, ("bf16" if dev == "cuda" else "fp32")
    name = "TINY config" if cfg["model"]["diffusion"]["config"]["embed_dim"] < 1024 else "SAO Small"
    label = f"B{B} {name}, {frames} frames"
    try:
        from arc_fast.pipeline import Pipeline
        from arc_fast.train import ARCTrainer, TrainConfig
    except Exception as exc:  # noqa: BLE001 - the trainer is optional here
        why = f"arc_fast.train not importable: {type(exc).__name__}: {exc}"
        return [skipped(SUITE, op, label, precision, p, "fwd+bwd", why, p == "arc_fast")
                for op in ("G step", "D step") for p in ("arc_fast", "reference")]
    ctx.log("[train-step] building the pipeline")
    dit, dec, cond = models.build_reference(cfg, seed=0, with_decoder=False)
    from arc_fast.reference.autoencoder import autoencoder_from_config

    with torch.device("meta"):
        ae = autoencoder_from_config(cfg["model"]["pretransform"])   # never run by the trainer
    pipe = Pipeline(cfg, dit, ae, cond)
    pipe.device = torch.device(dev)
    for m in (dit, cond):
        m.to(dev)
    batch = _batch(B, configs.dit_dims(cfg).io_channels, frames, configs.seconds_of(frames))
    tokens = B * frames
    rows = ctx.collect()
    reps = 1 if quick else 3
    for impl, ours in (("fast", True), ("reference", False)):
        prov = "arc_fast" if impl == "fast" else "reference"
        if ctx.out_of_time():
            rows += [skipped(SUITE, op, label, precision, prov, "fwd+bwd", "time budget exhausted", ours)
                     for op in ("G step", "D step")]
            continue
        ctx.log(f"[train-step] {prov}")
        try:
            with tempfile.TemporaryDirectory() as tmp:
                tc = TrainConfig(out_dir=tmp, dit_impl=impl, ops_backend="eager" if dev == "cpu" else None,
                                 batch_size=B, steps=100, head_channels=32 if name == "TINY config" else 128,
                                 gradient_checkpointing=False, progress=False, tensorboard=False,
                                 export_on_finish=False, precision=precision, log_every=1000, ckpt_every=100000)
                tr = ARCTrainer(tc, pipeline=pipe, device=dev)
                times = {"G": [], "D": []}
                for i in range(2 + 2 * reps):       # the first G and D steps are warm-up
                    kind = "G" if tr.step % 2 == 0 else "D"
                    with ctx.peak_memory() as pm:
                        out = tr.train_step(batch)
                    if i >= 2:
                        times[kind].append(out["step_time"] * 1e3)
                        peak = pm.mb
                tr.close()
                del tr
            for kind, op in (("G", "G step"), ("D", "D step")):
                notes = (f"ARCTrainer.train_step, {precision}{' autocast' if dev == 'cuda' else ''}, "
                         f"dit_impl={impl}, exit_layer_ix default, no grad checkpointing; "
                         + ("G fwd+bwd through G and D, G optimiser step, EMA" if kind == "G" else
                            "G fwd (no grad), D fwd+bwd on real/fake/wrong-prompt, D optimiser step"))
                rows.append(ctx.fill(Row(SUITE, op, label, precision, prov, "fwd+bwd", ours=ours, notes=notes),
                                     summarize(times[kind]), tokens, "tokens/s"))
                rows[-1].peak_mem_mb = peak
        except Exception as exc:  # noqa: BLE001
            why = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            rows += [failed(SUITE, op, label, precision, prov, "fwd+bwd", why, ours) for op in ("G step", "D step")]
    return rows
