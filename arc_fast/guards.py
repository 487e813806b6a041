"""Generation guards: the errors ``Pipeline`` raises when a stage gives unusable output, and the checks.

Every check names the stage ('conditioner', 'encoder', 'DiT step k of n', 'decoder', 'DiT') so that the CLI
can print one line and write no file. The per-step DiT check is a sampling hook
(``arc_fast.sampling.FiniteSteps``) that records flags without a device sync; ``dit_steps`` reads them once.
"""
from __future__ import annotations

import typing as tp

import torch

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


def finite(tensors: tp.Iterable, stage: str, hint: str) -> None:
    """Raise NonFiniteError(stage) if any floating-point tensor in ``tensors`` holds NaN/Inf."""
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise NonFiniteError(f"NaN/Inf in the {stage} output ({hint})", stage)


def dit_steps(first_bad: tuple[int, float] | None, steps: int, dtype: torch.dtype) -> None:
    """Raise NonFiniteError('DiT step k of n') for ``first_bad`` = (step index, t) of the first non-finite
    DiT output (``FiniteSteps.first_bad``), with a hint that depends on the DiT's dtype."""
    if first_bad is None:
        return
    k, t = first_bad
    hint = (f"the DiT ran in {dtype}; try bf16 or fp32 (--dtype)" if dtype != torch.float32 else
            "the DiT ran in fp32: check the checkpoint's DiT weights")
    raise NonFiniteError(f"NaN/Inf in the DiT output at step {k + 1} of {steps} (t={t:.4f}); {hint}",
                         f"DiT step {k + 1} of {steps}")


def not_silent(audio: torch.Tensor, latents: torch.Tensor) -> None:
    """Raise GenerationError if audio (B, C, N) peaks below one 16-bit step; the stage is 'DiT' when the
    latents (B, C, T) are all zero, else 'decoder'."""
    peak = audio.abs().amax().item() if audio.numel() else 0.0
    if peak < SILENCE_PEAK:
        stage = "DiT" if float(latents.abs().amax()) == 0.0 else "decoder"
        raise GenerationError(f"the output is silent (peak {peak:.1e}, below one 16-bit step) after the "
                              f"{stage}: check the {'DiT' if stage == 'DiT' else 'autoencoder'} weights", stage)


def negative_prompts(negative_prompt, n: int, cfg_scale: float, text_conditioned: bool) -> list[str] | None:
    """``Pipeline.__call__``'s ``negative_prompt`` -> n strings (one per clip) or None.

    negative_prompt: None, a string (every clip), or a list / tuple of strings with one per clip (or one for
    all). It conditions the unguided half of classifier-free guidance (stable-audio-tools' negative
    conditioning), so it is refused, rather than silently ignored, where it cannot act: ``cfg_scale`` 1 (no
    guidance: ARC post-trained models) or a model with no text conditioner (``text_conditioned`` False).
    Raises TypeError (not text) or ValueError (wrong count, no guidance), naming ``negative_prompt``."""
    if negative_prompt is None:
        return None
    if isinstance(negative_prompt, str):
        negatives = [negative_prompt] * n
    elif isinstance(negative_prompt, (list, tuple)) and all(isinstance(p, str) for p in negative_prompt):
        negatives = list(negative_prompt) * n if len(negative_prompt) == 1 else list(negative_prompt)
        if len(negatives) != n:
            raise ValueError(f"negative_prompt has {len(negative_prompt)} strings but {n} clips are generated "
                             f"(give one string, or one per clip)")
    else:
        got = (type(negative_prompt).__name__ if not isinstance(negative_prompt, (list, tuple)) else
               "a list holding " + ", ".join(sorted({type(p).__name__ for p in negative_prompt
                                                     if not isinstance(p, str)})))
        raise TypeError(f"negative_prompt must be a string or a list of strings, got {got}")
    if not text_conditioned:
        raise ValueError("negative_prompt needs a text-conditioned model; this one has no text conditioner "
                         "(drop negative_prompt)")
    if float(cfg_scale) == 1.0:
        raise ValueError("negative_prompt acts through classifier-free guidance, and this call samples with "
                         "cfg_scale 1 (no guidance; the default of ARC post-trained models): give cfg_scale != 1 "
                         "or drop negative_prompt")
    return negatives
