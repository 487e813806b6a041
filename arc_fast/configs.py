"""Model configurations in the Stable Audio ``model_config.json`` format."""
from __future__ import annotations

import copy

_OOBLECK = {"channels": 128, "c_mults": [1, 2, 4, 8, 16], "strides": [2, 4, 4, 8, 8], "use_snake": True}

#: Stable Audio Open Small (DiT 340,879,488 params, Oobleck VAE, T5-base + seconds_total), SPEC.md sections 2-3, 7.
SAO_SMALL: dict = {
    "model_type": "diffusion_cond",
    "sample_size": 524288,
    "sample_rate": 44100,
    "audio_channels": 2,
    "model": {
        "pretransform": {
            "type": "autoencoder",
            "iterate_batch": True,
            "config": {
                "encoder": {"type": "oobleck", "config": {"in_channels": 2, "latent_dim": 128, **_OOBLECK}},
                "decoder": {"type": "oobleck", "config": {"out_channels": 2, "latent_dim": 64, "final_tanh": False,
                                                          **_OOBLECK}},
                "bottleneck": {"type": "vae"},
                "latent_dim": 64,
                "downsampling_ratio": 2048,
                "io_channels": 2,
            },
        },
        "conditioning": {
            "configs": [
                {"id": "prompt", "type": "t5", "config": {"t5_model_name": "t5-base", "max_length": 64}},
                {"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": 256}},
            ],
            "cond_dim": 768,
        },
        "diffusion": {
            "cross_attention_cond_ids": ["prompt", "seconds_total"],
            "global_cond_ids": ["seconds_total"],
            "type": "dit",
            "diffusion_objective": "rectified_flow",
            "config": {
                "io_channels": 64,
                "embed_dim": 1024,
                "depth": 16,
                "num_heads": 8,
                "cond_token_dim": 768,
                "global_cond_dim": 768,
                "transformer_type": "continuous_transformer",
                "attn_kwargs": {"qk_norm": "ln"},
            },
        },
        "io_channels": 64,
    },
    "arc_fast": {"arc_post_trained": True},
}

#: The bundled default: SAO Small's architecture scaled down (same hop, sample rate, conditioning layout),
#: with the download-free hash text encoder in place of T5.
TINY: dict = {
    "model_type": "diffusion_cond",
    "sample_size": 131072,
    "sample_rate": 44100,
    "audio_channels": 2,
    "model": {
        "pretransform": {
            "type": "autoencoder",
            "iterate_batch": True,
            "config": {
                "encoder": {"type": "oobleck", "config": {"in_channels": 2, "latent_dim": 32, "channels": 16,
                                                          "c_mults": [1, 2, 4, 8, 16], "strides": [2, 4, 4, 8, 8],
                                                          "use_snake": True}},
                "decoder": {"type": "oobleck", "config": {"out_channels": 2, "latent_dim": 16, "channels": 16,
                                                          "c_mults": [1, 2, 4, 8, 16], "strides": [2, 4, 4, 8, 8],
                                                          "use_snake": True, "final_tanh": False}},
                "bottleneck": {"type": "vae"},
                "latent_dim": 16,
                "downsampling_ratio": 2048,
                "io_channels": 2,
            },
        },
        "conditioning": {
            "configs": [
                {"id": "prompt", "type": "hash_text", "config": {"dim": 64, "max_length": 24, "num_layers": 1,
                                                                "num_heads": 4, "vocab_size": 2048}},
                {"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": 16}},
            ],
            "cond_dim": 64,
        },
        "diffusion": {
            "cross_attention_cond_ids": ["prompt", "seconds_total"],
            "global_cond_ids": ["seconds_total"],
            "type": "dit",
            "diffusion_objective": "rectified_flow",
            "config": {
                "io_channels": 16,
                "embed_dim": 128,
                "depth": 4,
                "num_heads": 4,
                "cond_token_dim": 64,
                "global_cond_dim": 64,
                "transformer_type": "continuous_transformer",
                "attn_kwargs": {"qk_norm": "ln"},
            },
        },
        "io_channels": 16,
    },
    "arc_fast": {"arc_post_trained": True, "note": "seeded random weights (no training): generates noise"},
}


def get_config(name: str) -> dict:
    """A deep copy of a named config: ``sao_small`` or ``tiny``."""
    table = {"sao_small": SAO_SMALL, "tiny": TINY}
    if name not in table:
        raise ValueError(f"unknown config {name!r}; known: {', '.join(table)}")
    return copy.deepcopy(table[name])
