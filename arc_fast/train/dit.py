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
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..reference.dit import DiffusionTransformer, TransformerBlock

DIT_IMPLS = ("fast", "reference")


class _CheckpointedReferenceDiT(DiffusionTransformer):
    """The eager reference DiT with per-block checkpointing (the oracle for the trainer's parity test)."""

    gradient_checkpointing = False

    def _run_transformer(self, x, prepend_inputs, context, context_mask, global_cond, exit_layer_ix):
        if not (self.gradient_checkpointing and torch.is_grad_enabled()):
            return super()._run_transformer(x, prepend_inputs, context, context_mask, global_cond, exit_layer_ix)
        tr = self.transformer
        x = tr.project_in(x)
        if prepend_inputs is not None:
            x = torch.cat([prepend_inputs, x], dim=-2)
        freqs = tr.rotary_pos_emb.forward_from_seq_len(x.shape[1]) if tr.rotary_pos_emb is not None else None
        if global_cond is not None and tr.global_cond_embedder is not None:
            global_cond = tr.global_cond_embedder(global_cond)
        for i, blk in enumerate(tr.layers):
            x = checkpoint(blk, x, context, global_cond, freqs, context_mask, use_reentrant=False)
            if exit_layer_ix is not None and i == exit_layer_ix:
                return x
        return tr.project_out(x)


def _fast_class():
    # Imported lazily: FastDiT pulls in the kernel packages, which the reference path does not need.
    from ..models import dit as fast_mod

    class _TrainableFastDiT(fast_mod.FastDiT):
        """FastDiT whose blocks are *called* (``blk(...)``), each block's ``forward`` being FastDiT's
        ``fused_block_forward``: same math and kernels, but module hooks fire per block, which per-block
        gradient checkpointing and FSDP's per-block gather/free need. The loop is FastDiT's own."""

        gradient_checkpointing = False

        def _run_transformer(self, x, prepend_inputs, context, context_mask, global_cond, exit_layer_ix):
            if self._check_betas_pending:
                self._check_betas()
            tr = self.transformer
            x = F.linear(x, tr.project_in.weight) if isinstance(tr.project_in, torch.nn.Linear) else x
            if prepend_inputs is not None:
                x = torch.cat([prepend_inputs.to(x.dtype), x], dim=1)
            freqs = self._rope(x.shape[1], x.device)
            if global_cond is not None and tr.global_cond_embedder is not None:
                global_cond = tr.global_cond_embedder(global_cond)
            ckpt = self.gradient_checkpointing and torch.is_grad_enabled()
            for i, blk in enumerate(tr.layers):
                if ckpt:
                    x = checkpoint(blk, x, context, global_cond, freqs, context_mask, use_reentrant=False)
                else:
                    x = blk(x, context, global_cond, freqs, context_mask)
                if exit_layer_ix is not None and i == exit_layer_ix:
                    return x
            return tr.project_out(x)

    class _FusedBlock(TransformerBlock):
        """A TransformerBlock whose forward is FastDiT's fused one (class swap: copies stay self-contained)."""

        def forward(self, x, context=None, global_cond=None, rotary_freqs=None, context_mask=None):
            return fast_mod.fused_block_forward(self, x, context, global_cond, rotary_freqs, context_mask,
                                                self._arc_attn_backend)

    def fuse_blocks(model):
        for blk in model.transformer.layers:
            blk.__class__ = _FusedBlock
            blk._arc_attn_backend = model.attn_backend
        return model

    return _TrainableFastDiT, fuse_blocks


_FAST_CLASS = None


def make_dit(ref: DiffusionTransformer, impl: str = "fast", gradient_checkpointing: bool = False,
             attn_backend: str | None = None) -> DiffusionTransformer:
    """A trainable copy of ``ref`` (same weights, device, dtype; parameters require grad, train mode).

    impl: ``"fast"`` (FastDiT: fused Triton kernels on CUDA, eager ops on the CPU unless TRITON_INTERPRET=1)
    or ``"reference"`` (the eager oracle). ``ref`` itself is not modified.
    """
    global _FAST_CLASS
    if not isinstance(ref, DiffusionTransformer):
        raise TypeError(f"ref must be an arc_fast DiffusionTransformer (or FastDiT), got {type(ref).__name__}")
    src = copy.deepcopy(ref)  # never alias the pipeline's weights: G, D and the EMA each own a copy
    if impl == "fast":
        if _FAST_CLASS is None:
            _FAST_CLASS = _fast_class()
        cls, fuse_blocks = _FAST_CLASS
        model = fuse_blocks(cls.from_module(src, attn_backend=attn_backend))
    elif impl == "reference":
        # Built on the meta device so that it draws no random numbers (both impls leave the RNG untouched).
        with torch.device("meta"):
            model = _CheckpointedReferenceDiT(**src.config_kwargs)
        model.load_state_dict(src.state_dict(), strict=True, assign=True)
    else:
        raise ValueError(f"unknown DiT implementation {impl!r}; choose from {', '.join(DIT_IMPLS)}")
    model.gradient_checkpointing = bool(gradient_checkpointing)
    return model.train().requires_grad_(True)
