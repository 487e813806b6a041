"""arc-fast: fused kernels, ARC post-training and few-step sampling for Stable-Audio-style text-to-audio.

Public API (imported lazily so that ``import arc_fast`` stays cheap):
``FastDiT``, ``FastOobleckDecoder``, ``load_pipeline``, ``Pipeline``, ``generate``, ``ARCTrainer``, and ``patch``
(``arc_fast.patch(model)`` swaps the fused modules into a stable-audio-tools model; see ``arc_fast/patch.py``).
"""
__version__ = "0.1.0"

_LAZY = {
    "FastDiT": ("arc_fast.models.dit", "FastDiT"),
    "FastOobleckDecoder": ("arc_fast.models.decoder", "FastOobleckDecoder"),
    "load_pipeline": ("arc_fast.loading", "load_pipeline"),
    "Pipeline": ("arc_fast.pipeline", "Pipeline"),
    "ARCTrainer": ("arc_fast.train.trainer", "ARCTrainer"),
}

__all__ = [*_LAZY, "generate", "patch"]


def __getattr__(name):
    if name == "patch":  # a callable module (arc_fast/patch.py): importing it binds this name to it
        import importlib
        return importlib.import_module("arc_fast.patch")
    if name in _LAZY:
        import importlib
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'arc_fast' has no attribute {name!r}")


def generate(prompt, model=None, device=None, **kwargs):
    """One call text -> audio: ``load_pipeline(model, device)(prompt, **kwargs)`` -> (audio (B, C, S), sample_rate)."""
    from .loading import load_pipeline
    return load_pipeline(model, device=device)(prompt, **kwargs)
