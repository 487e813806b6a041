"""Suite ``e2e``: text -> audio with SAO Small (seeded weights), 8 ping-pong steps.

Conditioning: SAO Small's T5-base cannot be loaded offline, so the config's prompt conditioner is arc-fast's
hash-text encoder with T5's output shape ((B, 64, 768) tokens + the seconds_total token = 65 cross-attention
tokens, global (B, 768)); every provider runs the same conditioner module, included in its total.

CPU: ``arc_fast`` = FastDiT + FastOobleckDecoder on the eager ops (the CPU fast path) vs ``stable-audio-tools``
(the public package's DiffusionTransformer + OobleckDecoder, eager, same weights: state dicts are
key-compatible), both driven by arc-fast's ping-pong sampler with the same seed, interleaved run by run on the
same machine. SAO Small's full size at a reduced length (``configs.CPU_FRAMES`` latent frames). Extras: DiT
step and decode at other thread counts, and dynamic int8 quantisation of the DiT's Linear layers
(``torch.ao.quantization.quantize_dynamic`` on the reference module tree; FastDiT calls ``F.linear`` on the
weights directly, which the quantised modules do not support) with its error vs fp32.

CUDA: bf16, batch 1 and 8, the full 11.9 s window: ``reference`` (arc-fast's eager oracle modules) vs
``arc_fast`` (Triton ops), ``arc_fast+cuda-decoder``, ``arc_fast+graph`` (the 8 steps and the decode captured
in one CUDA graph by the benchmark) and ``pipeline`` (``Pipeline.__call__`` as users run it; a
``cuda_graph=True`` row when the pipeline offers it). Stage rows (conditioner, DiT step, decoder) and the total.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import io
import os
import time
import warnings

import torch
from torch import nn

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


# ------------------------------------------------------------------------------------------------ CPU
def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def run_cpu(ctx: Context) -> list:
    from arc_fast.models.decoder import FastOobleckDecoder
    from arc_fast.models.dit import FastDiT
    from arc_fast.ops import use_backend
    from arc_fast.reference.autoencoder import OobleckDecoder
    from arc_fast.reference.conditioners import conditioner_from_config
    from arc_fast.reference.dit import DiffusionTransformer

    quick = ctx.quick
    cfg = configs.tiny_config() if quick else configs.sao_config()
    frames = configs.frames_for("cpu", quick)
    B = 1
    label = _label(B, frames, cfg, quick)
    dtype = torch.float32
    reps = int(ctx.options.get("e2e_reps") or (1 if quick else 3))
    rows: list = ctx.collect()
    threads = torch.get_num_threads()
    common_notes = (f"fp32, {threads} thread(s); conditioning: arc-fast hash-text encoder (T5 not available offline) "
                    f"with T5's shapes (65 x 768 tokens, global 768), the same module in both runs; sampler: "
                    f"arc_fast.sampling.sample_pingpong for both, same seed")

    ctx.log("[e2e] building models")
    sat, why = models.load_sat()
    torch.manual_seed(0)
    cond_module = conditioner_from_config(cfg["model"]["conditioning"]).eval().requires_grad_(False)
    if sat is not None:
        with sat.active(), contextlib.redirect_stdout(io.StringIO()):
            torch.manual_seed(1)
            sat_dit = sat.DiffusionTransformer(**models.dit_kwargs(cfg))
            sat_dec = sat.OobleckDecoder(**configs.decoder_config(cfg))
        models.randomize_(sat_dit, 1)
        models.randomize_(sat_dec, 2)
        sat_dit.eval().requires_grad_(False)
        sat_dec.eval().requires_grad_(False)
        ref_dit = models.reference_from(sat_dit, DiffusionTransformer, models.dit_kwargs(cfg))
        ref_dec = models.reference_from(sat_dec, OobleckDecoder, configs.decoder_config(cfg))
        baseline = ("stable-audio-tools", sat_dit, sat_dec, f"stable-audio-tools {sat.version}, eager")
    else:
        ref_dit, ref_dec, _ = models.build_reference(cfg, seed=1)
        baseline = ("reference", ref_dit, ref_dec, "arc_fast.reference (eager oracle)")
        rows.append(skipped(SUITE, "total (text -> audio)", label, "fp32", "stable-audio-tools", "fwd", why))
    fast_dit = FastDiT.from_module(ref_dit).eval()
    fast_dec = FastOobleckDecoder.from_module(ref_dec, backend="eager").eval()
    providers = [("arc_fast", fast_dit, fast_dec, "FastDiT + FastOobleckDecoder, eager ops (CPU fast path)", True),
                 (*baseline, False)]

    def run_one(dit, dec, sat_call):
        cm = sat.active() if sat_call and sat is not None else contextlib.nullcontext()
        with cm, torch.inference_mode(), use_backend("eager"):
            return _generate(dit, dec, cond_module, cfg, B, frames, "cpu", dtype)

    # Check (also the warm-up): same seed, same weights -> the same audio up to fp32 summation order.
    outs = {}
    ctx.log("[e2e] check + warm-up run of each provider")
    for name, dit, dec, _, ours in providers:
        outs[name] = run_one(dit, dec, not ours)[0]
    err = _rel_err(outs["arc_fast"], outs[baseline[0]])
    check_note = f"audio max|arc_fast - {baseline[0]}| / max|{baseline[0]}| = {err:.1e}"
    if not err < 1e-2:   # a wrong kernel is off by O(1); fp32 rounding over 8 steps + decode is ~1e-4
        return rows + [failed(SUITE, "total (text -> audio)", label, "fp32", "arc_fast", "fwd",
                              f"check failed, not timed: {check_note}", True)]
    # Timed runs, interleaved (ABAB / BABA) so that load changes on the shared CPU hit both alike.
    samples = {name: {"conditioner": [], "dit_step": [], "decoder": [], "total": [], "mem": []} for name, *_ in providers}
    for r in range(reps):
        order = providers if r % 2 == 0 else providers[::-1]
        for name, dit, dec, _, ours in order:
            if ctx.out_of_time():
                break
            ctx.log(f"[e2e] run {r + 1}/{reps}: {name}")
            with ctx.peak_memory() as pm:
                _, t = run_one(dit, dec, not ours)
            s = samples[name]
            s["conditioner"].append(t["conditioner"] * 1e3)
            s["dit_step"] += [x * 1e3 for x in t["dit_steps"]]
            s["decoder"].append(t["decoder"] * 1e3)
            s["total"].append(t["total"] * 1e3)
            s["mem"].append(pm.mb)
    step_flops = models.dit_step_flops(cfg, frames, B, configs.dit_dims(cfg).cond_tokens)
    dec_flops = models.decoder_flops(configs.decoder_config(cfg), frames, B)
    audio_s = B * configs.seconds_of(frames)
    conds = [v for name, *_ in providers for v in samples[name]["conditioner"]]
    if conds:
        rows.append(ctx.fill(Row(SUITE, "conditioner", label, "fp32", "hash_text", "fwd",
                                 notes="the same conditioner module in every provider's run (all runs pooled)"),
                             summarize(conds)))
    for name, dit, dec, notes, ours in providers:
        s = samples[name]
        if not s["total"]:
            rows.append(skipped(SUITE, "total (text -> audio)", label, "fp32", name, "fwd", "time budget exhausted", ours))
            continue
        for op, key, work, metric in (("dit_step", "dit_step", step_flops, "TFLOP/s"),
                                      ("decoder", "decoder", dec_flops, "TFLOP/s"),
                                      ("total (text -> audio)", "total", audio_s, "audio-s/s")):
            total = op.startswith("total")
            row = Row(SUITE, op, label, "fp32", name, "fwd", ours=ours,
                      notes=f"{notes}; {common_notes}; {check_note}; {reps} interleaved runs" if total else
                      (f"{notes}; all steps of all runs" if key == "dit_step" else notes))
            row = ctx.fill(row, summarize(s[key]), work, metric)
            if total:
                row.peak_mem_mb = max(m for m in s["mem"] if m is not None)
            rows.append(row)
    rows += _cpu_extras(ctx, cfg, frames, B, ref_dit, fast_dit, fast_dec, cond_module)
    return rows


def _cpu_extras(ctx, cfg, frames, B, ref_dit, fast_dit, fast_dec, cond_module) -> list:
    """Thread settings for the DiT step and the decode, and dynamic int8 quantisation of the DiT's Linears."""
    from arc_fast.ops import use_backend

    rows = []
    g = torch.Generator().manual_seed(5)
    d = configs.dit_dims(cfg)
    with torch.inference_mode():
        cond = _condition(cond_module, cfg, B, configs.seconds_of(frames), "cpu")
    x = torch.randn(B, d.io_channels, frames, generator=g)
    t = torch.full((B,), 0.7)
    z = torch.randn(B, d.io_channels, frames, generator=g)
    label = f"B{B} {'TINY config' if ctx.quick else 'SAO Small'}, {frames} frames"
    step_flops = models.dit_step_flops(cfg, frames, B, d.cond_tokens)
    dec_flops = models.decoder_flops(configs.decoder_config(cfg), frames, B)
    base_threads = torch.get_num_threads()
    options = sorted({1, base_threads, os.cpu_count() or 1})
    try:
        for n in options:
            torch.set_num_threads(n)
            for op, fn, work in (("dit_step (threads)", lambda: fast_dit(x, t, **cond), step_flops),
                                 ("decoder (threads)", lambda: fast_dec(z), dec_flops)):
                if ctx.out_of_time():
                    rows.append(skipped(SUITE, op, label, "fp32", f"arc_fast threads={n}", "fwd",
                                        "time budget exhausted", True))
                    continue
                ctx.log(f"[e2e] {op} threads={n}")
                with torch.inference_mode(), use_backend("eager"):
                    with ctx.peak_memory() as pm:
                        tm = ctx.time(fn, long=True)
                rows.append(ctx.fill(Row(SUITE, op, label, "fp32", f"arc_fast threads={n}", "fwd", ours=True,
                                         notes="torch.set_num_threads; eager ops"
                                               + ("; this run's setting" if n == base_threads else "")),
                                     tm, work, "TFLOP/s", pm))
    finally:
        torch.set_num_threads(base_threads)
    # Dynamic int8: Linear weights int8 per tensor, activations quantised on the fly.
    if ctx.out_of_time():
        return rows + [skipped(SUITE, "dit_step (int8)", label, "int8/fp32", "reference+int8-dynamic", "fwd",
                               "time budget exhausted", True)]
    ctx.log("[e2e] dynamic int8 DiT")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic
        qdit = quantize_dynamic(models.copy_module(ref_dit), {nn.Linear}, dtype=torch.qint8).eval()
    with torch.inference_mode(), use_backend("eager"):
        want = fast_dit(x, t, **cond)
        got = qdit(x, t, **cond)
        err = _rel_err(got, want)
        rms = ((got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt()).item()
        with ctx.peak_memory() as pm:
            tq = ctx.time(lambda: qdit(x, t, **cond), long=True)
        tf = ctx.time(lambda: fast_dit(x, t, **cond), long=True)
    rows.append(ctx.fill(Row(SUITE, "dit_step (int8)", label, "fp32", "arc_fast", "fwd", ours=True,
                             notes="fp32 FastDiT, same inputs (the int8 row's baseline)"), tf, step_flops, "TFLOP/s"))
    rows.append(ctx.fill(Row(SUITE, "dit_step (int8)", label, "fp32", "reference+int8-dynamic", "fwd", ours=True,
                             notes=f"quantize_dynamic(nn.Linear, qint8) of the reference DiT; error vs fp32 FastDiT: "
                                   f"max {err:.2e} x max|out|, rel RMS {rms:.2e}; int8 weights, fp32 activations "
                                   f"between layers; seeded random weights, so the error says little about "
                                   f"trained-model audio quality"), tq, step_flops, "TFLOP/s", pm))
    del qdit
    rows.append(_own_int8_row(ctx, ref_dit, fast_dit, x, t, cond, want, label, step_flops))
    return rows


def _own_int8_row(ctx, ref_dit, fast_dit, x, t, cond, want, label, step_flops) -> Row:
    """arc-fast's own int8 DiT (``arc_fast.loader.Int8Linear``: per-output-channel int8 weights, the layout of
    ``arc-fast convert --int8``), on the reference module tree as the pipeline runs it."""
    from arc_fast.ops import use_backend

    name = "reference+Int8Linear"
    try:
        from arc_fast.loader import apply_int8_layout, quantize_dit_state_dict
    except ImportError as exc:
        return skipped(SUITE, "dit_step (int8)", label, "fp32", name, "fwd", f"arc_fast.loader has no int8 DiT: {exc}", True)
    if ctx.out_of_time():
        return skipped(SUITE, "dit_step (int8)", label, "fp32", name, "fwd", "time budget exhausted", True)
    ctx.log("[e2e] arc-fast Int8Linear DiT")
    try:
        qsd, n = quantize_dit_state_dict(ref_dit, ref_dit.state_dict(), prefix="")
        dit8 = models.copy_module(ref_dit)
        apply_int8_layout(dit8, qsd)
        dit8.load_state_dict(qsd, strict=True)
        dit8.eval()
        with torch.inference_mode(), use_backend("eager"):
            got = dit8(x, t, **cond)
            err = _rel_err(got, want)
            rms = ((got - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt()).item()
            with ctx.peak_memory() as pm:
                tq = ctx.time(lambda: dit8(x, t, **cond), long=True)
        del dit8
    except Exception as exc:  # noqa: BLE001
        return failed(SUITE, "dit_step (int8)", label, "fp32", name, "fwd",
                      f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", True)
    return ctx.fill(Row(SUITE, "dit_step (int8)", label, "fp32", name, "fwd", ours=True,
                        notes=f"arc_fast.loader Int8Linear on the {n} block Linears (per-channel int8 weights, as "
                              f"`arc-fast convert --int8`); error vs fp32 FastDiT: max {err:.2e} x max|out|, rel RMS "
                              f"{rms:.2e}; seeded random weights"), tq, step_flops, "TFLOP/s", pm)


# ------------------------------------------------------------------------------------------------ CUDA
def run_cuda(ctx: Context) -> list:
    """The CUDA e2e rows. Written against ``ctx.device`` so that the tests can dry-run it on the CPU (tiny config;
    the graph rows then say that CUDA graphs need CUDA)."""
    from arc_fast.models.decoder import FastOobleckDecoder
    from arc_fast.models.dit import FastDiT
    from arc_fast.pipeline import Pipeline, build_models

    quick = ctx.quick
    cfg = configs.tiny_config() if quick else configs.sao_config()
    frames = configs.frames_for("cuda", quick)
    dtype = torch.bfloat16
    dev = ctx.device
    rows: list = ctx.collect()
    ctx.log("[e2e] building models")
    torch.manual_seed(0)
    ref_dit32, ae, cond_module = build_models(cfg)
    models.randomize_(ref_dit32, 1)
    models.randomize_(ae.decoder, 2)
    for m in (ref_dit32, ae, cond_module):
        m.eval().requires_grad_(False)
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
    return run_cuda(ctx) if ctx.device == "cuda" else run_cpu(ctx)
