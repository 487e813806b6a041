"""Text (+ optional init audio) -> audio with a Stable-Audio-format model: loading, conditioning, sampling,
decoding, guards, conversion.

``load_pipeline()`` with no argument gives the bundled default model (offline). ``load_pipeline(path)``
takes a model folder (``model_config.json`` + ``model.safetensors`` / ``model.ckpt``, or the split
``dit.safetensors`` + ``autoencoder.safetensors`` that ``arc-fast convert --split`` writes) or one checkpoint
file with ``model_config.json`` beside it, in any layout ``arc_fast.loader`` reads (unwrapped, Lightning
with EMA and discriminator, ARC training, the arc_fast trainer's checkpoints); ``dit=`` / ``autoencoder=``
give components as separate files, ``config=`` the config. Loading is strict: every missing, unexpected or
mis-shaped key is named (``allow_partial=True`` turns them into warnings).

Sampler defaults follow the model kind (``Pipeline.defaults``): ARC post-trained models ping-pong, 8 steps,
CFG 1; base models Euler, 100 steps, CFG 7. The kind comes from, in order: the ``arc_post_trained`` argument,
the checkpoint (ARC training keys, the arc_fast trainer, arc_fast safetensors metadata), the config's
``arc_fast.arc_post_trained``, a ``manifest.json`` beside the config (``{"arc_post_trained": true}``), a
``diffusion_objective`` of ``rf_denoiser`` (Stable Audio's marker for ARC models); otherwise base.

Audio-to-audio (``init_audio``): the audio is remixed to the autoencoder's channel count (mono is copied to
every channel; to mono, channels are averaged; otherwise the first channels are kept, or repeated when
there are too few), resampled to the model rate with a Kaiser-windowed sinc filter (``resample``), padded
or cut to the latent window, encoded to the VAE posterior mean (fp32), and the sampler starts at
``(1 - s) z + s eps`` with ``s = init_noise_level`` (rectified flow; ``cos(s pi/2) z + sin(s pi/2) eps`` for
v-objective models).

Guards: non-finite values in the conditioning, the encoded init audio, any DiT step or the decoder output,
and an all-silent output, raise ``GenerationError`` naming the stage (``DiT step k of n``); the CLI writes no
file then. A low-precision decoder that gives non-finite audio is rerun in fp32 (and kept in fp32).
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
import typing as tp
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import sampling
from .loader import (PREFIXES, CheckpointError, apply_int8_layout, build_models, check_state_dict, dequantize_int8_layers,
                     quantize_dit_state_dict, read_component, read_resolved, refresh_weight_norm, save_json,
                     save_safetensors)
from .loader import ResolvedCheckpoint, read_checkpoint  # noqa: F401 - re-exported (older import path)
from .reference.conditioners import MultiConditioner, assemble_dit_inputs

logger = logging.getLogger("arc_fast")

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
DEFAULT_MODEL_DIR = os.path.join(ASSETS, "default")
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "half": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
# Peak below one 16-bit step: the wav would hold only zeros.
SILENCE_PEAK = 2.0 ** -16


class GenerationError(RuntimeError):
    """Generation produced unusable output; ``stage`` says where ('conditioner', 'encoder', 'DiT step k of n',
    'decoder')."""

    def __init__(self, message: str, stage: str):
        super().__init__(message)
        self.stage = stage


class NonFiniteError(GenerationError):
    """NaN/Inf values appeared at ``stage``."""


@dataclass
class Timings:
    """Seconds spent in each stage of the last call."""
    conditioner: float = 0.0
    encoder: float = 0.0
    dit_steps: list = field(default_factory=list)
    decoder: float = 0.0
    total: float = 0.0
    precision: str = ""     # e.g. "DiT bf16, decoder bf16"
    threads: int = 0        # torch intra-op threads (CPU)

    def summary(self) -> str:
        n = len(self.dit_steps)
        dit = sum(self.dit_steps)
        per = dit / n if n else 0.0
        enc = f" | encoder {self.encoder * 1e3:.1f} ms" if self.encoder else ""
        return (f"conditioner {self.conditioner * 1e3:.1f} ms{enc} | DiT {n} steps {dit * 1e3:.1f} ms "
                f"({per * 1e3:.1f} ms/step) | decoder {self.decoder * 1e3:.1f} ms | total {self.total * 1e3:.1f} ms"
                + (f" | {self.precision}" if self.precision else "")
                + (f", {self.threads} threads" if self.threads else ""))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_dtype(value, allow_int8: bool = False) -> torch.dtype | str | None:
    """'fp32'|'fp16'|'bf16' (or a torch.dtype, or None) -> torch.dtype | None; 'int8' -> "int8" where
    ``allow_int8`` (the DiT on the CPU); 'auto' -> None (the caller's automatic choice)."""
    if value is None or isinstance(value, torch.dtype):
        return value
    key = str(value).lower()
    if key == "auto":
        return None
    if allow_int8 and key == "int8":
        return "int8"
    if key not in DTYPES:
        raise ValueError(f"dtype must be one of auto, fp32, fp16, bf16{', int8' if allow_int8 else ''}, got {value!r}")
    return DTYPES[key]


def _dtype_name(dtype) -> str:
    return dtype if isinstance(dtype, str) else {torch.float32: "fp32", torch.float16: "fp16",
                                                 torch.bfloat16: "bf16"}.get(dtype, str(dtype))


# ------------------------------------------------------------------------------------------------------
# Audio utilities
# ------------------------------------------------------------------------------------------------------
def _sinc_kernel(phases: int, stride: int, cutoff: float, half_width: int, beta: float) -> torch.Tensor:
    """(phases, 1, 2*half_width + stride) taps: phase p interpolates at input offset p*stride/phases."""
    k = 2 * half_width + stride
    j = torch.arange(k, dtype=torch.float64)[None, :]
    p = torch.arange(phases, dtype=torch.float64)[:, None]
    pos = j - half_width - p * stride / phases           # distance (input samples) from the output instant
    inside = pos.abs() <= half_width
    u = (pos / half_width).clamp(-1, 1)
    window = torch.i0(beta * torch.sqrt(1 - u * u)) / torch.i0(torch.tensor(beta, dtype=torch.float64))
    h = cutoff * torch.sinc(cutoff * pos) * window * inside
    return h[:, None, :]


def resample(audio: torch.Tensor, orig_sr: int, new_sr: int, zero_crossings: int = 24,
             rolloff: float = 0.945, beta: float = 8.6) -> torch.Tensor:
    """Band-limited resampling of audio (..., N) float -> (..., ceil(N * new_sr / orig_sr)), same dtype.

    Method: rational polyphase filtering. With new/orig = L/M in lowest terms, output sample q*L + p lies at
    input position q*M + p*M/L; it is the input convolved with a Kaiser-windowed (beta 8.6) sinc low-pass
    whose cutoff is ``rolloff`` times the lower of the two Nyquist frequencies, ``zero_crossings`` zero
    crossings each side. One conv1d with stride M and L output channels does all phases. When L or M is
    above 1000 (nearly coprime rates), the audio is low-passed with the same kind of filter and linearly
    interpolated instead. Samples past either end count as zeros."""
    if not isinstance(audio, torch.Tensor) or not audio.is_floating_point():
        raise TypeError("resample: audio must be a floating-point tensor (..., samples)")
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"resample: sample rates must be positive, got {orig_sr} -> {new_sr}")
    if orig_sr == new_sr:
        return audio.clone()
    g = math.gcd(orig_sr, new_sr)
    m, l = orig_sr // g, new_sr // g
    shape, n = audio.shape[:-1], audio.shape[-1]
    x = audio.reshape(-1, 1, n).to(torch.float32)
    n_out = -(-n * l // m)
    cutoff = rolloff * min(1.0, l / m)
    half = int(math.ceil(zero_crossings / cutoff))
    if l > 1000 or m > 1000:
        taps = _sinc_kernel(1, 1, cutoff, half, beta)[0:1, :, : 2 * half + 1].to(torch.float32)
        y = F.conv1d(F.pad(x, (half, half)), taps)
        y = F.interpolate(y, size=n_out, mode="linear", align_corners=False)
    else:
        kernel = _sinc_kernel(l, m, cutoff, half, beta).to(torch.float32)
        blocks = -(-n_out // l)
        right = max(0, (blocks - 1) * m + kernel.shape[-1] - half - n)
        y = F.conv1d(F.pad(x, (half, right)), kernel, stride=m)        # (rows, L, blocks)
        y = y.transpose(1, 2).reshape(x.shape[0], 1, -1)[..., :n_out]
    return y.reshape(*shape, n_out).to(audio.dtype)


def remix(audio: torch.Tensor, channels: int) -> torch.Tensor:
    """(..., C, N) -> (..., channels, N): mono is copied to every channel; to mono, channels are averaged;
    otherwise the first ``channels`` are kept, or the channels are repeated in order when there are fewer."""
    c = audio.shape[-2]
    if c == channels:
        return audio
    if c == 1:
        return audio.expand(*audio.shape[:-2], channels, audio.shape[-1]).clone()
    if channels == 1:
        return audio.mean(dim=-2, keepdim=True)
    if c > channels:
        return audio[..., :channels, :].clone()
    idx = torch.arange(channels, device=audio.device) % c
    return audio.index_select(-2, idx)


def load_audio(path: str) -> tuple[torch.Tensor, int]:
    """A sound file (wav/flac/ogg, via soundfile) -> (audio (channels, samples) float32, sample_rate)."""
    import soundfile as sf
    if not os.path.isfile(path):
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - one clear line for any decoding failure
        raise ValueError(f"cannot read audio file {path}: {exc}") from exc
    if data.shape[0] == 0:
        raise ValueError(f"audio file {path} is empty")
    return torch.from_numpy(data.T.copy()), int(sr)


# ------------------------------------------------------------------------------------------------------
# State dicts
# ------------------------------------------------------------------------------------------------------
def load_state_dict_into(dit: nn.Module, autoencoder: nn.Module, conditioner: nn.Module, sd: dict,
                         allow_partial: bool = False) -> list[str]:
    """Load a full-layout state dict into real modules. Strict: raises CheckpointError naming every
    missing/unexpected/mis-shaped key unless ``allow_partial`` (then warns and returns them)."""
    report = check_state_dict({"dit": dit, "autoencoder": autoencoder, "conditioner": conditioner}, sd)
    if report.problems and not allow_partial:
        raise CheckpointError("checkpoint does not match the config: " + " | ".join(report.problems))
    for p in report.problems:
        warnings.warn(p, RuntimeWarning, stacklevel=2)
    for name, mod in (("dit", dit), ("autoencoder", autoencoder), ("conditioner", conditioner)):
        own = mod.state_dict()
        usable = {k: v for k, v in report.parts[name].items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
        mod.load_state_dict(usable, strict=False)
    return report.problems


def full_state_dict(dit: nn.Module, autoencoder: nn.Module, conditioner: nn.Module) -> dict[str, torch.Tensor]:
    """The Stable Audio unwrapped layout of the three components."""
    sd = {}
    for name, mod in (("dit", dit), ("autoencoder", autoencoder), ("conditioner", conditioner)):
        for k, v in mod.state_dict().items():
            sd[PREFIXES[name] + k] = v
    return sd


# ------------------------------------------------------------------------------------------------------
# Sampling helpers
# ------------------------------------------------------------------------------------------------------
class _StepGuard:
    """Wraps the DiT for a sampler: records, without a device sync, whether each step's output is finite."""

    def __init__(self, model):
        self.model = model
        self.flags: list = []
        self.times: list = []

    def reuse_conditioning(self):
        """The wrapped model's scope (``sampling.reuse_conditioning``): the samplers open it through the guard."""
        return sampling.reuse_conditioning(self.model)

    def __call__(self, x, t, **kwargs):
        v = self.model(x, t, **kwargs)
        self.flags.append(torch.isfinite(v).all())
        self.times.append(t[:1])
        return v

    def first_bad(self) -> tp.Optional[tuple[int, float]]:
        if not self.flags:
            return None
        ok = torch.stack(self.flags)
        if bool(ok.all()):
            return None
        i = int((~ok).nonzero()[0, 0])
        return i, float(self.times[i].float())


def rf_schedule(steps: int, sigma_max: float = 1.0) -> torch.Tensor:
    """Rectified-flow times (steps + 1,) from ``sigma_max`` to 0, always decreasing.

    ``sampling.rf_timesteps`` (the reference schedule: logSNR from that of sigma_max up to 2) whenever it
    decreases; for sigma_max below sigmoid(-2) ~ 0.119 that schedule would climb back to 0.119, so the
    logSNR range is instead that of sigma_max up to 8 more (the span of the full schedule)."""
    ts = sampling.rf_timesteps(steps, sigma_max)
    if bool((ts[1:] <= ts[:-1]).all()):
        return ts
    l0 = math.log((1 - sigma_max) / sigma_max)
    t = torch.sigmoid(-torch.linspace(l0, l0 + 8.0, steps + 1, dtype=torch.float64))
    t[0], t[-1] = sigma_max, 0.0
    return t.float()


def _sample_loop(model, x: torch.Tensor, ts: torch.Tensor, sampler: str, objective: str,
                 generator: torch.Generator, cfg_scale: float, progress: bool, step_times: list | None,
                 cond: dict) -> torch.Tensor:
    """Sampler over explicit times ``ts`` (steps + 1,): Euler / ping-pong for rectified flow (the arithmetic
    of ``arc_fast.sampling``) and DDIM / ping-pong for v-objective models (alpha = cos(t pi/2), sigma =
    sin(t pi/2), x0 = alpha x - sigma v, eps = sigma x + alpha v)."""
    steps = ts.shape[0] - 1
    b = x.shape[0]
    ts = ts.to(x.device)
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, total=steps, desc=sampler, leave=False)
    with sampling.reuse_conditioning(model):
        for i in it:
            t0 = time.perf_counter()
            t_cur, t_next = ts[i], ts[i + 1]
            v = model(x, t_cur.expand(b).to(x.dtype), cfg_scale=cfg_scale, **cond)
            if objective == "v":
                a, s = torch.cos(t_cur * math.pi / 2), torch.sin(t_cur * math.pi / 2)
                a_n = torch.cos(t_next * math.pi / 2) if i < steps - 1 else torch.ones_like(t_next)
                s_n = torch.sin(t_next * math.pi / 2) if i < steps - 1 else torch.zeros_like(t_next)
                xf, vf = x.float(), v.float()
                x0 = a * xf - s * vf
                if sampler == "euler":
                    eps = s * xf + a * vf
                else:
                    eps = sampling.randn(x.shape, generator, x.device, torch.float32)
                x = (a_n * x0 + s_n * eps).to(x.dtype)
            elif sampler == "euler":
                x = x + (t_next - t_cur).to(x.dtype) * v
            else:
                x0_hat = x - t_cur.to(x.dtype) * v
                if i == steps - 1:
                    x = x0_hat
                else:
                    eps = sampling.randn(x.shape, generator, x.device, x.dtype)
                    x = (1 - t_next).to(x.dtype) * x0_hat + t_next.to(x.dtype) * eps
            if step_times is not None:
                step_times.append(time.perf_counter() - t0)
    return x


class _GraphRunner:
    """The sampling loop and the decode of one call shape, captured as two CUDA graphs (one pool).

    Inputs live in static buffers (start latents, the ping-pong noise of every step, the conditioning) that
    each call overwrites; the loop's times are constants of the capture. The per-step noise is drawn on the
    host from the call's generator in the same order as ``sampling.sample_pingpong`` draws it, so a replay
    computes what the eager sampler computes from the same seed. Two graphs rather than one only so that the
    DiT and the decoder are timed apart (CUDA events, no host sync between them). On a CPU tensor nothing is
    captured: the same loop runs eagerly, which is how the CPU tests check its arithmetic and noise order."""

    def __init__(self, dit, decode, x: torch.Tensor, ts: torch.Tensor, sampler: str, cfg_scale: float, cond: dict):
        steps = ts.shape[0] - 1
        self.steps, self.sampler = steps, sampler
        self.x = x.clone()
        self.eps = x.new_empty((max(steps - 1, 0),) + tuple(x.shape)) if sampler == "pingpong" else None
        self.cond = {k: v.clone() for k, v in cond.items()}
        b, dt = x.shape[0], x.dtype
        ts = ts.to(x.device)
        # The step constants are rounded exactly as sampling.sample_euler / sample_pingpong round them.
        tvec = [ts[i].expand(b).to(dt).contiguous() for i in range(steps)]
        dts = [(ts[i + 1] - ts[i]).to(dt) for i in range(steps)]
        t_cur = [ts[i].to(dt) for i in range(steps)]
        keep = [(1 - ts[i + 1]).to(dt) for i in range(steps)]
        t_next = [ts[i + 1].to(dt) for i in range(steps)]

        def loop():
            x = self.x
            flags = []
            # A scope per run: the captured graph computes the text context from the static buffers in its
            # first step, so a replay on new conditioning never sees the capture's.
            with sampling.reuse_conditioning(dit):
                for i in range(steps):
                    v = dit(x, tvec[i], cfg_scale=cfg_scale, **self.cond)
                    flags.append(torch.isfinite(v).all())
                    if sampler == "euler":
                        x = x + dts[i] * v
                    else:
                        x0_hat = x - t_cur[i] * v
                        x = x0_hat if i == steps - 1 else keep[i] * x0_hat + t_next[i] * self.eps[i]
            return x, torch.stack(flags)

        self.capture = x.device.type == "cuda"
        if not self.capture:
            self.loop, self.decode = loop, decode
            return
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):   # autotuning, plan caches and first allocations stay out of the capture
            for _ in range(2):
                decode(loop()[0])
        torch.cuda.current_stream(x.device).wait_stream(side)
        pool = torch.cuda.graph_pool_handle()
        self.g_loop, self.g_dec = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.g_loop, pool=pool):
            self.latents, self.flags = loop()
        with torch.cuda.graph(self.g_dec, pool=pool):
            self.audio = decode(self.latents)

    def __call__(self, x: torch.Tensor, eps: torch.Tensor | None, cond: dict):
        """Replay on new inputs: returns (latents, audio, per-step finite flags, DiT ms, decoder ms); the outputs
        are the graphs' static buffers, overwritten by the next replay."""
        self.x.copy_(x)
        if self.eps is not None and eps is not None:
            self.eps.copy_(eps)
        for k, v in cond.items():
            self.cond[k].copy_(v)
        if not self.capture:
            t0 = time.perf_counter()
            self.latents, self.flags = self.loop()
            t1 = time.perf_counter()
            self.audio = self.decode(self.latents)
            return self.latents, self.audio, self.flags, (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
        ev[0].record()
        self.g_loop.replay()
        ev[1].record()
        self.g_dec.replay()
        ev[2].record()
        ev[2].synchronize()
        return self.latents, self.audio, self.flags, ev[0].elapsed_time(ev[1]), ev[1].elapsed_time(ev[2])


# ------------------------------------------------------------------------------------------------------
# Pipeline
# ------------------------------------------------------------------------------------------------------
class Pipeline:
    """A loaded text-to-audio model. Call it with a prompt to get ``(audio (B, channels, samples), sample_rate)``.

    Attributes: ``dit``, ``autoencoder``, ``conditioner``, ``config``, ``sample_rate``, ``sample_size``,
    ``hop`` (audio samples per latent frame), ``latent_channels``, ``audio_channels``, ``objective``,
    ``is_arc``, ``device``, ``dtype`` (DiT), ``autoencoder_dtype`` (decoder compute), ``load_notes`` (what the
    loader chose/ignored), ``last_timings``.
    """

    def __init__(self, config: dict, dit: nn.Module, autoencoder: nn.Module, conditioner: MultiConditioner,
                 device: str | torch.device = "cpu"):
        self.config = config
        self.dit, self.autoencoder, self.conditioner = dit, autoencoder, conditioner
        self.device = torch.device(device)
        self.sample_rate = int(config["sample_rate"])
        self.sample_size = int(config["sample_size"])
        pre_block = config["model"]["pretransform"]
        pre = pre_block.get("config", pre_block)
        self.hop = int(pre.get("downsampling_ratio", 2048))
        self.latent_channels = int(config["model"].get("io_channels", pre.get("latent_dim")))
        self.audio_channels = int(pre.get("io_channels", config.get("audio_channels", 2)))
        self.latent_scale = float(pre_block.get("scale", 1.0))
        diff = config["model"]["diffusion"]
        self.objective = diff.get("diffusion_objective", diff.get("config", {}).get("diffusion_objective", "v"))
        self.cross_ids = list(diff.get("cross_attention_cond_ids", []))
        self.global_ids = list(diff.get("global_cond_ids", []))
        arc = config.get("arc_fast", {}).get("arc_post_trained")
        self.is_arc = bool(arc) if arc is not None else self.objective == "rf_denoiser"
        self.patch_size = int(getattr(dit, "patch_size", 1))
        self.short_window_default = bool(config.get("arc_fast", {}).get("short_window", False))
        self.dtype = next(dit.parameters()).dtype
        self.dit_precision = _dtype_name(self.dtype)
        self.autoencoder_dtype = torch.float32
        self.load_notes: list[str] = []
        self.last_timings = Timings()
        self._warned: set[str] = set()
        self._compiled = None              # (the DiT it wraps, torch.compile wrapper) after compile()
        self._graph_first_bad = None

    # -------------------------------------------------------------------------------- properties
    @property
    def max_seconds(self) -> float:
        return self.sample_size / self.sample_rate

    @property
    def has_encoder(self) -> bool:
        return getattr(self.autoencoder, "encoder", None) is not None

    @property
    def has_text(self) -> bool:
        keys = getattr(self.conditioner, "default_keys", {}) or {}
        return any((keys.get(k, k) == "prompt") for k in self.conditioner.conditioners)

    def defaults(self) -> dict:
        """Per-model sampler defaults: ARC models ping-pong/8 steps/CFG 1, base models Euler/100/CFG 7; a config's
        ``arc_fast.defaults`` (any of sampler / steps / cfg_scale) overrides them (what its trainer measured)."""
        d = ({"sampler": "pingpong", "steps": 8, "cfg_scale": 1.0} if self.is_arc else
             {"sampler": "euler", "steps": 100, "cfg_scale": 7.0})
        own = self.config.get("arc_fast", {}).get("defaults") or {}
        bad = sorted(set(own) - set(d))
        if bad:
            raise ValueError(f"model config arc_fast.defaults: unknown keys {bad}; allowed: sampler, steps, cfg_scale")
        return {**d, **own}

    def describe(self) -> str:
        d = self.defaults()
        kind = "ARC post-trained" if self.is_arc else "base"
        return (f"{kind} model ({self.objective}); defaults {d['sampler']}, {d['steps']} steps, CFG {d['cfg_scale']:g}; "
                f"window {self.max_seconds:.2f} s @ {self.sample_rate} Hz, {self.audio_channels} ch")

    # -------------------------------------------------------------------------------- placement
    def to(self, device=None, dtype=None, autoencoder_dtype=None) -> "Pipeline":
        """Move to ``device``; ``dtype`` casts the DiT (the conditioner and the encoder stay fp32);
        ``autoencoder_dtype`` is the decoder's compute dtype (default: ``dtype`` on CUDA, fp32 elsewhere)."""
        if device is not None:
            self.device = torch.device(device)
        for m in (self.dit, self.autoencoder, self.conditioner):
            m.to(device=self.device)
        dtype = parse_dtype(dtype, allow_int8=True)
        from .cpu import is_int8, quantize_dit_int8
        if dtype == "int8":
            if self.device.type != "cpu":
                raise ValueError("dtype='int8' (torchao dynamic int8) is a CPU path; use bf16 or fp16 on CUDA")
            if not is_int8(self.dit):
                quantize_dit_int8(self.dit.float())
            self.dtype = torch.float32   # activations between the int8 GEMMs
            self.dit_precision = "int8"
        elif dtype is not None:
            if is_int8(self.dit) and dtype != torch.float32:
                raise ValueError(f"the DiT is int8-quantised; it cannot be cast to {dtype} (reload the model)")
            if not is_int8(self.dit):
                self.dit.to(dtype=dtype)
            self.dtype = dtype
            self.dit_precision = "int8" if is_int8(self.dit) else _dtype_name(dtype)
        ae = parse_dtype(autoencoder_dtype)
        if ae is None and dtype is not None:
            ae = dtype if self.device.type == "cuda" else torch.float32
        if ae is not None:
            self.autoencoder_dtype = ae
            self._lowp_decoders = {}
        self.clear_cuda_graphs()
        return self

    @property
    def _dit_fn(self):
        """What sampling calls: the compiled wrapper if ``compile()`` wrapped the current ``self.dit``."""
        c = self._compiled
        return c[1] if c is not None and c[0] is self.dit else self.dit

    def _fast_decoder(self) -> bool:
        return type(self.autoencoder.decoder).__name__ == "FastOobleckDecoder"

    def _warn_once(self, key: str, msg: str, category=UserWarning) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(msg, category, stacklevel=3)

    # -------------------------------------------------------------------------------- stages
    def condition(self, prompts: list[str], seconds: float) -> dict:
        """Run the conditioners (``seconds_total`` = ``seconds``, ``seconds_start`` = 0): returns the DiT's
        cross_attn_cond / cross_attn_cond_mask / global_embed."""
        metadata = [{"prompt": p, "seconds_start": 0, "seconds_total": seconds} for p in prompts]
        cond = self.conditioner(metadata, self.device)
        return assemble_dit_inputs(cond, self.cross_ids, self.global_ids)

    def frames_for(self, seconds: float, short_window: bool = False) -> int:
        """Latent frames sampled for a clip: the model's whole window, or with ``short_window`` the fewest
        frames (a multiple of the patch size) that cover ``seconds``."""
        full = self.sample_size // self.hop
        if not short_window:
            return full
        need = max(1, math.ceil(round(seconds * self.sample_rate, 6) / self.hop))
        need = -(-need // self.patch_size) * self.patch_size
        return min(need, max(full, self.patch_size))

    def prepare_init_audio(self, init_audio, batch: int, samples: int) -> torch.Tensor:
        """init_audio -> (batch, audio_channels, samples) float32 on the device, at the model's rate.

        Accepts a path (any sound file soundfile reads), ``(sample_rate, tensor)``, or a tensor / array at
        the model's rate, shaped (N,), (C, N) or (B, C, N) (B = 1 or ``batch``)."""
        sr = self.sample_rate
        if isinstance(init_audio, (str, os.PathLike)):
            audio, sr = load_audio(os.fspath(init_audio))
        elif isinstance(init_audio, tuple) and len(init_audio) == 2 and not isinstance(init_audio[0], torch.Tensor):
            sr, audio = int(init_audio[0]), init_audio[1]
        else:
            audio = init_audio
        audio = torch.as_tensor(audio)
        if not audio.is_floating_point():
            raise TypeError(f"init_audio must hold floating-point samples, got {audio.dtype}")
        if audio.dim() == 1:
            audio = audio[None, None]
        elif audio.dim() == 2:
            audio = audio[None]
        if audio.dim() != 3 or audio.shape[-1] == 0:
            raise ValueError(f"init_audio must be (samples,), (channels, samples) or (batch, channels, samples), "
                             f"got shape {tuple(audio.shape)}")
        if audio.shape[0] not in (1, batch):
            raise ValueError(f"init_audio has batch {audio.shape[0]} but {batch} clips are generated")
        audio = remix(audio.float().cpu(), self.audio_channels)
        audio = resample(audio, sr, self.sample_rate)
        audio = audio[..., :samples]
        audio = F.pad(audio, (0, samples - audio.shape[-1]))
        return audio.expand(batch, -1, -1).to(self.device)

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """audio (B, audio_channels, N), N a multiple of ``hop`` -> latents (B, latent_channels, N / hop) fp32
        (the VAE posterior mean, divided by the pretransform scale), computed in fp32."""
        if not self.has_encoder:
            raise ValueError("this checkpoint has no encoder weights: audio-to-audio needs the full autoencoder "
                             "(give it with autoencoder=... / --autoencoder)")
        enc_dtype = next(self.autoencoder.encoder.parameters()).dtype
        z = self.autoencoder.encode(audio.to(enc_dtype), sample=False).float()
        return z / self.latent_scale

    def _run_decoder(self, latents: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        z = latents.float() * self.latent_scale
        if self._fast_decoder() or dtype == next(self.autoencoder.decoder.parameters()).dtype:
            return self.autoencoder.decode(z.to(dtype))
        # The reference decoder keeps fp32 weights (the fallback needs them intact): a cast copy runs in dtype.
        cache = self.__dict__.setdefault("_lowp_decoders", {})
        if dtype not in cache:
            refresh_weight_norm(self.autoencoder.decoder)
            cache[dtype] = copy.deepcopy(self.autoencoder.decoder).to(dtype)
        bottleneck = getattr(self.autoencoder, "bottleneck", None)
        if bottleneck is not None:
            z = bottleneck.decode(z)
        return cache[dtype](z.to(dtype))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, latent_channels, T) -> audio (B, audio_channels, T * hop) float32. Decodes in
        ``autoencoder_dtype``; non-finite output there is redone in fp32 (kept from then on) with a warning."""
        dtype = self.autoencoder_dtype
        audio = self._run_decoder(latents, dtype)
        if not bool(torch.isfinite(audio).all()) and dtype != torch.float32:
            self._warn_once("decoder-fp32", f"the decoder gave non-finite audio in {dtype}; decoding in float32 "
                                            f"from now on", RuntimeWarning)
            self.autoencoder_dtype = torch.float32
            self.__dict__.pop("_lowp_decoders", None)
            audio = self._run_decoder(latents, torch.float32)
        if not bool(torch.isfinite(audio).all()):
            raise NonFiniteError("the decoder produced NaN/Inf audio from finite latents (check the autoencoder "
                                 "weights: a checkpoint without pretransform.* weights gives this)", "decoder")
        return audio.float()

    # -------------------------------------------------------------------------------- generation
    def _validate(self, prompt, seconds, steps, cfg_scale, batch_size) -> list[str]:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("no prompt given (empty prompt list)")
        if not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts must be strings")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if seconds is not None and not (0 < seconds <= self.max_seconds + 1e-9):
            raise ValueError(f"seconds must be in (0, {self.max_seconds:.2f}] for this model, got {seconds}")
        if steps is not None and (not isinstance(steps, int) or steps < 1):
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if cfg_scale is not None and cfg_scale < 0:
            raise ValueError(f"cfg_scale must be >= 0, got {cfg_scale}")
        if len(prompts) == 1 and batch_size > 1:
            prompts = prompts * batch_size
        elif batch_size > 1 and len(prompts) != batch_size:
            raise ValueError(f"{len(prompts)} prompts but batch_size={batch_size}")
        return prompts

    def _check_finite(self, tensors, stage: str, hint: str) -> None:
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise NonFiniteError(f"NaN/Inf in the {stage} output ({hint})", stage)

    @torch.inference_mode()
    def __call__(self, prompt: str | list[str], seconds: float | None = None, steps: int | None = None,
                 cfg_scale: float | None = None, sampler: str | None = None, seed: int | None = None,
                 init_audio=None, init_noise_level: float | None = None, batch_size: int = 1,
                 progress: bool = False, short_window: bool | None = None,
                 guard: bool = True, cuda_graph: bool = False) -> tuple[torch.Tensor, int]:
        """Generate audio. Returns (audio (B, channels, round(seconds * sample_rate)) float32 on the CPU, sample_rate).

        prompt: a string or a list (B = its length, or ``batch_size`` copies of one prompt). seconds: clip
        length (default: the init audio's length, else the model's window), passed to the ``seconds_total``
        conditioner; the output is trimmed to it. steps / cfg_scale / sampler ('pingpong' | 'euler'):
        default per model (``defaults()``). seed: None = random. init_audio: see ``prepare_init_audio``;
        init_noise_level in (0, 1] (default 0.7) is where sampling starts (1 = the init audio has no effect).
        short_window: sample only the latent frames ``seconds`` needs (default: the config's
        ``arc_fast.short_window``, else the whole window). guard: raise ``GenerationError`` on NaN/Inf
        (naming the stage) or an all-silent output. cuda_graph: on CUDA, run the sampling loop and the decode as
        captured CUDA graphs (rectified-flow models; the first call of each shape/steps/sampler/CFG captures,
        later ones replay with no host sync inside the loop; same result as the eager loop for the same
        seed; no per-step progress bar). Graphs are cached on the pipeline (``clear_cuda_graphs()``)."""
        prompts = self._validate(prompt, seconds, steps, cfg_scale, batch_size)
        if cuda_graph:
            if self.device.type != "cuda":
                raise ValueError(f"cuda_graph=True needs the pipeline on a CUDA device (it is on {self.device}); "
                                 f"load it with device='cuda' or leave cuda_graph off")
            if self.objective == "v":
                raise ValueError("cuda_graph=True supports rectified-flow models; this one is a v-objective model: "
                                 "leave cuda_graph off")
        d = self.defaults()
        sampler = sampler or d["sampler"]
        steps = steps or d["steps"]
        cfg_scale = d["cfg_scale"] if cfg_scale is None else float(cfg_scale)
        if sampler not in sampling.SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose from {', '.join(sampling.SAMPLERS)}")
        if self.is_arc and (cfg_scale > 1 or sampler == "euler"):
            self._warn_once("arc", "this is an ARC post-trained model: ping-pong sampling with CFG 1 and ~8 steps is "
                                   "what it was trained for; CFG > 1 or Euler sampling degrades it")
        if init_audio is None and init_noise_level is not None:
            raise ValueError("init_noise_level is only meaningful with init_audio")
        if init_audio is not None:
            init_noise_level = 0.7 if init_noise_level is None else float(init_noise_level)
            if not 0.0 < init_noise_level <= 1.0:
                raise ValueError(f"init_noise_level must be in (0, 1], got {init_noise_level}")
        if not self.has_text and any(p.strip() for p in prompts):
            self._warn_once("no-text", "this model has no text conditioner: the prompt is ignored")
        short_window = self.short_window_default if short_window is None else bool(short_window)
        b = len(prompts)
        timings = Timings(precision=f"DiT {self.dit_precision}, decoder {_dtype_name(self.autoencoder_dtype)}",
                          threads=torch.get_num_threads() if self.device.type == "cpu" else 0)
        t_start = time.perf_counter()

        init_wave = None
        if init_audio is not None:
            init_wave = self.prepare_init_audio(init_audio, b, self.sample_size)
            if seconds is None:
                seconds = min(self._init_seconds(init_audio), self.max_seconds)
        seconds = self.max_seconds if seconds is None else float(seconds)
        frames = self.frames_for(seconds, short_window)

        cond = self.condition(prompts, seconds)
        if guard:
            self._check_finite(cond.values(), "conditioner", "try fp32 for the text encoder")
        _sync(self.device)
        timings.conditioner = time.perf_counter() - t_start

        gen = sampling.make_generator(seed)
        dtype = next(self.dit.parameters()).dtype
        noise = sampling.randn((b, self.latent_channels, frames), gen, self.device, dtype)
        cond = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in cond.items()}
        sigma_max = 1.0
        init_latents = None
        if init_wave is not None:
            t_enc = time.perf_counter()
            init_latents = self.encode(init_wave[..., : frames * self.hop])
            if guard:
                self._check_finite([init_latents], "encoder", "the init audio or the encoder weights")
            sigma_max = init_noise_level
            _sync(self.device)
            timings.encoder = time.perf_counter() - t_enc

        guarded = _StepGuard(self._dit_fn) if guard else self._dit_fn
        t0 = time.perf_counter()
        step_times: list[float] = []
        timer = step_times if self.device.type == "cpu" else None
        audio = None
        if cuda_graph:
            latents, audio, step_times, timings.decoder = self._graph_sample(
                noise, init_latents, sigma_max, steps, sampler, cfg_scale, gen, cond, guard)
        elif self.objective == "v":
            x = noise
            if init_latents is not None:
                a = 0.0 if sigma_max >= 1.0 else math.cos(sigma_max * math.pi / 2)
                x = (a * init_latents + math.sin(sigma_max * math.pi / 2) * noise.float()).to(dtype)
            ts = torch.linspace(sigma_max, 0.0, steps + 1)
            latents = _sample_loop(guarded, x, ts, sampler, "v", gen, cfg_scale, progress, timer, cond)
        else:
            ts = rf_schedule(steps, sigma_max)
            if torch.equal(ts, sampling.rf_timesteps(steps, sigma_max)):
                fn = sampling.SAMPLERS[sampler]
                kwargs = dict(steps=steps, cfg_scale=cfg_scale, progress=progress, sigma_max=sigma_max, **cond)
                if init_latents is not None:
                    kwargs["init_data"] = init_latents.to(dtype)
                if sampler == "pingpong":
                    kwargs["generator"] = gen
                if timer is not None:
                    kwargs["step_times"] = timer
                latents = fn(guarded, noise, **kwargs)
            else:
                x = (1 - sigma_max) * init_latents.to(dtype) + sigma_max * noise
                latents = _sample_loop(guarded, x, ts, sampler, "rf", gen, cfg_scale, progress, timer, cond)
        _sync(self.device)
        if not step_times:
            step_times = [(time.perf_counter() - t0) / steps] * steps
        timings.dit_steps = step_times
        if guard:
            bad = guarded.first_bad() if not cuda_graph else self._graph_first_bad
            if bad is not None:
                k, t = bad
                hint = (f"the DiT ran in {dtype}; try bf16 or fp32 (--dtype)" if dtype != torch.float32 else
                        "the DiT ran in fp32: check the checkpoint's DiT weights")
                raise NonFiniteError(f"NaN/Inf in the DiT output at step {k + 1} of {steps} (t={t:.4f}); {hint}",
                                     f"DiT step {k + 1} of {steps}")

        if audio is None:
            t1 = time.perf_counter()
            audio = self.decode(latents)
            _sync(self.device)
            timings.decoder = time.perf_counter() - t1
        n = int(round(seconds * self.sample_rate))
        audio = audio[..., :n].float().cpu()
        if guard:
            peak = audio.abs().amax().item() if audio.numel() else 0.0
            if peak < SILENCE_PEAK:
                stage = "DiT" if float(latents.abs().amax()) == 0.0 else "decoder"
                raise GenerationError(f"the output is silent (peak {peak:.1e}, below one 16-bit step) after the "
                                      f"{stage}: check the {'DiT' if stage == 'DiT' else 'autoencoder'} weights",
                                      stage)
        timings.total = time.perf_counter() - t_start
        self.last_timings = timings
        return audio, self.sample_rate

    def _graph_sample(self, noise, init_latents, sigma_max, steps, sampler, cfg_scale, gen, cond, guard):
        """The ``cuda_graph=True`` path of ``__call__``: (latents, audio fp32, seconds per step, decoder seconds)."""
        dtype = noise.dtype
        ts = rf_schedule(steps, sigma_max)
        x = noise if init_latents is None else (1 - sigma_max) * init_latents.to(dtype) + sigma_max * noise
        eps = None
        if sampler == "pingpong" and steps > 1:   # the draws sample_pingpong makes, in its order
            eps = torch.stack([sampling.randn(x.shape, gen, x.device, dtype) for _ in range(steps - 1)])
        dec_dtype = self.autoencoder_dtype
        key = (tuple(x.shape), dtype, dec_dtype, steps, sampler, float(cfg_scale), float(sigma_max),
               tuple(sorted((k, tuple(v.shape), v.dtype) for k, v in cond.items())))
        graphs = self.__dict__.setdefault("_cuda_graphs", {})
        runner = graphs.pop(key, None)
        if runner is None:
            if len(graphs) >= 4:           # each graph pins its activations: keep the 4 most recent shapes
                graphs.pop(next(iter(graphs)))
            runner = _GraphRunner(self._dit_fn, lambda z: self._run_decoder(z, dec_dtype), x, ts, sampler,
                                  cfg_scale, cond)
        graphs[key] = runner               # most recently used last
        latents, audio, flags, dit_ms, dec_ms = runner(x, eps, cond)
        self._graph_first_bad = None
        if not bool(flags.all()):
            i = int((~flags).nonzero()[0, 0])
            self._graph_first_bad = (i, float(ts[i]))
        latents = latents.clone()
        if self._graph_first_bad is None and not bool(torch.isfinite(audio).all()):
            # decode() owns the fp32 fallback and its warning; the graphs of the low-precision decoder go.
            self.clear_cuda_graphs()
            t1 = time.perf_counter()
            audio = self.decode(latents)
            _sync(self.device)
            dec_ms = (time.perf_counter() - t1) * 1e3
        return latents, audio.float(), [dit_ms / 1e3 / steps] * steps, dec_ms / 1e3

    def clear_cuda_graphs(self) -> None:
        """Drop the CUDA graphs ``cuda_graph=True`` captured (and the GPU memory they pin)."""
        self.__dict__.pop("_cuda_graphs", None)

    def compile(self, **kwargs) -> "Pipeline":
        """Run the DiT through ``torch.compile(self.dit, **kwargs)`` from now on (the module, its weights and
        ``state_dict`` keys are unchanged). Composes with ``cuda_graph=True``; the first calls compile."""
        self._compiled = (self.dit, torch.compile(self.dit, **kwargs))
        self.clear_cuda_graphs()
        return self

    def _init_seconds(self, init_audio) -> float:
        """Duration in seconds of an init_audio argument (path, (sample_rate, tensor) or tensor at the model rate)."""
        if isinstance(init_audio, (str, os.PathLike)):
            import soundfile as sf
            info = sf.info(os.fspath(init_audio))
            return info.frames / info.samplerate
        if isinstance(init_audio, tuple) and len(init_audio) == 2 and not isinstance(init_audio[0], torch.Tensor):
            return torch.as_tensor(init_audio[1]).shape[-1] / float(init_audio[0])
        return torch.as_tensor(init_audio).shape[-1] / self.sample_rate

    # -------------------------------------------------------------------------------- saving
    def state_dict(self) -> dict[str, torch.Tensor]:
        return full_state_dict(self.dit, self.autoencoder, self.conditioner)

    def save(self, directory: str) -> None:
        """Write ``model_config.json`` + ``model.safetensors`` (Stable Audio layout), atomically per file; the
        config's ``arc_fast.arc_post_trained`` and the safetensors metadata record the model kind."""
        os.makedirs(directory, exist_ok=True)
        config = copy.deepcopy(self.config)
        config.setdefault("arc_fast", {})["arc_post_trained"] = bool(self.is_arc)
        meta = {"format": "pt", "arc_fast": json.dumps({"arc_post_trained": bool(self.is_arc)})}
        save_safetensors(self.state_dict(), os.path.join(directory, "model.safetensors"), meta)
        save_json(config, os.path.join(directory, "model_config.json"))


# ------------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------------
CHECKPOINT_NAMES = ("model.safetensors", "model.ckpt", "model.pt", "model.pth")
SPLIT_NAMES = {"dit": "dit.safetensors", "autoencoder": "autoencoder.safetensors"}


def find_checkpoint(directory: str) -> dict[str, str]:
    """The checkpoint files of a model folder: {'main': path} or, for a split folder, {'dit': ..,
    'autoencoder': ..}. Raises FileNotFoundError naming what was looked for."""
    for name in CHECKPOINT_NAMES:
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            return {"main": p}
    split = {k: os.path.join(directory, v) for k, v in SPLIT_NAMES.items()}
    if all(os.path.isfile(p) for p in split.values()):
        return split
    raise FileNotFoundError(f"no model.safetensors or model.ckpt (or dit.safetensors + autoencoder.safetensors) "
                            f"in {directory}")


def _find_checkpoint(directory: str) -> str:  # kept for callers of the old name
    found = find_checkpoint(directory)
    return found.get("main") or found["dit"]


def read_config(config) -> dict:
    """A model config from a dict (deep-copied) or a JSON file path."""
    if isinstance(config, dict):
        return copy.deepcopy(config)
    path = os.fspath(config)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model_config.json not found at {path}")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc


@dataclass
class ResolvedModel:
    """Everything ``load_pipeline`` and ``convert_model`` need: the config, one full-layout state dict, the
    notes of what was read, and the model kind with where it came from."""
    config: dict
    state_dict: dict
    notes: list
    arc_post_trained: bool
    arc_source: str
    sources: dict


def _replace_component(sd: dict, part: dict, component: str) -> dict:
    drop = [PREFIXES[component]]
    if component == "dit" and any(k.startswith(PREFIXES["conditioner"]) for k in part):
        drop.append(PREFIXES["conditioner"])
    out = {k: v for k, v in sd.items() if not k.startswith(tuple(drop))}
    out.update(part)
    return out


def resolve_model(model: str | None = None, *, config=None, dit: str | None = None, autoencoder: str | None = None,
                  ema: bool | None = None, arc_post_trained: bool | None = None) -> ResolvedModel:
    """Find and read the config and the checkpoint(s) of a model (see ``load_pipeline``), without building it."""
    notes: list[str] = []
    if model is None and dit is None and autoencoder is None:
        model = DEFAULT_MODEL_DIR
    main = None
    cfg_dir = None
    files: dict[str, str] = {}
    if model is not None:
        model = os.fspath(model)
        if os.path.isdir(model):
            cfg_dir = model
            try:
                files = find_checkpoint(model)
            except FileNotFoundError:
                if dit is None or autoencoder is None:
                    raise
            main = files.get("main")
        elif os.path.isfile(model):
            main, cfg_dir = model, os.path.dirname(os.path.abspath(model))
        else:
            raise FileNotFoundError(f"model not found: {model}")
    else:
        cfg_dir = os.path.dirname(os.path.abspath(dit or autoencoder))
    dit = dit or files.get("dit")
    autoencoder = autoencoder or files.get("autoencoder")

    sd: dict = {}
    evidence: list[tuple[bool, str]] = []
    base = None
    if main is not None:
        res = read_resolved(main, ema)
        notes += res.notes
        sd = dict(res.state_dict)
        if res.arc_post_trained is not None:
            evidence.append((res.arc_post_trained, res.arc_evidence or main))
        if res.needs_base:
            base = os.fspath(res.base_model) if res.base_model else DEFAULT_MODEL_DIR
    cfg_source = None
    if config is None:
        path = os.path.join(cfg_dir, "model_config.json")
        if not os.path.isfile(path) and base is not None:
            path = os.path.join(base, "model_config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model_config.json not found at {path} (give the config with config=... / --config)")
        cfg_source = path
        config = read_config(path)
    else:
        cfg_source = config if isinstance(config, str) else "the given config"
        config = read_config(config)
    if base is not None:
        covered = {c for c in ("autoencoder", "conditioner") if any(k.startswith(PREFIXES[c]) for k in sd)}
        need = {"autoencoder", "conditioner"} - covered
        if autoencoder is not None:
            need.discard("autoencoder")
        if need:
            base_files = find_checkpoint(base)
            base_sd = {}
            if "main" in base_files:
                base_sd = read_resolved(base_files["main"]).state_dict
            else:
                base_sd = {**read_component(base_files["dit"], "dit").state_dict,
                           **read_component(base_files["autoencoder"], "autoencoder").state_dict}
            for c in sorted(need):
                sd.update({k: v for k, v in base_sd.items() if k.startswith(PREFIXES[c])})
            notes.append(f"{' and '.join(sorted(need))} taken from the model the ARC run started from ({base})")
    for component, path in (("dit", dit), ("autoencoder", autoencoder)):
        if path is None:
            continue
        res = read_component(os.fspath(path), component, ema)
        notes += res.notes
        if main is not None and any(k.startswith(PREFIXES[component]) for k in sd):
            notes.append(f"{component} weights from {path} replace those in {main}")
        sd = _replace_component(sd, res.state_dict, component)
        if component == "dit" and res.arc_post_trained is not None:
            evidence.append((res.arc_post_trained, res.arc_evidence or path))

    # Model kind: argument > checkpoint > config > manifest.json > diffusion objective.
    arc_cfg = config.get("arc_fast", {}).get("arc_post_trained")
    manifest = os.path.join(cfg_dir, "manifest.json") if cfg_dir else None
    arc_manifest = None
    if manifest and os.path.isfile(manifest):
        try:
            with open(manifest) as f:
                arc_manifest = json.load(f).get("arc_post_trained")
        except (OSError, ValueError, AttributeError):
            notes.append(f"{manifest} is unreadable: ignored")
    objective = config.get("model", {}).get("diffusion", {}).get("diffusion_objective")
    if arc_post_trained is not None:
        arc, source = bool(arc_post_trained), "the arc_post_trained argument"
    elif evidence:
        arc, source = evidence[-1][0], evidence[-1][1]
    elif arc_cfg is not None:
        arc, source = bool(arc_cfg), f"arc_fast.arc_post_trained in {cfg_source}"
    elif arc_manifest is not None:
        arc, source = bool(arc_manifest), manifest
    elif objective == "rf_denoiser":
        arc, source = True, "diffusion_objective 'rf_denoiser'"
    else:
        arc, source = False, "no ARC marker in the config or checkpoint"
    config.setdefault("arc_fast", {})["arc_post_trained"] = arc
    return ResolvedModel(config, sd, notes, arc, source, {"main": main, "dit": dit, "autoencoder": autoencoder,
                                                          "config": cfg_source})


def _seeded_build(config: dict, parts: tuple):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_models(config, parts=parts)


def materialize(resolved: ResolvedModel, allow_partial: bool = False) -> tuple[nn.Module, nn.Module, nn.Module, list]:
    """Build (dit, autoencoder, conditioner) from a resolved model and load its weights strictly (fp32,
    eval mode, no grad). Components are built without initialisation and take the checkpoint's tensors
    directly; with ``allow_partial``, a component with missing keys is built with seeded random weights."""
    notes: list[str] = []
    config, sd = resolved.config, resolved.state_dict
    dit, ae, cond = build_models(config, init=False)
    dit_sd = {k[len(PREFIXES["dit"]):]: v for k, v in sd.items() if k.startswith(PREFIXES["dit"])}
    n_int8 = apply_int8_layout(dit, dit_sd)
    if n_int8:
        notes.append(f"int8 DiT: {n_int8} linear layers with int8 weights (dynamic int8 GEMM on the CPU)")
    report = check_state_dict({"dit": dit, "autoencoder": ae, "conditioner": cond}, sd)
    if report.problems and not allow_partial:
        raise CheckpointError("checkpoint does not match the config: " + " | ".join(report.problems))
    for p in report.problems:
        warnings.warn(p, RuntimeWarning, stacklevel=3)
    if report.no_encoder:
        ae.encoder = None  # its memory was never initialised: no encoder rather than a garbage one
        notes.append("no encoder weights in the checkpoint: text-to-audio works, audio-to-audio does not")
    modules = {"dit": dit, "autoencoder": ae, "conditioner": cond}
    rebuild = tuple(sorted(report.incomplete & {"dit", "autoencoder"}))
    if rebuild:
        # Missing weights cannot stay on the meta device: those components get seeded random weights.
        real_dit, real_ae, _ = _seeded_build(config, rebuild)
        if real_dit is not None:
            apply_int8_layout(real_dit, dit_sd)
            modules["dit"] = real_dit
        if real_ae is not None:
            if report.no_encoder:
                real_ae.encoder = None
            modules["autoencoder"] = real_ae
    for name in ("dit", "autoencoder", "conditioner"):
        mod = modules[name]
        own = mod.state_dict()
        usable = {k: v for k, v in report.parts[name].items()
                  if k in own and tuple(v.shape) == tuple(own[k].shape)}
        mod.load_state_dict(usable, strict=False, assign=True)
    dit, ae, cond = modules["dit"], modules["autoencoder"], modules["conditioner"]
    refresh_weight_norm(ae)
    for m in (dit, ae, cond):
        m.float().eval().requires_grad_(False)
    return dit, ae, cond, notes


def load_pipeline(model: str | None = None, device: str | torch.device | None = None,
                  dtype: torch.dtype | str | None = None, allow_partial: bool = False, fast: bool = True, *,
                  config=None, dit: str | None = None, autoencoder: str | None = None, ema: bool | None = None,
                  arc_post_trained: bool | None = None, autoencoder_dtype=None) -> Pipeline:
    """Load a pipeline.

    model: a model folder (model_config.json + model.safetensors / model.ckpt, or dit.safetensors +
    autoencoder.safetensors), one checkpoint file (config beside it, or ``config=``), or None for the
    bundled default. Any layout of ``arc_fast.loader`` (Lightning wrappers, EMA, ARC training, the arc_fast
    trainer). dit / autoencoder: separate files that replace (or supply) those components. config: a dict
    or a JSON path. ema: None = prefer EMA weights when present (noted in ``load_notes``), True = require,
    False = online weights. arc_post_trained: override the detected model kind. dtype: the DiT's
    precision: None / "auto" = on the CPU the fastest precision this CPU runs well, per stage
    (``arc_fast.cpu.choose_precisions``: bf16 where oneDNN has native bf16 and a cached one-off probe confirms
    the gain, else fp32; an int8 export keeps int8), fp32 on CUDA for None and bf16 for "auto"; "fp32" / "bf16" /
    "fp16"; "int8" (CPU: torchao dynamic int8 of the DiT's linears, ``arc_fast.cpu.quantize_dit_int8``).
    autoencoder_dtype: the decoder's compute dtype (default: the automatic choice on the CPU when dtype is
    None/"auto", else dtype on CUDA and fp32 on the CPU); non-finite decoder output falls back to fp32.
    fast: swap in FastDiT and FastOobleckDecoder (same weights) where they apply.
    Raises FileNotFoundError / CheckpointError (every problem key named) / ValueError (config)."""
    resolved = resolve_model(model, config=config, dit=dit, autoencoder=autoencoder, ema=ema,
                             arc_post_trained=arc_post_trained)
    d, ae, cond, notes = materialize(resolved, allow_partial)
    notes = resolved.notes + notes
    # An int8 export's weights, restored exactly (q * scale): the int8 compute is torchao's, on plain Linear
    # layers of either DiT, when the DiT's precision is int8 (the automatic choice for such a model).
    n_int8 = dequantize_int8_layers(d)
    if n_int8:
        notes.append(f"int8 export: {n_int8} linear layers (re-quantised by torchao when the DiT runs in int8)")
    if fast:
        d, ae, fast_notes = _fast_modules(d, ae)
        notes += fast_notes
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pipe = Pipeline(resolved.config, d, ae, cond)
    dit_dtype, ae_dtype, precision_notes = _resolve_precisions(device, dtype, autoencoder_dtype, n_int8 > 0)
    notes += precision_notes
    pipe.to(device, dit_dtype, ae_dtype)
    kind = "ARC post-trained" if pipe.is_arc else "base"
    dflt = pipe.defaults()
    notes.append(f"{kind} model (from {resolved.arc_source}): defaults {dflt['sampler']}, {dflt['steps']} steps, "
                 f"CFG {dflt['cfg_scale']:g}")
    pipe.load_notes = notes
    for n in notes:
        logger.info(n)
    return pipe


def _resolve_precisions(device: torch.device, dtype, autoencoder_dtype, int8_export: bool):
    """(DiT dtype or "int8", decoder dtype, notes) for ``load_pipeline``'s dtype arguments (see there)."""
    auto = dtype is None or (isinstance(dtype, str) and dtype.lower() == "auto")
    dit_dtype = None if auto else parse_dtype(dtype, allow_int8=True)
    ae_dtype = parse_dtype(autoencoder_dtype)
    notes = []
    if device.type != "cpu":
        if auto and dtype is not None:
            dit_dtype = torch.bfloat16
        return dit_dtype, ae_dtype, notes
    if auto:
        from .cpu import choose_precisions, torchao_available
        p = choose_precisions()
        dit_dtype = p.dtypes()[0]
        why = p.reasons["dit"]
        if int8_export:
            missing = torchao_available()
            if missing is None:
                dit_dtype, why = "int8", "int8: the checkpoint is an int8 export (torchao dynamic int8)"
            else:
                why += f" (int8 export run in float: {missing})"
        notes.append(f"CPU precision (auto): DiT {why}")
        if ae_dtype is None:
            ae_dtype = p.dtypes()[1]
            notes.append(f"CPU precision (auto): decoder {p.reasons['decoder']}")
    elif ae_dtype is None:
        ae_dtype = torch.float32
    return dit_dtype, ae_dtype, notes


def _fast_modules(dit, autoencoder):
    """Swap in the fused modules when the package has them and the model suits them (same weights, same
    outputs); returns (dit, autoencoder, notes)."""
    notes = []
    try:
        from .models.dit import FastDiT
        fast = FastDiT.from_module(dit).eval()
        check = getattr(fast, "_check_betas", None)
        if check is not None:
            check()  # non-zero LayerNorm betas: the fused LayerNorm is bias-less, keep the reference
        dit = fast
    except ImportError:
        pass
    except (NotImplementedError, ValueError) as exc:
        notes.append(f"fused DiT not used: {exc}")
    try:
        from .models.decoder import FastOobleckDecoder
        autoencoder.decoder = FastOobleckDecoder.from_module(autoencoder.decoder).eval()
    except ImportError:
        pass
    except (NotImplementedError, TypeError) as exc:
        notes.append(f"fused decoder not used: {exc}")
    return dit, autoencoder, notes


def build_pipeline(config: dict, seed: int = 0, device="cpu") -> Pipeline:
    """A pipeline with seeded random weights (for tests, benchmarks and the bundled default)."""
    torch.manual_seed(seed)
    dit, autoencoder, conditioner = build_models(config)
    for m in (dit, autoencoder, conditioner):
        m.eval().requires_grad_(False)
    return Pipeline(config, dit, autoencoder, conditioner).to(device)


# ------------------------------------------------------------------------------------------------------
# Conversion
# ------------------------------------------------------------------------------------------------------
def convert_model(model: str | None, out_dir: str, *, config=None, dit: str | None = None,
                  autoencoder: str | None = None, ema: bool | None = None, split: bool = False,
                  dtype=None, int8: bool = False, allow_partial: bool = False,
                  arc_post_trained: bool | None = None, overwrite: bool = False) -> dict:
    """Write a model in the unwrapped inference layout: ``model_config.json`` + ``model.safetensors``, or
    with ``split`` ``dit.safetensors`` (model.model.* + conditioner.*) + ``autoencoder.safetensors`` (plain
    encoder.*/decoder.* keys). Reads every layout ``load_pipeline`` reads (EMA chosen as there; training
    modules and optimiser state dropped), checks it strictly against the config, optionally casts float
    tensors to ``dtype`` and stores the DiT's block linears as int8 (``int8``). ``out_dir`` must be empty or
    new unless ``overwrite``. Returns {'files': [...], 'notes': [...], 'arc_post_trained': bool}."""
    resolved = resolve_model(model, config=config, dit=dit, autoencoder=autoencoder, ema=ema,
                             arc_post_trained=arc_post_trained)
    config, sd = resolved.config, resolved.state_dict
    notes = list(resolved.notes)
    dit_m, ae_m, cond_m = build_models(config, meta=True)
    dit_sd = {k[len(PREFIXES["dit"]):]: v for k, v in sd.items() if k.startswith(PREFIXES["dit"])}
    apply_int8_layout(dit_m, dit_sd)
    report = check_state_dict({"dit": dit_m, "autoencoder": ae_m, "conditioner": cond_m}, sd)
    if report.problems and not allow_partial:
        raise CheckpointError("checkpoint does not match the config: " + " | ".join(report.problems))
    for p in report.problems:
        warnings.warn(p, RuntimeWarning, stacklevel=2)
    # Only the keys the model uses are written: unknown keys never reach an inference checkpoint.
    keep = {PREFIXES[c] + k for c, part in report.parts.items() for k in part}
    own = {PREFIXES[c] + k for c, m in (("dit", dit_m), ("autoencoder", ae_m), ("conditioner", cond_m))
           for k in m.state_dict()}
    sd = {k: v for k, v in sd.items() if k in keep and k in own}
    cast = parse_dtype(dtype)
    if cast is not None:
        sd = {k: (v.to(cast) if v.is_floating_point() and not k.endswith(".weight_scale") else v)
              for k, v in sd.items()}
    if int8:
        sd, n = quantize_dit_state_dict(dit_m, sd)
        notes.append(f"int8: {n} DiT block linear layers stored as int8 weights + per-channel fp32 scales")
        config.setdefault("arc_fast", {})["dit_int8"] = True
    os.makedirs(out_dir, exist_ok=True)
    ours = set(CHECKPOINT_NAMES) | set(SPLIT_NAMES.values()) | {"model_config.json"}
    present = sorted(f for f in os.listdir(out_dir) if f in ours)
    if present and not overwrite:
        raise FileExistsError(f"{out_dir} already holds {', '.join(present)} (choose an empty folder or overwrite)")
    for f in present:
        os.remove(os.path.join(out_dir, f))
    meta = {"format": "pt", "arc_fast": json.dumps({"arc_post_trained": resolved.arc_post_trained,
                                                    "int8": bool(int8), "converted_from": resolved.sources})}
    files = []
    if split:
        dit_part = {k: v for k, v in sd.items() if k.startswith((PREFIXES["dit"], PREFIXES["conditioner"]))}
        ae_part = {k[len(PREFIXES["autoencoder"]):]: v for k, v in sd.items() if k.startswith(PREFIXES["autoencoder"])}
        for name, part in (("dit", dit_part), ("autoencoder", ae_part)):
            path = os.path.join(out_dir, SPLIT_NAMES[name])
            save_safetensors(part, path, meta)
            files.append(path)
    else:
        path = os.path.join(out_dir, "model.safetensors")
        save_safetensors(sd, path, meta)
        files.append(path)
    path = os.path.join(out_dir, "model_config.json")
    save_json(config, path)
    files.append(path)
    return {"files": files, "notes": notes, "arc_post_trained": resolved.arc_post_trained}


@torch.inference_mode()
def compare_dit(reference: nn.Module, candidate: nn.Module, frames: int = 32, batch: int = 1, repeats: int = 3,
                seed: int = 0) -> dict:
    """One DiT forward of both models on the same seeded inputs (CPU, fp32): relative error of the
    candidate's output (||y - y_ref|| / ||y_ref||) and the best-of-``repeats`` seconds of each."""
    g = torch.Generator().manual_seed(seed)
    c = reference.io_channels
    x = torch.randn(batch, c, frames, generator=g)
    t = torch.rand(batch, generator=g)
    kw = {}
    if reference.cond_token_dim:
        kw["cross_attn_cond"] = torch.randn(batch, 8, reference.cond_token_dim, generator=g)
    if reference.global_cond_dim:
        kw["global_embed"] = torch.randn(batch, reference.global_cond_dim, generator=g)
    out = {}
    ys = {}
    for name, m in (("reference", reference), ("candidate", candidate)):
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            ys[name] = m(x, t, **kw).float()
            best = min(best, time.perf_counter() - t0)
        out[f"{name}_seconds"] = best
    ref = ys["reference"]
    out["relative_error"] = float((ys["candidate"] - ref).norm() / ref.norm().clamp_min(1e-30))
    return out
