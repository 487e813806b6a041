"""Suite ``decoder``: the Oobleck decoder (SAO Small's VAE decoder), latents -> audio, forward only.

Providers: ``reference`` (``arc_fast.reference.OobleckDecoder``, eager with weight norm), ``stable-audio-tools``
(the public package's decoder with the same weights, when installed in ``.sat``), ``compile``
(``torch.compile`` of the reference; CUDA only), and ``FastOobleckDecoder`` on each backend: ``arc_fast-eager``
(the CPU fast path: folded weights, in-place SnakeBeta, polyphase upsampling), ``arc_fast-triton``,
``arc_fast-cuda`` (the csrc kernels). Each is checked against the fp32 reference before timing.
Throughput = convolution FLOPs (counted per layer) / median time.
"""
from __future__ import annotations

import time

import torch

from . import configs, models
from .common import (NOT_A_FIGURE, CheckError, Context, Row, check_close, dtype_name, exact_fp32, failed, skipped,
                     summarize)
from .kernels import _triton_status

SUITE = "decoder"


def _providers(ctx: Context, ref_dec, dtype):
    from arc_fast.models.decoder import FastOobleckDecoder

    ps = [("reference", False, lambda: ref_dec, None, "eager, weight norm recomputed per call")]
    sat, why = models.load_sat()
    if sat is None:
        ps.append(("stable-audio-tools", False, None, why, ""))
    else:
        def build_sat():
            with sat.active():
                m = sat.OobleckDecoder(**ctx.options["dec_cfg"])
            m.load_state_dict(ref_dec.state_dict(), strict=True)
            return m.to(ctx.device, dtype).eval().requires_grad_(False)
        ps.append(("stable-audio-tools", False, build_sat, None, f"stable-audio-tools {sat.version}, eager"))
    if ctx.device == "cuda" and ctx.compile and ctx.options.get("decoder_compile"):
        ps.append(("compile", False, lambda: torch.compile(ref_dec), None, "torch.compile(reference)"))
    else:
        ps.append(("compile", False, None, "torch.compile of the whole decoder is opt-in (--decoder-compile, CUDA): "
                   "minutes of compile time; the kernels suite has compile rows per conv", ""))
    fast = lambda backend: (lambda: FastOobleckDecoder.from_module(ref_dec, backend=backend).eval())  # noqa: E731
    ps.append(("arc_fast-eager", True, fast("eager"), None, "FastOobleckDecoder backend=eager"))
    reason = _triton_status(ctx)
    ps.append(("arc_fast-triton", True, None if reason else fast("triton"), reason, "FastOobleckDecoder backend=triton"))
    if ctx.device != "cuda":
        ps.append(("arc_fast-cuda", True, None, "CUDA ext needs a CUDA device", ""))
    else:
        try:
            from arc_fast import _cuda
            why = None if _cuda.available() else (_cuda.unavailable_reason() or "arc_fast._cuda unavailable")
        except Exception as exc:  # noqa: BLE001
            why = f"arc_fast._cuda import failed: {exc}"
        ps.append(("arc_fast-cuda", True, None if why else fast("cuda"), why and f"CUDA ext unavailable: {why}",
                   "FastOobleckDecoder backend=cuda"))
    return ps


def run(ctx: Context) -> list:
    cfg = configs.tiny_config() if ctx.quick else configs.sao_config()
    dec_cfg = configs.decoder_config(cfg)
    ctx.options["dec_cfg"] = dec_cfg
    frames = configs.frames_for(ctx.device, ctx.quick)
    B = 1
    _, ref32, _ = models.build_reference(cfg, seed=0)
    ref32 = ref32.to(ctx.device)
    flops = models.decoder_flops(dec_cfg, frames, B)
    z = torch.randn(B, dec_cfg["latent_dim"], frames, generator=torch.Generator().manual_seed(3)).to(ctx.device)
    with torch.inference_mode(), exact_fp32():
        want = ref32(z)
    rows = ctx.collect()
    name = "full decode" if not ctx.quick else "decode (TINY config)"
    label = (f"B{B} {frames} frames ({configs.seconds_of(frames):.2f} s) {dec_cfg['channels']}ch "
             f"x{'x'.join(map(str, dec_cfg['c_mults']))}")
    for dtype in ctx.dtypes:
        dn = dtype_name(dtype)
        ref = ref32 if dtype == torch.float32 else models.copy_module(ref32).to(dtype)
        zl = z.to(dtype)
        with torch.inference_mode():
            low = ref(zl) if dtype != torch.float32 else None
        ready = []   # (provider, ours, module, notes, err)
        first = len(rows)
        provs = _providers(ctx, ref, dtype)
        rank = {p[0]: i for i, p in enumerate(provs)}
        for prov, ours, build, reason, notes in provs:
            ctx.log(f"[decoder] {prov} {dn}")
            if build is None:
                rows.append(skipped(SUITE, name, label, dn, prov, "fwd", reason, ours))
                continue
            if ctx.out_of_time():
                rows.append(skipped(SUITE, name, label, dn, prov, "fwd", "time budget exhausted", ours))
                continue
            try:
                m = build()
                with torch.inference_mode():
                    err = check_close(f"decoder/{prov}", m(zl), want, low, dtype)
                if ctx.device == "cpu" and prov == "arc_fast-triton":
                    notes += "; Triton interpreter: emulation, " + NOT_A_FIGURE
                ready.append((prov, ours, m, notes, err))
            except CheckError as exc:
                rows.append(failed(SUITE, name, label, dn, prov, "fwd", f"check failed, not timed: {exc}", ours))
            except Exception as exc:  # noqa: BLE001
                rows.append(failed(SUITE, name, label, dn, prov, "fwd",
                                   f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", ours))
        for prov, ours, t, mem, notes, err in _time_all(ctx, ready, zl):
            row = Row(SUITE, name, label, dn, prov, "fwd", ours=ours, max_err=err, notes=notes)
            if t is None:
                rows.append(skipped(SUITE, name, label, dn, prov, "fwd", "time budget exhausted", ours))
            else:
                rows.append(ctx.fill(row, t, flops, "TFLOP/s", mem))
        rows[first:] = sorted(rows[first:], key=lambda r: rank[r.provider])   # the table keeps the provider order
    return rows


def _time_all(ctx: Context, ready: list, z: torch.Tensor):
    """Time every checked decoder. CUDA: CUDA events per provider. CPU: interleaved calls (one call of each
    provider per round, the order rotating each round) so that load changes on a shared CPU hit all alike."""
    out = []
    with torch.inference_mode():
        if ctx.device == "cuda":
            for prov, ours, m, notes, err in ready:
                if ctx.out_of_time():
                    out.append((prov, ours, None, None, notes, err))
                    continue
                with ctx.peak_memory() as pm:
                    t = ctx.time(lambda: m(z), long=True)
                out.append((prov, ours, t, pm, notes, err))
            return out
        rounds = 2 if ctx.quick else 3
        samples = {p: [] for p, *_ in ready}
        mems = {p: None for p, *_ in ready}
        for p, _, m, *_ in ready:   # warm-up
            m(z)
        for r in range(rounds):
            k = r % max(1, len(ready))
            for p, _, m, *_ in ready[k:] + ready[:k]:
                if ctx.out_of_time():
                    continue
                with ctx.peak_memory() as pm:
                    t0 = time.perf_counter()
                    m(z)
                    samples[p].append((time.perf_counter() - t0) * 1e3)
                if mems[p] is None or (pm.mb or 0) > (mems[p].mb or 0):
                    mems[p] = pm
        for p, ours, m, notes, err in ready:
            t = summarize(samples[p]) if samples[p] else None
            out.append((p, ours, t, mems[p], notes + (f"; {rounds} interleaved rounds" if t else ""), err))
    return out
