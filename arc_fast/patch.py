"""``arc_fast.patch(model)``: swap the fused modules into a stable-audio-tools model, in place.

For users who already run stable-audio-tools: load the model as usual, call ``arc_fast.patch(model)``, and
stable-audio-tools' own ``generate_diffusion_cond(model, ...)`` then runs the DiT and the Oobleck decoder on
arc-fast's fused modules, with the same outputs (within the rounding of the model's dtype). The convention is
Liger-Kernel's ``apply_liger_kernel_to_*``: one call, the model is modified in place.

    import arc_fast
    replaced = arc_fast.patch(model)        # {"model.model": <DiffusionTransformer>, "pretransform...": ...}
    audio = generate_diffusion_cond(model, ...)
    arc_fast.patch.restore(model, replaced)  # back to the original modules

Nothing here imports stable-audio-tools: the modules are recognised by their structure. Checked against
stable-audio-tools 0.0.19 and 0.0.20 (tests/test_patch_sat.py). This module is callable: ``arc_fast.patch`` is
``apply_arc_fast_to_stable_audio``.
"""
from __future__ import annotations

import functools
import inspect
import sys
import types

# StableAudioFastDiT is built lazily by the module __getattr__ (importing arc_fast.patch must not import torch).
__all__ = ["apply_arc_fast_to_stable_audio", "restore", "StableAudioFastDiT"]  # noqa: F822

# Where a stable-audio-tools ConditionedDiffusionModelWrapper keeps its modules: .model is the DiTWrapper, whose
# .model is the DiffusionTransformer; .pretransform (AutoencoderPretransform) .model (AudioAutoencoder) .decoder.
DIT_PATHS = ("model.model", "model")
DECODER_PATHS = ("pretransform.model.decoder",)


@functools.lru_cache(maxsize=None)
def _stable_audio_fast_dit_cls():
    from .models.dit import FastDiT

    class StableAudioFastDiT(FastDiT):
        """FastDiT that takes stable-audio-tools' ``DiffusionTransformer.forward`` keywords.

        Keywords that change the result and that FastDiT does not implement raise ``NotImplementedError``
        instead of being ignored: APG guidance (stable-audio-tools 0.0.20's default ``apg_scale=1.0`` when
        ``cfg_scale != 1``), ``cfg_norm_threshold``, ``local_add_cond``, ``modular_local_cond``, ``padding_mask``
        and ``return_info``. ``apg_default`` is the replaced module's default ``apg_scale`` (0.0 for 0.0.19).
        """

        apg_default = 0.0

        def forward(self, x, t, *args, apg_scale=None, cfg_norm_threshold=0.0, local_add_cond=None,
                    modular_local_cond=None, padding_mask=None, return_info=False, **kwargs):
            apg = self.apg_default if apg_scale is None else apg_scale
            if apg and kwargs.get("cfg_scale", 1.0) != 1.0:
                raise NotImplementedError(
                    f"apg_scale={apg}: stable-audio-tools' APG guidance is not implemented by arc-fast's DiT "
                    f"(vanilla CFG is); pass apg_scale=0.0 to generate_diffusion_cond, or "
                    f"arc_fast.patch.restore(model, replaced) for the original module")
            used = {"cfg_norm_threshold": cfg_norm_threshold != 0.0, "local_add_cond": local_add_cond is not None,
                    "modular_local_cond": modular_local_cond is not None, "padding_mask": padding_mask is not None,
                    "return_info": bool(return_info)}
            for name in (n for n, on in used.items() if on):
                    raise NotImplementedError(f"{name} is not supported by arc-fast's DiT (patched in by "
                                              f"arc_fast.patch); restore the original module to use it")
            return super().forward(x, t, *args, **kwargs)

    return StableAudioFastDiT


def __getattr__(name):
    if name == "StableAudioFastDiT":  # built lazily: importing arc_fast.patch must not import torch
        cls = _stable_audio_fast_dit_cls()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _get(root, path: str):
    m = root
    for part in path.split("."):
        m = getattr(m, part, None)
        if m is None:
            return None
    return m


def _set(root, path: str, module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(_get(root, parent) if parent else root, leaf, module)


def _apg_default(dit) -> float:
    p = inspect.signature(type(dit).forward).parameters.get("apg_scale")
    return 0.0 if p is None or p.default is inspect.Parameter.empty else float(p.default)


def apply_arc_fast_to_stable_audio(model, dit: bool = True, decoder: bool = True, attn_backend: str | None = None,
                                   decoder_backend: str | None = None) -> dict:
    """Replace, in place, the DiT and the Oobleck decoder of a stable-audio-tools model by arc-fast's fused ones.

    Args:
        model: a stable-audio-tools ``ConditionedDiffusionModelWrapper`` (what ``get_pretrained_model`` and
            ``create_model_from_config`` return for ``diffusion_cond`` models), or its ``DiTWrapper``.
        dit: swap ``model.model.model`` (the ``DiffusionTransformer``) for a ``FastDiT`` (weights shared, not
            copied; same device, dtype and train/eval mode).
        decoder: swap ``model.pretransform.model.decoder`` (an ``OobleckDecoder``) for a ``FastOobleckDecoder``.
        attn_backend / decoder_backend: passed to ``FastDiT.from_module`` / ``FastOobleckDecoder.from_module``
            (None: automatic by device).

    Returns:
        {dotted path in model: the module that was replaced}; ``restore(model, that)`` undoes the patch.
        Modules that are already arc-fast's are left alone (patching twice is harmless).

    Raises:
        TypeError: ``model`` has neither a DiT nor an Oobleck decoder where stable-audio-tools keeps them.
        NotImplementedError: the model uses a feature the fused modules lack (nothing is replaced then).
    """
    import torch

    from .models._sat_interop import looks_like_sat_dit
    from .models.decoder import FastOobleckDecoder
    from .models.dit import FastDiT

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"patch: model must be a stable-audio-tools model (torch.nn.Module), got "
                        f"{type(model).__name__}")
    swaps = {}
    dit_path = next((p for p in DIT_PATHS if looks_like_sat_dit(_get(model, p))), None) if dit else None
    if dit_path is not None and not isinstance(_get(model, dit_path), FastDiT):
        old = _get(model, dit_path)
        fast = FastDiT.from_module(old, attn_backend=attn_backend)
        fast.__class__ = _stable_audio_fast_dit_cls()  # same state, stable-audio-tools' call conventions
        fast.apg_default = _apg_default(old)
        swaps[dit_path] = (old, fast)
    dec_path = next((p for p in DECODER_PATHS if isinstance(_get(model, p), torch.nn.Module)), None) \
        if decoder else None
    if dec_path is not None and not isinstance(_get(model, dec_path), FastOobleckDecoder):
        old = _get(model, dec_path)
        swaps[dec_path] = (old, FastOobleckDecoder.from_module(old, backend=decoder_backend))
    if (dit and dit_path is None) and (decoder and dec_path is None):
        raise TypeError(f"patch: no stable-audio-tools DiT (at {' or '.join(DIT_PATHS)}) nor Oobleck decoder "
                        f"(at {DECODER_PATHS[0]}) in this {type(model).__name__}; pass a "
                        f"ConditionedDiffusionModelWrapper (what get_pretrained_model returns)")
    for path, (_, new) in swaps.items():  # only after every conversion succeeded: all or nothing
        _set(model, path, new)
    return {path: old for path, (old, _) in swaps.items()}


def restore(model, replaced: dict) -> None:
    """Put back the modules ``apply_arc_fast_to_stable_audio`` returned: ``{dotted path: original module}``."""
    for path, module in replaced.items():
        _set(model, path, module)


class _CallableModule(types.ModuleType):
    """``arc_fast.patch`` is this module (the submodule import binds that name on the package), so the module
    itself is made callable: ``arc_fast.patch(model)`` == ``apply_arc_fast_to_stable_audio(model)``."""

    def __call__(self, model, **kwargs) -> dict:
        return apply_arc_fast_to_stable_audio(model, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
