"""Datasets: ``synthetic`` (procedural, seeded text-audio clips for the bundled tiny model)."""
from .synthetic import (EVAL_PROMPTS, FAMILIES, HELDOUT, HELDOUT_PROMPTS, SAMPLE_RATE, WINDOW, Clip,
                        SyntheticDataset, caption, describe, enumerate_params, is_heldout, make_clip, params_for_caption,
                        render, sample_params)

__all__ = ["Clip", "EVAL_PROMPTS", "FAMILIES", "HELDOUT", "HELDOUT_PROMPTS", "SAMPLE_RATE", "SyntheticDataset", "WINDOW",
           "caption", "describe", "enumerate_params", "is_heldout", "make_clip", "params_for_caption", "render",
           "sample_params"]
