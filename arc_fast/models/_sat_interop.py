"""Constructor arguments of a stable-audio-tools ``DiffusionTransformer``, read from the module itself.

stable-audio-tools keeps no copy of its constructor arguments, so ``FastDiT.from_module`` reads them from the
structure (layer sizes, which sub-modules exist) and the attributes the public class sets, without importing
that package (duck typing: any module with the same structure works). Features arc-fast does not implement
are refused with ``NotImplementedError`` naming them; what the structure cannot show (parameter layouts) is
then checked by the strict state-dict load in ``FastDiT.from_module``. Checked against stable-audio-tools
0.0.19 and 0.0.20 (tests/test_interop_sat.py, tests/test_patch_sat.py).
"""
from __future__ import annotations

from torch import nn

_DIT_PARTS = ("transformer", "to_timestep_embed", "timestep_features", "preprocess_conv", "postprocess_conv")


def looks_like_sat_dit(m: nn.Module) -> bool:
    """True for a module with the parts of a Stable Audio ``DiffusionTransformer`` (ours or stable-audio-tools')."""
    return isinstance(m, nn.Module) and all(hasattr(m, p) for p in _DIT_PARTS) and hasattr(m.transformer, "layers")


def _name(m) -> str:
    return type(m).__name__


def _norm_kwargs(norm: nn.Module, where: str) -> dict:
    if _name(norm) != "LayerNorm" or not hasattr(norm, "gamma"):
        raise NotImplementedError(f"from_module: {where} is a {_name(norm)}; FastDiT supports Stable Audio's "
                                  f"LayerNorm only (not remove_norms / norm_type rms or dyt)")
    kw = {}
    if isinstance(getattr(norm, "beta", None), nn.Parameter):
        kw["bias"] = True
    if not isinstance(norm.gamma, nn.Parameter):
        kw["fix_scale"] = True
    if getattr(norm, "eps", 1e-5) != 1e-5:
        kw["eps"] = norm.eps
    return kw


def _check_attention(attn: nn.Module, where: str) -> str:
    for flag in ("differential", "feat_scale", "causal"):
        if getattr(attn, flag, False):
            raise NotImplementedError(f"from_module: {where} uses {flag}=True, which FastDiT does not implement")
    qk = getattr(attn, "qk_norm", "none")
    if qk not in ("none", "ln"):
        raise NotImplementedError(f"from_module: {where} uses qk_norm={qk!r}; FastDiT supports 'ln' and 'none'")
    if qk == "ln" and (getattr(attn.q_norm, "eps", 1e-6) != 1e-6 or getattr(attn.k_norm, "eps", 1e-6) != 1e-6):
        raise NotImplementedError(f"from_module: {where} uses a qk_norm eps other than 1e-6")
    return qk


def _ff_kwargs(ff: nn.Module, dim: int, where: str) -> dict:
    seq = getattr(ff, "ff", None)
    if not isinstance(seq, nn.Sequential) or len(seq) < 3:
        raise NotImplementedError(f"from_module: {where} is not Stable Audio's FeedForward")
    glu, out = seq[0], seq[2]
    if _name(glu) != "GLU" or not isinstance(getattr(glu, "proj", None), nn.Linear) or not isinstance(out, nn.Linear):
        raise NotImplementedError(f"from_module: {where} is not a SwiGLU with Linear layers (glu=False or "
                                  f"use_conv=True are not supported)")
    if not isinstance(getattr(glu, "act", None), nn.SiLU):
        raise NotImplementedError(f"from_module: {where} uses a {_name(glu.act)} activation; FastDiT's is SiLU")
    kw = {}
    if out.in_features != 4 * dim:
        kw["mult"] = out.in_features / dim
    if out.bias is None:
        kw["no_bias"] = True
    return kw


def sat_dit_config(m: nn.Module) -> dict:
    """Constructor keyword arguments of ``arc_fast.reference.DiffusionTransformer`` for the same model as ``m``.

    m: a stable-audio-tools ``DiffusionTransformer`` (0.0.19 / 0.0.20 layout), on any device (meta included).
    Raises TypeError when m is not such a module, NotImplementedError for a feature FastDiT lacks.
    """
    if not looks_like_sat_dit(m):
        raise TypeError(f"from_module: expected a Stable Audio DiffusionTransformer (with {', '.join(_DIT_PARTS)}), "
                        f"got {_name(m)}")
    tr = m.transformer
    kind = getattr(m, "transformer_type", "continuous_transformer")
    if kind != "continuous_transformer":
        raise NotImplementedError(f"from_module: transformer_type {kind!r}; FastDiT is a continuous_transformer")
    if _name(m.timestep_features) != "FourierFeatures" or getattr(m, "timestep_features_logsnr", False):
        raise NotImplementedError("from_module: only the learned Fourier timestep features of t are supported "
                                  "(not timestep_features_type='expo' or timestep_features_logsnr)")
    if m.to_timestep_embed[0].in_features != 256:
        raise NotImplementedError("from_module: timestep_features_dim must be 256")
    for attr in ("num_memory_tokens",):
        if getattr(tr, attr, 0):
            raise NotImplementedError(f"from_module: transformer {attr} is not supported")
    if getattr(tr, "sliding_window", None) is not None:
        raise NotImplementedError("from_module: sliding-window attention is not supported")
    if getattr(tr, "causal", False):
        raise NotImplementedError("from_module: causal transformers are not supported")

    dim = tr.project_in.out_features
    blocks = list(tr.layers)
    first = blocks[0]
    for i, blk in enumerate(blocks):
        for part in ("self_attn_scale", "cross_attn_scale", "ff_scale"):
            if not isinstance(getattr(blk, part, nn.Identity()), nn.Identity):
                raise NotImplementedError(f"from_module: transformer.layers.{i} uses layer_scale")
        if getattr(blk, "rope", None) is not None:
            raise NotImplementedError(f"from_module: transformer.layers.{i} uses add_rope")
        if getattr(blk, "local_add_cond_dim", None) is not None:
            raise NotImplementedError(f"from_module: transformer.layers.{i} uses local_add_cond")
    qk = _check_attention(first.self_attn, "transformer.layers.0.self_attn")
    for i, blk in enumerate(blocks):
        _check_attention(blk.self_attn, f"transformer.layers.{i}.self_attn")
        if getattr(blk, "cross_attn", None) is not None:
            _check_attention(blk.cross_attn, f"transformer.layers.{i}.cross_attn")

    dim_in = m.preprocess_conv.in_channels                 # io_channels + input_concat_dim (+ timestep embed)
    io_channels = m.postprocess_conv.in_channels
    timestep_cond_type = getattr(m, "timestep_cond_type", "global")
    timestep_embed_dim = m.to_timestep_embed[0].out_features
    input_concat_dim = dim_in - io_channels - (timestep_embed_dim if timestep_cond_type == "input_concat" else 0)
    cond_token_dim = getattr(m, "cond_token_dim", 0) or 0
    cfg = dict(
        io_channels=io_channels,
        patch_size=tr.project_in.in_features // dim_in,
        embed_dim=dim,
        cond_token_dim=cond_token_dim,
        project_cond_tokens=not cond_token_dim or m.to_cond_embed[0].out_features == dim,
        global_cond_dim=m.to_global_embed[0].in_features if hasattr(m, "to_global_embed") else 0,
        project_global_cond=not hasattr(m, "to_global_embed") or m.to_global_embed[0].out_features == dim,
        input_concat_dim=input_concat_dim,
        prepend_cond_dim=m.to_prepend_embed[0].in_features if hasattr(m, "to_prepend_embed") else 0,
        depth=len(blocks),
        num_heads=dim // first.self_attn.dim_heads,
        transformer_type="continuous_transformer",
        global_cond_type=getattr(m, "global_cond_type", "prepend"),
        timestep_cond_type=timestep_cond_type,
        diffusion_objective=getattr(m, "diffusion_objective", "v"),
        rotary_pos_emb=tr.rotary_pos_emb is not None,
    )
    if timestep_cond_type == "input_concat":
        cfg["timestep_embed_dim"] = timestep_embed_dim
    if getattr(tr, "use_sinusoidal_emb", False) or getattr(tr, "use_abs_pos_emb", False):
        raise NotImplementedError("from_module: absolute/sinusoidal position embeddings are not supported")
    if any(getattr(b, "conformer", None) is not None for b in blocks):
        raise NotImplementedError("from_module: conformer blocks are not supported")
    crossing = [i for i, b in enumerate(blocks) if getattr(b, "cross_attn", None) is not None]
    if cond_token_dim and crossing != list(range(len(blocks))):
        if crossing != list(range(len(crossing))):
            raise NotImplementedError("from_module: cross-attention in a layer set other than the first k layers")
        cfg["final_cross_attn_ix"] = len(crossing) - 1
    if qk != "none":
        cfg["attn_kwargs"] = {"qk_norm": qk}
    ff = _ff_kwargs(first.ff, dim, "transformer.layers.0.ff")
    if ff:
        cfg["ff_kwargs"] = ff
    norm = _norm_kwargs(first.pre_norm, "transformer.layers.0.pre_norm")
    if norm:
        cfg["norm_kwargs"] = norm
    return cfg


def as_legacy_weight_norm(state: dict, want) -> dict:
    """The state dict with each conv in the legacy ``weight_g``/``weight_v`` form the decoder's keys use.

    A stable-audio-tools decoder may come with ``torch.nn.utils.parametrizations.weight_norm``
    (``parametrizations.weight.original0/1`` = g/v) or with weight norm removed (a plain ``weight``: then
    v = weight and g = its norm over every axis but 0, the legacy ``weight_norm(dim=0)``, so g * v / |v| is the
    weight again up to rounding).
    """
    want = set(want)
    out = {}
    for k, v in state.items():
        if k.endswith(".parametrizations.weight.original0"):
            out[k[: -len("parametrizations.weight.original0")] + "weight_g"] = v
        elif k.endswith(".parametrizations.weight.original1"):
            out[k[: -len("parametrizations.weight.original1")] + "weight_v"] = v
        elif k.endswith(".weight") and k not in want and k[: -len("weight")] + "weight_g" in want:
            stem = k[: -len("weight")]
            out[stem + "weight_v"] = v
            out[stem + "weight_g"] = v.norm(dim=tuple(range(1, v.dim())), keepdim=True)
        else:
            out[k] = v
    return out
