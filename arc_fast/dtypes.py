"""Precision names: "fp32" / "bf16" / "fp16" (and "int8" for the CPU DiT, "auto" for the automatic choice)."""
from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "half": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def parse_dtype(value, allow_int8: bool = False) -> torch.dtype | str | None:
    """'fp32'|'fp16'|'bf16' (or a torch.dtype, or None) -> torch.dtype | None; 'int8' -> "int8" where
    ``allow_int8`` (the DiT on the CPU); 'auto' -> None (the caller's automatic choice)."""
    if value is None or isinstance(value, torch.dtype):
        return value
    key = str(value).lower()
    if key == "auto":
        return None
    if allow_int8 and key == "int8":
        return "int8"
    if key not in DTYPES:
        raise ValueError(f"dtype must be one of auto, fp32, fp16, bf16{', int8' if allow_int8 else ''}, got {value!r}")
    return DTYPES[key]


def dtype_name(dtype) -> str:
    """torch.dtype (or "int8") -> "fp32" | "bf16" | "fp16" | "int8"."""
    return dtype if isinstance(dtype, str) else {torch.float32: "fp32", torch.float16: "fp16",
                                                 torch.bfloat16: "bf16", torch.int8: "int8"}.get(dtype, str(dtype))
