"""ARC discriminator: a DiT trunk run to ``exit_layer_ix`` plus a small 1-D convolutional head.

    x_s (B, C, T), s (B,), conditioning ──► trunk (blocks 0..k) ──► hidden (B, T + P, E)
        ──► transpose (B, E, T + P) ──► head ──► score map (B, 1, T')

The trunk is a full conditioned DiT (its own timestep embedding, ``to_cond_embed``, ``to_global_embed``,
preprocess conv, rotary table), initialised from the pretrained model and trained together with the head.
Blocks after ``exit_layer_ix`` and the output projections are dropped: they would receive no gradient (and
DDP would wait for it). P is the number of prepended tokens (1 for SAO's prepend global conditioning).

Heads (SPEC.md section 5):
* ``"convnext"`` (default): stem Conv1d(E, c0, 7), then per stage ``head_blocks`` ConvNeXt blocks (depthwise
  conv k7, LayerNorm over channels, pointwise MLP x4 with GELU, layer scale 1e-6, residual) and a strided
  downsampling conv; widths ``channels * c_mults``, strides ``strides``; final LayerNorm + Conv1d(-> 1).
* ``"conv"``: four [Conv1d(k4, s2, p1) + GroupNorm + SiLU] at width ``channels``, then Conv1d(-> 1, k1).
  GroupNorm uses 32 groups, or the largest divisor of the width below 32 for small widths.

Every downsampling pads on the right so that a stride-s stage maps L frames to ceil(L / s) >= 1: SAO's 257
tokens would otherwise shrink to zero frames under the default strides (2, 4, 8, 8).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

HEADS = ("convnext", "conv")


def _pad_to_multiple(x: torch.Tensor, m: int) -> torch.Tensor:
    rem = x.shape[-1] % m
    return F.pad(x, (0, m - rem), mode="replicate") if rem else x


class _ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of (B, C, L)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class ConvNeXtBlock1d(nn.Module):
    """x + gamma * PW2(GELU(PW1(LN(DWConv7(x))))) on (B, C, L); gamma starts at ``layer_scale``."""

    def __init__(self, channels: int, expansion: int = 4, layer_scale: float = 1e-6):
        super().__init__()
        self.dwconv = nn.Conv1d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.pw1 = nn.Linear(channels, expansion * channels)
        self.pw2 = nn.Linear(expansion * channels, channels)
        self.gamma = nn.Parameter(torch.full((channels,), float(layer_scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dwconv(x).transpose(1, 2)
        h = self.pw2(F.gelu(self.pw1(self.norm(h)))) * self.gamma
        return x + h.transpose(1, 2)


class _Down(nn.Module):
    """Strided downsampling to ceil(L / stride) frames: right replicate-pad, LN, Conv1d(k = s, stride s)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        self.norm = _ChannelLayerNorm(cin)
        self.conv = nn.Conv1d(cin, cout, kernel_size=stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(_pad_to_multiple(self.norm(x), self.stride))


class ConvNeXtHead(nn.Module):
    """ConvNeXt-style 1-D encoder: (B, in_channels, L) -> score map (B, latent_dim, ceil(L / prod(strides)))."""

    def __init__(self, in_channels: int, channels: int = 128, c_mults=(1, 2, 4, 8), strides=(2, 4, 8, 8),
                 latent_dim: int = 1, blocks_per_stage: int = 1):
        super().__init__()
        if len(c_mults) != len(strides):
            raise ValueError(f"head c_mults {list(c_mults)} and strides {list(strides)} must have the same length")
        widths = [channels * m for m in c_mults]
        self.stem = nn.Conv1d(in_channels, widths[0], 7, padding=3)
        stages = []
        for i, (w, s) in enumerate(zip(widths, strides)):
            nxt = widths[i + 1] if i + 1 < len(widths) else w
            stages.append(nn.Sequential(*[ConvNeXtBlock1d(w) for _ in range(blocks_per_stage)], _Down(w, nxt, s)))
        self.stages = nn.Sequential(*stages)
        self.out_norm = _ChannelLayerNorm(widths[-1])
        self.out = nn.Conv1d(widths[-1], latent_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.out_norm(self.stages(self.stem(x))))


def group_count(channels: int, max_groups: int = 32) -> int:
    """GroupNorm groups for ``channels``: 32, or the largest divisor of channels that is at most 32."""
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


class ConvHead(nn.Module):
    """Plain conv head: ``num_layers`` x [Conv1d(k4, s2, p1) + GroupNorm + SiLU], then Conv1d(-> latent_dim, k1).
    (B, in_channels, L) -> (B, latent_dim, ceil(L / 2^num_layers))."""

    def __init__(self, in_channels: int, channels: int = 128, latent_dim: int = 1, num_layers: int = 4):
        super().__init__()
        layers = []
        cin = in_channels
        for _ in range(num_layers):
            layers += [nn.Conv1d(cin, channels, 4, stride=2, padding=1),
                       nn.GroupNorm(group_count(channels), channels), nn.SiLU()]
            cin = channels
        self.layers = nn.ModuleList(layers)
        self.out = nn.Conv1d(channels, latent_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if isinstance(layer, nn.Conv1d):
                x = _pad_to_multiple(x, 2)  # k4/s2/p1 halves an even length exactly: L -> ceil(L / 2)
            x = layer(x)
        return self.out(x)


class ARCDiscriminator(nn.Module):
    """ARC's discriminator: DiT trunk to ``exit_layer_ix`` (inclusive), then a conv head.

    trunk: a DiT module (FastDiT, or the reference for parity tests); it is taken over and truncated in
    place (pass a copy). exit_layer_ix: 0 <= k < depth, the block whose output feeds the head.
    head: ``"convnext"`` | ``"conv"``; head_channels / head_c_mults / head_strides / head_blocks configure it.

    forward(x (B, C, T), t (B,), cross_attn_cond=(B, S, D_c), cross_attn_cond_mask=(B, S), global_embed=(B, G))
    -> score map (B, 1, T') in the head's compute dtype (fp32 params; bf16/fp16 under autocast).
    """

    def __init__(self, trunk: nn.Module, exit_layer_ix: int, head: str = "convnext", head_channels: int = 128,
                 head_c_mults=(1, 2, 4, 8), head_strides=(2, 4, 8, 8), head_blocks: int = 1):
        super().__init__()
        depth = len(trunk.transformer.layers)
        if not isinstance(exit_layer_ix, int) or not 0 <= exit_layer_ix < depth:
            raise ValueError(f"exit_layer_ix must be an int in [0, {depth - 1}] for a {depth}-block DiT, "
                             f"got {exit_layer_ix!r}")
        if head not in HEADS:
            raise ValueError(f"unknown discriminator head {head!r}; choose from {', '.join(HEADS)}")
        trunk.transformer.layers = nn.ModuleList(list(trunk.transformer.layers)[: exit_layer_ix + 1])
        # Unused after the exit: dropping them keeps every parameter on the gradient path (DDP, optimiser).
        trunk.transformer.project_out = nn.Identity()
        trunk.postprocess_conv = nn.Identity()
        self.trunk = trunk
        self.exit_layer_ix = exit_layer_ix
        self.head_type = head
        embed_dim = trunk.transformer.dim
        if head == "convnext":
            self.head = ConvNeXtHead(embed_dim, head_channels, tuple(head_c_mults), tuple(head_strides), 1,
                                     head_blocks)
        else:
            self.head = ConvHead(embed_dim, head_channels, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cross_attn_cond=None, cross_attn_cond_mask=None,
                global_embed=None) -> torch.Tensor:
        h = self.trunk(x, t, cross_attn_cond=cross_attn_cond, cross_attn_cond_mask=cross_attn_cond_mask,
                       global_embed=global_embed, exit_layer_ix=self.exit_layer_ix)  # (B, T + P, E)
        return self.head(h.transpose(1, 2))

    def score_length(self, frames: int) -> int:
        """T' for a latent of ``frames`` frames (with the trunk's prepended tokens)."""
        tokens = frames + (1 if getattr(self.trunk, "global_cond_type", "prepend") == "prepend" else 0)
        if self.head_type == "convnext":
            for s in self.head.stages:
                tokens = math.ceil(tokens / s[-1].stride)
            return tokens
        for _ in range(sum(isinstance(m, nn.Conv1d) for m in self.head.layers)):
            tokens = math.ceil(tokens / 2)
        return tokens
