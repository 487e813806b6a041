"""The int8 DiT: ``Int8Linear`` and the export format ``arc-fast convert --int8`` writes.

Format: ``<linear>.weight`` int8 (out, in) + ``<linear>.weight_scale`` fp32 (out,), symmetric per output
channel, for every Linear inside the DiT's transformer blocks. ``quantize_dit_state_dict`` writes it,
``apply_int8_layout`` makes a built DiT take it (``arc_fast.loading.materialize``).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .loader import PREFIXES, CheckpointError

INT8_SCALE = ".weight_scale"


def _fbgemm_ok() -> bool:
    try:
        return "fbgemm" in torch.backends.quantized.supported_engines or \
            "x86" in torch.backends.quantized.supported_engines
    except Exception:  # noqa: BLE001
        return False


class Int8Linear(nn.Module):
    """Linear layer with int8 weights: ``weight`` int8 (out, in), ``weight_scale`` (out,), ``bias`` (out,).

    W = weight * weight_scale[:, None] (symmetric, per output channel). forward(x (..., in)) -> (..., out) in
    x's dtype. On a CPU with the fbgemm/x86 quantized engine the product is a dynamic-int8 GEMM (activations
    quantized per call, fp32 accumulation of the int32 result); elsewhere the weight is dequantized."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self._packed = None
        self._packed_key = None

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

    def _packed_weight(self):
        key = (self.weight.data_ptr(), self.weight._version, self.weight_scale._version,
               None if self.bias is None else (self.bias.data_ptr(), self.bias._version))
        if self._packed_key != key:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's quantized-tensor creation is marked deprecated
                scale = self.weight_scale.detach().double()
                qw = torch._make_per_channel_quantized_tensor(self.weight.detach(), scale,
                                                              torch.zeros_like(scale, dtype=torch.long), 0)
                bias = None if self.bias is None else self.bias.detach().float()
                self._packed = torch.ops.quantized.linear_prepack(qw, bias)
            self._packed_key = key
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and not torch.is_grad_enabled() and _fbgemm_ok():
            try:
                shape = x.shape
                y = torch.ops.quantized.linear_dynamic(x.reshape(-1, shape[-1]).float().contiguous(),
                                                       self._packed_weight(), True)
                return y.reshape(*shape[:-1], self.out_features).to(x.dtype)
            except (RuntimeError, AttributeError, NotImplementedError):
                pass  # quantized engine unusable here: dequantize instead
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


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
