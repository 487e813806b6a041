"""Suite ``decoder``: the Oobleck decoder (SAO Small's VAE decoder), latents -> audio, forward only.

Providers: ``reference`` (``arc_fast.reference.OobleckDecoder``, eager with weight norm), ``stable-audio-tools``
(the public package's decoder with the same weights, when installed in ``.sat``), ``compile``
(``torch.compile`` of the reference; CUDA only), and ``FastOobleckDecoder`` on each backend: ``arc_fast-eager``
(the CPU fast path: folded weights, in-place SnakeBeta, polyphase upsampling), ``arc_fast-triton``,
``arc_fast-cuda`` (the csrc kernels). Each is checked against the fp32 reference before timing.
Throughput = convolution FLOPs (counted per layer) / median time.
"""
from __future__ import annotations

import torch

from . import configs, models
from .common import NOT_A_FIGURE, CheckError, Context, Row, check_close, dtype_name, exact_fp32, failed, skipped
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
    rows = []
    name = "full decode" if not ctx.quick else "decode (TINY config)"
    label = (f"B{B} {frames} frames ({configs.seconds_of(frames):.2f} s) {dec_cfg['channels']}ch "
             f"x{'x'.join(map(str, dec_cfg['c_mults']))}")
    for dtype in ctx.dtypes:
        dn = dtype_name(dtype)
        ref = ref32 if dtype == torch.float32 else models.copy_module(ref32).to(dtype)
        zl = z.to(dtype)
        with torch.inference_mode():
            low = ref(zl) if dtype != torch.float32 else None
        for prov, ours, build, reason, notes in _providers(ctx, ref, dtype):
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
                    with ctx.peak_memory() as pm:
                        t = ctx.time(lambda: m(zl), long=True)
                row = Row(SUITE, name, label, dn, prov, "fwd", ours=ours, max_err=err, notes=notes)
                if ctx.device == "cpu" and prov == "arc_fast-triton":
                    row.notes += "; Triton interpreter: emulation, " + NOT_A_FIGURE
                rows.append(ctx.fill(row, t, flops, "TFLOP/s", pm))
            except CheckError as exc:
                rows.append(failed(SUITE, name, label, dn, prov, "fwd", f"check failed, not timed: {exc}", ours))
            except Exception as exc:  # noqa: BLE001
                rows.append(failed(SUITE, name, label, dn, prov, "fwd",
                                   f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", ours))
            finally:
                m = None
    return rows
