"""``FastDiT``: the Stable Audio DiT on fused ops, a drop-in for ``arc_fast.reference.DiffusionTransformer``.

Same constructor arguments, same state-dict keys (it *is* the reference module tree), same ``forward``
signature. Only the transformer trunk is re-routed through ``arc_fast.ops``:

* LayerNorm (+ adaLN modulation) -> ``ops.adaln.adaln_layer_norm`` (one pass, fp32 stats)
* self-attention -> ``ops.attention.attention`` with QK-LayerNorm and partial RoPE fused into its prologue,
  reading q/k/v as strided views of the packed ``to_qkv`` output (no copies)
* cross-attention -> the same kernel without RoPE (optional key-padding mask)
* SwiGLU -> ``ops.swiglu.swiglu``; adaLN gated residual -> ``ops.adaln.gated_residual``

Each op picks its backend by device (Triton on CUDA, eager on CPU, Triton under ``TRITON_INTERPRET=1``);
``attn_backend`` selects the attention implementation (``None`` automatic, ``"triton"``, ``"eager"``/``"sdpa"``,
``"flash_attn"``). Everything is differentiable, so ARC training runs on the same kernels.

Inside ``with dit.reuse_conditioning():`` (the samplers and the pipeline open it) the text context's embedding
and every block's cross-attention keys/values are computed once per conditioning and reused by the later
steps: a sampler calls the DiT with the same conditioning tensors at every step.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import adaln as adaln_ops
from ..ops import attention as attn_ops
from ..ops import swiglu as swiglu_ops
from ..reference.dit import Attention, DiffusionTransformer, TransformerBlock
from ._sat_interop import looks_like_sat_dit, sat_dit_config


def _self_attention(attn: Attention, h: torch.Tensor, freqs, backend) -> torch.Tensor:
    b, n, _ = h.shape
    heads, dh = attn.num_heads, attn.dim_heads
    qkv = F.linear(h, attn.to_qkv.weight).view(b, n, 3, heads, dh)
    # (B, L, 3, H, D) -> three (B, H, L, D) strided views: the kernel takes strides, nothing is copied.
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    ln = attn.qk_norm == "ln"
    out = attn_ops.attention(
        q, k, v, q_norm_weight=attn.q_norm.weight if ln else None, q_norm_bias=attn.q_norm.bias if ln else None,
        k_norm_weight=attn.k_norm.weight if ln else None, k_norm_bias=attn.k_norm.bias if ln else None,
        norm_eps=attn.q_norm.eps if ln else 1e-6, freqs=freqs, backend=backend)
    return F.linear(out.transpose(1, 2).reshape(b, n, heads * dh), attn.to_out.weight)


def _cross_attention(attn: Attention, h: torch.Tensor, context: torch.Tensor, context_mask, backend,
                     kv_memo: dict | None = None) -> torch.Tensor:
    b, n, _ = h.shape
    heads, dh, kvh = attn.num_heads, attn.dim_heads, attn.kv_heads
    q = F.linear(h, attn.to_q.weight).view(b, n, heads, dh).transpose(1, 2)
    kv_pair = kv_memo.get(attn) if kv_memo is not None else None
    if kv_pair is None:
        kv = F.linear(context, attn.to_kv.weight).view(b, context.shape[1], 2, kvh, dh)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        if heads != kvh:
            rep = heads // kvh
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if kv_memo is not None:
            kv_memo[attn] = (k, v)
    else:
        k, v = kv_pair
    ln = attn.qk_norm == "ln"
    out = attn_ops.attention(
        q, k, v, key_padding_mask=context_mask, q_norm_weight=attn.q_norm.weight if ln else None,
        q_norm_bias=attn.q_norm.bias if ln else None, k_norm_weight=attn.k_norm.weight if ln else None,
        k_norm_bias=attn.k_norm.bias if ln else None, norm_eps=attn.q_norm.eps if ln else 1e-6, backend=backend)
    return F.linear(out.transpose(1, 2).reshape(b, n, heads * dh), attn.to_out.weight)


def _ff(blk: TransformerBlock, h: torch.Tensor) -> torch.Tensor:
    glu, out = blk.ff.ff[0], blk.ff.ff[2]
    return F.linear(swiglu_ops.swiglu(F.linear(h, glu.proj.weight, glu.proj.bias)), out.weight, out.bias)


def _norm(norm, x, scale=None, shift=None):
    return adaln_ops.adaln_layer_norm(x, norm.gamma, scale, shift, eps=norm.eps)


def fused_block_forward(blk: TransformerBlock, x, context=None, global_cond=None, freqs=None, context_mask=None,
                        attn_backend=None, cross_kv: dict | None = None):
    """One transformer block on fused ops; same math as ``TransformerBlock.forward``. x (B, L, dim).

    ``cross_kv``: a dict {cross-attention module: (k, v)} for this ``context``, read and filled (reuse across steps).
    """
    if blk.global_cond_dim is not None and global_cond is not None:
        ssg = blk.to_scale_shift_gate + global_cond  # (B, 6*dim)
        scale_self, shift_self, gate_self, scale_ff, shift_ff, gate_ff = ssg.chunk(6, dim=-1)
        a = _self_attention(blk.self_attn, _norm(blk.pre_norm, x, scale_self, shift_self), freqs, attn_backend)
        x = adaln_ops.gated_residual(x, a, gate_self, sigmoid_gate=True)
        if context is not None and blk.cross_attend:
            x = x + _cross_attention(blk.cross_attn, _norm(blk.cross_attend_norm, x), context, context_mask, attn_backend,
                                     cross_kv)
        f = _ff(blk, _norm(blk.ff_norm, x, scale_ff, shift_ff))
        return adaln_ops.gated_residual(x, f, gate_ff, sigmoid_gate=True)
    x = x + _self_attention(blk.self_attn, _norm(blk.pre_norm, x), freqs, attn_backend)
    if context is not None and blk.cross_attend:
        x = x + _cross_attention(blk.cross_attn, _norm(blk.cross_attend_norm, x), context, context_mask, attn_backend,
                                     cross_kv)
    return x + _ff(blk, _norm(blk.ff_norm, x))


class FusedTransformerBlock(TransformerBlock):
    """A ``TransformerBlock`` (same parameters and keys) whose forward runs ``fused_block_forward``.

    Called as a module, so per-block hooks (gradient checkpointing, FSDP) work as for the reference.
    """

    attn_backend: str | None = None
    cross_kv: dict | None = None      # set by FastDiT for one call when the context's keys/values are reused

    def forward(self, x, context=None, global_cond=None, rotary_freqs=None, context_mask=None):
        return fused_block_forward(self, x, context, global_cond, rotary_freqs, context_mask, self.attn_backend,
                                   self.cross_kv)


# The conditioning arguments the embedded context (and so the cross-attention keys/values) depends on.
_CONTEXT_ARGS = ("cross_attn_cond", "negative_cross_attn_cond", "negative_cross_attn_mask")


class _ContextMemo:
    """One conditioning's embedded context and its per-block keys/values. Holds the conditioning tensors so that
    their ids, the memo's key, cannot be reused by other tensors while it lives."""

    def __init__(self, inputs: tuple, context: torch.Tensor):
        self.inputs, self.context, self.kv = inputs, context, {}


class FastDiT(DiffusionTransformer):
    """Drop-in fused DiT. Constructor: the reference's arguments plus ``attn_backend`` (None = automatic).

    forward(x (B, io_channels, T), t (B,), cross_attn_cond=(B, S, cond_token_dim), global_embed=(B, global_cond_dim),
    ...) -> (B, io_channels, T), exactly as ``DiffusionTransformer.forward``; fp32/fp16/bf16 parameters.
    ``gradient_checkpointing = True`` recomputes each block in the backward pass (training).
    """

    block_cls = FusedTransformerBlock

    def __init__(self, *args, attn_backend: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.attn_backend = attn_backend
        self._freqs_cache: dict = {}
        self._check_betas_pending = True
        self._context_memos: dict | None = None     # within reuse_conditioning(): key -> _ContextMemo
        self._call_inputs: tuple | None = None      # this call's conditioning tensors, when it may use a memo
        self._call_memo: _ContextMemo | None = None
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_check_betas_pending", True))
        for blk in self.transformer.layers:
            for norm in (blk.pre_norm, blk.ff_norm, getattr(blk, "cross_attend_norm", None)):
                if norm is not None and not hasattr(norm, "gamma"):
                    raise NotImplementedError("FastDiT needs the block LayerNorms (remove_norms=False)")
            if blk.self_attn.qk_norm == "l2":
                raise NotImplementedError("FastDiT supports qk_norm 'ln' and 'none' (not 'l2')")

    @property
    def attn_backend(self) -> str | None:
        """Attention implementation for every block: None (automatic), triton, eager/sdpa, flash_attn."""
        return self._attn_backend

    @attn_backend.setter
    def attn_backend(self, value: str | None) -> None:
        if value is not None and value not in attn_ops.ATTENTION_BACKENDS:
            raise ValueError(f"attn_backend must be None or one of {', '.join(attn_ops.ATTENTION_BACKENDS)}, got {value!r}")
        self._attn_backend = value
        for blk in self.transformer.layers:
            blk.attn_backend = value

    @classmethod
    def from_module(cls, ref: nn.Module, attn_backend: str | None = None) -> "FastDiT":
        """Convert a loaded DiT: ``arc_fast.reference.DiffusionTransformer`` or stable-audio-tools' own.

        ref: the module to convert; a stable-audio-tools ``DiffusionTransformer`` (0.0.19 / 0.0.20 layout) is
        recognised by its structure (no import of that package) and its constructor arguments are read from
        it (``_sat_interop.sat_dit_config``). The result shares ref's parameter tensors (no copy) and has its
        device, dtype and train/eval mode. Raises TypeError for another kind of module, NotImplementedError for
        a feature FastDiT lacks, ValueError when the weights do not fit the architecture read from ref.
        """
        if isinstance(ref, DiffusionTransformer):
            cfg = ref.config_kwargs
        elif looks_like_sat_dit(ref):
            cfg = sat_dit_config(ref)
        else:
            raise TypeError(f"expected an arc_fast.reference.DiffusionTransformer or a stable-audio-tools "
                            f"DiffusionTransformer, got {type(ref).__name__}")
        p = next(ref.parameters())
        with torch.device("meta"):
            fast = cls(**cfg, attn_backend=attn_backend)
        try:
            fast.load_state_dict(ref.state_dict(), strict=True, assign=True)
        except RuntimeError as exc:  # a layout the structure did not reveal: say which keys, not a stack
            raise ValueError(f"from_module: the {type(ref).__name__}'s weights do not fit the architecture read "
                             f"from it ({cfg}): {exc}") from None
        fast.train(ref.training)
        fast.gradient_checkpointing = getattr(ref, "gradient_checkpointing", False)
        return fast.to(device=p.device, dtype=p.dtype)

    @contextlib.contextmanager
    def reuse_conditioning(self):
        """Within this scope, calls that pass the same conditioning tensor objects reuse their text context.

        The embedded context (``to_cond_embed``) and every block's cross-attention keys/values are computed by the
        first such call and reused by the next ones, as a sampler's steps call the DiT: at SAO Small's 65 text
        tokens that is about a quarter of the arithmetic of a step for a 1 s clip. Bitwise the same outputs. Applies to calls without
        gradients that pass ``cross_attn_cond`` (and the negative conditioning) as keyword arguments, with no
        conditioning dropout, outside ``torch.compile``; other calls run as usual. Inside the scope, do not
        modify a conditioning tensor or the weights in place. Nested scopes share the outer one's memo.
        """
        if self._context_memos is not None:
            yield self
            return
        self._context_memos = {}
        try:
            yield self
        finally:
            self._context_memos = None

    def forward(self, x, t, *args, **kwargs):
        """As ``DiffusionTransformer.forward``; inside ``reuse_conditioning()`` the text context may be reused."""
        # is_compiling() first: torch.compile then traces none of the memo state (no guards on it, so a new
        # scope per generation never recompiles).
        if (torch.compiler.is_compiling() or self._context_memos is None or args or torch.is_grad_enabled()
                or kwargs.get("cfg_dropout_prob", 0.0) > 0):
            return super().forward(x, t, *args, **kwargs)
        self._call_inputs = tuple(kwargs.get(k) for k in _CONTEXT_ARGS)
        try:
            return super().forward(x, t, **kwargs)
        finally:
            self._call_inputs = self._call_memo = None

    def _embed_context(self, cross_attn_cond: torch.Tensor) -> torch.Tensor:
        inputs = self._call_inputs
        if inputs is None:
            return super()._embed_context(cross_attn_cond)
        # The batch size tells the guided (cond + uncond) batch from the plain one.
        c = cross_attn_cond
        key = tuple(id(a) for a in inputs) + (c.shape[0], c.dtype, c.device)
        memo = self._context_memos.get(key)
        if memo is None:
            memo = self._context_memos[key] = _ContextMemo(inputs, super()._embed_context(c))
        self._call_memo = memo
        return memo.context

    def _rope(self, seq_len: int, device) -> torch.Tensor | None:
        rot = self.transformer.rotary_pos_emb
        if rot is None:
            return None
        key = (seq_len, device, rot.inv_freq.data_ptr())
        freqs = self._freqs_cache.get(key)
        if freqs is None:
            self._freqs_cache = {key: rot.forward_from_seq_len(seq_len)}
            freqs = self._freqs_cache[key]
        return freqs

    def _check_betas(self) -> None:
        # The fused LayerNorm is bias-less; Stable Audio's beta is a zero buffer. Refuse silently-wrong weights.
        for i, blk in enumerate(self.transformer.layers):
            for name in ("pre_norm", "cross_attend_norm", "ff_norm"):
                norm = getattr(blk, name, None)
                if norm is not None and not torch.isfinite(norm.beta).all():
                    raise ValueError(f"transformer.layers.{i}.{name}.beta holds NaN/Inf values: the DiT weights are "
                                     f"damaged (load another checkpoint)")
                if norm is not None and norm.beta.abs().max() != 0:
                    raise ValueError(f"transformer.layers.{i}.{name}.beta is non-zero: FastDiT's fused LayerNorm is "
                                     f"bias-less like Stable Audio's; use the reference DiffusionTransformer")
        self._check_betas_pending = False

    def _run_transformer(self, x, prepend_inputs, context, context_mask, global_cond, exit_layer_ix):
        if self._check_betas_pending:
            self._check_betas()
        seq_len = x.shape[1] + (prepend_inputs.shape[1] if prepend_inputs is not None else 0)
        memo = self._call_memo
        kv = memo.kv if memo is not None and memo.context is context else None
        if kv is not None:
            for blk in self.transformer.layers:
                blk.cross_kv = kv
        try:
            return self.transformer(x, prepend_embeds=prepend_inputs, context=context, context_mask=context_mask,
                                    global_cond=global_cond, exit_layer_ix=exit_layer_ix,
                                    rotary_freqs=self._rope(seq_len, x.device),
                                    checkpointing=self.gradient_checkpointing)
        finally:
            if kv is not None:
                for blk in self.transformer.layers:
                    blk.cross_kv = None
