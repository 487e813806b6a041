"""FastOobleckDecoder: the Oobleck decoder on fused SnakeBeta + convolution ops.

A drop-in for ``arc_fast.reference.OobleckDecoder`` (it *is* one: same constructor arguments, same
submodules, same ``state_dict`` keys ``layers.*.weight_g/weight_v/bias/alpha/beta``), whose forward runs

* the first conv as a plain fused conv (``snake_conv1d(apply_snake=False)``),
* each DecoderBlock as ``snake_conv_transpose1d`` (SnakeBeta + polyphase upsampling) and three residual
  units, each = ``snake_conv1d(k7, dilation d)`` then ``snake_conv1d(k1, residual=x)``,
* the final SnakeBeta + conv (no bias) as one ``snake_conv1d``, then tanh if ``final_tanh``,

through ``arc_fast.ops.snake_conv`` (eager / triton / cuda, see ``backend``). Weight norm is folded into
plain weights once (in fp32, then cast to the input dtype) and cached per (dtype, device, layout); the cache
is rebuilt automatically when any parameter changes (``load_state_dict``, ``.to()``, an optimizer step: it
watches each parameter's version counter and storage). When a gradient is needed (grad mode on and a
parameter requires grad) the fold is recomputed differentiably on every call instead.

ELU configs (``use_snake=False``) run ELU in eager PyTorch followed by the fused conv without activation.

Chunked decoding (``decode_chunked``) decodes ``chunk_size`` latent frames at a time with ``overlap``
context frames on each side and keeps only the core of each chunk (overlap-discard). With the default
overlap (``context_frames()``, an upper bound of the decoder's receptive-field radius: 11 frames for SAO)
every kept sample sees exactly the inputs it sees in a full decode, so the result equals the full decode
up to floating-point summation order (measured: bitwise equal with the eager backend on CPU;
the convolution library may pick a different algorithm for a different length elsewhere). Peak activation memory is
that of a ``chunk_size + 2*overlap`` frame decode; ``peak_activation_bytes`` gives the analytic figure
(SAO, 12 s stereo = 256 latent frames, batch 1, fused path: ~0.40 GB in bf16 / ~0.81 GB in fp32 for a
full decode; 128-frame chunks: ~0.24 GB bf16).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import snake_conv as ops
from ..ops._dispatch import pick_backend
from ..reference.autoencoder import OobleckDecoder, _check_audio_like

__all__ = ["FastOobleckDecoder"]


def _is_snake(m: nn.Module) -> bool:
    return type(m).__name__ == "SnakeBeta"


def _infer_config(ref: nn.Module) -> dict:
    """Constructor arguments of an Oobleck decoder, read from its structure (ours or stable-audio-tools')."""
    layers = getattr(ref, "layers", None)
    if not isinstance(layers, nn.Sequential) or len(layers) < 4:
        raise TypeError(f"from_module: expected an Oobleck decoder with a 'layers' Sequential, got "
                        f"{type(ref).__name__}")
    for m in ref.modules():
        if type(m).__name__ == "Activation1d":
            raise NotImplementedError("from_module: antialias_activation=True decoders are not supported")
    first = layers[0]
    blocks = [m for m in layers if isinstance(getattr(m, "layers", None), nn.Sequential)
              and len(m.layers) == 5 and isinstance(m.layers[1], nn.ConvTranspose1d)]
    if len(blocks) != len(layers) - 4:
        raise NotImplementedError("from_module: unsupported decoder layout (nearest-upsample blocks or unknown "
                                  "layers); expected conv, DecoderBlocks, activation, conv, tanh/identity")
    channels = blocks[-1].layers[1].out_channels
    return dict(
        out_channels=layers[-2].out_channels,
        channels=channels,
        latent_dim=first.in_channels,
        c_mults=[b.layers[1].in_channels // channels for b in reversed(blocks)],
        strides=[b.layers[1].stride[0] for b in reversed(blocks)],
        use_snake=_is_snake(layers[-3]),
        final_tanh=isinstance(layers[-1], nn.Tanh),
    )


class FastOobleckDecoder(OobleckDecoder):
    """Oobleck decoder (B, latent_dim, T) -> (B, out_channels, T * prod(strides)) on fused kernels.

    Constructor arguments and state-dict keys are those of ``reference.OobleckDecoder``; ``backend``
    (keyword only: None = automatic, "eager", "triton", "cuda") is the default for ``forward``.
    Works under ``torch.no_grad`` and ``torch.inference_mode``; output dtype = latents' dtype.
    """

    def __init__(self, out_channels: int = 2, channels: int = 128, latent_dim: int = 32, c_mults=(1, 2, 4, 8),
                 strides=(2, 4, 8, 8), use_snake: bool = False, antialias_activation: bool = False,
                 use_nearest_upsample: bool = False, final_tanh: bool = True, *, backend: str | None = None):
        super().__init__(out_channels=out_channels, channels=channels, latent_dim=latent_dim, c_mults=c_mults,
                         strides=strides, use_snake=use_snake, antialias_activation=antialias_activation,
                         use_nearest_upsample=use_nearest_upsample, final_tanh=final_tanh)
        self.backend = backend
        # Eager CPU inference in channels-last layout (False: the (B, C, T) layout, for comparison in bench/).
        self.cpu_channels_last = True
        # Activation budget of one forward (None: one pass whatever the length; load_pipeline sets it).
        self.max_activation_bytes: int | None = None
        self._plans: dict = {}
        self._plan_signature = None

    @classmethod
    def from_module(cls, ref: nn.Module, backend: str | None = None, copy: bool = True) -> "FastOobleckDecoder":
        """A FastOobleckDecoder with a copy of ``ref``'s weights (ours or a stable-audio-tools OobleckDecoder);
        ``copy=False`` shares ref's tensors instead (for a caller that replaces ref, e.g. ``load_pipeline``).

        Same device and dtype as ``ref``; the configuration is read from ``ref``'s structure (no import of
        stable-audio-tools) and its convolutions may carry legacy weight norm, parametrized weight norm or
        none. Raises TypeError / NotImplementedError for another module or an unsupported layout, ValueError
        when the weights do not fit the layout read from it.
        """
        cfg = _infer_config(ref)
        with torch.device("meta"):
            fast = cls(**cfg, backend=backend)
        from ._sat_interop import as_legacy_weight_norm

        state = as_legacy_weight_norm({k: v.detach().clone() if copy else v.detach()
                                       for k, v in ref.state_dict().items()},
                                       fast.state_dict().keys())
        try:
            fast.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:  # a layout the structure did not reveal: name the keys, no stack
            raise ValueError(f"from_module: the {type(ref).__name__}'s weights do not fit the decoder read from "
                             f"it ({cfg}): {exc}") from None
        for (name, p), (_, q) in zip(fast.named_parameters(), ref.named_parameters()):
            p.requires_grad_(q.requires_grad)
        fast.train(ref.training)
        return fast

    # ------------------------------------------------------------------------------------------------
    # Folded weights
    # ------------------------------------------------------------------------------------------------
    def _signature(self) -> tuple:
        return tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in self.parameters())

    def _needs_grad(self) -> bool:
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())

    @staticmethod
    def _conv_weight(conv: nn.Module, dtype, device, layout: str) -> torch.Tensor:
        w = _fold32(conv).to(device=device, dtype=dtype)
        if layout == "k_major":
            # (Cout, Cin, K) view of a (K, Cout, Cin) buffer: Triton's weight tiles are then contiguous in Cin.
            w = w.permute(2, 0, 1).contiguous().permute(1, 2, 0)
        elif layout == "nwc":
            w = ops.channels_last_weight(w)
        return w

    @staticmethod
    def _tconv_weight(conv: nn.Module, dtype, device, layout: str) -> tuple:
        w = _fold32(conv).to(device=device, dtype=dtype)
        packed = None
        if layout == "k_major":
            # (Cin, Cout, 2S) view of a (2S, Cout, Cin) buffer (contiguous in Cin for the phase tiles).
            w = w.permute(2, 1, 0).contiguous().permute(2, 1, 0)
        elif layout in ("eager", "nwc") and not torch.is_grad_enabled():   # the packed form serves no-grad calls only
            bias = None if conv.bias is None else conv.bias.to(device=device, dtype=dtype)
            packed = ops.pack_polyphase(w, bias, conv.stride[0])   # the eager polyphase path
            if layout == "nwc":
                packed = packed._replace(weight=ops.channels_last_weight(packed.weight))
        return w, packed

    def _build_plan(self, dtype, device, layout: str) -> dict:
        def bias(conv):
            return None if conv.bias is None else conv.bias.to(device=device, dtype=dtype)

        def act(m):
            if _is_snake(m):
                if not m.alpha_logscale:
                    raise NotImplementedError("FastOobleckDecoder: SnakeBeta with alpha_logscale=False")
                if layout == "cuda":   # the CUDA kernels take every tensor in the input dtype
                    return ("snake", m.alpha.to(dtype), m.beta.to(dtype))
                return ("snake", m.alpha, m.beta)
            if isinstance(m, nn.ELU):
                return ("elu", m.alpha)
            raise NotImplementedError(f"FastOobleckDecoder: activation {type(m).__name__} is not supported")

        layers = self.layers
        first = layers[0]
        plan = {"first": (self._conv_weight(first, dtype, device, layout), bias(first)), "blocks": []}
        for blk in layers[1:-3]:
            up = blk.layers[1]
            rus = []
            for ru in blk.layers[2:5]:
                c1, c2 = ru.layers[1], ru.layers[3]
                rus.append((act(ru.layers[0]), self._conv_weight(c1, dtype, device, layout), bias(c1), ru.dilation,
                            act(ru.layers[2]), self._conv_weight(c2, dtype, device, layout), bias(c2)))
            plan["blocks"].append((act(blk.layers[0]), *self._tconv_weight(up, dtype, device, layout), bias(up),
                                   up.stride[0], rus))
        last = layers[-2]
        plan["final"] = (act(layers[-3]), self._conv_weight(last, dtype, device, layout), bias(last))
        return plan

    def _plan(self, dtype, device, layout: str) -> dict:
        if self._needs_grad():
            return self._build_plan(dtype, device, layout)  # differentiable, never cached
        sig = self._signature()
        if sig != self._plan_signature:
            self._plans.clear()
            self._plan_signature = sig
        key = (dtype, device, layout)
        if key not in self._plans:
            # Normal (non-inference) tensors even when first called under inference_mode, so that the
            # cache stays usable outside it.
            with torch.inference_mode(False), torch.no_grad():
                self._plans[key] = self._build_plan(dtype, device, layout)
        return self._plans[key]

    def refold(self) -> None:
        """Drop the folded-weight cache (it also refreshes itself when parameters change)."""
        self._plans.clear()
        self._plan_signature = None

    def _load_from_state_dict(self, *args, **kwargs):
        self.refold()
        return super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        self.refold()
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------------------------------------------
    # Forward
    # ------------------------------------------------------------------------------------------------
    def _resolve_backend(self, x: torch.Tensor, backend: str | None) -> str:
        name = backend if backend is not None else self.backend
        return pick_backend("FastOobleckDecoder", x.device.type, ops.implemented_backends(), name)

    @staticmethod
    def _conv(h, act, w, b, dilation, residual, backend):
        if act is None:
            return ops.snake_conv1d(h, None, None, w, b, dilation, residual, apply_snake=False, backend=backend)
        if act[0] == "snake":
            return ops.snake_conv1d(h, act[1], act[2], w, b, dilation, residual, backend=backend)
        h = F.elu(h, alpha=act[1])
        return ops.snake_conv1d(h, None, None, w, b, dilation, residual, apply_snake=False, backend=backend)

    @staticmethod
    def _upsample(h, act, w, packed, b, stride, backend):
        if act[0] == "snake":
            return ops.snake_conv_transpose1d(h, act[1], act[2], w, b, stride, backend=backend, packed=packed)
        h = F.elu(h, alpha=act[1])
        return ops.snake_conv_transpose1d(h, None, None, w, b, stride, apply_snake=False, backend=backend,
                                          packed=packed)

    def forward(self, x: torch.Tensor, backend: str | None = None) -> torch.Tensor:
        """latents (B, latent_dim, T) fp32/fp16/bf16 -> audio (B, out_channels, T * prod(strides)), same dtype.
        Bad latents raise ValueError naming the problem (``_check_latents``; NaN/Inf per ``check_finite``).
        With ``max_activation_bytes`` set, a decode whose activations would exceed it runs in exact overlapping
        chunks (``decode_bounded``)."""
        return self.decode_bounded(x, self.max_activation_bytes, backend)

    def _decode(self, x: torch.Tensor, backend: str | None = None) -> torch.Tensor:
        """One pass over the whole of x (checked by the caller)."""
        name = self._resolve_backend(x, backend)
        layout = {"eager": "eager", "cuda": "cuda"}.get(name, "k_major" if x.is_cuda else "plain")
        if layout == "cuda":
            x = x.contiguous()   # the CUDA kernels read contiguous tensors only
        elif layout == "eager" and x.device.type == "cpu" and self.cpu_channels_last and not self._needs_grad():
            # The CPU inference path: every activation stays channels-last from the first conv to the last
            # (oneDNN's preferred layout; ops.snake_conv keeps it), one transpose at each end.
            layout = "nwc"
            x = ops.to_channels_last_1d(x)
        plan = self._plan(x.dtype, x.device, layout)
        w, b = plan["first"]
        h = self._conv(x, None, w, b, 1, None, name)
        for act, w, packed, b, stride, rus in plan["blocks"]:
            h = self._upsample(h, act, w, packed, b, stride, name)
            for act1, w1, b1, dil, act2, w2, b2 in rus:
                y = self._conv(h, act1, w1, b1, dil, None, name)
                h = self._conv(y, act2, w2, b2, 1, h, name)
                del y
        act, w, b = plan["final"]
        h = self._conv(h, act, w, b, 1, None, name)
        if self.final_tanh:
            h = h.tanh_() if layout == "nwc" else torch.tanh(h)
        return h.contiguous() if layout == "nwc" else h

    # ------------------------------------------------------------------------------------------------
    # Long audio
    # ------------------------------------------------------------------------------------------------
    def context_frames(self) -> int:
        """Latent frames of context per side that make chunked decoding exact (receptive-field radius bound).

        Radius in latent frames, accumulated through the layers at their sample rates u (samples per latent
        frame): first conv 3, each upsampling conv at most 2 input samples (2/u), each block's residual
        units 3*(1+3+9) = 39 output samples, the final conv 3 samples.
        """
        radius = 3.0
        u = 1
        for s in reversed(self.strides):
            radius += 2.0 / u
            u *= s
            radius += 39.0 / u
        radius += 3.0 / u
        return int(math.ceil(radius))

    def decode_chunked(self, latents: torch.Tensor, chunk_size: int = 128, overlap: int | None = None,
                       backend: str | None = None) -> torch.Tensor:
        """Decode in chunks of ``chunk_size`` latent frames with ``overlap`` context frames per side.

        Overlap-discard: each chunk is decoded with its context and only its core is kept, so peak memory is
        that of a (chunk_size + 2*overlap)-frame decode. ``overlap=None`` uses ``context_frames()``, which
        makes the result equal to ``forward`` up to floating-point summation order.

        latents (B, latent_dim, T) -> (B, out_channels, T * prod(strides)).
        """
        _check_audio_like("decode_chunked latents", latents, self.latent_dim, "latents")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"decode_chunked: chunk_size must be a positive int, got {chunk_size!r}")
        ctx = self.context_frames() if overlap is None else overlap
        if not isinstance(ctx, int) or ctx < 0:
            raise ValueError(f"decode_chunked: overlap must be a non-negative int, got {overlap!r}")
        T = latents.shape[-1]
        if T <= chunk_size:
            return self._decode(latents, backend)
        hop = self.hop_length
        out = None
        for c0 in range(0, T, chunk_size):
            c1 = min(c0 + chunk_size, T)
            a0, a1 = max(0, c0 - ctx), min(T, c1 + ctx)
            y = self._decode(latents[..., a0:a1], backend)
            if out is None:
                out = y.new_empty(y.shape[0], y.shape[1], T * hop)
            out[..., c0 * hop:c1 * hop] = y[..., (c0 - a0) * hop:(c1 - a0) * hop]
        return out

    def decode_bounded(self, latents: torch.Tensor, max_activation_bytes: int | None = None,
                       backend: str | None = None) -> torch.Tensor:
        """Decode in one pass when its activations fit ``max_activation_bytes`` (``peak_activation_bytes``), else
        in the largest chunks that fit (``decode_chunked`` with the exact overlap). None: one pass.

        Why: a chunk costs ``2 * context_frames()`` extra frames of compute (22 for SAO: +17 % at 128-frame
        chunks), so chunking is used only where it is what keeps the peak memory within the budget (long audio,
        big batches). latents (B, latent_dim, T) -> (B, out_channels, T * prod(strides)).
        """
        _check_latents(self, latents)
        T, B = latents.shape[-1], latents.shape[0]
        if max_activation_bytes is None or self.peak_activation_bytes(T, latents.dtype, B) <= max_activation_bytes:
            return self._decode(latents, backend)
        ctx = self.context_frames()
        lo, hi = 1, T
        while lo < hi:     # the largest chunk whose decode (with its context on both sides) fits the budget
            mid = (lo + hi + 1) // 2
            if self.peak_activation_bytes(mid + 2 * ctx, latents.dtype, B) <= max_activation_bytes:
                lo = mid
            else:
                hi = mid - 1
        return self.decode_chunked(latents, chunk_size=lo, backend=backend)

    def peak_activation_bytes(self, frames: int, dtype: torch.dtype = torch.bfloat16, batch: int = 1) -> int:
        """Analytic peak of live activations for a fused decode of ``frames`` latent frames (weights excluded).

        Counts, per step, the tensors alive in ``forward``: conv input + output; upsampling input + output;
        residual unit input, k7 output and k1 output. (The eager backend adds one SnakeBeta temporary of the
        conv input's size.)
        """
        size = torch.empty((), dtype=dtype).element_size()
        ch = [self.channels * c for c in [1] + self.c_mults]
        t = frames
        peak = self.latent_dim * t + ch[-1] * t
        for i, s in zip(range(len(ch) - 1, 0, -1), reversed(self.strides)):
            peak = max(peak, ch[i] * t + ch[i - 1] * t * s)
            t *= s
            peak = max(peak, 3 * ch[i - 1] * t)
        peak = max(peak, ch[0] * t + self.out_channels * t)
        return int(peak * size * batch)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"


def _fold32(conv: nn.Module) -> torch.Tensor:
    """Fold weight norm in fp32 (whatever the parameter dtype): w = g * v / ||v||."""
    if hasattr(conv, "weight_g"):
        g, v = conv.weight_g.float(), conv.weight_v.float()
        return g * v / v.norm(dim=tuple(range(1, v.dim())), keepdim=True)
    return conv.weight.float()


def _check_latents(decoder: nn.Module, x) -> None:
    """``FastOobleckDecoder.forward``'s input checks: x a floating (B, latent_dim, T) tensor with T >= 1
    (ValueError; TypeError for a non-tensor). ``check_finite`` (a class or instance attribute, as on FastDiT;
    absent = False) also rejects NaN/Inf: False never, None for CPU inputs only (one pass, no device sync),
    True on every device (one host sync); skipped inside ``torch.compile`` and CUDA graph capture."""
    name = "FastOobleckDecoder input"
    if isinstance(x, torch.Tensor) and not x.is_floating_point():
        raise ValueError(f"{name}: x must be a floating-point tensor of latents (float32/float16/bfloat16), "
                         f"got {x.dtype}")
    _check_audio_like(name, x, decoder.latent_dim, "latents")
    if x.shape[2] == 0:
        raise ValueError(f"{name}: no latent frames (shape {tuple(x.shape)})")
    check = getattr(decoder, "check_finite", False)
    if check is False or torch.compiler.is_compiling() or (check is None and x.device.type != "cpu"):
        return
    if x.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: x holds NaN/Inf values (non-finite input, not a weights problem)")
