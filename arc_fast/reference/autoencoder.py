"""Eager Oobleck autoencoder (Stable Audio Open layout): the oracle for the fast decoder.

State-dict compatible with ``stable-audio-tools`` (SPEC.md section 7.4): convolutions are weight-normed
with the *legacy* ``torch.nn.utils.weight_norm`` (dim=0), so checkpoints hold ``weight_g``/``weight_v``;
SnakeBeta keeps ``alpha``/``beta`` of shape (C,) in log scale. Layer indices follow the original
``nn.Sequential`` layout exactly:

* decoder ``layers``: 0 WNConv1d(latent_dim -> C*c_mults[-1], k7), 1..n DecoderBlocks (widest first),
  n+1 activation, n+2 WNConv1d(C*1 -> out_channels, k7, no bias), n+3 Tanh or Identity;
* DecoderBlock ``layers``: 0 activation, 1 WNConvTranspose1d(k=2s, stride s, padding ceil(s/2)),
  2..4 ResidualUnits with dilation 1, 3, 9;
* ResidualUnit ``layers``: 0 activation, 1 WNConv1d(k7, dilation d, 'same'), 2 activation, 3 WNConv1d(k1);
  y = x + layers(x);
* encoder ``layers``: 0 WNConv1d(in -> C, k7), 1..n EncoderBlocks (RU d1/d3/d9, activation,
  WNConv1d(k=2s, stride s, padding ceil(s/2))), n+1 activation, n+2 WNConv1d(-> latent_dim, k3, p1).

``OobleckAutoencoder`` mirrors ``AudioAutoencoder`` (keys ``encoder.*``, ``decoder.*``; a Stable Audio
pipeline loads them under the prefix ``pretransform.model.``) with the VAE bottleneck.

Not implemented (raise ``NotImplementedError``): ``antialias_activation=True`` (alias-free activations) and
``use_nearest_upsample=True``; neither is used by Stable Audio Open.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .functional import fold_weight_norm, snake_beta

__all__ = [
    "SnakeBeta", "WNConv1d", "WNConvTranspose1d", "ResidualUnit", "EncoderBlock", "DecoderBlock",
    "OobleckEncoder", "OobleckDecoder", "VAEBottleneck", "OobleckAutoencoder", "autoencoder_from_config",
    "folded_weight", "get_activation",
]


def _weight_norm(module: nn.Module) -> nn.Module:
    # The legacy API is the one that produces the checkpoint key names (weight_g / weight_v); its
    # deprecation warning is expected and says nothing actionable to a user of this package.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*weight_norm.*")
        return nn.utils.weight_norm(module)


def WNConv1d(*args, **kwargs) -> nn.Conv1d:  # noqa: N802 - name of the original helper
    """``nn.Conv1d(*args, **kwargs)`` with legacy weight norm (``weight_g`` (out,1,1), ``weight_v``, ``bias``)."""
    return _weight_norm(nn.Conv1d(*args, **kwargs))


def WNConvTranspose1d(*args, **kwargs) -> nn.ConvTranspose1d:  # noqa: N802
    """``nn.ConvTranspose1d`` with legacy weight norm; ``weight_g`` is (in,1,1) (dim 0 of an (in,out,k) weight)."""
    return _weight_norm(nn.ConvTranspose1d(*args, **kwargs))


def folded_weight(conv: nn.Module) -> torch.Tensor:
    """The effective weight of a (weight-normed or plain) conv: g * v / ||v|| or ``conv.weight``."""
    if hasattr(conv, "weight_g") and hasattr(conv, "weight_v"):
        return fold_weight_norm(conv.weight_g, conv.weight_v)
    return conv.weight


class SnakeBeta(nn.Module):
    """SnakeBeta activation y = x + sin^2(a x) / (b + 1e-9) per channel, on (B, C, T).

    ``alpha``/``beta`` have shape (C,). With ``alpha_logscale=True`` (Stable Audio's default) they hold
    log(a), log(b) and start at 0 (times ``alpha``); otherwise they hold a, b and start at ``alpha``.
    """

    def __init__(self, in_features: int, alpha: float = 1.0, alpha_trainable: bool = True,
                 alpha_logscale: bool = True):
        super().__init__()
        self.in_features = in_features
        self.alpha_logscale = alpha_logscale
        init = torch.zeros(in_features) if alpha_logscale else torch.ones(in_features)
        self.alpha = nn.Parameter(init * alpha, requires_grad=alpha_trainable)
        self.beta = nn.Parameter(init * alpha, requires_grad=alpha_trainable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return snake_beta(x, self.alpha, self.beta, logscale=self.alpha_logscale)

    def extra_repr(self) -> str:
        return f"{self.in_features}, alpha_logscale={self.alpha_logscale}"


def get_activation(activation: str, antialias: bool = False, channels: int | None = None) -> nn.Module:
    """``"snake"`` -> SnakeBeta(channels), ``"elu"`` -> ELU, ``"none"`` -> Identity."""
    if antialias:
        raise NotImplementedError("antialias_activation=True (alias-free activations) is not implemented in "
                                  "arc_fast; Stable Audio Open does not use it")
    if activation == "elu":
        return nn.ELU()
    if activation == "snake":
        if channels is None:
            raise ValueError("get_activation: 'snake' needs channels")
        return SnakeBeta(channels)
    if activation == "none":
        return nn.Identity()
    raise ValueError(f"get_activation: unknown activation {activation!r}; expected 'elu', 'snake' or 'none'")


def _act(use_snake: bool, channels: int, antialias: bool = False) -> nn.Module:
    return get_activation("snake" if use_snake else "elu", antialias=antialias, channels=channels)


class ResidualUnit(nn.Module):
    """x + Conv1x1(act(ConvDil_k7(act(x)))) on (B, C, T); 'same' padding 3*dilation, channels unchanged."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int, use_snake: bool = False,
                 antialias_activation: bool = False):
        super().__init__()
        self.dilation = dilation
        padding = (dilation * (7 - 1)) // 2
        self.layers = nn.Sequential(
            _act(use_snake, out_channels, antialias_activation),
            WNConv1d(in_channels=in_channels, out_channels=out_channels, kernel_size=7, dilation=dilation,
                     padding=padding),
            _act(use_snake, out_channels, antialias_activation),
            WNConv1d(in_channels=out_channels, out_channels=out_channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class EncoderBlock(nn.Module):
    """RU(d1), RU(d3), RU(d9) at in_channels, activation, then WNConv1d(k=2s, stride s, pad ceil(s/2)): T -> T/s."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, use_snake: bool = False,
                 antialias_activation: bool = False):
        super().__init__()
        self.layers = nn.Sequential(
            ResidualUnit(in_channels, in_channels, dilation=1, use_snake=use_snake),
            ResidualUnit(in_channels, in_channels, dilation=3, use_snake=use_snake),
            ResidualUnit(in_channels, in_channels, dilation=9, use_snake=use_snake),
            _act(use_snake, in_channels, antialias_activation),
            WNConv1d(in_channels=in_channels, out_channels=out_channels, kernel_size=2 * stride, stride=stride,
                     padding=math.ceil(stride / 2)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DecoderBlock(nn.Module):
    """Activation, WNConvTranspose1d(k=2s, stride s, pad ceil(s/2)) (T -> s*T for even s), RU d1/d3/d9."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, use_snake: bool = False,
                 antialias_activation: bool = False, use_nearest_upsample: bool = False):
        super().__init__()
        if use_nearest_upsample:
            raise NotImplementedError("use_nearest_upsample=True is not implemented in arc_fast; Stable Audio "
                                      "Open uses transposed convolutions (use_nearest_upsample=False)")
        self.layers = nn.Sequential(
            _act(use_snake, in_channels, antialias_activation),
            WNConvTranspose1d(in_channels=in_channels, out_channels=out_channels, kernel_size=2 * stride,
                              stride=stride, padding=math.ceil(stride / 2)),
            ResidualUnit(out_channels, out_channels, dilation=1, use_snake=use_snake),
            ResidualUnit(out_channels, out_channels, dilation=3, use_snake=use_snake),
            ResidualUnit(out_channels, out_channels, dilation=9, use_snake=use_snake),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _check_audio_like(name: str, x: torch.Tensor, channels: int, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{name}: expected {what} of shape (B, {channels}, T), got rank {x.dim()} "
                         f"shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{name}: expected {channels} channels (dim 1) for {what}, got {x.shape[1]} "
                         f"(shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {x.dtype}")


def _check_strides(c_mults, strides) -> None:
    if len(c_mults) != len(strides):
        raise ValueError(f"c_mults and strides must have the same length, got {len(c_mults)} and {len(strides)}")
    if any(int(s) < 1 for s in strides):
        raise ValueError(f"strides must be positive, got {list(strides)}")


class OobleckEncoder(nn.Module):
    """Oobleck encoder: audio (B, in_channels, T) -> (B, latent_dim, T / prod(strides)).

    T must be a multiple of prod(strides) for an exact length. Arguments as in Stable Audio.
    """

    def __init__(self, in_channels: int = 2, channels: int = 128, latent_dim: int = 32,
                 c_mults=(1, 2, 4, 8), strides=(2, 4, 8, 8), use_snake: bool = False,
                 antialias_activation: bool = False):
        super().__init__()
        _check_strides(c_mults, strides)
        self.in_channels = in_channels
        self.latent_dim = latent_dim
        self.strides = [int(s) for s in strides]
        c_mults = [1] + list(c_mults)
        self.depth = len(c_mults)
        layers = [WNConv1d(in_channels=in_channels, out_channels=c_mults[0] * channels, kernel_size=7, padding=3)]
        for i in range(self.depth - 1):
            layers.append(EncoderBlock(c_mults[i] * channels, c_mults[i + 1] * channels, stride=strides[i],
                                       use_snake=use_snake, antialias_activation=antialias_activation))
        layers += [
            _act(use_snake, c_mults[-1] * channels, antialias_activation),
            WNConv1d(in_channels=c_mults[-1] * channels, out_channels=latent_dim, kernel_size=3, padding=1),
        ]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_audio_like("OobleckEncoder input", x, self.in_channels, "audio")
        return self.layers(x)


class OobleckDecoder(nn.Module):
    """Oobleck decoder: latents (B, latent_dim, T) -> audio (B, out_channels, T * prod(strides)).

    Arguments as in Stable Audio (SAO: channels 128, c_mults [1,2,4,8,16], strides [2,4,4,8,8],
    latent_dim 64, use_snake True, final_tanh False). Output dtype = input dtype.
    """

    def __init__(self, out_channels: int = 2, channels: int = 128, latent_dim: int = 32,
                 c_mults=(1, 2, 4, 8), strides=(2, 4, 8, 8), use_snake: bool = False,
                 antialias_activation: bool = False, use_nearest_upsample: bool = False, final_tanh: bool = True):
        super().__init__()
        _check_strides(c_mults, strides)
        self.out_channels = out_channels
        self.channels = channels
        self.latent_dim = latent_dim
        self.c_mults = [int(c) for c in c_mults]
        self.strides = [int(s) for s in strides]
        self.use_snake = use_snake
        self.final_tanh = final_tanh
        c_mults = [1] + list(c_mults)
        self.depth = len(c_mults)
        layers = [WNConv1d(in_channels=latent_dim, out_channels=c_mults[-1] * channels, kernel_size=7, padding=3)]
        for i in range(self.depth - 1, 0, -1):
            layers.append(DecoderBlock(c_mults[i] * channels, c_mults[i - 1] * channels, stride=strides[i - 1],
                                       use_snake=use_snake, antialias_activation=antialias_activation,
                                       use_nearest_upsample=use_nearest_upsample))
        layers += [
            _act(use_snake, c_mults[0] * channels, antialias_activation),
            WNConv1d(in_channels=c_mults[0] * channels, out_channels=out_channels, kernel_size=7, padding=3,
                     bias=False),
            nn.Tanh() if final_tanh else nn.Identity(),
        ]
        self.layers = nn.Sequential(*layers)

    @property
    def hop_length(self) -> int:
        """Audio samples per latent frame: prod(strides) (2048 for SAO)."""
        return math.prod(self.strides)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_audio_like("OobleckDecoder input", x, self.latent_dim, "latents")
        return self.layers(x)


class VAEBottleneck(nn.Module):
    """Stable Audio's VAE bottleneck: (B, 2D, T) = mean | scale -> latents (B, D, T).

    stdev = softplus(scale) + 1e-4; latents = mean + stdev * N(0, 1); kl = (mean^2 + var - log var - 1)
    summed over channels and averaged over batch and time. ``decode`` is the identity.
    """

    is_discrete = False

    def encode(self, x: torch.Tensor, return_info: bool = False, sample: bool = True,
               generator: torch.Generator | None = None):
        """latents, or (latents, {"kl", "mean", "stdev"}) with ``return_info``; ``sample=False`` returns the mean."""
        if x.dim() != 3 or x.shape[1] % 2 != 0:
            raise ValueError(f"VAEBottleneck.encode: expected (B, 2*D, T) with an even channel count, got "
                             f"shape {tuple(x.shape)}")
        mean, scale = x.chunk(2, dim=1)
        stdev = F.softplus(scale) + 1e-4
        if sample:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            latents = mean + stdev * noise
        else:
            latents = mean
        if not return_info:
            return latents
        var = stdev * stdev
        kl = (mean * mean + var - torch.log(var) - 1).sum(1).mean()
        return latents, {"kl": kl, "mean": mean, "stdev": stdev}

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x


class OobleckAutoencoder(nn.Module):
    """Encoder + VAE bottleneck + decoder, with Stable Audio's ``AudioAutoencoder`` key layout.

    ``encode(audio (B, io_channels, N))`` -> latents (B, latent_dim, N / downsampling_ratio);
    ``decode(latents)`` -> audio (B, io_channels, T * downsampling_ratio).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, bottleneck: nn.Module | None = None,
                 downsampling_ratio: int = 2048, io_channels: int = 2, latent_dim: int = 64,
                 sample_rate: int = 44100):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.bottleneck = bottleneck
        self.downsampling_ratio = int(downsampling_ratio)
        self.io_channels = io_channels
        self.latent_dim = latent_dim
        self.sample_rate = sample_rate
        hop = getattr(decoder, "hop_length", None)
        if hop is not None and hop != self.downsampling_ratio:
            raise ValueError(f"downsampling_ratio={downsampling_ratio} but the decoder strides give {hop}")

    def encode(self, audio: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None,
               return_info: bool = False):
        """audio (B, io_channels, N), N a multiple of downsampling_ratio -> latents (B, latent_dim, N/ratio)."""
        _check_audio_like("OobleckAutoencoder.encode audio", audio, self.io_channels, "audio")
        if audio.shape[-1] % self.downsampling_ratio != 0:
            raise ValueError(f"OobleckAutoencoder.encode: audio length {audio.shape[-1]} is not a multiple of "
                             f"downsampling_ratio={self.downsampling_ratio}; pad it first")
        pre = self.encoder(audio)
        info = {"pre_bottleneck_latents": pre}
        if self.bottleneck is None:
            latents = pre
        else:
            latents, binfo = self.bottleneck.encode(pre, return_info=True, sample=sample, generator=generator)
            info.update(binfo)
        return (latents, info) if return_info else latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, latent_dim, T) -> audio (B, io_channels, T * downsampling_ratio)."""
        _check_audio_like("OobleckAutoencoder.decode latents", latents, self.latent_dim, "latents")
        if self.bottleneck is not None:
            latents = self.bottleneck.decode(latents)
        return self.decoder(latents)


_ENCODER_KEYS = ("in_channels", "channels", "latent_dim", "c_mults", "strides", "use_snake", "antialias_activation")
_DECODER_KEYS = ("out_channels", "channels", "latent_dim", "c_mults", "strides", "use_snake",
                 "antialias_activation", "use_nearest_upsample", "final_tanh")


def _sub(block: dict, what: str, allowed: tuple[str, ...], cls):
    if not isinstance(block, dict) or "type" not in block:
        raise ValueError(f"autoencoder_from_config: {what} must be a dict with a 'type', got {block!r}")
    if block["type"] != "oobleck":
        raise NotImplementedError(f"autoencoder_from_config: {what} type {block['type']!r} is not supported "
                                  f"(only 'oobleck')")
    cfg = dict(block.get("config", {}))
    unknown = sorted(set(cfg) - set(allowed))
    if unknown:
        raise ValueError(f"autoencoder_from_config: unknown {what} config keys {unknown}; allowed {list(allowed)}")
    return cls(**cfg)


def autoencoder_from_config(pretransform_config: dict) -> OobleckAutoencoder:
    """Build an ``OobleckAutoencoder`` from a Stable Audio ``pretransform`` block.

    Accepts ``{"type": "autoencoder", "config": {"encoder": {"type": "oobleck", "config": {...}},
    "decoder": {...}, "bottleneck": {"type": "vae"}, "latent_dim": 64, "downsampling_ratio": 2048,
    "io_channels": 2}}`` (the outer ``type`` may be omitted: the inner config is accepted too). Other
    encoder/decoder/bottleneck types raise ``NotImplementedError``.
    """
    if not isinstance(pretransform_config, dict):
        raise TypeError(f"autoencoder_from_config: expected a dict, got {type(pretransform_config).__name__}")
    cfg = pretransform_config
    if "type" in cfg:
        if cfg["type"] != "autoencoder":
            raise NotImplementedError(f"autoencoder_from_config: pretransform type {cfg['type']!r} is not "
                                      f"supported (only 'autoencoder')")
        cfg = cfg.get("config", {})
    for key in ("encoder", "decoder"):
        if key not in cfg:
            raise ValueError(f"autoencoder_from_config: missing {key!r} in the autoencoder config")
    encoder = _sub(cfg["encoder"], "encoder", _ENCODER_KEYS, OobleckEncoder)
    decoder = _sub(cfg["decoder"], "decoder", _DECODER_KEYS, OobleckDecoder)
    bottleneck = None
    if cfg.get("bottleneck") is not None:
        btype = cfg["bottleneck"].get("type")
        if btype != "vae":
            raise NotImplementedError(f"autoencoder_from_config: bottleneck type {btype!r} is not supported "
                                      f"(only 'vae')")
        bottleneck = VAEBottleneck()
    latent_dim = cfg.get("latent_dim", decoder.latent_dim)
    if latent_dim != decoder.latent_dim:
        raise ValueError(f"autoencoder_from_config: latent_dim {latent_dim} != decoder latent_dim "
                         f"{decoder.latent_dim}")
    return OobleckAutoencoder(encoder, decoder, bottleneck,
                              downsampling_ratio=cfg.get("downsampling_ratio", decoder.hop_length),
                              io_channels=cfg.get("io_channels", 2), latent_dim=latent_dim,
                              sample_rate=cfg.get("sample_rate", pretransform_config.get("sample_rate", 44100)))
