"""CPU capabilities and the per-stage precision that ``dtype="auto"`` picks on this machine.

The machines arc-fast runs on differ: on a CPU with native bf16 (AVX512-BF16 or AMX), oneDNN runs bf16 matmuls
and convolutions 2-5x faster than fp32; without it bf16 is emulated and slower than fp32. So the choice is made
from what this CPU has, confirmed by a short measurement:

1. **Features** (``cpu_features``): /proc/cpuinfo flags (AVX2, AVX-512, AVX512-BF16, AVX512-VNNI, AMX), torch's
   view (``torch.backends.cpu.get_cpu_capability()``, oneDNN and its bf16 support, the fbgemm/x86 quantized
   engines) and the physical core count.
2. **Probe** (``probe``): a one-off micro-benchmark (~0.5 s) of the two operations that dominate the stages, an
   ``F.linear`` of DiT shape and a channels-last 1-D convolution of decoder shape, in fp32 and bf16. Its result is
   cached per machine (CPU model + flags + torch version) in ``$ARC_FAST_CACHE_DIR`` (default
   ``~/.cache/arc_fast``) as ``cpu_probe.json``; ``ARC_FAST_CPU_PROBE=0`` skips it (features alone decide).
   ``ARC_FAST_CPU_DTYPE=fp32|bf16`` overrides the choice for both stages (the test suite pins fp32 so that no
   test depends on the machine's CPU features).
3. **Choice** (``choose_precisions``): per stage (DiT, decoder), bf16 where the CPU has native bf16 *and* the
   probe measured bf16 at least ``MIN_SPEEDUP`` times faster than fp32; fp32 otherwise. int8 (DiT only, torchao
   dynamic quantisation, ``quantize_dit_int8``) is never chosen automatically: only on request
   (``dtype="int8"``), because its error on trained weights is larger than bf16's (docs/cpu.md).

The quality bound behind the bf16 choice (``MIN_AUDIO_SNR_DB``) is checked by the test suite on the bundled
trained model (tests/test_cpu.py) and measured on SAO-size weights by ``bench/cpu_quality.py``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import platform
import time
import warnings

import torch
import torch.nn.functional as F

__all__ = ["CPUFeatures", "Precisions", "cpu_features", "probe", "choose_precisions", "physical_cores",
           "quantize_dit_int8", "set_dit_precision", "is_int8", "torchao_available", "MIN_SPEEDUP",
           "MIN_AUDIO_SNR_DB"]

# bf16 must be this much faster than fp32 to be worth its rounding (a 10-20 % gain is within run-to-run noise
# on shared machines, and bf16 costs ~40 dB less headroom than fp32).
MIN_SPEEDUP = 1.25
# The lowest audio SNR (against the same generation in fp32) that ``auto`` may accept, measured on the bundled
# trained model. Why 20 dB: bf16 is the precision the public stable-audio-tools code runs trained models in on
# GPUs (its reference), and its eager bf16 runs of the bundled model measure 25-40 dB against fp32; 20 dB keeps
# a margin of one such run's spread while rejecting a setting whose error is a tenth of the signal's power.
MIN_AUDIO_SNR_DB = 20.0

_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
          "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")
_PROBE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class CPUFeatures:
    """What this CPU and this torch build offer for the CPU fast path (``cpu_features()``)."""
    model: str
    flags: frozenset            # the subset of ``_FLAGS`` the CPU reports
    capability: str             # torch.backends.cpu.get_cpu_capability(): "AVX512", "AVX2", "DEFAULT", ...
    mkldnn: bool                # oneDNN available to torch
    mkldnn_bf16: bool           # oneDNN reports native bf16 (torch.ops.mkldnn._is_mkldnn_bf16_supported)
    quantized_engines: tuple    # torch.backends.quantized.supported_engines (fbgemm / x86 / onednn ...)
    physical_cores: int

    @property
    def native_bf16(self) -> bool:
        """bf16 dot products in hardware (AVX512-BF16 or AMX-BF16) and oneDNN able to use them."""
        return self.mkldnn and self.mkldnn_bf16 and bool({"avx512_bf16", "amx_bf16"} & self.flags)

    @property
    def vnni(self) -> bool:
        return bool({"avx512_vnni", "amx_int8"} & self.flags)

    def summary(self) -> str:
        flags = ", ".join(f for f in _FLAGS if f in self.flags) or "none of interest"
        engines = "/".join(e for e in self.quantized_engines if e != "none") or "none"
        return (f"{self.model} | {self.physical_cores} physical cores | torch CPU capability {self.capability} | "
                f"flags: {flags} | oneDNN {'yes' if self.mkldnn else 'no'} (bf16 "
                f"{'native' if self.mkldnn_bf16 else 'not native'}) | quantized engines {engines}")


@dataclasses.dataclass(frozen=True)
class Precisions:
    """The precision of each stage and why (``choose_precisions``). dit: "fp32" | "bf16" | "int8";
    decoder: "fp32" | "bf16"."""
    dit: str
    decoder: str
    reasons: dict

    def dtypes(self) -> tuple:
        """(DiT dtype or "int8", decoder torch.dtype)."""
        to = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": "int8"}
        return to[self.dit], to[self.decoder]


def _read_cpuinfo() -> tuple[str, set, int | None]:
    """(model name, flags, physical cores) from /proc/cpuinfo; ("", set(), None) where it does not exist."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return "", set(), None
    model, flags, cores, phys = "", set(), set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and not model:
            model = value
        elif key == "flags" and not flags:
            flags = set(value.split())
        elif key == "physical id":
            phys = value
        elif key == "core id":
            cores.add((phys, value))
    return model, flags, (len(cores) or None)


def physical_cores() -> int:
    """Physical cores this process may run on: /proc/cpuinfo's (physical id, core id) pairs, capped by the CPU
    affinity mask (containers, taskset); os.cpu_count() where neither is known. At least 1."""
    _, _, cores = _read_cpuinfo()
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = os.cpu_count() or 1
    return max(1, min(cores, allowed) if cores else allowed)


@functools.lru_cache(maxsize=1)
def cpu_features() -> CPUFeatures:
    """The features of this CPU and torch build (cached for the process)."""
    model, flags, _ = _read_cpuinfo()
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    capability = torch.backends.cpu.get_cpu_capability()
    mkldnn = bool(torch.backends.mkldnn.is_available())
    try:
        mkldnn_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        mkldnn_bf16 = False
    try:
        engines = tuple(torch.backends.quantized.supported_engines)
    except (AttributeError, RuntimeError):
        engines = ()
    return CPUFeatures(model=model, flags=frozenset(f for f in _FLAGS if f in flags), capability=capability,
                       mkldnn=mkldnn, mkldnn_bf16=mkldnn_bf16, quantized_engines=engines,
                       physical_cores=physical_cores())


# ------------------------------------------------------------------------------------------------ probe
def _cache_path() -> str:
    root = os.environ.get("ARC_FAST_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "arc_fast")
    return os.path.join(root, "cpu_probe.json")


def _probe_key(feat: CPUFeatures) -> str:
    return f"v{_PROBE_VERSION}|{feat.model}|{','.join(sorted(feat.flags))}|torch {torch.__version__}"


def _best_time(fn, reps: int = 3) -> float:
    fn()   # warm-up: oneDNN builds its primitive on the first call
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _measure() -> dict:
    """bf16-over-fp32 speed ratios of a DiT-shaped linear and a decoder-shaped channels-last conv (one thread,
    so that the other core's load disturbs it less)."""
    g = torch.Generator().manual_seed(0)
    out = {}
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            x = torch.randn(257, 1024, generator=g)
            w = torch.randn(1024, 1024, generator=g) * 0.03
            t32 = _best_time(lambda: F.linear(x, w))
            xb, wb = x.bfloat16(), w.bfloat16()
            t16 = _best_time(lambda: F.linear(xb, wb))
            out["linear_bf16_speedup"] = t32 / t16
            out["linear_fp32_gflops"] = 2 * 257 * 1024 * 1024 / t32 / 1e9
            # The decoder's CPU layout (ops.snake_conv's channels-last path): (B, C, 1, T) views of (B, T, C) data.
            cl = torch.channels_last
            h = torch.randn(1, 128, 1, 8192, generator=g).contiguous(memory_format=cl)
            k = (torch.randn(128, 128, 1, 7, generator=g) * 0.03).contiguous(memory_format=cl)
            c32 = _best_time(lambda: F.conv2d(h, k, None, padding=(0, 3)))
            hb, kb = h.bfloat16(), k.bfloat16()
            c16 = _best_time(lambda: F.conv2d(hb, kb, None, padding=(0, 3)))
            out["conv_bf16_speedup"] = c32 / c16
    finally:
        torch.set_num_threads(prev)
    return out


@functools.lru_cache(maxsize=1)
def probe() -> dict | None:
    """The bf16/fp32 speed ratios of this machine: {"linear_bf16_speedup", "conv_bf16_speedup", ...} from the
    per-machine cache, else measured (~0.5 s) and cached. None when ``ARC_FAST_CPU_PROBE=0`` or the CPU has no
    native bf16 (nothing to decide then). A cache that cannot be read or written is ignored (measured again)."""
    if os.environ.get("ARC_FAST_CPU_PROBE", "1") == "0":
        return None
    feat = cpu_features()
    if not feat.native_bf16:
        return None
    path, key = _cache_path(), _probe_key(feat)
    try:
        with open(path, encoding="utf-8") as f:
            cached = json.load(f)
        if isinstance(cached, dict) and isinstance(cached.get(key), dict):
            entry = cached[key]
            if all(isinstance(entry.get(k), (int, float)) for k in ("linear_bf16_speedup", "conv_bf16_speedup")):
                return entry
    except (OSError, ValueError):
        cached = {}
    entry = _measure()
    entry["measured"] = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        from .files import write_atomic
        data = {**(cached if isinstance(cached, dict) else {}), key: entry}
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomic(path, lambda f: json.dump(data, f, indent=1), binary=False)
    except OSError as exc:
        logging.getLogger("arc_fast").info("CPU probe not cached (%s): %s", path, exc)
    return entry


def choose_precisions(features: CPUFeatures | None = None, probed: dict | None | str = "measure") -> Precisions:
    """The precision ``dtype="auto"`` uses on this CPU for the DiT and the decoder, with the reason for each.

    features: ``cpu_features()`` by default (tests pass mocked ones). probed: the ``probe()`` result; "measure"
    (default) runs/reads it; None decides by features alone.
    """
    forced = os.environ.get("ARC_FAST_CPU_DTYPE", "auto").strip().lower()
    if forced in ("fp32", "bf16"):
        why = f"{forced}: set by ARC_FAST_CPU_DTYPE"
        return Precisions(dit=forced, decoder=forced, reasons={"dit": why, "decoder": why})
    if forced != "auto":
        raise ValueError(f"ARC_FAST_CPU_DTYPE must be auto, fp32 or bf16, got {forced!r}")
    feat = features if features is not None else cpu_features()
    if isinstance(probed, str):
        probed = probe() if feat.native_bf16 else None
    reasons = {}
    choice = {}
    for stage, key, what in (("dit", "linear_bf16_speedup", "matmul"), ("decoder", "conv_bf16_speedup", "conv")):
        if not feat.native_bf16:
            choice[stage] = "fp32"
            missing = "no AVX512-BF16/AMX-BF16" if not {"avx512_bf16", "amx_bf16"} & feat.flags else \
                "oneDNN does not report native bf16"
            reasons[stage] = f"fp32: {missing} (bf16 would be emulated, slower than fp32)"
        elif probed is None:
            choice[stage] = "bf16"
            reasons[stage] = "bf16: native bf16 (AVX512-BF16/AMX) with oneDNN; speed not probed (ARC_FAST_CPU_PROBE=0)"
        elif probed.get(key, 0.0) >= MIN_SPEEDUP:
            choice[stage] = "bf16"
            reasons[stage] = f"bf16: native bf16, {what} measured {probed[key]:.1f}x faster than fp32"
        else:
            choice[stage] = "fp32"
            reasons[stage] = (f"fp32: native bf16 but the {what} probe measured only {probed.get(key, 0.0):.2f}x "
                              f"(< {MIN_SPEEDUP}x)")
    return Precisions(dit=choice["dit"], decoder=choice["decoder"], reasons=reasons)


# ------------------------------------------------------------------------------------------------ int8
@functools.lru_cache(maxsize=1)
def torchao_available() -> str | None:
    """None when torchao imports, else why not (one line)."""
    try:
        with _quiet_torchao():
            import torchao.quantization  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means "not usable here"
        return f"torchao is not usable ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}); " \
               f"install it with: pip install 'arc-fast[int8]'"
    return None


@contextlib.contextmanager
def _quiet_torchao():
    """torchao logs a warning per optional CUDA library it cannot load; on the CPU that is noise."""
    loggers = [logging.getLogger(n) for n in ("torchao", "root", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def quantize_dit_int8(dit: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantisation of a DiT's linear layers in place, through torchao; returns ``dit``.

    Weights become int8 per output channel (symmetric), activations are quantised per token on the fly and the
    product runs as an int8 GEMM (VNNI/AMX where the CPU has them). Works with ``FastDiT`` (it calls
    ``F.linear`` on the layers' weights, which torchao's weight tensors implement) and the reference DiT.
    Only the linears inside the transformer blocks (``transformer.layers.*``, where the time goes) are quantised:
    the timestep, conditioning and in/out projections stay in floating point (negligible time, and quantising
    them costs accuracy; the int8 export's rule too). The DiT must be float32
    (activations stay fp32 between layers); call on CPU. Raises RuntimeError (with the install hint) when torchao
    is missing.
    """
    why = torchao_available()
    if why is not None:
        raise RuntimeError(why)
    if any(p.dtype != torch.float32 for p in dit.parameters()):
        raise ValueError("quantize_dit_int8: the DiT must be float32 (cast with .float() first)")
    with _quiet_torchao():
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        def keep(m: torch.nn.Module, fqn: str) -> bool:
            return isinstance(m, torch.nn.Linear) and fqn.startswith("transformer.layers.")

        quantize_(dit, Int8DynamicActivationInt8WeightConfig(), filter_fn=keep)
    dit._arc_fast_int8 = True
    return dit


def set_dit_precision(dit: torch.nn.Module, dtype, device: torch.device) -> tuple[torch.dtype, str]:
    """Put ``dit`` (in place) in ``dtype``: a torch dtype casts it, "int8" quantises it (CPU only, torchao,
    not reversible). Returns (the dtype its activations run in, the precision's name)."""
    from .dtypes import dtype_name
    if dtype == "int8":
        if device.type != "cpu":
            raise ValueError("dtype='int8' (torchao dynamic int8) is a CPU path; use bf16 or fp16 on CUDA")
        if not is_int8(dit):
            quantize_dit_int8(dit.float())
        return torch.float32, "int8"     # fp32 activations between the int8 GEMMs
    if is_int8(dit):
        if dtype != torch.float32:
            raise ValueError(f"the DiT is int8-quantised; it cannot be cast to {dtype} (reload the model)")
        return torch.float32, "int8"
    dit.to(dtype=dtype)
    return dtype, dtype_name(dtype)


def is_int8(dit: torch.nn.Module) -> bool:
    """True for a DiT quantised by ``quantize_dit_int8``."""
    return bool(getattr(dit, "_arc_fast_int8", False))
