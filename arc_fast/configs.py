"""Model configurations in the Stable Audio ``model_config.json`` format: the built-in ones, and
``check_config``, which validates every field the loader and the pipeline use, by name, with the allowed
values (so that a bad config is a one-line ``ValueError``, not a raw Python error deep in a model
constructor, and a bad ``arc_fast.defaults.steps`` is blamed on the config, not on ``--steps``).
"""
from __future__ import annotations

import copy
import math
import numbers

from .limits import MAX_STEPS


def diffusion_cond_config(*, sample_size: int, sample_rate: int = 44100, ae_channels: int, c_mults: list,
                          strides: list, latent_dim: int, prompt: dict, cond_dim: int, max_seconds: float,
                          dit: dict, arc_post_trained: bool, note: str | None = None) -> dict:
    """A Stable-Audio ``diffusion_cond`` config: Oobleck VAE (snake, no final tanh; the encoder emits mean and
    scale, 2 x latent_dim), a ``prompt`` conditioner (``{"type": ..., "config": ...}``) plus ``seconds_total``
    in [0, max_seconds], both as cross-attention tokens and ``seconds_total`` as the global condition, and a
    rectified-flow DiT whose ``config`` is ``dit`` (io/cond widths are filled in)."""
    hop = 1
    for s in strides:
        hop *= s
    oobleck = {"channels": ae_channels, "c_mults": list(c_mults), "strides": list(strides), "use_snake": True}
    cfg = {
        "model_type": "diffusion_cond",
        "sample_size": sample_size,
        "sample_rate": sample_rate,
        "audio_channels": 2,
        "model": {
            "pretransform": {
                "type": "autoencoder",
                "iterate_batch": True,
                "config": {
                    "encoder": {"type": "oobleck", "config": {"in_channels": 2, "latent_dim": 2 * latent_dim,
                                                              **oobleck}},
                    "decoder": {"type": "oobleck", "config": {"out_channels": 2, "latent_dim": latent_dim,
                                                              "final_tanh": False, **oobleck}},
                    "bottleneck": {"type": "vae"},
                    "latent_dim": latent_dim,
                    "downsampling_ratio": hop,
                    "io_channels": 2,
                },
            },
            "conditioning": {
                "configs": [
                    {"id": "prompt", **prompt},
                    {"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": max_seconds}},
                ],
                "cond_dim": cond_dim,
            },
            "diffusion": {
                "cross_attention_cond_ids": ["prompt", "seconds_total"],
                "global_cond_ids": ["seconds_total"],
                "type": "dit",
                "diffusion_objective": "rectified_flow",
                "config": {"io_channels": latent_dim, **dit, "cond_token_dim": cond_dim, "global_cond_dim": cond_dim,
                           "transformer_type": "continuous_transformer", "attn_kwargs": {"qk_norm": "ln"}},
            },
            "io_channels": latent_dim,
        },
        "arc_fast": {"arc_post_trained": arc_post_trained},
    }
    if note is not None:
        cfg["arc_fast"]["note"] = note
    return cfg


#: Stable Audio Open Small (DiT 340,879,488 params, Oobleck VAE, T5-base + seconds_total), SPEC.md sections 2-3, 7.
SAO_SMALL: dict = diffusion_cond_config(
    sample_size=524288, ae_channels=128, c_mults=[1, 2, 4, 8, 16], strides=[2, 4, 4, 8, 8], latent_dim=64,
    prompt={"type": "t5", "config": {"t5_model_name": "t5-base", "max_length": 64}}, cond_dim=768, max_seconds=256,
    dit={"embed_dim": 1024, "depth": 16, "num_heads": 8}, arc_post_trained=True)

#: The bundled default: SAO Small's architecture scaled down (same hop, sample rate, conditioning layout),
#: with the download-free hash text encoder in place of T5.
TINY: dict = diffusion_cond_config(
    sample_size=131072, ae_channels=16, c_mults=[1, 2, 4, 8, 16], strides=[2, 4, 4, 8, 8], latent_dim=16,
    prompt={"type": "hash_text", "config": {"dim": 64, "max_length": 24, "num_layers": 1, "num_heads": 4,
                                            "vocab_size": 2048}},
    cond_dim=64, max_seconds=16, dit={"embed_dim": 128, "depth": 4, "num_heads": 4}, arc_post_trained=True,
    note="seeded random weights (no training): generates noise")


def get_config(name: str) -> dict:
    """A deep copy of a named config: ``sao_small`` or ``tiny``."""
    table = {"sao_small": SAO_SMALL, "tiny": TINY}
    if name not in table:
        raise ValueError(f"unknown config {name!r}; known: {', '.join(table)}")
    return copy.deepcopy(table[name])


# ------------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------------
OBJECTIVES = ("v", "rectified_flow", "rf_denoiser")
DEFAULT_KEYS = ("sampler", "steps", "cfg_scale")
_MISSING = object()
_JSON = {dict: "a JSON object", list: "a JSON list", str: "a string", bool: "a boolean", type(None): "null"}


def _shown(v) -> str:
    if isinstance(v, list):
        r = repr(v)
        return "a JSON list " + (r if len(r) <= 60 else r[:57] + "...")
    return _JSON.get(type(v), repr(v)) if isinstance(v, (dict, type(None))) else repr(v)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


class _Fields:
    """Field checks for one config: every error is '<source>: <dotted field> must be <allowed>, got <value>'."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, path: str, allowed: str, v) -> None:
        raise ValueError(f"{self.source}: {path} must be {allowed}, got {_shown(v)}")

    def get(self, d: dict, key: str, path: str, required: bool):
        if key not in d:
            if required:
                raise ValueError(f"{self.source}: {path} is missing")
            return _MISSING
        return d[key]

    def obj(self, d: dict, key: str, path: str, required: bool = True) -> dict:
        v = self.get(d, key, path, required)
        if v is _MISSING:
            return {}
        if not isinstance(v, dict):
            self.fail(path, "a JSON object", v)
        return v

    def int(self, d: dict, key: str, path: str, required: bool = False, lo: int = 1, what: str = "") -> None:
        v = self.get(d, key, path, required)
        if v is not _MISSING and (not _is_int(v) or v < lo):
            self.fail(path, ("a positive integer" if lo == 1 else f"an integer >= {lo}") + what, v)

    def ints(self, d: dict, key: str, path: str) -> None:
        v = self.get(d, key, path, False)
        if v is not _MISSING and (not isinstance(v, list) or not v or not all(_is_int(x) and x >= 1 for x in v)):
            self.fail(path, "a non-empty list of positive integers", v)

    def number(self, d: dict, key: str, path: str, lo: float = 0.0, strict: bool = False) -> None:
        v = self.get(d, key, path, False)
        ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and (
            v > lo if strict else v >= lo)
        if v is not _MISSING and not ok:
            self.fail(path, f"a finite number {'>' if strict else '>='} {lo:g}", v)

    def choice(self, d: dict, key: str, path: str, allowed, required: bool = False) -> None:
        v = self.get(d, key, path, required)
        if v is not _MISSING and v not in allowed:
            self.fail(path, "one of " + ", ".join(repr(a) for a in allowed), v)

    def strings(self, d: dict, key: str, path: str) -> None:
        v = self.get(d, key, path, False)
        if v is not _MISSING and (not isinstance(v, list) or not all(isinstance(x, str) for x in v)):
            self.fail(path, "a list of condition ids (strings)", v)


def check_defaults(own, source: str = "model config", path: str = "arc_fast.defaults") -> dict:
    """Validate a config's ``arc_fast.defaults`` (sampler, steps, cfg_scale; each optional); returns it."""
    from .sampling import SAMPLERS

    f = _Fields(source)
    if not isinstance(own, dict):
        f.fail(path, "a JSON object with any of " + ", ".join(DEFAULT_KEYS), own)
    bad = sorted(set(own) - set(DEFAULT_KEYS))
    if bad:
        raise ValueError(f"{source} {path}: unknown keys {bad}; allowed: {', '.join(DEFAULT_KEYS)}")
    f.choice(own, "sampler", f"{path}.sampler", tuple(SAMPLERS))
    f.int(own, "steps", f"{path}.steps", what=f" <= {MAX_STEPS}")
    if _is_int(own.get("steps")) and own["steps"] > MAX_STEPS:
        f.fail(f"{path}.steps", f"a positive integer <= {MAX_STEPS}", own["steps"])
    f.number(own, "cfg_scale", f"{path}.cfg_scale")
    return own


def check_config(config, source: str = "model config") -> dict:
    """Validate the fields of a ``diffusion_cond`` config that arc_fast reads (types, ranges, allowed values);
    returns it unchanged. Raises ValueError '<source>: <field> must be <allowed>, got <value>'."""
    f = _Fields(source)
    if not isinstance(config, dict):
        raise ValueError(f"{source} must be a JSON object (with model_type, sample_rate, sample_size, model), "
                         f"got {_JSON.get(type(config), type(config).__name__)}")
    f.choice(config, "model_type", "model_type", ("diffusion_cond",), required=True)
    f.int(config, "sample_rate", "sample_rate", required=True, what=" (Hz)")
    f.int(config, "sample_size", "sample_size", required=True, what=" (audio samples in the model's window)")
    f.int(config, "audio_channels", "audio_channels")
    model = f.obj(config, "model", "model")
    f.int(model, "io_channels", "model.io_channels")
    for part in ("diffusion", "pretransform", "conditioning"):
        f.obj(model, part, f"model.{part}")
    block = model["pretransform"]
    f.number(block, "scale", "model.pretransform.scale", strict=True)
    pre, pre_path = (f.obj(block, "config", "model.pretransform.config"), "model.pretransform.config") if (
        "config" in block) else (block, "model.pretransform")
    for key in ("downsampling_ratio", "latent_dim", "io_channels"):
        f.int(pre, key, f"{pre_path}.{key}")
    for part in ("encoder", "decoder"):
        sub = f.obj(pre, part, f"{pre_path}.{part}", required=False)
        sub_cfg = f.obj(sub, "config", f"{pre_path}.{part}.config", required=False)
        for key in ("channels", "latent_dim", "in_channels", "out_channels"):
            f.int(sub_cfg, key, f"{pre_path}.{part}.config.{key}")
        for key in ("c_mults", "strides"):
            f.ints(sub_cfg, key, f"{pre_path}.{part}.config.{key}")
    hop = pre.get("downsampling_ratio", 2048)
    if config["sample_size"] < hop:
        raise ValueError(f"{source}: sample_size must be at least one latent frame ({pre_path}.downsampling_ratio "
                         f"= {hop} samples), got {config['sample_size']}")
    diff = model["diffusion"]
    f.choice(diff, "type", "model.diffusion.type", ("dit",))
    f.choice(diff, "diffusion_objective", "model.diffusion.diffusion_objective", OBJECTIVES)
    for key in ("cross_attention_cond_ids", "global_cond_ids"):
        f.strings(diff, key, f"model.diffusion.{key}")
    dit = f.obj(diff, "config", "model.diffusion.config")
    for key in ("embed_dim", "depth", "num_heads", "io_channels", "patch_size"):
        f.int(dit, key, f"model.diffusion.config.{key}")
    for key in ("cond_token_dim", "global_cond_dim"):
        f.int(dit, key, f"model.diffusion.config.{key}", lo=0)
    f.choice(dit, "diffusion_objective", "model.diffusion.config.diffusion_objective", OBJECTIVES)
    cond = model["conditioning"]
    f.int(cond, "cond_dim", "model.conditioning.cond_dim")
    configs = f.get(cond, "configs", "model.conditioning.configs", False)
    if configs is not _MISSING and (not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs)):
        f.fail("model.conditioning.configs", "a list of JSON objects (one per condition)", configs)
    own = f.obj(config, "arc_fast", "arc_fast", required=False)
    for key in ("arc_post_trained", "short_window", "dit_int8"):
        f.choice(own, key, f"arc_fast.{key}", (True, False, None))
    if own.get("defaults") is not None:
        check_defaults(own["defaults"], source)
    return config
