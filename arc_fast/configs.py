"""Model configurations in the Stable Audio ``model_config.json`` format."""
from __future__ import annotations

import copy


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
