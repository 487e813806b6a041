"""CUDA C++ backend of the fused SnakeBeta + convolution ops (the ``cuda`` backend of the decoder ops).

Two runtimes run the same kernels of ``csrc/snake_conv.cu``; the first that works is used, looked up lazily
on the first call (importing this module never fails, on any machine):

1. ``ext``: the compiled extension ``arc_fast._C`` (built by setup.py when a CUDA torch and nvcc are
   present); its ops are ``torch.ops.arc_fast_C.snake_conv1d`` / ``snake_conv_transpose1d``
   (``TORCH_LIBRARY(arc_fast_C, m)`` in csrc/bindings.cpp; their fakes are registered here).
2. ``cupy``: CuPy compiles ``csrc/snake_conv.cu`` with NVRTC (no build step) and launches its
   ``extern "C"`` kernels on torch's raw pointers, on torch's current CUDA stream.

``ARC_FAST_CUDA_RUNTIME=ext|cupy`` restricts the lookup to one runtime.

Ops (all tensors contiguous, on one CUDA device, of one dtype among fp32/fp16/bf16; fp32 accumulation):

* ``snake_conv1d(x, alpha, beta, weight, bias=None, dilation=1, residual=None, apply_snake=True)``:
  ``conv1d(snake_beta(x), weight, bias, padding=dilation*(K-1)//2, dilation=dilation) + residual``
* ``snake_conv_transpose1d(x, alpha, beta, weight, bias, stride, apply_snake=True)``:
  ``conv_transpose1d(snake_beta(x), weight, bias, stride=stride, padding=ceil(stride/2))``

with ``snake_beta(x) = x + sin(exp(alpha) x)^2 / (exp(beta) + 1e-9)`` per channel (``arc_fast.reference``).
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import re
import sys
import threading
from pathlib import Path

import torch

__all__ = [
    "available", "unavailable_reason", "active_runtime", "snake_conv1d", "snake_conv_transpose1d",
    "snake_conv1d_not_supported_reasons", "snake_conv_transpose1d_not_supported_reasons",
    "conv1d_out_shape", "conv_transpose1d_out_shape", "csrc_dir", "nvrtc_source", "tile_config",
    "SUPPORTED_DTYPES",
]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# dtype -> (code of csrc/snake_conv.h's arc_snake_dtype, suffix of the extern "C" kernel names)
_DTYPES = {torch.float32: (0, "f32"), torch.float16: (1, "f16"), torch.bfloat16: (2, "bf16")}
RUNTIMES = ("ext", "cupy")
# NVRTC flags of the CuPy runtime (and of the CPU-side NVRTC compile test). No fast math: sinf/expf stay
# accurate to match the fp32 reference to 1e-5.
NVRTC_OPTIONS = ("--std=c++17",)
_KERNELS = ("arc_snake_conv1d", "arc_snake_conv_transpose1d")


# ----------------------------------------------------------------------------------------- sources
@functools.lru_cache(maxsize=None)
def csrc_dir() -> Path | None:
    """The directory holding ``snake_conv.cu`` and ``snake_math.h``: the installed package data
    (``arc_fast/csrc``) or the source tree's ``csrc/`` (editable installs, checkouts); None if neither."""
    here = Path(__file__).resolve().parent
    for cand in (here / "csrc", here.parent / "csrc"):
        if (cand / "snake_conv.cu").is_file() and (cand / "snake_math.h").is_file():
            return cand
    return None


@functools.lru_cache(maxsize=None)
def nvrtc_source() -> str:
    """``snake_conv.cu`` with ``snake_math.h`` pasted in place of its #include, as given to NVRTC.

    Pasting (rather than ``-I``) makes the program text cover the header, so CuPy's compile cache, keyed
    on the text, never serves kernels built from an older header.
    """
    d = csrc_dir()
    if d is None:
        raise FileNotFoundError("csrc/snake_conv.cu not found next to arc_fast (package data) or in the source tree")
    header = (d / "snake_math.h").read_text()
    src = (d / "snake_conv.cu").read_text()
    pasted, n = re.subn(r'^#include "snake_math\.h"\s*$', lambda _: header, src, count=1, flags=re.M)
    if n != 1:
        raise RuntimeError(f"{d / 'snake_conv.cu'}: expected one '#include \"snake_math.h\"' line")
    return pasted


@functools.lru_cache(maxsize=None)
def tile_config() -> dict[str, int]:
    """The ``ARC_SC_*`` tiling constants of ``snake_math.h`` (names without the prefix), e.g. ``T_TILE``.

    Read from the header so that the CuPy launcher plans exactly as the C++ launchers do.
    """
    d = csrc_dir()
    if d is None:
        raise FileNotFoundError("csrc/snake_math.h not found")
    text = (d / "snake_math.h").read_text()
    cfg = {m.group(1): int(m.group(2)) for m in re.finditer(r"^#define ARC_SC_(\w+) (\d+)\b", text, flags=re.M)}
    cfg["TX"] = cfg["T_TILE"] // cfg["TN"]
    return cfg


# -------------------------------------------------------------------------------- launch planning
# Python mirror of snake_math.h's launch configuration (tests/test_csrc.py compares the two).
def _x_width_conv1d(K: int, dilation: int) -> int:
    return tile_config()["T_TILE"] + (K - 1) * dilation


def _x_width_convT(K: int, stride: int) -> int:
    taps = -(-K // stride)
    return (tile_config()["T_TILE"] - 1) // stride + 2 + taps - 1


def _plan(Cin: int, K: int, x_width: int) -> tuple[int, int]:
    """(ci_tile, shared-memory bytes) for one block, as ``pick_ci_tile`` / ``smem_bytes``."""
    cfg = tile_config()
    per_ci = (K * cfg["COUT_TILE"] + x_width + 2) * 4
    ci = min(cfg["SMEM_BUDGET"] // per_ci, cfg["CI_TILE_MAX"], Cin)
    return ci, ci * per_ci


def plan_launch(op: str, Cin: int, K: int, dilation_or_stride: int) -> tuple[int, int, int]:
    """(x_width, ci_tile, smem_bytes) of ``op`` in ``("conv1d", "convT")``; mirrors ``snake_math.h``."""
    xw = _x_width_conv1d(K, dilation_or_stride) if op == "conv1d" else _x_width_convT(K, dilation_or_stride)
    ci, smem = _plan(Cin, K, xw)
    return xw, ci, smem


# -------------------------------------------------------------------------------------- shapes
def conv1d_out_shape(x: torch.Tensor, weight: torch.Tensor) -> tuple[int, int, int]:
    """(B, Cout, T) of ``snake_conv1d``: 'same' padding keeps the length."""
    return (x.shape[0], weight.shape[0], x.shape[2])


def conv_transpose1d_out_length(T: int, stride: int, K: int) -> int:
    """(T - 1) * stride - 2 * ceil(stride / 2) + K: T * stride for K = 2 * stride and even strides."""
    return (T - 1) * stride - 2 * ((stride + 1) // 2) + K


def conv_transpose1d_out_shape(x: torch.Tensor, weight: torch.Tensor, stride: int) -> tuple[int, int, int]:
    """(B, Cout, Tout) of ``snake_conv_transpose1d``; weight is (Cin, Cout, K)."""
    return (x.shape[0], weight.shape[1], conv_transpose1d_out_length(x.shape[2], stride, weight.shape[2]))


# ---------------------------------------------------------------------------------------- checks
def _tensor_reasons(name: str, t, x: torch.Tensor, shape: tuple[int, ...]) -> list[str]:
    if not isinstance(t, torch.Tensor):
        return [f"{name}: expected a torch.Tensor, got {type(t).__name__}"]
    out = []
    if t.device != x.device:
        out.append(f"{name}: expected device {x.device} (like x), got {t.device}")
    if t.dtype != x.dtype:
        out.append(f"{name}: expected dtype {x.dtype} (like x), got {t.dtype}")
    if tuple(t.shape) != shape:
        out.append(f"{name}: expected shape {shape}, got {tuple(t.shape)}")
    elif not t.is_contiguous():
        out.append(f"{name}: expected a contiguous tensor, got strides {t.stride()}")
    return out


def _x_reasons(x) -> list[str]:
    """Reasons about x; the shape checks of the other arguments need x to be a 3-D tensor."""
    if not isinstance(x, torch.Tensor):
        return [f"x: expected a torch.Tensor, got {type(x).__name__}"]
    out = []
    if x.device.type != "cuda":
        out.append(f"x: expected a CUDA tensor, got device {x.device}")
    if x.dtype not in SUPPORTED_DTYPES:
        out.append(f"x: expected dtype float32, float16 or bfloat16, got {x.dtype}")
    if x.dim() != 3:
        out.append(f"x: expected shape (B, Cin, T), got {tuple(x.shape)}")
    elif x.shape[1] < 1:
        out.append(f"x: expected at least one input channel, got shape {tuple(x.shape)}")
    elif not x.is_contiguous():
        out.append(f"x: expected a contiguous tensor, got strides {x.stride()}")
    return out


def _max_window_reason(op: str, Cin: int, K: int, ds: int) -> list[str]:
    _, ci, _ = plan_launch(op, max(Cin, 1), K, ds)
    if ci < 1:
        return [f"weight: kernel size {K} with {'dilation' if op == 'conv1d' else 'stride'} {ds} needs more "
                f"shared memory per input channel than the {tile_config()['SMEM_BUDGET']}-byte budget"]
    return []


def snake_conv1d_not_supported_reasons(x, alpha, beta, weight, bias=None, dilation=1, residual=None,
                                       apply_snake=True) -> list[str]:
    """Every reason why ``snake_conv1d`` cannot run these arguments on the CUDA backend ([] if it can)."""
    out = _x_reasons(x)
    if not isinstance(weight, torch.Tensor):
        out.append(f"weight: expected a torch.Tensor, got {type(weight).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or not isinstance(weight, torch.Tensor):
        return out
    B, Cin, T = x.shape
    if weight.dim() != 3:
        return out + [f"weight: expected shape (Cout, {Cin}, K), got {tuple(weight.shape)}"]
    Cout, _, K = weight.shape
    out += _tensor_reasons("weight", weight, x, (Cout, Cin, K))
    if K % 2 == 0:
        out.append(f"weight: kernel size must be odd for 'same' padding, got K={K}")
    if not isinstance(dilation, int) or isinstance(dilation, bool) or dilation < 1:
        out.append(f"dilation: expected a positive int, got {dilation!r}")
    elif K % 2 == 1:
        out += _max_window_reason("conv1d", Cin, K, dilation)
    if apply_snake:
        out += _tensor_reasons("alpha", alpha, x, (Cin,)) + _tensor_reasons("beta", beta, x, (Cin,))
    if bias is not None:
        out += _tensor_reasons("bias", bias, x, (Cout,))
    if residual is not None:
        out += _tensor_reasons("residual", residual, x, (B, Cout, T))
    if Cout > 65535 * tile_config()["COUT_TILE"] or B > 65535:
        out.append(f"x/weight: batch {B} or Cout {Cout} exceeds the CUDA grid limits")
    return out


def snake_conv_transpose1d_not_supported_reasons(x, alpha, beta, weight, bias, stride, apply_snake=True) -> list[str]:
    """Every reason why ``snake_conv_transpose1d`` cannot run these arguments on the CUDA backend."""
    out = _x_reasons(x)
    if not isinstance(weight, torch.Tensor):
        out.append(f"weight: expected a torch.Tensor, got {type(weight).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or not isinstance(weight, torch.Tensor):
        return out
    B, Cin, T = x.shape
    if T < 1:
        out.append(f"x: expected at least one time step, got shape {tuple(x.shape)}")
    if weight.dim() != 3 or weight.shape[0] != Cin:
        return out + [f"weight: expected shape ({Cin}, Cout, K), got {tuple(weight.shape)}"]
    _, Cout, K = weight.shape
    out += _tensor_reasons("weight", weight, x, (Cin, Cout, K))
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        out.append(f"stride: expected a positive int, got {stride!r}")
    else:
        if K < 1 or conv_transpose1d_out_length(max(T, 1), stride, K) < 1:
            out.append(f"weight: kernel size {K} with stride {stride} gives an empty output")
        else:
            out += _max_window_reason("convT", Cin, K, stride)
    if apply_snake:
        out += _tensor_reasons("alpha", alpha, x, (Cin,)) + _tensor_reasons("beta", beta, x, (Cin,))
    if bias is not None:
        out += _tensor_reasons("bias", bias, x, (Cout,))
    if Cout > 65535 * tile_config()["COUT_TILE"] or B > 65535:
        out.append(f"x/weight: batch {B} or Cout {Cout} exceeds the CUDA grid limits")
    return out


def _raise_for(reasons: list[str], op: str) -> None:
    if not reasons:
        return
    # TypeError when the only problems are types/dtypes; ValueError for any shape/device/value problem.
    kind = TypeError if all("dtype" in r or "torch.Tensor" in r for r in reasons) else ValueError
    raise kind(f"{op}: " + "; ".join(reasons))


# -------------------------------------------------------------------------------------- runtimes
class _ExtRuntime:
    name = "ext"

    def __init__(self):
        importlib.import_module("arc_fast._C")
        ns = torch.ops.arc_fast_C
        self.conv1d = ns.snake_conv1d
        self.convT = ns.snake_conv_transpose1d
        _register_ext_fakes()

    def snake_conv1d(self, x, alpha, beta, weight, bias, dilation, residual, apply_snake):
        return self.conv1d(x, alpha, beta, weight, bias, dilation, residual, apply_snake)

    def snake_conv_transpose1d(self, x, alpha, beta, weight, bias, stride, apply_snake):
        return self.convT(x, alpha, beta, weight, bias, stride, apply_snake)


_fakes_registered = False


def _register_ext_fakes() -> None:
    """Fakes of the C++ ops (shapes from the helpers above), so that torch.compile can trace them."""
    global _fakes_registered
    if _fakes_registered:
        return

    def conv1d_fake(x, alpha, beta, weight, bias=None, dilation=1, residual=None, apply_snake=True):
        return x.new_empty(conv1d_out_shape(x, weight))

    def convT_fake(x, alpha, beta, weight, bias, stride, apply_snake=True):
        return x.new_empty(conv_transpose1d_out_shape(x, weight, stride))

    for name, fn in (("arc_fast_C::snake_conv1d", conv1d_fake), ("arc_fast_C::snake_conv_transpose1d", convT_fake)):
        try:
            torch.library.register_fake(name)(fn)
        except RuntimeError as exc:  # already registered (module reloaded): keep the first
            if "already" not in str(exc):
                raise
    _fakes_registered = True


# arc_fast._C names this module in m.set_python_module: torch imports it when it needs the fakes of an op of an
# already loaded extension, so register them at import in that case (never importing _C from here).
if "arc_fast._C" in sys.modules:
    _register_ext_fakes()


class _CupyRuntime:
    name = "cupy"

    def __init__(self):
        import cupy  # noqa: F401 - ImportError is the reason when absent

        self.cupy = cupy
        self.module = cupy.RawModule(code=nvrtc_source(), options=NVRTC_OPTIONS)
        # get_function compiles (NVRTC) and loads now, so that a compile error becomes the reason here.
        self.kernels = {(k, sfx): self.module.get_function(f"{k}_{sfx}")
                        for k in _KERNELS for _, sfx in _DTYPES.values()}
        self._streams: dict[tuple[int, int], object] = {}

    def _stream(self, device: torch.device):
        ptr = torch.cuda.current_stream(device).cuda_stream
        if ptr == 0:  # torch's default (legacy) stream is CuPy's null stream
            return self.cupy.cuda.Stream.null
        key = (device.index, ptr)
        s = self._streams.get(key)
        if s is None:
            s = self._streams[key] = self.cupy.cuda.ExternalStream(ptr, device.index)
        return s

    def _launch(self, kernel: str, x: torch.Tensor, grid: tuple[int, int, int], smem: int, args: tuple) -> None:
        import numpy as np

        fn = self.kernels[(kernel, _DTYPES[x.dtype][1])]
        packed = tuple(np.uint64(a.data_ptr()) if isinstance(a, torch.Tensor) else
                       np.uint64(0) if a is None else a for a in args)
        with self.cupy.cuda.Device(x.device.index), self._stream(x.device):
            fn(grid, (tile_config()["THREADS"],), packed, shared_mem=smem)

    def snake_conv1d(self, x, alpha, beta, weight, bias, dilation, residual, apply_snake):
        import numpy as np

        B, Cin, T = x.shape
        Cout, _, K = weight.shape
        y = torch.empty((B, Cout, T), device=x.device, dtype=x.dtype)
        if y.numel() == 0:
            return y
        _, ci, smem = plan_launch("conv1d", Cin, K, dilation)
        cfg = tile_config()
        grid = (-(-T // cfg["T_TILE"]), -(-Cout // cfg["COUT_TILE"]), B)
        self._launch("arc_snake_conv1d", x, grid, smem, (
            x, alpha if apply_snake else None, beta if apply_snake else None, weight, bias, residual, y,
            np.int32(Cin), np.int32(Cout), np.int64(T), np.int32(K), np.int32(dilation), np.int32(ci),
            np.int32(1 if apply_snake else 0)))
        return y

    def snake_conv_transpose1d(self, x, alpha, beta, weight, bias, stride, apply_snake):
        import numpy as np

        B, Cin, T = x.shape
        _, Cout, K = weight.shape
        T_out = conv_transpose1d_out_length(T, stride, K)
        y = torch.empty((B, Cout, T_out), device=x.device, dtype=x.dtype)
        if y.numel() == 0:
            return y
        _, ci, smem = plan_launch("convT", Cin, K, stride)
        cfg = tile_config()
        grid = (-(-T_out // cfg["T_TILE"]), -(-Cout // cfg["COUT_TILE"]), B)
        self._launch("arc_snake_conv_transpose1d", x, grid, smem, (
            x, alpha, beta, weight, bias, y, np.int32(Cin), np.int32(Cout), np.int64(T), np.int64(T_out),
            np.int32(K), np.int32(stride), np.int32(ci), np.int32(1 if apply_snake else 0)))
        return y


_lock = threading.Lock()
_state: dict[str, object] = {}


def _runtime_order() -> tuple[str, ...]:
    pick = os.environ.get("ARC_FAST_CUDA_RUNTIME", "").strip().lower()
    if pick in RUNTIMES:
        return (pick,)
    return RUNTIMES


def _load(name: str):
    """The runtime ``name`` (cached), or raise RuntimeError saying why it cannot run."""
    with _lock:
        key = f"rt:{name}"
        if key in _state:
            rt = _state[key]
            if isinstance(rt, str):
                raise RuntimeError(rt)
            return rt
        try:
            if name == "ext":
                if importlib.util.find_spec("arc_fast._C") is None:
                    raise RuntimeError("arc_fast._C is not built (pip install --no-build-isolation . on a "
                                       "machine with nvcc and a CUDA torch)")
                rt = _ExtRuntime()
            else:
                if importlib.util.find_spec("cupy") is None:
                    raise RuntimeError("cupy is not installed (pip install 'arc-fast[gpu]' for CUDA 13, "
                                       "'arc-fast[gpu-cu12]' for CUDA 12)")
                rt = _CupyRuntime()
        except Exception as exc:  # noqa: BLE001 - any failure is a reason, never an import error
            msg = str(exc) if isinstance(exc, RuntimeError) else f"{type(exc).__name__}: {exc}"
            _state[key] = f"{name}: {msg}"
            raise RuntimeError(_state[key]) from None
        _state[key] = rt
        return rt


def _runtime(requested: str | None = None):
    names = (requested,) if requested else _runtime_order()
    for name in names:
        if name not in RUNTIMES:
            raise ValueError(f"runtime: expected one of {RUNTIMES}, got {name!r}")
    if not torch.cuda.is_available():
        built = "built" if importlib.util.find_spec("arc_fast._C") is not None else "not built"
        cupy = "installed" if importlib.util.find_spec("cupy") is not None else "not installed"
        raise RuntimeError("arc_fast CUDA backend unavailable: no CUDA device (torch.cuda.is_available() is "
                           f"False; arc_fast._C {built}, cupy {cupy})")
    reasons = []
    for name in names:
        try:
            return _load(name)
        except RuntimeError as exc:
            reasons.append(str(exc))
    raise RuntimeError("arc_fast CUDA backend unavailable: " + "; ".join(reasons))


def available(runtime: str | None = None) -> bool:
    """True when the CUDA kernels can run (``runtime``: only that one of ``"ext"``, ``"cupy"``)."""
    return unavailable_reason(runtime) is None


def unavailable_reason(runtime: str | None = None) -> str | None:
    """None when the CUDA kernels can run, else why not (one clause per runtime tried)."""
    try:
        _runtime(runtime)
    except RuntimeError as exc:
        return str(exc)
    return None


def active_runtime() -> str | None:
    """``"ext"`` or ``"cupy"``: the runtime the ops use now; None when unavailable."""
    try:
        return _runtime().name
    except RuntimeError:
        return None


# ------------------------------------------------------------------------------------------- ops
def snake_conv1d(x: torch.Tensor, alpha: torch.Tensor | None, beta: torch.Tensor | None, weight: torch.Tensor,
                 bias: torch.Tensor | None = None, dilation: int = 1, residual: torch.Tensor | None = None,
                 apply_snake: bool = True, *, runtime: str | None = None) -> torch.Tensor:
    """Fused ``conv1d(snake_beta(x), weight, bias, padding='same', dilation) + residual`` (forward only).

    Args:
        x: (B, Cin, T) CUDA tensor, float32/float16/bfloat16, contiguous.
        alpha, beta: (Cin,) log-scale SnakeBeta parameters, dtype of x; ignored (may be None) when
            ``apply_snake`` is False.
        weight: (Cout, Cin, K), K odd (padding ``dilation * (K - 1) // 2``), dtype of x.
        bias: (Cout,) or None.
        dilation: positive int (the decoder uses 1, 3, 9).
        residual: (B, Cout, T) added to the output, or None.
        apply_snake: False gives a plain conv1d (+ bias + residual).
        runtime: ``"ext"`` or ``"cupy"`` to force one runtime (tests); None picks the first available.

    Returns:
        (B, Cout, T) in x.dtype; accumulation in fp32.

    Raises:
        TypeError/ValueError naming the argument; RuntimeError when no runtime is available.
    """
    _raise_for(snake_conv1d_not_supported_reasons(x, alpha, beta, weight, bias, dilation, residual, apply_snake),
               "snake_conv1d")
    return _runtime(runtime).snake_conv1d(x, alpha if apply_snake else None, beta if apply_snake else None,
                                          weight, bias, int(dilation), residual, bool(apply_snake))


def snake_conv_transpose1d(x: torch.Tensor, alpha: torch.Tensor | None, beta: torch.Tensor | None,
                           weight: torch.Tensor, bias: torch.Tensor | None, stride: int, apply_snake: bool = True, *,
                           runtime: str | None = None) -> torch.Tensor:
    """Fused ``conv_transpose1d(snake_beta(x), weight, bias, stride, padding=ceil(stride/2))`` (forward only).

    Args:
        x: (B, Cin, T) CUDA tensor, float32/float16/bfloat16, contiguous.
        alpha, beta: (Cin,) log-scale SnakeBeta parameters, dtype of x; ignored (may be None) when
            ``apply_snake`` is False.
        weight: (Cin, Cout, K); the decoder uses K = 2 * stride.
        bias: (Cout,) or None.
        stride: positive int (the decoder uses 2, 4, 8).
        apply_snake: False gives a plain transposed conv (+ bias).
        runtime: ``"ext"`` or ``"cupy"`` to force one runtime (tests); None picks the first available.

    Returns:
        (B, Cout, (T - 1) * stride - 2 * ceil(stride / 2) + K) in x.dtype, i.e. (B, Cout, T * stride) for
        K = 2 * stride and even strides; computed in polyphase form with fp32 accumulation.

    Raises:
        TypeError/ValueError naming the argument; RuntimeError when no runtime is available.
    """
    _raise_for(snake_conv_transpose1d_not_supported_reasons(x, alpha, beta, weight, bias, stride, apply_snake),
               "snake_conv_transpose1d")
    return _runtime(runtime).snake_conv_transpose1d(x, alpha if apply_snake else None, beta if apply_snake else None,
                                                    weight, bias, int(stride), bool(apply_snake))
