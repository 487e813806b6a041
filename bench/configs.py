"""Benchmark shapes, derived from the model configs (``arc_fast.configs``) and a clip length.

Nothing is hard-coded in the suites: they ask this module for the DiT and decoder dimensions of SAO Small,
the token count of a clip, and the per-layer decoder convolution shapes.

* GPU: SAO Small at its full window (524288 samples = 256 latent frames, 11.9 s at 44.1 kHz).
* CPU: the e2e suite at the full window too (``CPU_E2E_FRAMES``: what a CPU user generates); the kernel and
  decoder suites at a reduced length (``CPU_FRAMES`` latent frames) because the 2-core machine needs minutes
  per full-length repeat of each; every row states its length.
* ``--quick``: tiny shapes (a smoke run, also used by the tests; the numbers mean nothing).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from arc_fast.configs import get_config

HOP = 2048
SAMPLE_RATE = 44100
FULL_FRAMES = 256        # SAO Small sample_size 524288 / 2048
CPU_FRAMES = 22          # ~1.0 s of audio (kernel and decoder suites on the CPU)
CPU_E2E_FRAMES = FULL_FRAMES   # the CPU e2e headline: the full 11.9 s window
QUICK_FRAMES = 2
PROMPT_TOKENS = 64       # T5 max_length in SAO Small; + 1 seconds_total token = 65 cross-attention tokens


@dataclass(frozen=True)
class DiTDims:
    dim: int
    heads: int
    head_dim: int
    rot_dim: int
    depth: int
    ff_inner: int
    cond_tokens: int
    cond_dim: int
    io_channels: int


def sao_config(prompt: str = "hash_text") -> dict:
    """SAO Small's model config. ``prompt="hash_text"`` swaps the T5 prompt conditioner (not available offline)
    for arc-fast's hash-text encoder with the same output shape: (B, 64, 768) tokens + mask."""
    cfg = get_config("sao_small")
    if prompt == "hash_text":
        cfg["model"]["conditioning"]["configs"][0] = {
            "id": "prompt", "type": "hash_text", "config": {"max_length": PROMPT_TOKENS}}
    return cfg


def tiny_config() -> dict:
    """The bundled TINY config (SAO's layout scaled down): the --quick stand-in for SAO Small."""
    return copy.deepcopy(get_config("tiny"))


def dit_dims(cfg: dict) -> DiTDims:
    d = cfg["model"]["diffusion"]["config"]
    dim, heads = d["embed_dim"], d["num_heads"]
    head_dim = dim // heads
    cond = cfg["model"]["conditioning"]["configs"]
    prompt_len = next((c["config"].get("max_length", 32) for c in cond if c["id"] == "prompt"), 0)
    n_number = sum(1 for c in cond if c["type"] == "number" and c["id"] in cfg["model"]["diffusion"]
                   .get("cross_attention_cond_ids", []))
    return DiTDims(dim=dim, heads=heads, head_dim=head_dim, rot_dim=max(head_dim // 2, 32), depth=d["depth"],
                   ff_inner=4 * dim, cond_tokens=prompt_len + n_number, cond_dim=d["cond_token_dim"],
                   io_channels=d["io_channels"])


def dit_tokens(frames: int, cfg: dict) -> int:
    """Sequence length of the DiT trunk: latent frames + 1 prepended global token (SAO's 'prepend')."""
    d = cfg["model"]["diffusion"]["config"]
    return frames + (1 if d.get("global_cond_type", "prepend") == "prepend" and d.get("global_cond_dim", 0) else 0)


def decoder_config(cfg: dict) -> dict:
    return dict(cfg["model"]["pretransform"]["config"]["decoder"]["config"])


@dataclass(frozen=True)
class ConvCase:
    """One fused decoder convolution: snake + conv1d (kind 'conv', K, dilation, residual) or snake +
    transposed conv (kind 'up', stride)."""
    name: str
    kind: str
    cin: int
    cout: int
    T: int            # input length
    K: int
    dilation: int = 1
    stride: int = 1
    residual: bool = False

    def label(self, batch: int) -> str:
        if self.kind == "up":
            extra = f"s{self.stride}"
        else:
            extra = f"k{self.K} d{self.dilation}" + (" +res" if self.residual else "")
        return f"B{batch} {self.cin}->{self.cout} T{self.T} {extra}"


def decoder_stages(dec: dict, frames: int) -> list[tuple[int, int, int, int]]:
    """(cin, cout, stride, T_in) of each decoder block for ``frames`` latent frames (Oobleck layout)."""
    ch, mults, strides = dec["channels"], [1] + list(dec["c_mults"]), list(dec["strides"])
    out, t = [], frames
    for i in range(len(mults) - 1, 0, -1):
        s = strides[i - 1]
        out.append((mults[i] * ch, mults[i - 1] * ch, s, t))
        t *= s
    return out


def conv_cases(dec: dict, frames: int) -> list[ConvCase]:
    """Representative fused convolutions of the decoder at ``frames`` latent frames: the first and last
    upsampling blocks' transposed convs, and residual-unit convs at the widest and the longest stage."""
    st = decoder_stages(dec, frames)
    first, last, mid = st[0], st[-1], st[len(st) // 2]
    cases = [
        ConvCase("up_first", "up", first[0], first[1], first[3], 2 * first[2], stride=first[2]),
        ConvCase("res_k7_wide", "conv", first[1], first[1], first[3] * first[2], 7, dilation=1),
        ConvCase("res_k7_mid", "conv", mid[1], mid[1], mid[3] * mid[2], 7, dilation=3),
        ConvCase("up_last", "up", last[0], last[1], last[3], 2 * last[2], stride=last[2]),
        ConvCase("res_k7_long", "conv", last[1], last[1], last[3] * last[2], 7, dilation=9),
        ConvCase("res_k1_long", "conv", last[1], last[1], last[3] * last[2], 1, residual=True),
    ]
    return cases


def frames_for(device: str, quick: bool) -> int:
    if quick:
        return QUICK_FRAMES
    return FULL_FRAMES if device == "cuda" else CPU_FRAMES


def seconds_of(frames: int) -> float:
    return frames * HOP / SAMPLE_RATE
