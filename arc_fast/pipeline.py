"""Text -> audio: config + checkpoint loading (Stable Audio format), conditioning, sampling, decoding.

``load_pipeline()`` with no argument gives the bundled default model (offline). A directory with
``model_config.json`` and ``model.safetensors`` (or ``model.ckpt``) loads a Stable-Audio-format model;
loading is strict: any missing or unexpected key is named in the error.
"""
from __future__ import annotations

import json
import math
import os
import time
import typing as tp
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from . import sampling
from .reference.conditioners import MultiConditioner, assemble_dit_inputs, conditioner_from_config
from .reference.dit import DiffusionTransformer

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
DEFAULT_MODEL_DIR = os.path.join(ASSETS, "default")

# Stable Audio's unwrapped checkpoint layout: component -> key prefix.
PREFIXES = {"dit": "model.model.", "autoencoder": "pretransform.model.", "conditioner": "conditioner."}


class CheckpointError(ValueError):
    """A checkpoint that does not match its config (missing/unexpected keys, wrong shapes, unreadable file)."""


@dataclass
class Timings:
    """Seconds spent in each stage of the last call."""
    conditioner: float = 0.0
    dit_steps: list = field(default_factory=list)
    decoder: float = 0.0
    total: float = 0.0

    def summary(self) -> str:
        n = len(self.dit_steps)
        dit = sum(self.dit_steps)
        per = dit / n if n else 0.0
        return (f"conditioner {self.conditioner * 1e3:.1f} ms | DiT {n} steps {dit * 1e3:.1f} ms "
                f"({per * 1e3:.1f} ms/step) | decoder {self.decoder * 1e3:.1f} ms | total {self.total * 1e3:.1f} ms")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_models(config: dict) -> tuple[nn.Module, nn.Module, MultiConditioner]:
    """Instantiate (dit, autoencoder, conditioner) from a Stable Audio ``diffusion_cond`` config."""
    from .reference.autoencoder import autoencoder_from_config

    if config.get("model_type") != "diffusion_cond":
        raise ValueError(f"model_type {config.get('model_type')!r} is not supported (expected 'diffusion_cond')")
    m = config.get("model", {})
    for part in ("diffusion", "pretransform", "conditioning"):
        if part not in m:
            raise ValueError(f"model config lacks 'model.{part}'")
    diff = m["diffusion"]
    if diff.get("type", "dit") != "dit":
        raise ValueError(f"diffusion type {diff.get('type')!r} is not supported (expected 'dit')")
    dit_cfg = dict(diff["config"])
    dit_cfg.setdefault("diffusion_objective", diff.get("diffusion_objective", "v"))
    dit = DiffusionTransformer(**dit_cfg)
    autoencoder = autoencoder_from_config(m["pretransform"])
    conditioner = conditioner_from_config(m["conditioning"])
    return dit, autoencoder, conditioner


def read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.ckpt``/``.pt`` file (Lightning ``state_dict`` unwrapped)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            sd = load_file(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - report any decoding failure as one clear error
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.__class__.__name__}: {exc}") from exc
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    # Lightning training wrappers prefix the unwrapped layout with 'diffusion.'.
    if any(k.startswith("diffusion.") for k in sd):
        sd = {k[len("diffusion."):]: v for k, v in sd.items() if k.startswith("diffusion.")}
    return sd


def _load_part(module: nn.Module, sd: dict, name: str, problems: list[str]) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shape = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing:
        problems.append(f"{name}: missing {len(missing)} key(s): {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"{name}: unexpected {len(unexpected)} key(s): {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
    if shape:
        problems.append(f"{name}: shape mismatch: {'; '.join(shape[:4])}")
    usable = {k: v for k, v in sd.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    module.load_state_dict(usable, strict=False)


def load_state_dict_into(dit: nn.Module, autoencoder: nn.Module, conditioner: nn.Module, sd: dict,
                         allow_partial: bool = False) -> list[str]:
    """Load a Stable-Audio-layout state dict into the three components. Strict: raises CheckpointError
    naming every missing/unexpected/mis-shaped key unless ``allow_partial`` (then returns them as warnings)."""
    parts = {name: {} for name in PREFIXES}
    leftover = []
    for k, v in sd.items():
        for name, prefix in PREFIXES.items():
            if k.startswith(prefix):
                parts[name][k[len(prefix):]] = v
                break
        else:
            leftover.append(k)
    problems: list[str] = []
    _load_part(dit, parts["dit"], "DiT (model.model.*)", problems)
    _load_part(autoencoder, parts["autoencoder"], "autoencoder (pretransform.model.*)", problems)
    _load_part(conditioner, parts["conditioner"], "conditioner (conditioner.*)", problems)
    if leftover:
        problems.append(f"unused key(s) outside the model layout: {', '.join(leftover[:8])}{' ...' if len(leftover) > 8 else ''}")
    if problems and not allow_partial:
        raise CheckpointError("checkpoint does not match the config: " + " | ".join(problems))
    for p in problems:
        warnings.warn(p, RuntimeWarning, stacklevel=2)
    return problems


def full_state_dict(dit: nn.Module, autoencoder: nn.Module, conditioner: nn.Module) -> dict[str, torch.Tensor]:
    """The Stable Audio unwrapped layout of the three components."""
    sd = {}
    for name, mod in (("dit", dit), ("autoencoder", autoencoder), ("conditioner", conditioner)):
        for k, v in mod.state_dict().items():
            sd[PREFIXES[name] + k] = v
    return sd


class Pipeline:
    """A loaded text-to-audio model. Call it with a prompt to get ``(audio (B, channels, samples), sample_rate)``.

    Attributes: ``dit``, ``autoencoder``, ``conditioner``, ``config``, ``sample_rate``, ``last_timings``.
    """

    def __init__(self, config: dict, dit: nn.Module, autoencoder: nn.Module, conditioner: MultiConditioner,
                 device: str | torch.device = "cpu"):
        self.config = config
        self.dit, self.autoencoder, self.conditioner = dit, autoencoder, conditioner
        self.device = torch.device(device)
        self.sample_rate = int(config["sample_rate"])
        self.sample_size = int(config["sample_size"])
        pre = config["model"]["pretransform"]["config"]
        self.hop = int(pre.get("downsampling_ratio", 2048))
        self.latent_channels = int(config["model"].get("io_channels", pre.get("latent_dim")))
        diff = config["model"]["diffusion"]
        self.cross_ids = list(diff.get("cross_attention_cond_ids", []))
        self.global_ids = list(diff.get("global_cond_ids", []))
        self.is_arc = bool(config.get("arc_fast", {}).get("arc_post_trained", False))
        self.last_timings = Timings()
        self._warned: set[str] = set()

    @property
    def max_seconds(self) -> float:
        return self.sample_size / self.sample_rate

    def defaults(self) -> dict:
        """Per-model sampler defaults: ARC models ping-pong/8 steps/CFG 1, base models Euler/100/CFG 7."""
        if self.is_arc:
            return {"sampler": "pingpong", "steps": 8, "cfg_scale": 1.0}
        return {"sampler": "euler", "steps": 100, "cfg_scale": 7.0}

    def to(self, device=None, dtype=None) -> "Pipeline":
        if device is not None:
            self.device = torch.device(device)
        for m in (self.dit, self.autoencoder, self.conditioner):
            m.to(device=self.device)
        if dtype is not None:
            self.dit.to(dtype=dtype)
        return self

    def condition(self, prompts: list[str], seconds: float) -> dict:
        """Run the conditioners: returns the DiT's cross_attn_cond / cross_attn_cond_mask / global_embed."""
        metadata = [{"prompt": p, "seconds_start": 0, "seconds_total": seconds} for p in prompts]
        cond = self.conditioner(metadata, self.device)
        return assemble_dit_inputs(cond, self.cross_ids, self.global_ids)

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

    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(msg, UserWarning, stacklevel=3)

    @torch.inference_mode()
    def __call__(self, prompt: str | list[str], seconds: float | None = None, steps: int | None = None,
                 cfg_scale: float | None = None, sampler: str | None = None, seed: int | None = None,
                 batch_size: int = 1, progress: bool = False) -> tuple[torch.Tensor, int]:
        """Generate audio. Returns (audio (B, channels, round(seconds * sample_rate)) float32 on the CPU, sample_rate).

        seconds defaults to the model's full window; the output is trimmed to it and it is passed to the
        ``seconds_total`` conditioner. steps / cfg_scale / sampler default per model (``defaults()``).
        """
        prompts = self._validate(prompt, seconds, steps, cfg_scale, batch_size)
        d = self.defaults()
        sampler = sampler or d["sampler"]
        steps = steps or d["steps"]
        cfg_scale = d["cfg_scale"] if cfg_scale is None else cfg_scale
        if sampler not in sampling.SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose from {', '.join(sampling.SAMPLERS)}")
        if self.is_arc and (cfg_scale > 1 or sampler == "euler"):
            self._warn_once("arc", "this is an ARC post-trained model: ping-pong sampling with CFG 1 and ~8 steps is "
                                   "what it was trained for; CFG > 1 or Euler sampling degrades it")
        seconds = self.max_seconds if seconds is None else float(seconds)
        timings = Timings()
        t_start = time.perf_counter()
        cond = self.condition(prompts, seconds)
        _sync(self.device)
        timings.conditioner = time.perf_counter() - t_start

        gen = sampling.make_generator(seed)
        dtype = next(self.dit.parameters()).dtype
        frames = self.sample_size // self.hop
        noise = sampling.randn((len(prompts), self.latent_channels, frames), gen, self.device, dtype)
        cond = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in cond.items()}
        t0 = time.perf_counter()
        step_times: list[float] = []
        fn = sampling.SAMPLERS[sampler]
        kwargs = dict(steps=steps, cfg_scale=cfg_scale, progress=progress, **cond)
        if sampler == "pingpong":
            kwargs["generator"] = gen
        if self.device.type == "cpu":
            kwargs["step_times"] = step_times
        latents = fn(self.dit, noise, **kwargs)
        _sync(self.device)
        if not step_times:
            step_times = [(time.perf_counter() - t0) / steps] * steps
        timings.dit_steps = step_times

        t1 = time.perf_counter()
        audio = self.autoencoder.decode(latents.float())
        _sync(self.device)
        timings.decoder = time.perf_counter() - t1
        n = int(round(seconds * self.sample_rate))
        audio = audio[..., :n].float().cpu()
        timings.total = time.perf_counter() - t_start
        self.last_timings = timings
        return audio, self.sample_rate

    def state_dict(self) -> dict[str, torch.Tensor]:
        return full_state_dict(self.dit, self.autoencoder, self.conditioner)

    def save(self, directory: str) -> None:
        """Write ``model_config.json`` + ``model.safetensors`` (Stable Audio layout), atomically per file."""
        from safetensors.torch import save_file
        os.makedirs(directory, exist_ok=True)
        sd = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        tmp = os.path.join(directory, ".model.safetensors.tmp")
        save_file(sd, tmp)
        os.replace(tmp, os.path.join(directory, "model.safetensors"))
        tmp = os.path.join(directory, ".model_config.json.tmp")
        with open(tmp, "w") as f:
            json.dump(self.config, f, indent=2)
        os.replace(tmp, os.path.join(directory, "model_config.json"))


def _find_checkpoint(directory: str) -> str:
    for name in ("model.safetensors", "model.ckpt", "model.pt"):
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            return p
    raise FileNotFoundError(f"no model.safetensors or model.ckpt in {directory}")


def load_pipeline(model: str | None = None, device: str | torch.device | None = None,
                  dtype: torch.dtype | None = None, allow_partial: bool = False, fast: bool = True) -> Pipeline:
    """Load a pipeline: ``model`` is a directory (model_config.json + model.safetensors/.ckpt), a checkpoint
    file with model_config.json beside it, or None for the bundled default. ``fast`` swaps in FastDiT and
    FastOobleckDecoder (same weights) where they are available."""
    model = model or DEFAULT_MODEL_DIR
    if os.path.isdir(model):
        cfg_path, ckpt = os.path.join(model, "model_config.json"), None
    elif os.path.isfile(model):
        cfg_path, ckpt = os.path.join(os.path.dirname(os.path.abspath(model)), "model_config.json"), model
    else:
        raise FileNotFoundError(f"model not found: {model}")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"model_config.json not found at {cfg_path}")
    with open(cfg_path) as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{cfg_path} is not valid JSON: {exc}") from exc
    ckpt = ckpt or _find_checkpoint(model)
    dit, autoencoder, conditioner = build_models(config)
    load_state_dict_into(dit, autoencoder, conditioner, read_checkpoint(ckpt), allow_partial=allow_partial)
    for m in (dit, autoencoder, conditioner):
        m.eval().requires_grad_(False)
    if fast:
        dit, autoencoder = _fast_modules(dit, autoencoder)
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return Pipeline(config, dit, autoencoder, conditioner).to(device, dtype)


def _fast_modules(dit, autoencoder):
    """Swap in the fused modules when the package has them (same weights, same outputs)."""
    try:
        from .models.dit import FastDiT
        dit = FastDiT.from_module(dit).eval()
    except ImportError:
        pass
    try:
        from .models.decoder import FastOobleckDecoder
        autoencoder.decoder = FastOobleckDecoder.from_module(autoencoder.decoder).eval()
    except ImportError:
        pass
    return dit, autoencoder


def build_pipeline(config: dict, seed: int = 0, device="cpu") -> Pipeline:
    """A pipeline with seeded random weights (for tests, benchmarks and the bundled default)."""
    torch.manual_seed(seed)
    dit, autoencoder, conditioner = build_models(config)
    for m in (dit, autoencoder, conditioner):
        m.eval().requires_grad_(False)
    return Pipeline(config, dit, autoencoder, conditioner).to(device)
