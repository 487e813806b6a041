"""Model builders shared by the decoder, e2e and train-step suites: seeded weights, the public
stable-audio-tools package (when installed in ``.sat``), and FLOP counts.

Weights: Stable Audio zero-initialises the DiT's branch outputs, which would make every block an identity and
hide real work from the checks, so every parameter gets seeded random values of a sensible scale
(``randomize_``); buffers (RoPE ``inv_freq``, the LayerNorms' zero ``beta``) keep their values.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import math
import os
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SAT_DIR = ROOT / ".sat"
SAT_STUBS = ROOT / "tests" / "sat_stubs"
SAT_VERSION = "0.0.19"
SAT_HINT = "run `bash scripts/install_sat.sh` (installs stable-audio-tools into .sat/)"


def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Seeded values for every floating-point parameter: gains (``gamma``, ``weight_g``, 1-D ``weight``) around 1,
    matrices ~ N(0, 1/fan_in), other vectors ~ N(0, 0.1^2). Buffers are left alone."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.is_floating_point():
                continue
            leaf = name.rsplit(".", 1)[-1]
            noise = torch.randn(p.shape, generator=g)
            if leaf in ("gamma", "weight_g") or (p.dim() == 1 and leaf == "weight"):
                val = 1 + 0.1 * noise
            elif p.dim() >= 2:
                val = noise / math.sqrt(p[0].numel())
            else:
                val = 0.1 * noise
            p.copy_(val.to(p.dtype))
    return model


# ------------------------------------------------------------------------------------------- stable-audio-tools
class StableAudioTools:
    """The public package's DiT and Oobleck decoder classes, imported from ``.sat/sat-<version>``.

    Its folders and the import stubs (tests/sat_stubs: torchaudio, k_diffusion, pytorch_lightning) are on
    ``sys.path``, and its modules in ``sys.modules``, only inside ``active()``; the classes keep working outside.
    """

    def __init__(self, version: str = SAT_VERSION):
        self.version = version
        self._modules: dict = {}
        paths = [str(SAT_DIR / f"sat-{version}"), str(SAT_DIR / "site"), str(SAT_STUBS)]
        if not (SAT_DIR / f"sat-{version}").is_dir():
            raise ImportError(f"stable-audio-tools {version} is not installed in {SAT_DIR}; {SAT_HINT}")
        self._paths = paths
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        with self.active(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dit = importlib.import_module("stable_audio_tools.models.dit")
            ae = importlib.import_module("stable_audio_tools.models.autoencoders")
        self.DiffusionTransformer = dit.DiffusionTransformer
        self.OobleckDecoder = ae.OobleckDecoder

    def _is_ours(self, name: str) -> bool:
        mod = sys.modules.get(name)
        f = getattr(mod, "__file__", None) or ""
        return name.split(".")[0] == "stable_audio_tools" or f.startswith((str(SAT_DIR), str(SAT_STUBS)))

    @contextlib.contextmanager
    def active(self):
        saved = list(sys.path)
        sys.path[:0] = self._paths
        sys.modules.update(self._modules)
        try:
            yield
        finally:
            for name in [n for n in list(sys.modules) if self._is_ours(n)]:
                self._modules[name] = sys.modules.pop(name)
            sys.path[:] = saved


_SAT_CACHE: dict = {}


def load_sat(version: str = SAT_VERSION):
    """(StableAudioTools, None) or (None, reason)."""
    if version not in _SAT_CACHE:
        try:
            _SAT_CACHE[version] = (StableAudioTools(version), None)
        except Exception as exc:  # noqa: BLE001 - any failure means "not available here"
            _SAT_CACHE[version] = (None, f"stable-audio-tools {version} not importable ({type(exc).__name__}: "
                                         f"{str(exc).splitlines()[0][:160]}); {SAT_HINT}")
    return _SAT_CACHE[version]


# ------------------------------------------------------------------------------------------- our models
def dit_kwargs(cfg: dict) -> dict:
    d = cfg["model"]["diffusion"]
    kw = dict(d["config"])
    kw.setdefault("diffusion_objective", d.get("diffusion_objective", "v"))
    return kw


def seeded_models(cfg: dict, seed: int = 0, with_decoder: bool = True) -> tuple:
    """(dit, autoencoder, conditioner) of ``cfg`` from ``arc_fast.reference`` with the benchmarks' seeded weights
    (torch seed ``seed``; every DiT and decoder weight non-zero through ``randomize_``), eval, no grad, CPU."""
    from arc_fast.loader import build_models

    torch.manual_seed(seed)
    dit, ae, cond = build_models(cfg)
    randomize_(dit, seed + 1)
    if with_decoder:
        randomize_(ae.decoder, seed + 2)
    for m in (dit, ae, cond):
        m.eval().requires_grad_(False)
    return dit, ae, cond


def build_reference(cfg: dict, seed: int, with_decoder: bool = True):
    """(DiT, decoder, conditioner) of ``seeded_models``."""
    dit, ae, cond = seeded_models(cfg, seed, with_decoder)
    return dit, ae.decoder, cond


def reference_from(sat_module: nn.Module, ours_cls, kwargs: dict) -> nn.Module:
    """Our reference module holding (sharing, not copying) a stable-audio-tools module's weights."""
    with torch.device("meta"):
        ours = ours_cls(**kwargs)
    ours.load_state_dict(sat_module.state_dict(), strict=True, assign=True)
    return ours.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------- FLOP counts
def _linear_conv_work(model: nn.Module, run) -> dict:
    """Run ``run()`` with hooks on every Linear / Conv1d / ConvTranspose1d of ``model``: {'flops', 'io' (input +
    output elements of those layers), 'weights' (their weight elements, counted once per call)}."""
    total = {"flops": 0.0, "io": 0.0, "weights": 0.0}

    def hook(mod, inp, out):
        x = inp[0]
        if isinstance(mod, nn.Linear):
            total["flops"] += 2.0 * x.numel() // x.shape[-1] * mod.in_features * mod.out_features
        elif isinstance(mod, nn.ConvTranspose1d):
            total["flops"] += 2.0 * x.shape[0] * x.shape[2] * mod.in_channels * mod.out_channels * mod.kernel_size[0]
        elif isinstance(mod, nn.Conv1d):
            total["flops"] += (2.0 * out.shape[0] * out.shape[2] * mod.out_channels * mod.in_channels // mod.groups
                               * mod.kernel_size[0])
        total["io"] += x.numel() + out.numel()
        total["weights"] += mod.weight.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.Conv1d, nn.ConvTranspose1d))]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return total


def _linear_conv_flops(model: nn.Module, run) -> float:
    return _linear_conv_work(model, run)["flops"]


def decoder_work(dec_cfg: dict, frames: int, batch: int) -> dict:
    """One decode's convolution FLOPs, the convolutions' input + output elements and their weight elements
    (counted on the meta device)."""
    from arc_fast.reference.autoencoder import OobleckDecoder

    with torch.device("meta"):
        dec = OobleckDecoder(**dec_cfg)
        z = torch.empty(batch, dec_cfg["latent_dim"], frames)
    return _linear_conv_work(dec, lambda: dec(z))


def dit_step_work(cfg: dict, frames: int, batch: int, cond_tokens: int) -> dict:
    """One DiT forward's Linear input + output elements and weight elements (meta device; FLOPs: ``dit_step_flops``)."""
    dit, run = _meta_dit_step(cfg, frames, batch, cond_tokens)
    return _linear_conv_work(dit, run)


def _meta_dit_step(cfg: dict, frames: int, batch: int, cond_tokens: int):
    """(a meta-device reference DiT of ``cfg``, a function running one forward of it at this size)."""
    from arc_fast.reference.dit import DiffusionTransformer

    from . import configs

    kw = dit_kwargs(cfg)
    d = configs.dit_dims(cfg)
    with torch.device("meta"):
        dit = DiffusionTransformer(**kw)
        x = torch.empty(batch, d.io_channels, frames)
        t = torch.empty(batch)
        cond = torch.empty(batch, cond_tokens, d.cond_dim)
        glob = torch.empty(batch, kw.get("global_cond_dim", 0)) if kw.get("global_cond_dim", 0) else None
    return dit, lambda: dit(x, t, cross_attn_cond=cond, global_embed=glob)


def decoder_flops(dec_cfg: dict, frames: int, batch: int) -> float:
    """Convolution FLOPs of one decode (counted on the meta device: no memory, no time)."""
    return decoder_work(dec_cfg, frames, batch)["flops"]


def dit_step_flops(cfg: dict, frames: int, batch: int, cond_tokens: int) -> float:
    """FLOPs of one DiT forward: every Linear (hooks, on the meta device) plus attention's two matmuls."""
    from . import configs

    lin = _linear_conv_flops(*_meta_dit_step(cfg, frames, batch, cond_tokens))
    d = configs.dit_dims(cfg)
    L = configs.dit_tokens(frames, cfg)
    attn = d.depth * 4.0 * batch * d.heads * d.head_dim * L * (L + cond_tokens)
    return lin + attn


def copy_module(m: nn.Module) -> nn.Module:
    """An independent deep copy (for casting a model to another dtype without touching the original).

    Legacy ``weight_norm`` keeps the last computed ``weight`` as a plain non-leaf attribute, which deepcopy
    refuses; it is a cache that the pre-forward hook recomputes, so a detached value is stored first."""
    import copy
    for sub in m.modules():
        w = sub.__dict__.get("weight")
        if isinstance(w, torch.Tensor) and not w.is_leaf:
            sub.weight = w.detach()
    return copy.deepcopy(m)
