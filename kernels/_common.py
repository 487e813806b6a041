"""Helpers shared by the Triton kernel files: interpreter workarounds, device checks and launch plumbing.

Nothing op-specific lives here. Each kernel file still declares its own capabilities (dtypes, limits,
tolerances) and its own shape helpers; this module only holds what was the same, line for line, in
several of them.

* ``rne_bf16`` / ``rne_flag``: under ``TRITON_INTERPRET=1`` (Triton 3.9, measured) an fp32 -> bf16 cast
  truncates, while the GPU rounds to nearest even. Kernels round bf16 outputs themselves under the
  interpreter so that CPU tests see GPU numerics; on the GPU the flag is False and the code vanishes.
* ``device_reasons``, ``raise_if``: the device part of ``not_supported_reasons`` and the
  reasons -> TypeError/ValueError rule of the launchers.
* ``launch``: one fixed small config under the interpreter, the autotuned kernel on the GPU;
  ``gpu_configs_under_interpreter`` makes the interpreter run a chosen GPU config instead (tests).
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
import triton.language as tl


def interpreter_active() -> bool:
    """True when ``TRITON_INTERPRET=1``: Triton kernels then run on CPU tensors in Python.

    Defined here, not imported from ``arc_fast.ops``: kernel files import nothing from the layers above them
    (docs/architecture.md). The dispatch layer asks the same question without importing triton."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


__all__ = ["MAX_GRID_YZ", "as_3d", "capability", "device_reasons", "interpreter_active", "launch", "raise_if",
           "rne_bf16", "rne_flag"]

MAX_GRID_YZ = 65535  # CUDA's limit on grid axes 1 and 2


# ---------------------------------------------------------------------------------------------------------
# Device code
# ---------------------------------------------------------------------------------------------------------
@triton.jit
def rne_bf16(x, ENABLED: tl.constexpr):
    """Round fp32 to the nearest-even bf16 value (kept in fp32) when ENABLED.

    The Triton interpreter casts fp32 -> bf16 by truncation (measured on 3.9), the GPU rounds to nearest
    even. Rounding first makes the interpreter's truncating cast exact, so CPU tests see GPU numerics.
    ENABLED is set only under the interpreter for bf16 outputs (``rne_flag``); on the GPU this compiles
    to nothing.
    """
    if ENABLED:
        bits = x.to(tl.uint32, bitcast=True)
        x = (((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16).to(tl.float32, bitcast=True)
    return x


def rne_flag(dtype: torch.dtype) -> bool:
    """The ``ENABLED`` flag of ``rne_bf16`` for outputs of ``dtype``: bf16 under the interpreter only."""
    return dtype == torch.bfloat16 and interpreter_active()


# ---------------------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def capability(index: int | None) -> tuple[int, int]:
    """CUDA compute capability of device ``index`` (cached: the query is slow next to a small launch)."""
    return torch.cuda.get_device_capability(index)


def device_reasons(t: torch.Tensor, name: str, min_capability: tuple[int, int]) -> list[str]:
    """Why the Triton kernels cannot run on ``t``'s device ([] when they can): CUDA needs
    ``min_capability``, CPU needs the interpreter, other devices are unsupported."""
    if t.device.type == "cpu":
        return [] if interpreter_active() else [f"{name}: CPU tensors need TRITON_INTERPRET=1 for the Triton kernel"]
    if t.device.type == "cuda":
        cap = capability(t.device.index)
        return [] if cap >= min_capability else [f"{name}: compute capability {cap} < {min_capability}"]
    return [f"{name}: device {t.device} is not supported (cuda, or cpu under TRITON_INTERPRET=1)"]


def raise_if(reasons: list[str], what: str) -> None:
    """Raise the ``not_supported_reasons`` list as one error prefixed by ``what``: TypeError when a reason
    is about a dtype or a non-tensor argument, else ValueError. Does nothing for an empty list."""
    if reasons:
        kind = TypeError if any("dtype" in r or "must be a torch.Tensor" in r for r in reasons) else ValueError
        raise kind(f"{what}: " + "; ".join(reasons))


# ---------------------------------------------------------------------------------------------------------
# Shapes and launches
# ---------------------------------------------------------------------------------------------------------
def as_3d(t: torch.Tensor) -> torch.Tensor:
    """View as (B, N, C): 3-D as is, other ranks as (1, N, C) (a copy only if no view exists)."""
    return t if t.dim() == 3 else t.reshape(1, -1, t.shape[-1])


def autotune_enabled() -> bool:
    """False when ``ARC_FAST_AUTOTUNE=0``: GPU launches then use each kernel's first config, untimed."""
    return os.environ.get("ARC_FAST_AUTOTUNE", "1") != "0"


_interp_gpu_config: int | None = None


def interpreter_gpu_config() -> int | None:
    """The GPU config index ``gpu_configs_under_interpreter`` set, else None (the small interpreter blocks)."""
    return _interp_gpu_config


@contextlib.contextmanager
def gpu_configs_under_interpreter(index: int):
    """Tests: under ``TRITON_INTERPRET=1``, run every kernel with the block sizes of its GPU autotune config
    ``index`` (modulo the length of each kernel's list) instead of the small interpreter blocks, so that each
    config the GPU autotuner may pick is checked on the CPU (tile-size-dependent index and mask arithmetic)."""
    global _interp_gpu_config
    prev, _interp_gpu_config = _interp_gpu_config, int(index)
    try:
        yield
    finally:
        _interp_gpu_config = prev


def pick_config(configs: list, index: int):
    """``configs[index % len(configs)]``: one autotune config by index, whatever the list's length."""
    return configs[index % len(configs)]


def pinned_config(configs: list):
    """The config a launch uses instead of autotuning, or None. Under the interpreter: the one
    ``gpu_configs_under_interpreter`` chose (None: the caller's small interpreter blocks). On the GPU with
    ``ARC_FAST_AUTOTUNE=0``: the first, never benchmarked (one compile per kernel variant instead of one per
    config; the decoder alone has ~15 autotune keys), which is what short GPU runs need. Else None (autotune)."""
    if interpreter_active():
        return None if _interp_gpu_config is None else pick_config(configs, _interp_gpu_config)
    return None if autotune_enabled() else configs[0]


def launch(kernel, tuned, grid, args: tuple, fixed: dict, *, fixed_warps: int = 1,
           device: torch.device | None = None, **meta) -> None:
    """Launch ``kernel(*args, **meta)`` with its block sizes chosen by the environment.

    Under the interpreter: the plain ``kernel`` with the ``fixed`` block sizes and ``fixed_warps`` (it pays
    per operation, not per element, and autotuning would only multiply the run time). On the GPU: its
    autotuned twin ``tuned``, which supplies the block sizes and warps itself (with ``ARC_FAST_AUTOTUNE=0``:
    ``kernel`` with the first of ``tuned.configs``, never benchmarked); inside
    ``torch.cuda.device(device)`` (default: the first tensor argument's device; Triton launches on the
    current device).

    grid: a function of the meta-parameters (a dict holding the block sizes) returning the grid tuple.
    """
    cfg = pinned_config(tuned.configs)
    if interpreter_active():
        blocks = fixed if cfg is None else cfg.kwargs
        kernel[grid(blocks)](*args, **blocks, **meta, num_warps=fixed_warps)
        return
    if cfg is not None:
        pinned = {**cfg.kwargs, **meta, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
        call = lambda: kernel[grid(cfg.kwargs)](*args, **pinned)  # noqa: E731
    else:
        call = lambda: tuned[grid](*args, **meta)  # noqa: E731
    if device is None:
        # Triton launches on the *current* device: follow the tensors, so a non-current GPU works too.
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
    if device is None or device.type != "cuda":
        call()
    else:
        with torch.cuda.device(device):
            call()
