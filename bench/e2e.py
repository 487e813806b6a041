"""Suite ``e2e``: text -> audio with SAO Small (seeded weights), 8 ping-pong steps.

Conditioning: SAO Small's T5-base cannot be loaded offline, so the config's prompt conditioner is arc-fast's
hash-text encoder with T5's output shape ((B, 64, 768) tokens + the seconds_total token = 65 cross-attention
tokens, global (B, 768)); every provider runs the same conditioner module, included in its total.

CPU: ``bench/e2e_cpu.py`` (the full 11.9 s window; arc-fast's pipeline at its defaults and at explicit
precisions vs stable-audio-tools eager and under bf16 autocast, torch.compile and ONNX Runtime).

CUDA: bf16, batch 1 and 8, the full 11.9 s window: ``reference`` (arc-fast's eager oracle modules) vs
``arc_fast`` (Triton ops), ``arc_fast+cuda-decoder``, ``arc_fast+graph`` (the 8 steps and the decode captured
in one CUDA graph by the benchmark) and ``pipeline`` (``Pipeline.__call__`` as users run it; a
``cuda_graph=True`` row when the pipeline offers it). Stage rows (conditioner, DiT step, decoder) and the total.
"""
from __future__ import annotations

import copy
import inspect
import time

import torch

from . import configs, models
from .common import (CheckError, Context, Row, check_close, exact_fp32, failed, skipped, summarize, time_wall)

SUITE = "e2e"
STEPS = 8
PROMPT = "a dog barking in the rain, distant thunder"


def _cond_ids(cfg):
    d = cfg["model"]["diffusion"]
    return list(d.get("cross_attention_cond_ids", [])), list(d.get("global_cond_ids", []))


def _condition(cond_module, cfg, B, seconds, device):
    from arc_fast.reference.conditioners import assemble_dit_inputs
    meta = [{"prompt": PROMPT, "seconds_start": 0, "seconds_total": seconds}] * B
    cross, glob = _cond_ids(cfg)
    return assemble_dit_inputs(cond_module(meta, device), cross, glob)


def _generate(dit, dec, cond_module, cfg, B, frames, device, dtype, seed=0):
    """One text -> audio run. Returns (audio, {conditioner, dit_steps [s], decoder, total} in seconds)."""
    from arc_fast import sampling

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    cond = _condition(cond_module, cfg, B, configs.seconds_of(frames), device)
    cond = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in cond.items()}
    sync()
    t1 = time.perf_counter()
    gen = sampling.make_generator(seed)
    noise = sampling.randn((B, configs.dit_dims(cfg).io_channels, frames), gen, device, dtype)
    steps: list = []
    lat = sampling.sample_pingpong(dit, noise, steps=STEPS, generator=gen, step_times=steps if device == "cpu" else None,
                                   **cond)
    sync()
    t2 = time.perf_counter()
    audio = dec(lat)
    sync()
    t3 = time.perf_counter()
    return audio, {"conditioner": t1 - t0, "dit_steps": steps or [(t2 - t1) / STEPS] * STEPS, "decoder": t3 - t2,
                   "total": t3 - t0}


def _label(B, frames, cfg, quick):
    name = "TINY config" if quick else "SAO Small"
    return f"B{B} {name}, {frames} frames ({configs.seconds_of(frames):.2f} s), {STEPS} ping-pong steps"


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


# ------------------------------------------------------------------------------------------------ CUDA
def run_cuda(ctx: Context) -> list:
    """The CUDA e2e rows. Written against ``ctx.device`` so that the tests can dry-run it on the CPU (tiny config;
    the graph rows then say that CUDA graphs need CUDA)."""
    from arc_fast.models.decoder import FastOobleckDecoder
    from arc_fast.models.dit import FastDiT
    from arc_fast.pipeline import Pipeline

    quick = ctx.quick
    cfg = configs.tiny_config() if quick else configs.sao_config()
    frames = configs.frames_for("cuda", quick)
    dtype = torch.bfloat16
    dev = ctx.device
    rows: list = ctx.collect()
    ctx.log("[e2e] building models")
    ref_dit32, ae, cond_module = models.seeded_models(cfg)
    ref_dit32.to(dev)
    ref_dec32 = ae.decoder.to(dev)
    cond_module.to(dev)
    ref_dit = models.copy_module(ref_dit32).to(dtype)
    ref_dec = models.copy_module(ref_dec32).to(dtype)
    fast_dit = FastDiT.from_module(ref_dit).eval()
    fast_dec = FastOobleckDecoder.from_module(ref_dec).eval()
    try:
        from arc_fast import _cuda
        cuda_why = None if _cuda.available() else (_cuda.unavailable_reason() or "arc_fast._cuda unavailable")
    except Exception as exc:  # noqa: BLE001
        cuda_why = f"arc_fast._cuda import failed: {exc}"
    fast_dec_cuda = None if cuda_why else FastOobleckDecoder.from_module(ref_dec, backend="cuda").eval()
    d = configs.dit_dims(cfg)
    providers = [("reference", ref_dit, ref_dec, False, None, "arc_fast.reference modules, eager (SDPA), bf16"),
                 ("arc_fast", fast_dit, fast_dec, True, None, "FastDiT + FastOobleckDecoder, Triton ops, bf16"),
                 ("arc_fast+cuda-decoder", fast_dit, fast_dec_cuda, True, cuda_why and f"CUDA ext unavailable: {cuda_why}",
                  "FastDiT (Triton) + FastOobleckDecoder backend=cuda, bf16")]
    batches = (1,) if quick else (1, 8)
    cond_note = "conditioning: hash-text encoder with T5's shapes (T5 not available offline)"
    for B in batches:
        label = _label(B, frames, cfg, quick)
        step_flops = models.dit_step_flops(cfg, frames, B, d.cond_tokens)
        dec_flops = models.decoder_flops(configs.decoder_config(cfg), frames, B)
        audio_s = B * configs.seconds_of(frames)
        with torch.inference_mode():
            cond = _condition(cond_module, cfg, B, configs.seconds_of(frames), dev)
            cond_l = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in cond.items()}
            g = torch.Generator().manual_seed(7)
            x = torch.randn(B, d.io_channels, frames, generator=g).to(dev)
            t = torch.full((B,), 0.7, device=dev)
            z = torch.randn(B, d.io_channels, frames, generator=g).to(dev)
            with exact_fp32():
                want_step = ref_dit32(x, t, **cond)
                want_dec = ref_dec32(z)
            low_step = ref_dit(x.to(dtype), t.to(dtype), **cond_l)
            low_dec = ref_dec(z.to(dtype))
            tc = ctx.time(lambda: _condition(cond_module, cfg, B, configs.seconds_of(frames), dev))
        rows.append(ctx.fill(Row(SUITE, "conditioner", label, "fp32", "hash_text", "fwd", notes=cond_note), tc))
        audio_ref = None
        for name, dit, dec, ours, why, notes in providers:
            if why or dec is None:
                rows.append(skipped(SUITE, "total (text -> audio)", label, "bf16", name, "fwd", why or "unavailable", ours))
                continue
            if ctx.out_of_time():
                rows.append(skipped(SUITE, "total (text -> audio)", label, "bf16", name, "fwd", "time budget exhausted",
                                    ours))
                continue
            ctx.log(f"[e2e] B{B} {name}")
            try:
                with torch.inference_mode():
                    t_first = time.perf_counter()
                    out_step, out_dec = dit(x.to(dtype), t.to(dtype), **cond_l), dec(z.to(dtype))
                    # The first calls hold every Triton compile of this shape: on a fresh GPU machine that is the
                    # cost a loan's budget has to cover, so say it.
                    ctx.log(f"[e2e] B{B} {name}: first DiT step + decode (compiles included) "
                            f"{time.perf_counter() - t_first:.1f} s")
                    try:
                        e1 = check_close(f"e2e/{name} dit_step", out_step, want_step, low_step, dtype)
                        e2 = check_close(f"e2e/{name} decoder", out_dec, want_dec, low_dec, dtype)
                        check_failure = None
                    except CheckError as exc:
                        # Still timed (a GPU loan is short): the row is 'failed' and its time only a diagnostic.
                        check_failure = str(exc)
                    ts_ = ctx.time(lambda: dit(x.to(dtype), t.to(dtype), **cond_l))
                    td = ctx.time(lambda: dec(z.to(dtype)), long=True)
                    run = lambda: _generate(dit, dec, cond_module, cfg, B, frames, dev, dtype)  # noqa: E731
                    with ctx.peak_memory() as pm:
                        audio, _ = run()
                    tt = time_wall(run, dev, reps=2 if quick else 5)
                if check_failure is not None:
                    rows.append(failed(SUITE, "total (text -> audio)", label, "bf16", name, "fwd",
                                       f"check failed: {check_failure}; timed anyway, not a result: DiT step "
                                       f"{ts_.median_ms:.4g} ms, decoder {td.median_ms:.4g} ms, total "
                                       f"{tt.median_ms:.4g} ms", ours))
                    continue
                if name == "arc_fast":
                    audio_ref = audio
                err = max(e1, e2)
                rows.append(ctx.fill(Row(SUITE, "dit_step", label, "bf16", name, "fwd", ours=ours, max_err=e1, notes=notes),
                                     ts_, step_flops, "TFLOP/s"))
                rows.append(ctx.fill(Row(SUITE, "decoder", label, "bf16", name, "fwd", ours=ours, max_err=e2, notes=notes),
                                     td, dec_flops, "TFLOP/s"))
                rows.append(ctx.fill(Row(SUITE, "total (text -> audio)", label, "bf16", name, "fwd", ours=ours, max_err=err,
                                         notes=f"{notes}; wall time incl. conditioner; {cond_note}"), tt, audio_s,
                                     "audio-s/s", pm))
            except Exception as exc:  # noqa: BLE001
                rows.append(failed(SUITE, "total (text -> audio)", label, "bf16", name, "fwd",
                                   f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", ours))
        rows += _graph_rows(ctx, fast_dit, fast_dec, cond_module, cfg, B, frames, label, audio_ref, audio_s, tc)
        rows += _pipeline_rows(ctx, Pipeline, cfg, fast_dit, ae, fast_dec, cond_module, B, frames, label, audio_s)
    return rows


def _graph_rows(ctx, dit, dec, cond_module, cfg, B, frames, label, audio_ref, audio_s, t_cond) -> list:
    name = "arc_fast+graph"
    if ctx.device != "cuda":
        return [skipped(SUITE, "total (text -> audio)", label, "bf16", name, "fwd", "CUDA graphs need CUDA", True)]
    if ctx.out_of_time():
        return [skipped(SUITE, "total (text -> audio)", label, "bf16", name, "fwd", "time budget exhausted", True)]
    from arc_fast import sampling
    from arc_fast.pipeline import _GraphRunner

    ctx.log(f"[e2e] B{B} {name}")
    dtype = torch.bfloat16
    try:
        with torch.inference_mode():
            cond = _condition(cond_module, cfg, B, configs.seconds_of(frames), "cuda")
            cond = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in cond.items()}
            # The pipeline's runner (8 ping-pong steps and the decode as two graphs), fed the noise _generate
            # draws for seed 0, in its order: the replay must give the eager arc_fast run's audio.
            gen = sampling.make_generator(0)
            shape = (B, configs.dit_dims(cfg).io_channels, frames)
            x = sampling.randn(shape, gen, "cuda", dtype)
            eps = torch.stack([sampling.randn(shape, gen, "cuda", dtype) for _ in range(STEPS - 1)])
            runner = _GraphRunner(dit, dec, x, sampling.rf_timesteps(STEPS), "pingpong", 1.0, cond)
            out = runner(x, eps, cond)[1]

            def replay():
                runner.g_loop.replay()
                runner.g_dec.replay()
            if audio_ref is not None:
                err = _rel_err(out, audio_ref)
                if not err < 5e-2:
                    raise CheckError(f"graph replay differs from the eager arc_fast run: {err:.2e} x max|audio|")
            else:
                err = None
            with ctx.peak_memory() as pm:
                replay()
            tr = ctx.time(replay, long=True)
        del runner
        total = summarize([tr.median_ms + t_cond.median_ms])
        notes = ("8 steps + decode replayed from the pipeline's two CUDA graphs (noise pre-drawn); "
                 f"total = replay median {tr.median_ms:.3g} ms + conditioner median {t_cond.median_ms:.3g} ms"
                 + (f"; |graph - eager| = {err:.1e} x max|audio|" if err is not None else ""))
        row = ctx.fill(Row(SUITE, "total (text -> audio)", label, "bf16", name, "fwd", ours=True, notes=notes), total,
                       audio_s, "audio-s/s", pm)
        row.min_ms = tr.min_ms + t_cond.min_ms
        return [row]
    except CheckError as exc:
        return [failed(SUITE, "total (text -> audio)", label, "bf16", name, "fwd", f"check failed, not timed: {exc}", True)]
    except Exception as exc:  # noqa: BLE001
        return [failed(SUITE, "total (text -> audio)", label, "bf16", name, "fwd",
                       f"capture failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", True)]


def _pipeline_rows(ctx, Pipeline, cfg, fast_dit, ae, fast_dec, cond_module, B, frames, label, audio_s) -> list:
    rows = []
    ae = copy.copy(ae)
    ae.decoder = fast_dec
    cfg = copy.deepcopy(cfg)
    cfg["sample_size"] = frames * configs.HOP    # the pipeline generates its whole window: make it this length
    pipe = Pipeline(cfg, fast_dit, ae, cond_module).to(ctx.device)
    params = inspect.signature(Pipeline.__call__).parameters
    variants = [("pipeline", {})]
    if "cuda_graph" not in params:
        rows.append(skipped(SUITE, "total (text -> audio)", label, "bf16", "pipeline cuda_graph=True", "fwd",
                            "Pipeline.__call__ has no cuda_graph option yet", True))
    elif ctx.device != "cuda":
        rows.append(skipped(SUITE, "total (text -> audio)", label, "bf16", "pipeline cuda_graph=True", "fwd",
                            "CUDA graphs need CUDA", True))
    else:
        variants.append(("pipeline cuda_graph=True", {"cuda_graph": True}))
    for name, kw in variants:
        if ctx.out_of_time():
            rows.append(skipped(SUITE, "total (text -> audio)", label, "bf16", name, "fwd", "time budget exhausted", True))
            continue
        ctx.log(f"[e2e] B{B} {name}")
        try:
            def run():
                return pipe(PROMPT, steps=STEPS, seed=0, batch_size=B, sampler="pingpong", **kw)
            with ctx.peak_memory() as pm:
                run()
            tt = time_wall(run, ctx.device, reps=2 if ctx.quick else 5)
            lt = pipe.last_timings
            rows.append(ctx.fill(Row(SUITE, "total (text -> audio)", label, "bf16", name, "fwd", ours=True,
                                     notes=f"Pipeline.__call__ (DiT bf16; decoder in the dtype the pipeline uses; audio "
                                           f"copied to the host); last run: {lt.summary()}"), tt, audio_s, "audio-s/s", pm))
        except Exception as exc:  # noqa: BLE001
            rows.append(failed(SUITE, "total (text -> audio)", label, "bf16", name, "fwd",
                               f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", True))
    return rows


def run(ctx: Context) -> list:
    if ctx.device == "cuda":
        return run_cuda(ctx)
    from .e2e_cpu import run_cpu
    return run_cpu(ctx)
