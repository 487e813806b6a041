"""Generation guards: the errors ``Pipeline`` raises when a stage gives unusable output, and the checks.

The argument checks of ``Pipeline.__call__`` (``call_arguments``) and the work limits it shares with the CLI
(``MAX_STEPS``, ``MAX_BATCH``, from ``arc_fast.limits``) are here too: a bad value is refused, by name, before any work.

Every check names the stage ('conditioner', 'encoder', 'DiT step k of n', 'decoder', 'DiT') so that the CLI
can print one line and write no file. The per-step DiT check is a sampling hook
(``arc_fast.sampling.FiniteSteps``) that records flags without a device sync; ``dit_steps`` reads them once.
"""
from __future__ import annotations

import math
import numbers
import typing as tp

import torch

from .limits import MAX_BATCH, MAX_INIT_PEAK, MAX_STEPS, SEED_RANGE  # noqa: F401 - public here too

# Peak below one 16-bit step: the wav would hold only zeros.
SILENCE_PEAK = 2.0 ** -16

# |cfg_scale| past which a non-finite DiT output with finite weights is blamed on the guidance scale
# (guidance scales in use are 1-15).
LARGE_CFG = 100.0


class GenerationError(RuntimeError):
    """Generation produced unusable output; ``stage`` says where ('conditioner', 'encoder', 'DiT step k of n',
    'decoder')."""

    def __init__(self, message: str, stage: str):
        super().__init__(message)
        self.stage = stage


class NonFiniteError(GenerationError):
    """NaN/Inf values appeared at ``stage``."""


def bad_weights(module, what: str) -> str | None:
    """'non-finite weights: <what> parameter <name> holds NaN/Inf ...' for the first floating parameter or
    buffer of ``module`` with NaN/Inf, else None. Run only after a stage failed (one pass over the weights)."""
    if module is None:
        return None
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return (f"non-finite weights: the {what} parameter {name} holds NaN/Inf (the checkpoint is damaged: "
                    f"load another one)")
    return None


def finite(tensors: tp.Iterable, stage: str, hint: str, module=None) -> None:
    """Raise NonFiniteError(stage) if any floating-point tensor in ``tensors`` holds NaN/Inf. The message
    names the first non-finite weight of ``module`` (the stage's module) when there is one, else ``hint``."""
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise NonFiniteError(f"NaN/Inf in the {stage} output ({bad_weights(module, stage) or hint})", stage)


def dit_steps(first_bad: tuple[int, float] | None, steps: int, dtype: torch.dtype, dit=None,
              cfg_scale: float = 1.0) -> None:
    """Raise NonFiniteError('DiT step k of n') for ``first_bad`` = (step index, t) of the first non-finite
    DiT output (``FiniteSteps.first_bad``). The message tells the causes apart, in this order: a non-finite
    weight of ``dit`` (named), a guidance scale large enough to overflow (non-finite input), a low-precision
    DiT (try fp32), finite weights that overflow in fp32. Inputs are finite: ``call_arguments`` and
    ``audio.as_audio`` refuse the others."""
    if first_bad is None:
        return
    k, t = first_bad
    hint = bad_weights(dit, "DiT")
    if hint is None and abs(cfg_scale) > LARGE_CFG:
        hint = (f"non-finite input: cfg_scale {cfg_scale:g} amplifies the guidance difference past the float range "
                f"(scales in use are 1-15)")
    elif hint is None:
        hint = (f"the DiT ran in {dtype}; try bf16 or fp32 (--dtype)" if dtype != torch.float32 else
                "the DiT ran in fp32 with finite inputs and finite weights that still overflow: check the "
                "checkpoint's DiT weights")
    raise NonFiniteError(f"NaN/Inf in the DiT output at step {k + 1} of {steps} (t={t:.4f}); {hint}",
                         f"DiT step {k + 1} of {steps}")


def decoder_output(decoder) -> None:
    """Raise NonFiniteError('decoder') for NaN/Inf audio decoded (in fp32) from finite latents."""
    hint = bad_weights(decoder, "decoder") or ("the decoder's weights are finite but overflow: check the "
                                               "autoencoder weights; a checkpoint without pretransform.* "
                                               "weights gives this")
    raise NonFiniteError(f"the decoder produced NaN/Inf audio from finite latents ({hint})", "decoder")


def not_silent(audio: torch.Tensor, latents: torch.Tensor) -> None:
    """Raise GenerationError if audio (B, C, N) peaks below one 16-bit step; the stage is 'DiT' when the
    latents (B, C, T) are all zero, else 'decoder'."""
    peak = audio.abs().amax().item() if audio.numel() else 0.0
    if peak < SILENCE_PEAK:
        stage = "DiT" if float(latents.abs().amax()) == 0.0 else "decoder"
        raise GenerationError(f"the output is silent (peak {peak:.1e}, below one 16-bit step) after the "
                              f"{stage}: check the {'DiT' if stage == 'DiT' else 'autoencoder'} weights", stage)


# ------------------------------------------------------------------------------------------------------
# Argument checks (``Pipeline.__call__``): TypeError for the wrong kind of value, ValueError for a bad one
# ------------------------------------------------------------------------------------------------------
def _kind(v) -> str:
    return type(v).__name__


def integer(name: str, v, lo: int, hi: int | None = None, why: str = "") -> int:
    """``v`` as an int in [lo, hi] (an integral number, not a bool); TypeError / ValueError naming ``name``."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {v!r} ({_kind(v)})")
    v = int(v)
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {rng}{f' ({why})' if why else ''}, got {v}")
    return v


def real(name: str, v) -> float:
    """``v`` as a finite float (a real number, not a bool); TypeError / ValueError naming ``name``."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a number, got {v!r} ({_kind(v)})")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v}")
    return v


def prompt_list(prompt) -> list[str]:
    """A prompt (str) or prompts (list / tuple of str) as a non-empty list; TypeError / ValueError naming it."""
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, (list, tuple)):
        raise TypeError(f"prompt must be a string or a list of strings, got {_kind(prompt)}")
    if not prompt:
        raise ValueError("no prompt given (empty prompt list)")
    for i, p in enumerate(prompt):
        if not isinstance(p, str):
            raise TypeError(f"prompt[{i}] must be a string, got {_kind(p)}")
    return list(prompt)


def call_arguments(prompt, seconds, steps, cfg_scale, batch_size, seed, *, max_seconds: float,
                   frame_seconds: float) -> tuple:
    """Check ``Pipeline.__call__``'s arguments before any work. Returns them normalised: (prompts (one per
    clip), seconds (float or None), steps (int or None), cfg_scale (float or None), batch_size (int), seed (int or
    None)); NumPy scalars become Python numbers.

    steps in [1, MAX_STEPS] or None; batch_size in [1, MAX_BATCH]; seed an integer in SEED_RANGE or None;
    seconds a finite number in [frame_seconds (one latent frame), max_seconds] or None; cfg_scale a finite
    number >= 0 or None; prompt a string or a list of them (``batch_size`` copies of a single prompt)."""
    prompts = prompt_list(prompt)
    batch_size = integer("batch_size", batch_size, 1, MAX_BATCH, "memory; call again with other seeds for more")
    if steps is not None:
        steps = integer("steps", steps, 1, MAX_STEPS, "samplers converge long before")
    if seed is not None:
        seed = integer("seed", seed, SEED_RANGE[0], SEED_RANGE[1] - 1, "what torch.Generator accepts")
    if seconds is not None:
        seconds = real("seconds", seconds)
        if seconds < frame_seconds * (1 - 1e-9):
            raise ValueError(f"seconds must be at least one latent frame ({frame_seconds:.4f} s) for this model, "
                             f"got {seconds:g}")
        if seconds > max_seconds + 1e-9:
            raise ValueError(f"seconds must be in (0, {max_seconds:.2f}] for this model, got {seconds:g}")
    if cfg_scale is not None:
        cfg_scale = real("cfg_scale", cfg_scale)
        if cfg_scale < 0:
            raise ValueError(f"cfg_scale must be >= 0, got {cfg_scale:g}")
    if len(prompts) == 1 and batch_size > 1:
        prompts = prompts * batch_size
    elif batch_size > 1 and len(prompts) != batch_size:
        raise ValueError(f"{len(prompts)} prompts but batch_size={batch_size}")
    return prompts, seconds, steps, cfg_scale, batch_size, seed


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
