"""Eager reference of the Stable Audio diffusion transformer (``DiffusionTransformer`` with the
``continuous_transformer`` backbone), state-dict compatible with Stable Audio Open checkpoints.

Math and key names follow SPEC.md section 7.2/7.3 (measured on stable-audio-tools 0.0.19). This module is
the oracle that ``arc_fast.FastDiT`` is tested against: plain PyTorch, fp32-exact on the CPU.
"""
from __future__ import annotations

import math
import typing as tp

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from .functional import apply_rotary


class FourierFeatures(nn.Module):
    """Learned Fourier features: t (B, in) -> [cos(2 pi t W^T), sin(2 pi t W^T)] (B, out). Key ``weight`` (out/2, in)."""

    def __init__(self, in_features: int, out_features: int, std: float = 1.0):
        super().__init__()
        if out_features % 2:
            raise ValueError(f"out_features must be even, got {out_features}")
        self.weight = nn.Parameter(torch.randn(out_features // 2, in_features) * std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = 2 * math.pi * x @ self.weight.T
        return torch.cat([f.cos(), f.sin()], dim=-1)


class LayerNorm(nn.Module):
    """Bias-less LayerNorm (Stable Audio's): learned ``gamma``, ``beta`` a zero buffer kept in the state dict."""

    def __init__(self, dim: int, bias: bool = False, fix_scale: bool = False, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        if fix_scale:
            self.register_buffer("gamma", torch.ones(dim))
        else:
            self.gamma = nn.Parameter(torch.ones(dim))
        if bias:
            self.beta = nn.Parameter(torch.zeros(dim))
        else:
            self.register_buffer("beta", torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], weight=self.gamma, bias=self.beta, eps=self.eps)


class RotaryEmbedding(nn.Module):
    """Rotary angle table over ``dim`` channels: persistent buffer ``inv_freq`` (dim/2,) = base^(-2j/dim)."""

    def __init__(self, dim: int, base: float = 10000.0, interpolation_factor: float = 1.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("inv_freq", inv_freq)
        self.interpolation_factor = interpolation_factor

    def forward_from_seq_len(self, seq_len: int) -> torch.Tensor:
        """(seq_len, dim) fp32 table [theta, theta] for positions 0..seq_len-1."""
        t = torch.arange(seq_len, device=self.inv_freq.device, dtype=torch.float32) / self.interpolation_factor
        theta = torch.outer(t, self.inv_freq.float())
        return torch.cat([theta, theta], dim=-1)


class Attention(nn.Module):
    """Multi-head attention with optional per-head LayerNorm on q/k and RoPE (self-attention only).

    Self-attention keys: ``to_qkv`` (3*dim, dim); cross-attention: ``to_q`` (dim, dim), ``to_kv``
    (2*dim_context, dim_context); ``to_out`` (dim, dim); ``q_norm``/``k_norm`` LayerNorm(dim_heads, eps=1e-6).
    """

    def __init__(self, dim: int, dim_heads: int = 64, dim_context: int | None = None, causal: bool = False,
                 zero_init_output: bool = True, qk_norm: str = "none", natten_kernel_size=None, **_ignored):
        super().__init__()
        if qk_norm not in ("none", "ln", "l2"):
            raise ValueError(f"qk_norm must be 'none', 'ln' or 'l2', got {qk_norm!r}")
        if causal:
            raise NotImplementedError("causal attention is not supported by the DiT")
        self.dim = dim
        self.dim_heads = dim_heads
        self.num_heads = dim // dim_heads
        self.qk_norm = qk_norm
        self.is_cross = dim_context is not None
        dim_kv = dim_context if dim_context is not None else dim
        self.kv_heads = dim_kv // dim_heads
        if self.is_cross:
            self.to_q = nn.Linear(dim, dim, bias=False)
            self.to_kv = nn.Linear(dim_kv, dim_kv * 2, bias=False)
        else:
            self.to_qkv = nn.Linear(dim, dim * 3, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        if zero_init_output:
            nn.init.zeros_(self.to_out.weight)
        if qk_norm == "ln":
            self.q_norm = nn.LayerNorm(dim_heads, elementwise_affine=True, eps=1.0e-6)
            self.k_norm = nn.LayerNorm(dim_heads, elementwise_affine=True, eps=1.0e-6)

    def _heads(self, t: torch.Tensor, h: int) -> torch.Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, h, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, rotary_freqs: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.num_heads
        if self.is_cross:
            if context is None:
                raise ValueError("cross-attention needs a context tensor")
            q = self._heads(self.to_q(x), h)
            k, v = self.to_kv(context).chunk(2, dim=-1)
            k, v = self._heads(k, self.kv_heads), self._heads(v, self.kv_heads)
        else:
            q, k, v = self.to_qkv(x).chunk(3, dim=-1)
            q, k, v = self._heads(q, h), self._heads(k, h), self._heads(v, h)
        if self.qk_norm == "ln":
            q, k = self.q_norm(q), self.k_norm(k)
        elif self.qk_norm == "l2":
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        if rotary_freqs is not None and not self.is_cross:
            q, k = apply_rotary(q, rotary_freqs), apply_rotary(k, rotary_freqs)
        if h != self.kv_heads:
            # Same rule as the reference: repeat only when the query heads are a multiple of the kv heads.
            rep = h // self.kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        attn_mask = None
        if context_mask is not None:
            attn_mask = context_mask.bool()[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        if attn_mask is not None:
            # A query with every key masked gets zeros, not NaN.
            out = out.masked_fill(~attn_mask.any(-1, keepdim=True), 0.0)
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        return self.to_out(out)


class GLU(nn.Module):
    """Packed gated unit: proj (2*dim_out, dim_in) with bias; (value | gate) -> value * act(gate)."""

    def __init__(self, dim_in: int, dim_out: int, activation: nn.Module):
        super().__init__()
        self.act = activation
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * self.act(gate)


class FeedForward(nn.Module):
    """SwiGLU feed-forward: ``ff.0.proj`` (2*inner, dim)+bias, ``ff.2`` (dim, inner)+bias, zero-initialised output."""

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4, no_bias: bool = False, glu: bool = True,
                 zero_init_output: bool = True, **_ignored):
        super().__init__()
        inner = int(dim * mult)
        dim_out = dim if dim_out is None else dim_out
        if not glu:
            raise NotImplementedError("only the GLU feed-forward (the Stable Audio default) is supported")
        linear_out = nn.Linear(inner, dim_out, bias=not no_bias)
        if zero_init_output:
            nn.init.zeros_(linear_out.weight)
            if linear_out.bias is not None:
                nn.init.zeros_(linear_out.bias)
        self.ff = nn.Sequential(GLU(dim, inner, nn.SiLU()), nn.Identity(), linear_out, nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff(x)


class TransformerBlock(nn.Module):
    """Pre-norm block: self-attention (RoPE, QK norm), cross-attention, SwiGLU FF; adaLN when global_cond_dim."""

    def __init__(self, dim: int, dim_heads: int = 64, cross_attend: bool = False, dim_context: int | None = None,
                 global_cond_dim: int | None = None, causal: bool = False, zero_init_branch_outputs: bool = True,
                 conformer: bool = False, layer_ix: int = -1, remove_norms: bool = False,
                 attn_kwargs: dict | None = None, ff_kwargs: dict | None = None, norm_kwargs: dict | None = None):
        super().__init__()
        if conformer:
            raise NotImplementedError("conformer blocks are not supported")
        attn_kwargs, ff_kwargs, norm_kwargs = attn_kwargs or {}, ff_kwargs or {}, norm_kwargs or {}
        self.dim = dim
        self.cross_attend = cross_attend
        self.pre_norm = LayerNorm(dim, **norm_kwargs) if not remove_norms else nn.Identity()
        self.self_attn = Attention(dim, dim_heads=dim_heads, causal=causal,
                                   zero_init_output=zero_init_branch_outputs, **attn_kwargs)
        if cross_attend:
            self.cross_attend_norm = LayerNorm(dim, **norm_kwargs) if not remove_norms else nn.Identity()
            self.cross_attn = Attention(dim, dim_heads=dim_heads, dim_context=dim_context, causal=causal,
                                        zero_init_output=zero_init_branch_outputs, **attn_kwargs)
        self.ff_norm = LayerNorm(dim, **norm_kwargs) if not remove_norms else nn.Identity()
        self.ff = FeedForward(dim, zero_init_output=zero_init_branch_outputs, **ff_kwargs)
        self.global_cond_dim = global_cond_dim
        if global_cond_dim is not None:
            self.to_scale_shift_gate = nn.Parameter(torch.randn(6 * dim) / dim ** 0.5)

    def forward(self, x, context=None, global_cond=None, rotary_freqs=None, context_mask=None):
        if self.global_cond_dim is not None and global_cond is not None:
            ssg = (self.to_scale_shift_gate + global_cond).unsqueeze(1)
            scale_self, shift_self, gate_self, scale_ff, shift_ff, gate_ff = ssg.chunk(6, dim=-1)
            h = self.pre_norm(x) * (1 + scale_self) + shift_self
            x = x + self.self_attn(h, rotary_freqs=rotary_freqs) * torch.sigmoid(1 - gate_self)
            if context is not None and self.cross_attend:
                x = x + self.cross_attn(self.cross_attend_norm(x), context=context, context_mask=context_mask)
            h = self.ff_norm(x) * (1 + scale_ff) + shift_ff
            x = x + self.ff(h) * torch.sigmoid(1 - gate_ff)
            return x
        x = x + self.self_attn(self.pre_norm(x), rotary_freqs=rotary_freqs)
        if context is not None and self.cross_attend:
            x = x + self.cross_attn(self.cross_attend_norm(x), context=context, context_mask=context_mask)
        x = x + self.ff(self.ff_norm(x))
        return x


class ContinuousTransformer(nn.Module):
    """Stack of TransformerBlocks with linear in/out projections and a shared rotary table."""

    def __init__(self, dim: int, depth: int, *, dim_in: int | None = None, dim_out: int | None = None,
                 dim_heads: int = 64, cross_attend: bool = False, cond_token_dim: int | None = None,
                 final_cross_attn_ix: int = -1, global_cond_dim: int | None = None, causal: bool = False,
                 rotary_pos_emb: bool = True, zero_init_branch_outputs: bool = True, conformer: bool = False,
                 use_sinusoidal_emb: bool = False, use_abs_pos_emb: bool = False, abs_pos_emb_max_length: int = 10000,
                 block_cls: type | None = None, **kwargs):
        super().__init__()
        block_cls = TransformerBlock if block_cls is None else block_cls
        if use_sinusoidal_emb or use_abs_pos_emb:
            raise NotImplementedError("absolute/sinusoidal position embeddings are not supported (SAO uses RoPE)")
        self.dim = dim
        self.depth = depth
        self.project_in = nn.Linear(dim_in, dim, bias=False) if dim_in is not None else nn.Identity()
        self.project_out = nn.Linear(dim, dim_out, bias=False) if dim_out is not None else nn.Identity()
        self.rotary_pos_emb = RotaryEmbedding(max(dim_heads // 2, 32)) if rotary_pos_emb else None
        self.global_cond_embedder = None
        if global_cond_dim is not None:
            self.global_cond_embedder = nn.Sequential(nn.Linear(global_cond_dim, dim), nn.SiLU(), nn.Linear(dim, dim * 6))
        self.layers = nn.ModuleList([
            block_cls(dim, dim_heads=dim_heads,
                             cross_attend=cross_attend and (final_cross_attn_ix == -1 or i <= final_cross_attn_ix),
                             dim_context=cond_token_dim, global_cond_dim=global_cond_dim, causal=causal,
                             zero_init_branch_outputs=zero_init_branch_outputs, conformer=conformer, layer_ix=i,
                             **kwargs)
            for i in range(depth)])

    def forward(self, x, prepend_embeds=None, context=None, context_mask=None, global_cond=None,
                exit_layer_ix: int | None = None, rotary_freqs: torch.Tensor | None = None,
                checkpointing: bool = False):
        """x (B, T, dim_in) -> (B, prepend + T, dim_out), or the hidden states after block ``exit_layer_ix``.

        ``rotary_freqs`` (prepend + T, rot_dim) may be given precomputed; ``checkpointing`` recomputes each
        block in the backward pass (non-reentrant torch.utils.checkpoint) when gradients are enabled.
        """
        x = self.project_in(x)
        if prepend_embeds is not None:
            if prepend_embeds.shape[-1] != x.shape[-1]:
                raise ValueError(f"prepend_embeds last dim {prepend_embeds.shape[-1]} != model dim {x.shape[-1]}")
            x = torch.cat([prepend_embeds.to(x.dtype), x], dim=-2)
        freqs = rotary_freqs
        if freqs is None and self.rotary_pos_emb is not None:
            freqs = self.rotary_pos_emb.forward_from_seq_len(x.shape[1])
        if global_cond is not None and self.global_cond_embedder is not None:
            global_cond = self.global_cond_embedder(global_cond)
        ckpt = checkpointing and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            if ckpt:
                x = torch.utils.checkpoint.checkpoint(layer, x, context, global_cond, freqs, context_mask,
                                                      use_reentrant=False)
            else:
                x = layer(x, context, global_cond, freqs, context_mask)
            if exit_layer_ix is not None and i == exit_layer_ix:
                return x
        return self.project_out(x)


class DiffusionTransformer(nn.Module):
    #: The transformer block class (FastDiT swaps in its fused block; the keys stay the same).
    block_cls = TransformerBlock

    """Stable Audio's conditioned DiT. Constructor arguments are those of the ``diffusion.config`` block.

    forward(x (B, io_channels, T), t (B,), cross_attn_cond (B, S, cond_token_dim), global_embed
    (B, global_cond_dim), ...) -> (B, io_channels, T), in the parameter dtype. With ``exit_layer_ix=k`` it
    returns the hidden states after block k: (B, prepend + T, embed_dim), prepend token included.

    Extra (not in Stable Audio): ``use_cross_attn_mask=False``. The reference ignores
    ``cross_attn_cond_mask`` (padded text tokens are attended to; SPEC 7.3): we do the same by default, and
    apply the mask when this is True.

    Input checks (ValueError naming the argument): x a floating (B, io_channels, T) tensor, t (B,), the
    conditioning and mask shapes ((B, S) for a text mask of S tokens, (B, T) for ``mask``), ``cfg_scale`` a
    finite number. ``check_finite`` (class or instance attribute) also rejects NaN/Inf in x and t: False (the
    default: a sampler's own guard names the step that went wrong, which a check on the next step's input
    would hide) never; None checks CPU inputs only, where it costs one pass over x and no device sync; True
    checks on every device (one host sync per call). It is skipped inside ``torch.compile`` and during CUDA
    graph capture, where a host sync is not allowed.
    """

    check_finite: bool | None = False

    def __init__(self, io_channels: int = 32, patch_size: int = 1, embed_dim: int = 768, cond_token_dim: int = 0,
                 project_cond_tokens: bool = True, global_cond_dim: int = 0, project_global_cond: bool = True,
                 input_concat_dim: int = 0, prepend_cond_dim: int = 0, depth: int = 12, num_heads: int = 8,
                 transformer_type: str = "continuous_transformer",
                 global_cond_type: tp.Literal["prepend", "adaLN"] = "prepend",
                 timestep_cond_type: tp.Literal["global", "input_concat"] = "global",
                 timestep_embed_dim: int | None = None, diffusion_objective: str = "v",
                 use_cross_attn_mask: bool = False, **kwargs):
        super().__init__()
        # Kept so that converted modules (FastDiT.from_module) and exports rebuild the same architecture.
        self.config_kwargs = {k: v for k, v in locals().items() if k not in ("self", "kwargs", "__class__")}
        self.config_kwargs.update(kwargs)
        if transformer_type != "continuous_transformer":
            raise NotImplementedError(f"transformer_type {transformer_type!r}: only 'continuous_transformer' is supported")
        if global_cond_type not in ("prepend", "adaLN"):
            raise ValueError(f"global_cond_type must be 'prepend' or 'adaLN', got {global_cond_type!r}")
        if timestep_cond_type not in ("global", "input_concat"):
            raise ValueError(f"timestep_cond_type must be 'global' or 'input_concat', got {timestep_cond_type!r}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.io_channels = io_channels
        self.embed_dim = embed_dim
        self.cond_token_dim = cond_token_dim
        self.global_cond_dim = global_cond_dim
        self.timestep_cond_type = timestep_cond_type
        self.global_cond_type = global_cond_type
        self.diffusion_objective = diffusion_objective
        self.use_cross_attn_mask = use_cross_attn_mask
        self.depth = depth
        self.num_heads = num_heads

        timestep_features_dim = 256
        self.timestep_features = FourierFeatures(1, timestep_features_dim)
        if timestep_cond_type == "global":
            timestep_embed_dim = embed_dim
        else:
            if timestep_embed_dim is None:
                raise ValueError("timestep_embed_dim must be given when timestep_cond_type is 'input_concat'")
            input_concat_dim += timestep_embed_dim
        self.to_timestep_embed = nn.Sequential(nn.Linear(timestep_features_dim, timestep_embed_dim, bias=True), nn.SiLU(),
                                               nn.Linear(timestep_embed_dim, timestep_embed_dim, bias=True))
        cond_embed_dim = 0
        if cond_token_dim > 0:
            cond_embed_dim = embed_dim if project_cond_tokens else cond_token_dim
            self.to_cond_embed = nn.Sequential(nn.Linear(cond_token_dim, cond_embed_dim, bias=False), nn.SiLU(),
                                               nn.Linear(cond_embed_dim, cond_embed_dim, bias=False))
        if global_cond_dim > 0:
            gdim = embed_dim if project_global_cond else global_cond_dim
            self.to_global_embed = nn.Sequential(nn.Linear(global_cond_dim, gdim, bias=False), nn.SiLU(),
                                                 nn.Linear(gdim, gdim, bias=False))
        if prepend_cond_dim > 0:
            self.to_prepend_embed = nn.Sequential(nn.Linear(prepend_cond_dim, embed_dim, bias=False), nn.SiLU(),
                                                  nn.Linear(embed_dim, embed_dim, bias=False))
        self.input_concat_dim = input_concat_dim
        dim_in = io_channels + input_concat_dim
        self.patch_size = patch_size
        self.transformer_type = transformer_type
        self.gradient_checkpointing = False
        self.transformer = ContinuousTransformer(
            block_cls=self.block_cls, dim=embed_dim, depth=depth, dim_heads=embed_dim // num_heads, dim_in=dim_in * patch_size,
            dim_out=io_channels * patch_size, cross_attend=cond_token_dim > 0, cond_token_dim=cond_embed_dim,
            global_cond_dim=embed_dim if global_cond_type == "adaLN" else None, **kwargs)
        self.preprocess_conv = nn.Conv1d(dim_in, dim_in, 1, bias=False)
        nn.init.zeros_(self.preprocess_conv.weight)
        self.postprocess_conv = nn.Conv1d(io_channels, io_channels, 1, bias=False)
        nn.init.zeros_(self.postprocess_conv.weight)

    # Split out so that FastDiT can reuse the embedded text context across sampler steps.
    def _embed_context(self, cross_attn_cond: torch.Tensor) -> torch.Tensor:
        return self.to_cond_embed(cross_attn_cond)

    # The transformer trunk is split out so FastDiT can swap it while sharing the conditioning code.
    def _run_transformer(self, x, prepend_inputs, context, context_mask, global_cond, exit_layer_ix):
        return self.transformer(x, prepend_embeds=prepend_inputs, context=context, context_mask=context_mask,
                                global_cond=global_cond, exit_layer_ix=exit_layer_ix,
                                checkpointing=self.gradient_checkpointing)

    def _forward(self, x, t, mask=None, cross_attn_cond=None, cross_attn_cond_mask=None, input_concat_cond=None,
                 global_embed=None, prepend_cond=None, prepend_cond_mask=None, return_info=False,
                 exit_layer_ix=None, **kwargs):
        if cross_attn_cond is not None:
            cross_attn_cond = self._embed_context(cross_attn_cond)
        if global_embed is not None:
            global_embed = self.to_global_embed(global_embed)
        prepend_inputs = None
        if prepend_cond is not None:
            prepend_inputs = self.to_prepend_embed(prepend_cond)
        if input_concat_cond is not None:
            if input_concat_cond.shape[2] != x.shape[2]:
                input_concat_cond = F.interpolate(input_concat_cond, (x.shape[2],), mode="nearest")
            x = torch.cat([x, input_concat_cond], dim=1)
        timestep_embed = self.to_timestep_embed(self.timestep_features(t[:, None]))
        if self.timestep_cond_type == "global":
            global_embed = timestep_embed if global_embed is None else global_embed + timestep_embed
        else:
            x = torch.cat([x, timestep_embed.unsqueeze(-1).expand(-1, -1, x.shape[2])], dim=1)
        prepend_length = 0
        if self.global_cond_type == "prepend" and global_embed is not None:
            g = global_embed.unsqueeze(1)
            prepend_inputs = g if prepend_inputs is None else torch.cat([prepend_inputs, g], dim=1)
        if prepend_inputs is not None:
            prepend_length = prepend_inputs.shape[1]
        x = self.preprocess_conv(x) + x
        x = x.transpose(1, 2)
        if self.patch_size > 1:
            b, t_len, c = x.shape
            x = x.reshape(b, t_len // self.patch_size, self.patch_size, c).transpose(2, 3).reshape(b, t_len // self.patch_size, c * self.patch_size)
        context_mask = cross_attn_cond_mask if self.use_cross_attn_mask else None
        out = self._run_transformer(x, prepend_inputs, cross_attn_cond, context_mask,
                                    global_embed if self.global_cond_type == "adaLN" else None, exit_layer_ix)
        if exit_layer_ix is not None:
            return out
        out = out.transpose(1, 2)[:, :, prepend_length:]
        if self.patch_size > 1:
            b, cp, tp_ = out.shape
            out = out.reshape(b, cp // self.patch_size, self.patch_size, tp_).transpose(2, 3).reshape(b, cp // self.patch_size, tp_ * self.patch_size)
        return self.postprocess_conv(out) + out

    def forward(self, x, t, cross_attn_cond=None, cross_attn_cond_mask=None, negative_cross_attn_cond=None,
                negative_cross_attn_mask=None, input_concat_cond=None, global_embed=None, negative_global_embed=None,
                prepend_cond=None, prepend_cond_mask=None, cfg_scale=1.0, cfg_dropout_prob=0.0, cfg_interval=(0, 1),
                causal=False, scale_phi=0.0, mask=None, return_info=False, exit_layer_ix=None, **kwargs):
        if causal:
            raise NotImplementedError("causal mode is not supported by the DiffusionTransformer")
        self._check_inputs(x, t, cross_attn_cond, global_embed)
        self._check_extras(x, t, cross_attn_cond, cross_attn_cond_mask, negative_cross_attn_cond,
                           negative_cross_attn_mask, cfg_scale, mask)
        dtype = next(self.parameters()).dtype
        cast = lambda a: a.to(dtype) if a is not None else None  # noqa: E731
        x, t = cast(x), cast(t)
        cross_attn_cond, negative_cross_attn_cond = cast(cross_attn_cond), cast(negative_cross_attn_cond)
        input_concat_cond, global_embed, prepend_cond = cast(input_concat_cond), cast(global_embed), cast(prepend_cond)
        if cross_attn_cond_mask is not None:
            cross_attn_cond_mask = cross_attn_cond_mask.bool()
        if prepend_cond_mask is not None:
            prepend_cond_mask = prepend_cond_mask.bool()

        # As the reference: conditioning dropout only in the unguided (training) call.
        if cfg_dropout_prob > 0.0 and cfg_scale == 1.0:
            if cross_attn_cond is not None:
                drop = torch.bernoulli(torch.full((cross_attn_cond.shape[0], 1, 1), cfg_dropout_prob,
                                                  device=x.device)).bool()
                cross_attn_cond = torch.where(drop, torch.zeros_like(cross_attn_cond), cross_attn_cond)
            if prepend_cond is not None:
                drop = torch.bernoulli(torch.full((prepend_cond.shape[0], 1, 1), cfg_dropout_prob,
                                                  device=x.device)).bool()
                prepend_cond = torch.where(drop, torch.zeros_like(prepend_cond), prepend_cond)

        common = dict(mask=mask, input_concat_cond=input_concat_cond, global_embed=global_embed,
                      prepend_cond_mask=prepend_cond_mask, exit_layer_ix=exit_layer_ix)
        if exit_layer_ix is not None:
            return self._forward(x, t, cross_attn_cond=cross_attn_cond, cross_attn_cond_mask=cross_attn_cond_mask,
                                 prepend_cond=prepend_cond, **common)
        sigma = t[0] if self.diffusion_objective in ("rectified_flow", "rf_denoiser") else torch.sin(t[0] * math.pi / 2)
        # The default interval (0, 1) holds every sigma: skip reading it so that no host sync happens (a CUDA
        # graph capture of the sampling loop forbids one).
        use_cfg = (cfg_scale != 1.0 and (cross_attn_cond is not None or prepend_cond is not None)
                   and (tuple(cfg_interval) == (0, 1) or cfg_interval[0] <= float(sigma) <= cfg_interval[1]))
        if not use_cfg:
            return self._forward(x, t, cross_attn_cond=cross_attn_cond, cross_attn_cond_mask=cross_attn_cond_mask,
                                 prepend_cond=prepend_cond, **common)
        # Classifier-free guidance: cond and uncond in one batch; the global embedding is never nulled.
        two = lambda a: torch.cat([a, a], dim=0) if a is not None else None  # noqa: E731
        batch_cond = None
        if cross_attn_cond is not None:
            null = torch.zeros_like(cross_attn_cond)
            if negative_cross_attn_cond is not None:
                if negative_cross_attn_mask is not None:
                    keep = negative_cross_attn_mask.bool().unsqueeze(2)
                    negative_cross_attn_cond = torch.where(keep, negative_cross_attn_cond, null)
                batch_cond = torch.cat([cross_attn_cond, negative_cross_attn_cond], dim=0)
            else:
                batch_cond = torch.cat([cross_attn_cond, null], dim=0)
        batch_prepend = None
        if prepend_cond is not None:
            batch_prepend = torch.cat([prepend_cond, torch.zeros_like(prepend_cond)], dim=0)
        out = self._forward(two(x), two(t), mask=two(mask), cross_attn_cond=batch_cond,
                            cross_attn_cond_mask=two(cross_attn_cond_mask), input_concat_cond=two(input_concat_cond),
                            global_embed=two(global_embed), prepend_cond=batch_prepend,
                            prepend_cond_mask=two(prepend_cond_mask))
        cond_out, uncond_out = out.chunk(2, dim=0)
        cfg_out = uncond_out + (cond_out - uncond_out) * cfg_scale
        if scale_phi != 0.0:
            cond_std = cond_out.std(dim=1, keepdim=True)
            cfg_std = cfg_out.std(dim=1, keepdim=True)
            cfg_out = scale_phi * (cfg_out * (cond_std / cfg_std)) + (1 - scale_phi) * cfg_out
        return cfg_out

    def _check_extras(self, x, t, cond, cond_mask, neg_cond, neg_mask, cfg_scale, mask) -> None:
        """dtype, mask shapes, cfg_scale and (per ``check_finite``) NaN/Inf in x and t."""
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor (float32/float16/bfloat16), got {x.dtype}")
        if not isinstance(t, torch.Tensor) or not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
            raise ValueError(f"t must be a float tensor of noise levels, got "
                             f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
        b = x.shape[0]
        for name, m, c in (("cross_attn_cond_mask", cond_mask, cond), ("negative_cross_attn_mask", neg_mask, neg_cond)):
            if m is not None:
                tokens = c.shape[1] if isinstance(c, torch.Tensor) and c.dim() == 3 else None
                if not isinstance(m, torch.Tensor) or m.dim() != 2 or m.shape[0] != b or (
                        tokens is not None and m.shape[1] != tokens):
                    raise ValueError(f"{name} must have shape ({b}, {tokens if tokens is not None else 'tokens'}) "
                                     f"(one flag per text token), got "
                                     f"{tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__}")
        if mask is not None and (not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (b, x.shape[2])):
            raise ValueError(f"mask must have shape ({b}, {x.shape[2]}), got "
                             f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
        if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, (int, float, torch.Tensor)):
            raise ValueError(f"cfg_scale must be a number, got {type(cfg_scale).__name__}")
        if isinstance(cfg_scale, (int, float)) and not math.isfinite(cfg_scale):
            raise ValueError(f"cfg_scale must be finite, got {cfg_scale}")
        check = self.check_finite
        if check is False or torch.compiler.is_compiling() or (check is None and x.device.type != "cpu"):
            return
        if x.is_cuda and torch.cuda.is_current_stream_capturing():
            return
        for name, v in (("x", x), ("t", t)):
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                raise ValueError(f"{name} holds NaN/Inf values (non-finite input, not a weights problem)")
        if isinstance(cfg_scale, torch.Tensor) and not bool(torch.isfinite(cfg_scale).all()):
            raise ValueError("cfg_scale holds NaN/Inf values")

    def _check_inputs(self, x, t, cross_attn_cond, global_embed):
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            raise ValueError(f"x must be a (batch, {self.io_channels}, frames) tensor, got shape "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.shape[1] != self.io_channels:
            raise ValueError(f"x has {x.shape[1]} latent channels, the model expects {self.io_channels}")
        if x.shape[2] % self.patch_size:
            raise ValueError(f"x length {x.shape[2]} is not a multiple of patch_size {self.patch_size}")
        if t.dim() != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}")
        if cross_attn_cond is not None:
            if self.cond_token_dim == 0:
                raise ValueError("this model has no cross-attention (cond_token_dim=0) but cross_attn_cond was given")
            if cross_attn_cond.dim() != 3 or cross_attn_cond.shape[0] != x.shape[0] or cross_attn_cond.shape[2] != self.cond_token_dim:
                raise ValueError(f"cross_attn_cond must have shape ({x.shape[0]}, tokens, {self.cond_token_dim}), "
                                 f"got {tuple(cross_attn_cond.shape)}")
        if global_embed is not None:
            if self.global_cond_dim == 0:
                raise ValueError("this model has no global conditioning (global_cond_dim=0) but global_embed was given")
            if global_embed.shape != (x.shape[0], self.global_cond_dim):
                raise ValueError(f"global_embed must have shape ({x.shape[0]}, {self.global_cond_dim}), "
                                 f"got {tuple(global_embed.shape)}")
