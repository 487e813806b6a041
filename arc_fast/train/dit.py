"""Trainable DiTs for ARC: FastDiT (fused ops, forward and backward) or the eager reference, with optional
per-block gradient checkpointing.

``make_dit(ref, impl="fast", gradient_checkpointing=False)`` copies a loaded reference
``DiffusionTransformer`` into a fresh module of the chosen implementation (same weights, same state-dict
keys, same ``forward`` signature). Checkpointing recomputes each transformer block in the backward pass
(non-reentrant ``torch.utils.checkpoint``, so ``backward(inputs=...)`` and DDP work), trading ~1/3 more
compute for activation memory that no longer grows with depth.
"""
from __future__ import annotations

import copy

import torch

from ..reference.dit import DiffusionTransformer

DIT_IMPLS = ("fast", "reference")


def make_dit(ref: DiffusionTransformer, impl: str = "fast", gradient_checkpointing: bool = False,
             attn_backend: str | None = None) -> DiffusionTransformer:
    """A trainable copy of ``ref`` (same weights, device, dtype; parameters require grad, train mode).

    impl: ``"fast"`` (FastDiT: fused Triton kernels on CUDA, eager ops on the CPU unless TRITON_INTERPRET=1)
    or ``"reference"`` (the eager oracle). ``ref`` itself is not modified.
    """
    if not isinstance(ref, DiffusionTransformer):
        raise TypeError(f"ref must be an arc_fast DiffusionTransformer (or FastDiT), got {type(ref).__name__}")
    src = copy.deepcopy(ref)  # never alias the pipeline's weights: G, D and the EMA each own a copy
    if impl == "fast":
        from ..models.dit import FastDiT  # lazily: it pulls in the kernel packages
        model = FastDiT.from_module(src, attn_backend=attn_backend)
    elif impl == "reference":
        # Built on the meta device so that it draws no random numbers (both impls leave the RNG untouched).
        with torch.device("meta"):
            model = DiffusionTransformer(**src.config_kwargs)
        model.load_state_dict(src.state_dict(), strict=True, assign=True)
    else:
        raise ValueError(f"unknown DiT implementation {impl!r}; choose from {', '.join(DIT_IMPLS)}")
    model.gradient_checkpointing = bool(gradient_checkpointing)
    return model.train().requires_grad_(True)
