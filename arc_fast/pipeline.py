"""The ``Pipeline``: text (+ optional init audio) -> audio with a loaded model. It only orchestrates:
condition -> sample -> decode -> guard; device and dtype placement is ``Pipeline.to`` (one place).

The rest lives in (each name still imports from here, the older path): ``arc_fast.loading`` (load_pipeline,
build_pipeline, resolve_model, materialize), ``arc_fast.sampling`` (the sampler arithmetic, written once),
``arc_fast.cuda_graphs`` (the captured loop), ``arc_fast.audio`` (read, write, resample, remix),
``arc_fast.guards`` (the errors and checks), ``arc_fast.convert`` (convert_model, compare_dit),
``arc_fast.loader`` / ``arc_fast.int8`` (file formats and key layouts). docs/architecture.md has the map.

Sampler defaults follow the model kind (``Pipeline.defaults``): ARC post-trained models ping-pong, 8 steps,
CFG 1; base models Euler, 100 steps, CFG 7. Audio-to-audio (``init_audio``): remixed and resampled
(``arc_fast.audio``), padded or cut to the latent window, encoded to the VAE posterior mean (fp32); sampling
starts at ``(1 - s) z + s eps``, ``s = init_noise_level`` (``cos(s pi/2) z + sin(s pi/2) eps`` for
v-objective models). Non-finite conditioning, init latents, DiT steps or decoder output, and all-silent
output, raise ``GenerationError`` naming the stage; a low-precision decoder that gives non-finite audio is
rerun in fp32 (and kept in fp32).
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import audio as _audio
from . import cuda_graphs, guards, sampling
from .configs import check_defaults
from .cpu import set_dit_precision
from .dtypes import DTYPES, dtype_name, parse_dtype  # noqa: F401 - public here too
from .guards import SILENCE_PEAK, GenerationError, NonFiniteError  # noqa: F401 - public here too
from .loader import full_state_dict, refresh_weight_norm, save_json, save_safetensors  # noqa: F401 - public here too
from .reference.conditioners import MultiConditioner, assemble_dit_inputs

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
    seed: int | None = None  # the seed the call used (drawn when it was given none)

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


class Pipeline:
    """A loaded text-to-audio model. Call it with a prompt to get ``(audio (B, channels, samples), sample_rate)``.

    Attributes: ``dit``, ``autoencoder``, ``conditioner``, ``config``, ``sample_rate``, ``sample_size``,
    ``hop`` (audio samples per latent frame), ``latent_channels``, ``audio_channels``, ``objective``,
    ``is_arc``, ``device``, ``dtype`` (DiT), ``autoencoder_dtype`` (decoder compute), ``load_notes`` (what the
    loader chose/ignored), ``last_timings``, ``last_seed`` (the seed the last call used: the one it was given,
    or the one it drew; passing it back as ``seed`` reproduces the clip).
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
        self.dit_precision = dtype_name(self.dtype)
        self.autoencoder_dtype = torch.float32
        self.load_notes: list[str] = []
        self.last_timings = Timings()
        self.last_seed: int | None = None
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
        own = check_defaults(self.config.get("arc_fast", {}).get("defaults") or {})
        return {**d, **own}

    def describe(self) -> str:
        d = self.defaults()
        kind = "ARC post-trained" if self.is_arc else "base"
        return (f"{kind} model ({self.objective}); defaults {d['sampler']}, {d['steps']} steps, "
                f"CFG {d['cfg_scale']:g}; window {self.max_seconds:.2f} s @ {self.sample_rate} Hz, "
                f"{self.audio_channels} ch")

    # -------------------------------------------------------------------------------- placement
    def to(self, device=None, dtype=None, autoencoder_dtype=None) -> "Pipeline":
        """Move to ``device``; ``dtype`` casts the DiT (the conditioner and the encoder stay fp32), "int8"
        quantises it (CPU, torchao: ``arc_fast.cpu.quantize_dit_int8``; not reversible);
        ``autoencoder_dtype`` is the decoder's compute dtype (default: ``dtype`` on CUDA, fp32 elsewhere)."""
        if device is not None:
            self.device = torch.device(device)
        for m in (self.dit, self.autoencoder, self.conditioner):
            m.to(device=self.device)
        dtype = parse_dtype(dtype, allow_int8=True)
        if dtype is not None:
            self.dtype, self.dit_precision = set_dit_precision(self.dit, dtype, self.device)
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
    def condition(self, prompts: list[str], seconds: float, negative_prompts: list[str] | None = None) -> dict:
        """Run the conditioners (``seconds_total`` = ``seconds``, ``seconds_start`` = 0): returns the DiT's
        cross_attn_cond (B, S, D) / cross_attn_cond_mask (B, S) bool / global_embed (B, D); with
        ``negative_prompts`` (B strings) also negative_cross_attn_cond / negative_cross_attn_mask, the same
        conditioners run on them (same seconds) in a call of their own, as stable-audio-tools does."""
        metadata = [{"prompt": p, "seconds_start": 0, "seconds_total": seconds} for p in prompts]
        out = assemble_dit_inputs(self.conditioner(metadata, self.device), self.cross_ids, self.global_ids)
        if negative_prompts is not None:
            neg = self.condition(negative_prompts, seconds)
            out["negative_cross_attn_cond"] = neg["cross_attn_cond"]
            out["negative_cross_attn_mask"] = neg["cross_attn_cond_mask"]
        return out

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
        the model's rate, shaped (N,), (C, N) or (B, C, N) (B = 1 or ``batch``); see ``arc_fast.audio.as_audio``."""
        audio, sr = _audio.as_audio(init_audio, self.sample_rate)
        if audio.shape[0] not in (1, batch):
            raise ValueError(f"init_audio has batch {audio.shape[0]} but {batch} clips are generated")
        audio = _audio.remix(audio.float().cpu(), self.audio_channels)
        audio = _audio.resample(audio, sr, self.sample_rate)
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
            guards.decoder_output(self.autoencoder.decoder)
        return audio.float()

    # -------------------------------------------------------------------------------- generation
    def _validate(self, prompt, seconds, steps, cfg_scale, batch_size, seed=None) -> tuple:
        """``guards.call_arguments`` for this model: (prompts, seconds, steps, cfg_scale, batch_size, seed)."""
        return guards.call_arguments(prompt, seconds, steps, cfg_scale, batch_size, seed,
                                     max_seconds=self.max_seconds, frame_seconds=self.hop / self.sample_rate)

    @torch.inference_mode()
    def __call__(self, prompt: str | list[str], seconds: float | None = None, steps: int | None = None,
                 cfg_scale: float | None = None, sampler: str | None = None, seed: int | None = None,
                 init_audio=None, init_noise_level: float | None = None, batch_size: int = 1,
                 progress: bool = False, short_window: bool | None = None,
                 guard: bool = True, cuda_graph: bool = False,
                 negative_prompt: str | list[str] | None = None) -> tuple[torch.Tensor, int]:
        """Generate audio. Returns (audio (B, channels, round(seconds * sample_rate)) float32 on the CPU, sample_rate).

        prompt: a string or a list (B = its length, or ``batch_size`` copies of one prompt). seconds: clip
        length (default: the init audio's length, else the model's window), passed to the ``seconds_total``
        conditioner; the output is trimmed to it. steps / cfg_scale / sampler ('pingpong' | 'euler'):
        default per model (``defaults()``). seed: None draws one (``sampling.random_seed``); the seed used is
        ``last_seed`` (and ``last_timings.seed``). init_audio: see ``prepare_init_audio``;
        init_noise_level in (0, 1] (default 0.7) is where sampling starts (1 = the init audio has no effect).
        short_window: sample only the latent frames ``seconds`` needs (default: the config's
        ``arc_fast.short_window``, else the whole window). guard: raise ``GenerationError`` on NaN/Inf
        (naming the stage) or an all-silent output. cuda_graph: on CUDA, run the sampling loop and the decode as
        captured CUDA graphs (rectified-flow models; the first call of each shape/steps/sampler/CFG captures,
        later ones replay with no host sync inside the loop; same result as the eager loop for the same
        seed; no per-step progress bar). Graphs are cached on the pipeline (``clear_cuda_graphs()``).
        negative_prompt: a string or one per clip, what classifier-free guidance steers away from (the unguided
        half of each step is conditioned on it instead of on nothing); refused where no guidance runs
        (cfg_scale 1, e.g. ARC models) or the model has no text conditioner (``guards.negative_prompts``)."""
        prompts, seconds, steps, cfg_scale, batch_size, seed = self._validate(prompt, seconds, steps, cfg_scale,
                                                                             batch_size, seed)
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
        negatives = guards.negative_prompts(negative_prompt, len(prompts), cfg_scale,
                                            self.has_text and bool(self.cross_ids))
        short_window = self.short_window_default if short_window is None else bool(short_window)
        b = len(prompts)
        timings = Timings(precision=f"DiT {self.dit_precision}, decoder {dtype_name(self.autoencoder_dtype)}",
                          threads=torch.get_num_threads() if self.device.type == "cpu" else 0)
        t_start = time.perf_counter()

        init_wave = None
        if init_audio is not None:
            init_wave = self.prepare_init_audio(init_audio, b, self.sample_size)
            if seconds is None:
                seconds = min(_audio.duration(init_audio, self.sample_rate), self.max_seconds)
        seconds = self.max_seconds if seconds is None else float(seconds)
        frames = self.frames_for(seconds, short_window)

        cond = self.condition(prompts, seconds, negatives)
        if guard:
            guards.finite(cond.values(), "conditioner", "try fp32 for the text encoder", self.conditioner)
        _sync(self.device)
        timings.conditioner = time.perf_counter() - t_start

        # A drawn seed is recorded, not hidden in the generator's state: any clip can be made again.
        seed = sampling.random_seed() if seed is None else seed
        self.last_seed = timings.seed = seed
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
                guards.finite([init_latents], "encoder", "the init audio is finite and in range: check the encoder "
                                                         "weights", self.autoencoder.encoder)
            sigma_max = init_noise_level
            _sync(self.device)
            timings.encoder = time.perf_counter() - t_enc

        objective = "v" if self.objective == "v" else "rf"
        finite = sampling.FiniteSteps() if guard else None
        t0 = time.perf_counter()
        step_times: list[float] = []
        audio = None
        if cuda_graph:
            latents, audio, step_times, timings.decoder = self._graph_sample(
                noise, init_latents, sigma_max, steps, sampler, cfg_scale, gen, cond, guard)
        else:
            init = init_latents.to(dtype) if init_latents is not None and objective == "rf" else init_latents
            x = sampling.start(objective, noise, init, sigma_max)
            plan = sampling.Sampler(sampler, sampling.schedule(objective, steps, sigma_max).to(x.device), objective)
            latents = sampling.run(self._dit_fn, x, plan, gen, cfg_scale=cfg_scale, cond=cond, on_step=finite,
                                   progress=progress, step_times=step_times if self.device.type == "cpu" else None)
        _sync(self.device)
        if not step_times:
            step_times = [(time.perf_counter() - t0) / steps] * steps
        timings.dit_steps = step_times
        if guard:
            guards.dit_steps(finite.first_bad() if not cuda_graph else self._graph_first_bad, steps, dtype, self.dit,
                             cfg_scale)

        if audio is None:
            t1 = time.perf_counter()
            audio = self.decode(latents)
            _sync(self.device)
            timings.decoder = time.perf_counter() - t1
        n = int(round(seconds * self.sample_rate))
        audio = audio[..., :n].float().cpu()
        if guard:
            guards.not_silent(audio, latents)
        timings.total = time.perf_counter() - t_start
        self.last_timings = timings
        return audio, self.sample_rate

    def _graph_sample(self, noise, init_latents, sigma_max, steps, sampler, cfg_scale, gen, cond, guard=True):
        """The ``cuda_graph=True`` path of ``__call__`` (rectified flow): (latents, audio fp32, seconds per step,
        decoder seconds); sets ``_graph_first_bad`` ((step, t) of the first non-finite DiT step, or None)."""
        ts = sampling.rf_schedule(steps, sigma_max)
        x = sampling.start("rf", noise, None if init_latents is None else init_latents.to(noise.dtype), sigma_max)
        dec_dtype = self.autoencoder_dtype
        latents, audio, self._graph_first_bad, step_s, dec_s = cuda_graphs.sample_and_decode(
            self.__dict__.setdefault("_cuda_graphs", {}), self._dit_fn, lambda z: self._run_decoder(z, dec_dtype),
            dec_dtype, x, ts, sampler, cfg_scale, gen, cond)
        if self._graph_first_bad is None and not bool(torch.isfinite(audio).all()):
            # decode() owns the fp32 fallback and its warning; the graphs of the low-precision decoder go.
            self.clear_cuda_graphs()
            t1 = time.perf_counter()
            audio = self.decode(latents)
            _sync(self.device)
            dec_s = time.perf_counter() - t1
        return latents, audio.float(), step_s, dec_s

    def clear_cuda_graphs(self) -> None:
        """Drop the CUDA graphs ``cuda_graph=True`` captured (and the GPU memory they pin)."""
        self.__dict__.pop("_cuda_graphs", None)

    def compile(self, **kwargs) -> "Pipeline":
        """Run the DiT through ``torch.compile(self.dit, **kwargs)`` from now on (the module, its weights and
        ``state_dict`` keys are unchanged). Composes with ``cuda_graph=True``; the first calls compile."""
        self._compiled = (self.dit, torch.compile(self.dit, **kwargs))
        self.clear_cuda_graphs()
        return self

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
# Older import paths: these names moved to the modules named in the docstring (imported on first use, so
# that arc_fast.loading and arc_fast.convert, which import this module, load in any order).
# ------------------------------------------------------------------------------------------------------
_MOVED = {
    "arc_fast.loading": ("ASSETS", "DEFAULT_MODEL_DIR", "CHECKPOINT_NAMES", "SPLIT_NAMES", "ResolvedModel",
                         "build_pipeline", "find_checkpoint", "_find_checkpoint", "load_pipeline", "materialize",
                         "load_state_dict_into", "read_config", "resolve_model", "fast_modules", "_fast_modules"),
    "arc_fast.convert": ("compare_dit", "convert_model"),
    "arc_fast.audio": ("load_audio", "remix", "resample"),
    "arc_fast.sampling": ("rf_schedule",),
    "arc_fast.cuda_graphs": ("_GraphRunner",),
    "arc_fast.loader": ("CheckpointError", "ResolvedCheckpoint", "build_models", "check_state_dict",
                        "read_checkpoint", "read_component", "read_resolved"),
    "arc_fast.int8": ("apply_int8_layout", "quantize_dit_state_dict"),
}
_MOVED_FROM = {name: module for module, names in _MOVED.items() for name in names}


def __getattr__(name):
    module = _MOVED_FROM.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(module), name)
