"""The int8 DiT: ``Int8Linear`` and the export format ``arc-fast convert --int8`` writes.

Format: ``<linear>.weight`` int8 (out, in) + ``<linear>.weight_scale`` fp32 (out,), symmetric per output
channel, for every Linear inside the DiT's transformer blocks. ``quantize_dit_state_dict`` writes it,
``apply_int8_layout`` makes a built DiT take it (``arc_fast.loading.materialize``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .loader import PREFIXES, CheckpointError

INT8_SCALE = ".weight_scale"


class Int8Linear(nn.Module):
    """Linear layer with int8 weights: ``weight`` int8 (out, in), ``weight_scale`` (out,), ``bias`` (out,).

    W = weight * weight_scale[:, None] (symmetric, per output channel). forward(x (..., in)) -> (..., out) in
    x's dtype, with the dequantised weight: this is the on-disk int8 format (``arc-fast convert --int8``); the
    int8 compute path is torchao's dynamic int8 GEMM (``arc_fast.cpu.quantize_dit_int8``)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @staticmethod
    def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """fp weight (out, in) -> (int8 weight, fp32 scale (out,)), round to nearest, |q| <= 127."""
        w = weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
        q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        return q, scale

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        m = cls(linear.in_features, linear.out_features, linear.bias is not None)
        q, s = cls.quantize(linear.weight)
        m.weight.copy_(q)
        m.weight_scale.copy_(s)
        if linear.bias is not None:
            m.bias.data.copy_(linear.bias.detach().float())
        return m

    def dequantized(self, dtype=torch.float32) -> torch.Tensor:
        return self.weight.to(dtype) * self.weight_scale.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The exact dequantised weight: this module is the int8 *file* format. Fast int8 compute is torchao's
        # (``load_pipeline`` restores such layers to nn.Linear and ``arc_fast.cpu.quantize_dit_int8`` re-quantises).
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def dequantize_int8_layers(dit: nn.Module) -> int:
    """Replace every ``Int8Linear`` of ``dit`` in place by an ``nn.Linear`` holding its exact float weights
    (``weight * weight_scale``, fp32); returns how many were replaced. The int8 compute path is torchao's
    (``arc_fast.cpu.quantize_dit_int8``), which needs plain Linear layers."""
    n = 0
    for name, mod in list(dit.named_modules()):
        if not isinstance(mod, Int8Linear):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = dit.get_submodule(parent_name) if parent_name else dit
        lin = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None, device=mod.weight.device)
        with torch.no_grad():
            lin.weight.copy_(mod.dequantized(torch.float32))
            if mod.bias is not None:
                lin.bias.copy_(mod.bias.float())
        lin.requires_grad_(False)
        setattr(parent, child, lin)
        n += 1
    return n


def int8_linear_names(dit: nn.Module) -> list[str]:
    """The DiT's Linear layers that the int8 export quantizes: every Linear inside the transformer blocks."""
    return [n for n, m in dit.named_modules() if n.startswith("transformer.layers.") and isinstance(m, nn.Linear)]


def quantize_dit_state_dict(dit_meta: nn.Module, sd: dict, prefix: str = PREFIXES["dit"]) -> tuple[dict, int]:
    """Replace the block Linear weights of a full-layout state dict by int8 + ``weight_scale``; returns
    (new state dict, number of layers quantized). ``dit_meta``: a (meta) DiT of the same config."""
    out = dict(sd)
    names = int8_linear_names(dit_meta)
    for n in names:
        key = f"{prefix}{n}.weight"
        if key not in out:
            raise CheckpointError(f"int8 export: {key} is missing")
        if out[key].dtype == torch.int8:
            continue
        q, s = Int8Linear.quantize(out[key])
        out[key] = q
        out[f"{prefix}{n}{INT8_SCALE}"] = s
    return out, len(names)


def apply_int8_layout(dit: nn.Module, dit_sd: dict) -> int:
    """Swap the Linear modules whose checkpoint weights are int8 (``dit_sd``: DiT keys, no prefix) for
    ``Int8Linear`` (on the device of the module, meta included). Returns how many were swapped."""
    n = 0
    for name in list(dict(dit.named_modules())):
        w = dit_sd.get(f"{name}.weight")
        mod = dit.get_submodule(name) if name else dit
        if w is None or w.dtype != torch.int8 or not isinstance(mod, nn.Linear):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = dit.get_submodule(parent_name) if parent_name else dit
        with torch.device(mod.weight.device):
            setattr(parent, child, Int8Linear(mod.in_features, mod.out_features, mod.bias is not None))
        n += 1
    return n
