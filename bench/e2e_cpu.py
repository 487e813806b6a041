"""Suite ``e2e`` on the CPU: text -> audio with SAO Small (seeded weights) at the full 11.9 s window (256 latent
frames), batch 1, 8 ping-pong steps, against the peers a CPU user would pick.

Every provider runs the same weights (one seeded set, shared or loaded from the same saved model folder), the
same conditioner module, the same ping-pong sampler and seed; the runs are interleaved (the order rotates each
repeat) so that load changes on the shared CPU hit all alike. Each provider gets stage rows (conditioner, DiT
step, decoder, total), the peak RSS of its runs and its audio's error against the fp32 reference run.

Providers (``--e2e-providers`` keys in brackets; a provider that cannot run here is a ``skipped`` row saying why):

* [sat] ``stable-audio-tools``: the public package's DiT + OobleckDecoder, eager fp32: the speed-up baseline
  and the fp32 reference audio (``reference``, arc-fast's eager oracle modules, stands in when it is absent).
* [sat-bf16] ``stable-audio-tools autocast-bf16``: the same modules under ``torch.autocast("cpu", bfloat16)``.
* [compile] ``torch.compile``: the reference DiT and OobleckDecoder (fp32) through ``torch.compile``; the
  compile time is reported as setup, never inside the timed runs.
* [onnx] ``onnxruntime``: the reference DiT step (fixed shapes) and the decoder (weight norm folded) exported with
  ``torch.onnx.export``, run by an ``onnxruntime.InferenceSession`` on the CPU, the sampler loop in Python.
* [defaults] ``arc_fast (defaults)``: the seeded model saved as a real model folder (model_config.json +
  model.safetensors), ``load_pipeline(folder)`` at its defaults (its own per-stage precision choice), timed
  through ``Pipeline.__call__`` and its ``last_timings``.
* [fp32] / [bf16] / [int8] ``arc_fast fp32|bf16|int8``: the same folder with ``load_pipeline(folder, dtype=...,
  autoencoder_dtype=...)``: fp32; bf16 DiT + decoder; int8 DiT (``dtype="int8"``, torchao) + bf16 decoder.
* [extras] thread counts of the DiT step and the decode, and dynamic int8 of the reference DiT's Linears.

Fractions of peak use the linear peaks ``common.linear_peaks`` measures at the start of the run (F.linear
257x1024x4096 in the stage's compute dtype) and the copy bandwidth.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import io
import itertools
import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from . import configs, models
from .common import Context, Row, dtype_name, failed, rss_mb, skipped, snr_db, summarize
from .e2e import PROMPT, STEPS, SUITE, _condition, _generate, _label, _rel_err

PROVIDERS = ("sat", "sat-bf16", "compile", "onnx", "defaults", "fp32", "bf16", "int8", "extras")
STAGES = (("conditioner", "conditioner"), ("dit_step", "dit_step"), ("decoder", "decoder"),
          ("total (text -> audio)", "total"))
# fp32 providers compute what the reference computes up to summation order: a wrong one is off by O(1).
FP32_REL_ERR = 1e-2
TEXT_NOTE = ("conditioning: arc-fast hash-text encoder with T5's shapes (65 x 768 tokens, global 768; T5 cannot be "
             "loaded offline), the same module in every run; sampler: arc_fast ping-pong, same seed")


@dataclass
class Provider:
    """One competitor. ``setup()`` builds it and returns ``run() -> (audio (B, C, N) float, stage seconds)``
    with stage seconds ``{conditioner, dit_steps: [..], decoder, total}``, or raises ``Unavailable``.

    Providers with weights of their own (the pipelines, the onnxruntime sessions) have ``release()`` (drop them
    after each run) and ``reload()`` (get them back before the next, untimed): only one such copy is resident at
    a time, so the full-window run fits a shared machine's memory and each run's peak RSS is its own."""
    key: str
    name: str
    ours: bool
    precision: tuple          # compute dtype names of (DiT, decoder): fp32 | bf16 | int8
    notes: str
    setup: Callable[[], Callable[[], tuple]]
    run: Optional[Callable[[], tuple]] = None
    setup_s: Optional[float] = None
    weights: Callable[[], float] = lambda: 0.0
    release: Optional[Callable[[], None]] = None
    reload: Optional[Callable[[], None]] = None
    weights_mb: float = 0.0
    status: str = "ok"
    why: str = ""
    err: dict = field(default_factory=dict)
    samples: dict = field(default_factory=lambda: {k: [] for k in ("conditioner", "dit_step", "decoder", "total",
                                                                    "mem", "added")})

    @property
    def dtype(self) -> str:
        a, b = self.precision
        return a if a == b else f"{a}/{b}"


class Unavailable(Exception):
    """The provider cannot run here; the message is the row's reason."""


def tensor_mb(*modules: nn.Module) -> float:
    """MB held by the parameters and buffers of ``modules`` (each storage counted once)."""
    seen: dict = {}
    for m in modules:
        for t in itertools.chain(m.parameters(), m.buffers()):
            try:
                s = t.untyped_storage()
                seen[(s.data_ptr(), s.nbytes())] = s.nbytes()
            except Exception:  # noqa: BLE001 - tensor subclasses (quantised weights) without a plain storage
                seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values()) / 2 ** 20


def audio_error(out: torch.Tensor, ref: torch.Tensor) -> dict:
    """The error of ``out`` against the fp32 reference audio ``ref`` (both (B, C, N); compared over the common
    length): rel_err = max|out - ref| / max|ref|, snr_db = 10 log10(sum ref^2 / sum (out - ref)^2) (None when
    identical), finite = no NaN/Inf in ``out``."""
    n = min(out.shape[-1], ref.shape[-1])
    o, r = out[..., :n].double(), ref[..., :n].double()
    if not bool(torch.isfinite(o).all()):
        return {"rel_err": None, "snr_db": None, "finite": False}
    snr = snr_db(o, r)
    return {"rel_err": _rel_err(o, r), "snr_db": None if math.isinf(snr) else snr, "finite": True}


def _stage_seconds(lt) -> dict:
    return {"conditioner": lt.conditioner, "dit_steps": list(lt.dit_steps), "decoder": lt.decoder, "total": lt.total}


# ------------------------------------------------------------------------------------------------ providers
def _sat_providers(sat, why, dit, dec, cfg, generate, run_ref) -> list:
    """stable-audio-tools eager fp32 and under bf16 autocast, on the reference modules' weights (shared)."""
    if sat is None:
        base = Provider("sat", "reference", False, ("fp32", "fp32"),
                        f"arc_fast.reference (eager oracle), stands in for stable-audio-tools: {why}",
                        lambda: run_ref, weights=lambda: tensor_mb(dit, dec))
        return [base, Provider("sat-bf16", "stable-audio-tools autocast-bf16", False, ("bf16", "bf16"), "",
                               _unavailable(why))]
    mods: list = []

    def build():
        if not mods:
            with sat.active(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                s_dit = sat.DiffusionTransformer(**models.dit_kwargs(cfg))
                s_dec = sat.OobleckDecoder(**configs.decoder_config(cfg))
            # The state dicts are key-compatible: the public modules share the reference modules' tensors.
            s_dit.load_state_dict(dit.state_dict(), strict=True, assign=True)
            s_dec.load_state_dict(dec.state_dict(), strict=True, assign=True)
            mods.extend((s_dit.eval().requires_grad_(False), s_dec.eval().requires_grad_(False)))
        return mods

    def make(autocast: bool):
        def setup():
            s_dit, s_dec = build()

            def run():
                amp = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
                with sat.active(), torch.inference_mode(), amp:
                    audio, t = generate(s_dit, s_dec)
                return audio.float(), t
            return run
        return setup

    eager = Provider("sat", "stable-audio-tools", False, ("fp32", "fp32"),
                     f"stable-audio-tools {sat.version} DiffusionTransformer + OobleckDecoder, eager", make(False),
                     weights=lambda: tensor_mb(*build()))
    amp = Provider("sat-bf16", "stable-audio-tools autocast-bf16", False, ("bf16", "bf16"),
                   f"stable-audio-tools {sat.version}, eager, under torch.autocast('cpu', torch.bfloat16) (fp32 "
                   f"weights; autocast casts matmul / conv inputs per call)", make(True),
                   weights=lambda: tensor_mb(*build()))
    return [eager, amp]


def _unavailable(why: str):
    def setup():
        raise Unavailable(why)
    return setup


def _compile_provider(ctx, dit, dec, generate) -> Provider:
    def setup():
        if not ctx.compile:
            raise Unavailable("torch.compile off (--no-compile, or --quick: minutes of compile time)")
        cdit, cdec = torch.compile(dit), torch.compile(dec)

        def run():
            with torch.inference_mode():
                return generate(cdit, cdec)
        run()     # compiles (counted as setup); later runs reuse the compiled graphs
        return run
    return Provider("compile", "torch.compile", False, ("fp32", "fp32"),
                    "torch.compile (default mode, inductor) of arc_fast.reference DiT + OobleckDecoder, fp32; setup = "
                    "compile + one run", setup, weights=lambda: tensor_mb(dit, dec))


class _DiTStep(nn.Module):
    """The DiT as ONNX sees it: positional inputs (x, t, *conditioning tensors in ``names`` order)."""

    def __init__(self, dit: nn.Module, names: list):
        super().__init__()
        self.dit, self.names = dit, list(names)

    def forward(self, x, t, *cond):
        return self.dit(x, t, **dict(zip(self.names, cond)))


class _OrtDiT:
    """A sampler-callable DiT on an onnxruntime session (fixed shapes; CFG 1 only)."""

    def __init__(self, sess, names: list):
        self.sess, self.names = sess, list(names)
        self.inputs = [i.name for i in sess.get_inputs()]

    def __call__(self, x, t, cfg_scale: float = 1.0, **cond):
        if cfg_scale != 1.0:
            raise ValueError("the exported DiT step has no CFG batch: cfg_scale must be 1")
        feeds = dict(zip(self.inputs, (a.detach().float().contiguous().numpy()
                                       for a in (x, t, *(cond[n] for n in self.names)))))
        return torch.from_numpy(self.sess.run(None, feeds)[0])


def _onnx_export(module: nn.Module, args: tuple, path: str, names: list) -> str:
    """``torch.onnx.export`` with the default (dynamo) exporter, the TorchScript one if that fails; returns which."""
    import logging

    errors = []
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)       # the exporter logs every optional op library it skips
    try:
        for dynamo in (True, False):
            try:
                with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                        contextlib.redirect_stderr(io.StringIO()):
                    warnings.simplefilter("ignore")
                    torch.onnx.export(module, args, path, input_names=names, output_names=["out"], dynamo=dynamo)
                return "dynamo" if dynamo else "torchscript"
            except Exception as exc:  # noqa: BLE001 - try the other exporter, then report both
                errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}")
    finally:
        log.setLevel(level)
    raise Unavailable("torch.onnx.export failed (" + "; ".join(errors) + ")")


def _onnx_provider(dit, dec, cond, x_shape, workdir, generate) -> Provider:
    state: dict = {}

    def setup():
        try:
            import onnx  # noqa: F401 - the exporter needs it
            import onnxruntime as ort
        except ImportError as exc:
            raise Unavailable(f"onnxruntime / onnx not installed ({exc}); pip install -e '.[bench]'") from None
        names = sorted(k for k, v in cond.items() if v.is_floating_point())
        folder = os.path.join(workdir, "onnx")
        os.makedirs(folder, exist_ok=True)
        x = torch.randn(x_shape)
        t = torch.full((x_shape[0],), 0.5)
        with torch.inference_mode(False), torch.no_grad():
            how_dit = _onnx_export(_DiTStep(dit, names).eval(), (x, t, *(cond[n].float() for n in names)),
                                   os.path.join(folder, "dit.onnx"), ["x", "t", *names])
            fdec = models.copy_module(dec)
            for m in fdec.modules():
                if hasattr(m, "weight_g"):       # deployment folds weight norm into the conv weights
                    nn.utils.remove_weight_norm(m)
            how_dec = _onnx_export(fdec.eval(), (torch.randn(x_shape),), os.path.join(folder, "dec.onnx"), ["z"])
            del fdec

        def load():
            if "dit" in state:
                return
            so = ort.SessionOptions()
            so.intra_op_num_threads = torch.get_num_threads()
            so.inter_op_num_threads = 1
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            s_dit = ort.InferenceSession(os.path.join(folder, "dit.onnx"), so, providers=["CPUExecutionProvider"])
            s_dec = ort.InferenceSession(os.path.join(folder, "dec.onnx"), so, providers=["CPUExecutionProvider"])
            dec_in = s_dec.get_inputs()[0].name
            state["dit"] = _OrtDiT(s_dit, names)
            state["dec"] = lambda z: torch.from_numpy(s_dec.run(None, {dec_in: z.detach().float().contiguous()
                                                                       .numpy()})[0])
        load()
        state["mb"] = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)) / 2 ** 20
        p.notes += f"; exporter {how_dit} (DiT) / {how_dec} (decoder), onnxruntime {ort.__version__}"
        p.reload = load
        p.release = lambda: (state.pop("dit", None), state.pop("dec", None))

        def run():
            with torch.inference_mode():
                return generate(state["dit"], state["dec"])
        return run
    p = Provider("onnx", "onnxruntime", False, ("fp32", "fp32"),
                 "torch.onnx.export of arc_fast.reference DiT step (fixed shapes) + OobleckDecoder (weight norm folded), "
                 "fp32, onnxruntime CPUExecutionProvider (graph optimisations all, intra-op threads = torch's); "
                 "sampler loop in Python", setup, weights=lambda: state.get("mb", 0.0))
    return p


def _pipeline_provider(key, name, folder, seconds, dtype, autoencoder_dtype, precision, notes) -> Provider:
    from arc_fast.pipeline import load_pipeline

    holder: dict = {}

    kw = {} if key == "defaults" else {"dtype": dtype, "autoencoder_dtype": autoencoder_dtype}

    def load():
        if "pipe" not in holder:
            holder["pipe"] = load_pipeline(folder, device="cpu", **kw)

    def setup():
        if key == "int8":
            try:
                from arc_fast.cpu import torchao_available
            except ImportError:
                torchao_available = None
            why = torchao_available() if torchao_available is not None else None
            if why:
                raise Unavailable(f"int8 DiT: {why}")
        try:
            load()
        except (ValueError, TypeError, ImportError, NotImplementedError, RuntimeError) as exc:
            if key == "int8":
                raise Unavailable(f"load_pipeline(dtype='int8') is not available here: {type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:200]}") from None
            raise

        def run():
            pipe = holder["pipe"]
            audio, _ = pipe(PROMPT, seconds=seconds, steps=STEPS, seed=0, sampler="pingpong")
            return audio, _stage_seconds(pipe.last_timings)
        return run

    def weights():
        pipe = holder.get("pipe")
        if pipe is None:
            return 0.0
        return tensor_mb(pipe.dit, pipe.autoencoder, pipe.conditioner,
                         *pipe.__dict__.get("_lowp_decoders", {}).values())
    p = Provider(key, name, True, precision, notes, setup, weights=weights, reload=load,
                 release=lambda: holder.pop("pipe", None))
    p.holder = holder
    return p


def _describe_pipeline(p: Provider) -> None:
    """After setup: the precision the pipeline actually chose, and its loader notes about it."""
    pipe = getattr(p, "holder", {}).get("pipe")
    if pipe is None:
        return
    # The pipeline names its DiT precision ("int8" for torchao's int8 DiT, whose activations stay fp32).
    dit_dt = getattr(pipe, "dit_precision", None) or dtype_name(getattr(pipe, "dtype", None))
    p.precision = (dit_dt, dtype_name(pipe.autoencoder_dtype))
    said = [n for n in getattr(pipe, "load_notes", []) if any(w in n.lower() for w in
                                                               ("dtype", "precision", "bf16", "int8", "auto",
                                                                "thread", "fp32"))]
    if said:
        p.notes += "; loader: " + " / ".join(said)[:400]


# ------------------------------------------------------------------------------------------------ the suite
def run_cpu(ctx: Context) -> list:
    """The CPU e2e rows (see the module docstring)."""
    from arc_fast.pipeline import Pipeline

    quick = ctx.quick
    sel = set(ctx.options.get("e2e_providers") or PROVIDERS)
    cfg = copy.deepcopy(configs.tiny_config() if quick else configs.sao_config())
    frames = int(ctx.options.get("e2e_frames") or (configs.QUICK_FRAMES if quick else configs.CPU_E2E_FRAMES))
    hop = int(cfg["model"]["pretransform"]["config"].get("downsampling_ratio", configs.HOP))
    cfg["sample_size"] = frames * hop         # the pipeline generates its whole window: make it this length
    seconds = frames * hop / cfg["sample_rate"]
    B = 1
    label = _label(B, frames, cfg, quick)
    reps = int(ctx.options.get("e2e_reps") or (1 if quick else 3))
    rows: list = ctx.collect()
    if os.environ.get("TRITON_INTERPRET") == "1":
        ctx.log("[e2e] warning: TRITON_INTERPRET=1 is set: arc-fast's pipeline may run interpreted Triton kernels "
                "(unset it for CPU timings)")
    base_rss = rss_mb() or 0.0
    workdir = tempfile.mkdtemp(prefix="arc-fast-bench-")
    try:
        ctx.log(f"[e2e] building seeded models ({frames} frames, {seconds:.2f} s)")
        dit, ae, cond_module = models.seeded_models(cfg)
        dec = ae.decoder
        t0 = time.perf_counter()
        folder = os.path.join(workdir, "model")
        Pipeline(cfg, dit, ae, cond_module).save(folder)
        ctx.log(f"[e2e] saved the model folder in {time.perf_counter() - t0:.1f} s")
        with torch.inference_mode():
            cond = _condition(cond_module, cfg, B, seconds, "cpu")

        def generate(d, dd):
            return _generate(d, dd, cond_module, cfg, B, frames, "cpu", torch.float32)

        def run_ref():
            with torch.inference_mode():
                return generate(dit, dec)

        sat, why = models.load_sat()
        sat_provs = _sat_providers(sat, why, dit, dec, cfg, generate, run_ref)
        x_shape = (B, configs.dit_dims(cfg).io_channels, frames)
        pipe_note = "Pipeline.__call__ of load_pipeline(model folder"
        providers = [*sat_provs, _compile_provider(ctx, dit, dec, generate),
                     _onnx_provider(dit, dec, cond, x_shape, workdir, generate),
                     _pipeline_provider("defaults", "arc_fast (defaults)", folder, seconds, None, None, ("?", "?"),
                                        f"{pipe_note}) at its defaults (its own precision choice); stage times "
                                        f"from pipe.last_timings"),
                     _pipeline_provider("fp32", "arc_fast fp32", folder, seconds, "fp32", "fp32", ("fp32", "fp32"),
                                        f"{pipe_note}, dtype='fp32', autoencoder_dtype='fp32')"),
                     _pipeline_provider("bf16", "arc_fast bf16", folder, seconds, "bf16", "bf16", ("bf16", "bf16"),
                                        f"{pipe_note}, dtype='bf16', autoencoder_dtype='bf16')"),
                     _pipeline_provider("int8", "arc_fast int8", folder, seconds, "int8", "bf16", ("int8", "bf16"),
                                        f"{pipe_note}, dtype='int8' (torchao int8 DiT), autoencoder_dtype='bf16')")]
        providers = [p for p in providers if p.key in sel]
        baseline = next((p for p in providers if p.key == "sat"), None)

        # Setup, then the check run (also the warm-up): the error against the fp32 reference audio.
        ref: list = []

        def ref_audio():
            if not ref:     # no baseline ran: the reference modules give the fp32 reference audio
                ctx.log("[e2e] fp32 reference run (arc_fast.reference, eager; not timed)")
                ref.append(run_ref()[0])
            return ref[0]
        for p in sorted(providers, key=lambda p: p is not baseline):     # the baseline first: it is the reference
            if ctx.out_of_time():
                p.status, p.why = "skipped", "time budget exhausted"
                continue
            ctx.log(f"[e2e] setup + check run: {p.name}")
            try:
                t0 = time.perf_counter()
                p.run = p.setup()
                p.setup_s = time.perf_counter() - t0
                _describe_pipeline(p)
                audio = p.run()[0]
            except Unavailable as exc:
                p.status, p.why = "skipped", str(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - one broken provider must not lose the others
                p.status, p.why = "failed", f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                continue
            p.weights_mb = p.weights()
            if p.release is not None:
                p.release()
                gc.collect()
            if p is baseline:
                ref.append(audio)
            p.err = audio_error(audio, ref_audio())
            if not p.err["finite"]:
                p.status, p.why = "failed", "check failed, not timed: non-finite audio"
            elif p.precision == ("fp32", "fp32") and not p.err["rel_err"] < FP32_REL_ERR:
                p.status, p.why = "failed", (f"check failed, not timed: fp32 audio differs from the reference run by "
                                             f"{p.err['rel_err']:.2e} x max|ref|")
        live = [p for p in providers if p.status == "ok"]
        for r in range(reps):
            k = r % max(len(live), 1)
            for p in live[k:] + live[:k]:            # rotate the order each repeat
                if ctx.out_of_time():
                    break
                ctx.log(f"[e2e] run {r + 1}/{reps}: {p.name}")
                if p.reload is not None:
                    p.reload()                       # untimed: loading is not generating
                with ctx.peak_memory() as pm:
                    _, t = p.run()
                if p.release is not None:
                    p.release()
                    gc.collect()
                s = p.samples
                s["conditioner"].append(t["conditioner"] * 1e3)
                s["dit_step"] += [x * 1e3 for x in t["dit_steps"]]
                s["decoder"].append(t["decoder"] * 1e3)
                s["total"].append(t["total"] * 1e3)
                s["mem"].append(pm.mb)
                s["added"].append(None if pm.mb is None or pm.start_mb is None else pm.mb - pm.start_mb)
        rows += _rows(ctx, cfg, frames, B, label, providers, baseline, reps, base_rss)
        for p in providers:
            p.run = None
            getattr(p, "holder", {}).clear()
        providers.clear()
        gc.collect()
        if "extras" in sel:
            from arc_fast.models.decoder import FastOobleckDecoder
            from arc_fast.models.dit import FastDiT
            fast_dit = FastDiT.from_module(dit).eval()
            fast_dec = FastOobleckDecoder.from_module(dec, backend="eager").eval()
            rows += _cpu_extras(ctx, cfg, frames, B, dit, fast_dit, fast_dec, cond_module)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


def _rows(ctx, cfg, frames, B, label, providers, baseline, reps, base_rss) -> list:
    """Stage rows per provider (a skipped / failed provider: one total row saying why)."""
    d = configs.dit_dims(cfg)
    flops = {"dit_step": models.dit_step_flops(cfg, frames, B, d.cond_tokens),
             "decoder": models.decoder_flops(configs.decoder_config(cfg), frames, B)}
    work = {"dit_step": models.dit_step_work(cfg, frames, B, d.cond_tokens),
            "decoder": models.decoder_work(configs.decoder_config(cfg), frames, B)}
    audio_s = B * frames * configs.HOP / cfg["sample_rate"]
    peaks = ctx.peaks
    size = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}
    base_med = {}
    if baseline is not None and baseline.status == "ok" and baseline.samples["total"]:
        base_med = {key: summarize(baseline.samples[key]).median_ms for _, key in STAGES}
    rows = []
    for p in providers:
        tot = "total (text -> audio)"
        if p.status != "ok" or not p.samples["total"]:
            why = p.why or "time budget exhausted"
            row = (skipped if p.status != "failed" else failed)(SUITE, tot, label, p.dtype, p.name, "fwd", why, p.ours)
            row.extra = {"snr_db": None, "precision": p.dtype}
            rows.append(row)
            continue
        s = p.samples
        extra = {"precision": p.dtype, "setup_s": p.setup_s, **{k: v for k, v in p.err.items() if k != "finite"}}
        for op, key in STAGES:
            tm = summarize(s[key])
            row = Row(SUITE, op, label, p.dtype, p.name, "fwd", ours=p.ours)
            extra[f"{key}_ms"] = tm.median_ms
            if key in flops:
                stage_dt = p.precision[0 if key == "dit_step" else 1]
                row = ctx.fill(row, tm, flops[key], "TFLOP/s")
                peak = peaks.get(f"linear_{stage_dt}_TFLOPs")
                row.peak_frac = row.value / peak if peak else None
                w = work[key]
                act = size.get(p.precision[1] if key == "decoder" else ("bf16" if stage_dt == "bf16" else "fp32"), 4)
                nbytes = w["io"] * act + w["weights"] * size.get(stage_dt, 4)
                bw = nbytes / (tm.median_ms * 1e-3) / 1e9 / peaks["copy_GBps"] if peaks.get("copy_GBps") else None
                extra[f"{'dit' if key == 'dit_step' else 'decoder'}_peak_frac"] = row.peak_frac
                extra[f"{'dit' if key == 'dit_step' else 'decoder'}_bw_frac"] = bw
                row.notes = "; ".join(x for x in (
                    f"{100 * row.peak_frac:.1f}% of the {stage_dt} linear peak" if row.peak_frac is not None else
                    f"no measured {stage_dt} linear peak",
                    f"{100 * bw:.1f}% of copy bandwidth ({nbytes / 1e9:.3g} GB: Linear/Conv inputs + outputs + "
                    f"weights once)" if bw is not None else "",
                    "all steps of all runs" if key == "dit_step" else "") if x)
            elif key == "total":
                row = ctx.fill(row, tm, audio_s, "audio-s/s")
                mem = [m for m in s["mem"] if m is not None]
                added = [a for a in s["added"] if a is not None]
                row.peak_mem_mb = max(mem) if mem else None
                weights = p.weights_mb
                extra.update(weights_mb=weights, run_added_mb=max(added) if added else None,
                             standalone_mb=(base_rss + weights + max(added)) if added else None)
                err = (f"audio vs the fp32 reference run: rel err {p.err['rel_err']:.2e}, SNR "
                       + ("inf (identical)" if p.err["snr_db"] is None else f"{p.err['snr_db']:.1f} dB"))
                row.notes = "; ".join(x for x in (
                    p.notes, TEXT_NOTE, err,
                    f"setup {p.setup_s:.1f} s (not timed)" if p.setup_s is not None else "",
                    f"{torch.get_num_threads()} thread(s); {len(s['total'])} interleaved runs (order rotated)",
                    (f"peak RSS {row.peak_mem_mb:.0f} MB (the shared reference weights and this provider's resident); "
                     f"the run added "
                     f"{extra['run_added_mb']:.0f} MB; own weights {weights:.0f} MB; standalone est. "
                     f"{extra['standalone_mb']:.0f} MB") if added and row.peak_mem_mb else "") if x)
                row.extra = extra
            else:
                row = ctx.fill(row, tm)
                row.notes = "the same conditioner module for every provider"
            if base_med.get(key):
                row.speedup, row.baseline = base_med[key] / tm.median_ms, baseline.name
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ extras
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
                                         notes="torch.set_num_threads; eager ops, fp32 FastDiT / FastOobleckDecoder"
                                               + ("; this run's setting" if n == base_threads else "")),
                                     tm, work, "TFLOP/s", pm))
    finally:
        torch.set_num_threads(base_threads)
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
    qdit = None     # frees the quantised copy (a del would confuse pyflakes: the lambdas above read it)
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
        dit8 = None
    except Exception as exc:  # noqa: BLE001
        return failed(SUITE, "dit_step (int8)", label, "fp32", name, "fwd",
                      f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", True)
    return ctx.fill(Row(SUITE, "dit_step (int8)", label, "fp32", name, "fwd", ours=True,
                        notes=f"arc_fast.loader Int8Linear on the {n} block Linears (per-channel int8 weights, as "
                              f"`arc-fast convert --int8`); error vs fp32 FastDiT: max {err:.2e} x max|out|, rel RMS "
                              f"{rms:.2e}; seeded random weights"), tq, step_flops, "TFLOP/s", pm)
