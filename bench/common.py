"""Shared machinery of the benchmark suites: result rows, timing, device peaks, memory, checks, output.

Nothing here runs at import. A suite builds ``Row`` objects through ``Context`` helpers:

* ``Context.time(fn)``: CPU: warm-up, then repeats until both a minimum count and a minimum time are reached
  (min / median / p20 / p80 of the per-call times); CUDA: CUDA events around each call after a warm-up
  sized like ``triton.testing.do_bench`` (25 ms warm-up, ~100 ms of repeats), with the L2 cache flushed
  before each call.
* ``Context.peak_memory()``: peak GPU memory (``torch.cuda.max_memory_allocated``, reset per row) or the
  process's peak RSS on the CPU (``/proc/self/clear_refs`` resets it per row where Linux allows, else
  ``resource.getrusage`` gives the process peak so far; the row says which).
* ``check_close``: every provider's output is compared with the fp32 oracle before it is timed.
* ``measure_peaks``: copy bandwidth and a matmul (bf16 on CUDA, fp32 on the CPU), once per run; rows report
  their achieved TFLOP/s or GB/s as a fraction of these measured peaks.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

from arc_fast.dtypes import dtype_name  # noqa: F401 - the rows use the package's precision names

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = 1
MODES = ("fwd", "bwd", "fwd+bwd")


class Skip(Exception):
    """A provider/row that cannot run here; the message is the reason shown in the row."""


class CheckError(AssertionError):
    """A provider's output is not close to the oracle: the row is reported as failed and never timed."""


class NoDevice(RuntimeError):
    """The requested device does not exist on this machine."""


@dataclass
class Row:
    """One result line. Times in milliseconds; ``value`` is in ``metric`` units (TFLOP/s, GB/s, tokens/s)."""
    suite: str
    op: str
    shape: str
    dtype: str
    provider: str
    mode: str = "fwd"
    status: str = "ok"              # ok | skipped | failed
    median_ms: Optional[float] = None
    min_ms: Optional[float] = None
    p20_ms: Optional[float] = None
    p80_ms: Optional[float] = None
    n: Optional[int] = None
    metric: Optional[str] = None
    value: Optional[float] = None
    peak_frac: Optional[float] = None
    peak_mem_mb: Optional[float] = None
    ours: bool = False               # an arc-fast implementation (vs a peer / reference)
    speedup: Optional[float] = None  # baseline median / this median, within the row's group
    baseline: Optional[str] = None
    max_err: Optional[float] = None  # max |out - fp32 oracle| of the check (outputs and grads)
    notes: str = ""
    # Suite-specific measurements (JSON only, plus the CPU e2e headline table): e.g. the audio's error
    # against the fp32 reference run, stage times, setup seconds.
    extra: dict = field(default_factory=dict)

    def key(self) -> tuple:
        return (self.suite, self.op, self.shape, self.dtype, self.provider, self.mode)

    def group(self) -> tuple:
        return (self.suite, self.op, self.shape, self.dtype, self.mode)


@dataclass
class Timing:
    median_ms: float
    min_ms: float
    p20_ms: Optional[float]
    p80_ms: Optional[float]
    n: int
    samples: list = field(default_factory=list)




DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# --------------------------------------------------------------------------------------------- timing
def _quantile(sorted_vals: list, q: float) -> float:
    if len(sorted_vals) == 1:
        return sorted_vals[0]
    pos = q * (len(sorted_vals) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def snr_db(out: torch.Tensor, ref: torch.Tensor) -> float:
    """10 log10(sum ref^2 / sum (out - ref)^2) in float64: inf when identical."""
    o, r = out.double(), ref.double()
    noise = (o - r).pow(2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(max(r.pow(2).sum().item(), 1e-300) / noise)


def summarize(samples_ms: list) -> Timing:
    """median/min/p20/p80 of per-call times (p20/p80 only from 5 samples on)."""
    s = sorted(samples_ms)
    q = len(s) >= 5
    return Timing(statistics.median(s), s[0], _quantile(s, 0.2) if q else None, _quantile(s, 0.8) if q else None,
                  len(s), list(samples_ms))


def time_cpu(fn: Callable[[], object], min_reps: int = 5, min_time_s: float = 1.0, max_reps: int = 50,
             warmup: int = 1, grad_to_none: Iterable[torch.Tensor] = ()) -> Timing:
    """Per-call wall times of ``fn`` on the CPU: ``warmup`` calls, then at least ``min_reps`` calls and at least
    ``min_time_s`` seconds (at most ``max_reps`` calls)."""
    grad_to_none = list(grad_to_none)
    for _ in range(warmup):
        fn()
    samples = []
    t_start = time.perf_counter()
    while len(samples) < max_reps and (len(samples) < min_reps or time.perf_counter() - t_start < min_time_s):
        for t in grad_to_none:
            t.grad = None
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return summarize(samples)


def time_cuda(fn: Callable[[], object], warmup_ms: float = 25.0, rep_ms: float = 100.0, min_reps: int = 5,
              max_reps: int = 1000, grad_to_none: Iterable[torch.Tensor] = (), flush_l2: bool = True) -> Timing:
    """Per-call GPU times of ``fn`` from CUDA events (the ``triton.testing.do_bench`` recipe: estimate,
    warm-up for ``warmup_ms``, repeat for ``rep_ms``, L2 flushed before each timed call)."""
    grad_to_none = list(grad_to_none)
    cache = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device="cuda") if flush_l2 else None
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        fn()
    end.record()
    torch.cuda.synchronize()
    est = max(start.elapsed_time(end) / 3, 1e-3)
    n_warm = max(1, int(warmup_ms / est))
    n_rep = min(max_reps, max(min_reps, int(rep_ms / est)))
    for _ in range(n_warm):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    for i in range(n_rep):
        for t in grad_to_none:
            t.grad = None
        if cache is not None:
            cache.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return summarize([s.elapsed_time(e) for s, e in zip(starts, ends)])


def time_wall(fn: Callable[[], object], device: str, reps: int, warmup: int = 1) -> Timing:
    """Wall time of whole calls (host + device, synchronised): for end-to-end runs with host work inside."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
        sync()
    samples = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - t0) * 1e3)
    return summarize(samples)


# --------------------------------------------------------------------------------------------- memory
def _vm_hwm_kb() -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            m = re.search(r"VmHWM:\s+(\d+)\s+kB", f.read())
        return int(m.group(1)) if m else None
    except OSError:
        return None


def _vm_rss_kb() -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            m = re.search(r"VmRSS:\s+(\d+)\s+kB", f.read())
        return int(m.group(1)) if m else None
    except OSError:
        return None


def rss_mb() -> Optional[float]:
    """The process's resident memory now (MB; None where /proc is absent)."""
    kb = _vm_rss_kb()
    return None if kb is None else kb / 1024


def _reset_rss_peak() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """``with PeakMemory(device) as pm: ...`` then ``pm.mb`` and ``pm.kind``; on the CPU also ``pm.start_mb``,
    the resident memory when the block began (so ``pm.mb - pm.start_mb`` is what the block added at its peak)."""

    def __init__(self, device: str):
        self.device = device
        self.mb: Optional[float] = None
        self.start_mb: Optional[float] = None
        self.kind = ""

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.kind = "GPU max_memory_allocated"
        else:
            self._reset = _reset_rss_peak()
            self.start_mb = rss_mb()
            self.kind = "peak RSS" if self._reset else "process peak RSS so far"
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.mb = torch.cuda.max_memory_allocated() / 2 ** 20
        else:
            kb = _vm_hwm_kb() if self._reset else None
            if kb is None:
                kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
            self.mb = kb / 1024
        return False


# --------------------------------------------------------------------------------------------- checks
# Rounding floor per dtype (relative to max(|ref|, 1)), the same rule as tests/utils.py.
FLOOR = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def check_close(name: str, out: torch.Tensor, ref32: torch.Tensor, reflow: Optional[torch.Tensor],
                dtype: torch.dtype, k: float = 4.0, rtol32: Optional[float] = None, floor_scale: float = 1.0) -> float:
    """Raise CheckError unless ``out`` is as close to the fp32 oracle as eager PyTorch is in ``dtype``.

    fp32: max|out - ref| <= rtol32 * max|ref| + 1e-5 * max(floor_scale, 1) (rtol32: 1e-3 on the CPU, 5e-3 on
    CUDA where cuBLAS/cuDNN and Triton use TF32 by default; a wrong kernel is off by O(max|ref|)).
    ``floor_scale`` is the magnitude of the computation the tensor comes from (e.g. the largest of a case's
    outputs and gradients): a gradient that is analytically zero (attention's k-norm bias: softmax ignores a
    shift shared by all keys) is pure rounding of terms of that size. fp16/bf16: max|out - ref| <= k * max|reflow - ref| + floor(dtype) * max(|ref|, 1) / 4 with ``reflow``
    the eager op run in ``dtype``. Returns the max error.
    """
    if tuple(out.shape) != tuple(ref32.shape):
        raise CheckError(f"{name}: shape {tuple(out.shape)} != oracle {tuple(ref32.shape)}")
    if rtol32 is None:
        rtol32 = 5e-3 if out.is_cuda else 1e-3
    o, r = out.detach().float(), ref32.detach().float()
    if not torch.isfinite(o).all():
        raise CheckError(f"{name}: {int((~torch.isfinite(o)).sum())} non-finite values")
    err = (o - r).abs().max().item() if o.numel() else 0.0
    scale = r.abs().max().item() if r.numel() else 0.0
    if dtype == torch.float32 or reflow is None:
        bound = rtol32 * scale + FLOOR[torch.float32] * max(floor_scale, 1.0) + (
            0.0 if dtype == torch.float32 else FLOOR[dtype] * max(scale, 1.0))
    else:
        base = (reflow.detach().float() - r).abs().max().item()
        bound = k * base + FLOOR[dtype] * max(scale, 1.0) * 0.25
    if not err <= bound:
        raise CheckError(f"{name}: max|out - oracle| = {err:.3e} > bound {bound:.3e} (max|oracle| {scale:.3e})")
    return err


@contextlib.contextmanager
def exact_fp32():
    """No TF32 in matmuls/convs inside the block (for computing the fp32 oracle on the GPU)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# --------------------------------------------------------------------------------------------- device
def resolve_device(name: Optional[str]) -> str:
    """'cpu' or 'cuda'; raises NoDevice with a one-line reason when CUDA is asked for and absent."""
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise NoDevice(f"--device cuda: CUDA is not available ({why}; torch {torch.__version__}); use --device cpu")
    return name


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The /proc/cpuinfo flags that decide which precision runs fast through oneDNN / fbgemm on x86.
CPU_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")


def cpu_features() -> dict:
    """The CPU's model, its relevant ISA flags, core counts and what torch reports (oneDNN and its bf16 support,
    the CPU capability torch dispatches to), from ``arc_fast.cpu.cpu_features`` (the same probe ``auto`` uses)."""
    from arc_fast.cpu import cpu_features as probe
    f = probe()
    return {"model": f.model, "flags": [x for x in CPU_FLAGS if x in f.flags], "logical_cpus": os.cpu_count(),
            "physical_cores": f.physical_cores, "torch_threads": torch.get_num_threads(), "mkldnn": f.mkldnn,
            "mkldnn_bf16": f.mkldnn_bf16, "torch_cpu_capability": f.capability,
            "quantized_engines": list(f.quantized_engines)}


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{cpu_name()} ({os.cpu_count()} logical CPUs)"


def device_slug(device: str) -> str:
    """File-name-safe device id, e.g. ``cuda-nvidia-h100-80gb-hbm3`` or ``cpu-amd-epyc``."""
    name = torch.cuda.get_device_name(0) if device == "cuda" else cpu_name()
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"{device}-{slug}"[:60]


def git_commit() -> dict:
    def run(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    sha = run("rev-parse", "HEAD")
    dirty = run("status", "--porcelain", "--untracked-files=no", "--", "arc_fast", "kernels", "csrc", "bench")
    return {"commit": sha or "unknown", "dirty": bool(dirty)}


def environment(device: str) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except Exception:  # noqa: BLE001 - any import failure: report it as absent
        triton_version = None
    env = {
        "device_type": device,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        # False: each kernel ran its first config untuned (ARC_FAST_AUTOTUNE=0, what short GPU loans use).
        "autotune": os.environ.get("ARC_FAST_AUTOTUNE", "1") != "0",
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        **git_commit(),
    }
    if device == "cpu":
        env["cpu"] = cpu_features()
        try:
            env["load_average"] = [round(x, 2) for x in os.getloadavg()]
        except OSError:
            pass
    else:
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        env["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1)
    return env


def measure_peaks(device: str, quick: bool) -> dict:
    """Measured copy bandwidth (GB/s, read + write) and matmul throughput (TFLOP/s; bf16 on CUDA, fp32 on CPU)."""
    if device == "cuda":
        n = (64 if quick else 1024) * 2 ** 20 // 2
        x = torch.empty(n, dtype=torch.bfloat16, device="cuda").normal_()
        y = torch.empty_like(x)
        t_copy = time_cuda(lambda: y.copy_(x), flush_l2=False).median_ms
        m = 2048 if quick else 8192
        a = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
        t_mm = time_cuda(lambda: a @ b, flush_l2=False).median_ms
        mm_dtype = "bf16"
    else:
        n = (4 if quick else 64) * 2 ** 20 // 4
        x = torch.randn(n)
        y = torch.empty_like(x)
        kw = dict(min_reps=3, min_time_s=0.0, max_reps=3) if quick else dict(min_reps=5, min_time_s=0.5, max_reps=20)
        t_copy = time_cpu(lambda: y.copy_(x), **kw).min_ms
        m = 256 if quick else 1024
        a, b = torch.randn(m, m), torch.randn(m, m)
        t_mm = time_cpu(lambda: a @ b, **kw).min_ms
        mm_dtype = "fp32"
    copy_gbps = 2 * x.numel() * x.element_size() / (t_copy * 1e-3) / 1e9
    mm_tflops = 2 * m ** 3 / (t_mm * 1e-3) / 1e12
    out = {"copy_GBps": round(copy_gbps, 2), "copy_bytes": 2 * x.numel() * x.element_size(),
           "matmul_TFLOPs": round(mm_tflops, 4), "matmul_shape": f"{m}x{m}x{m}", "matmul_dtype": mm_dtype,
           "how": ("CUDA events, median" if device == "cuda" else "best of repeats (shared CPU)")}
    if device == "cpu":
        out.update(linear_peaks(quick))
    return out


# The DiT's dominant matmul at SAO Small's full window: 257 tokens x 1024 -> 4096 (the feed-forward up-projection).
LINEAR_SHAPE = (257, 1024, 4096)


def linear_peaks(quick: bool = False) -> dict:
    """CPU throughput of ``F.linear`` at ``LINEAR_SHAPE`` in fp32 and bf16, an int8 GEMM (``torch._int_mm``,
    int32 accumulation) and, when torchao is importable, torchao's int8 dynamic-activation linear (activation
    quantisation included): the peaks the CPU e2e rows are a fraction of. Keys ``linear_<kind>_TFLOPs`` (None
    with ``linear_<kind>_why`` where a kind cannot run here)."""
    import torch.nn.functional as F

    m, k, n = (32, 256, 256) if quick else LINEAR_SHAPE
    flops = 2.0 * m * k * n
    kw = dict(min_reps=3, min_time_s=0.0, max_reps=3) if quick else dict(min_reps=5, min_time_s=0.5, max_reps=20)
    g = torch.Generator().manual_seed(0)
    x32, w32 = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g) / k ** 0.5
    out: dict = {"linear_shape": f"{m}x{k}x{n}"}

    def record(kind, fn):
        try:
            with torch.inference_mode():
                out[f"linear_{kind}_TFLOPs"] = round(flops / (time_cpu(fn, **kw).min_ms * 1e-3) / 1e12, 4)
        except Exception as exc:  # noqa: BLE001 - the kind is unavailable in this build: say why
            out[f"linear_{kind}_TFLOPs"] = None
            out[f"linear_{kind}_why"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}" if str(exc) else \
                type(exc).__name__

    record("fp32", lambda: F.linear(x32, w32))
    xb, wb = x32.bfloat16(), w32.bfloat16()
    record("bf16", lambda: F.linear(xb, wb))
    a8 = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=g)
    b8 = torch.randint(-127, 128, (k, n), dtype=torch.int8, generator=g)
    record("int8", lambda: torch._int_mm(a8, b8))
    lin = _torchao_int8_linear(w32)
    if isinstance(lin, str):
        out["linear_int8_torchao_TFLOPs"] = None
        out["linear_int8_torchao_why"] = lin
    else:
        record("int8_torchao", lambda: lin(x32))
    return out


def _torchao_int8_linear(weight: torch.Tensor):
    """An nn.Linear holding ``weight`` quantised by torchao (int8 weights, int8 dynamic activations), or the
    reason it cannot be built here (a string)."""
    import io
    import warnings
    try:
        # torchao logs the optional GPU libraries it cannot load: noise on a CPU machine.
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), \
                contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            import logging
            logging.getLogger("torchao").setLevel(logging.ERROR)
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
            lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            with torch.no_grad():
                lin.weight.copy_(weight)
            quantize_(lin, Int8DynamicActivationInt8WeightConfig())
        return lin.eval().requires_grad_(False)
    except ImportError as exc:
        return f"torchao not installed ({exc})"
    except Exception as exc:  # noqa: BLE001
        return f"torchao int8 linear failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


# --------------------------------------------------------------------------------------------- context
@dataclass
class Context:
    """What a suite gets: the device, options and helpers that fill in rows."""
    device: str
    quick: bool = False
    dtypes: tuple = ()
    peaks: dict = field(default_factory=dict)
    compile: bool = True
    deadline: Optional[float] = None        # time.monotonic() after which remaining rows are skipped
    log: Callable[[str], None] = print
    options: dict = field(default_factory=dict)
    partial: list = field(default_factory=list)  # rows of the running suite so far (see collect)

    def collect(self) -> list:
        """The list a suite appends its finished rows to (and returns): if the run is stopped mid-suite (the
        budget's SIGTERM), ``bench.run`` still writes these rows out."""
        self.partial = []
        return self.partial

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def time(self, fn: Callable[[], object], grad_to_none: Iterable[torch.Tensor] = (), long: bool = False) -> Timing:
        """Time ``fn`` on this context's device (``long``: seconds per call, fewer repeats)."""
        if self.device == "cuda":
            if long:
                return time_cuda(fn, warmup_ms=0.0, rep_ms=0.0, min_reps=3 if self.quick else 5,
                                 grad_to_none=grad_to_none, flush_l2=False)
            return time_cuda(fn, grad_to_none=grad_to_none, rep_ms=30.0 if self.quick else 100.0)
        if self.quick:
            return time_cpu(fn, min_reps=2, min_time_s=0.0, max_reps=2, grad_to_none=grad_to_none)
        if long:
            return time_cpu(fn, min_reps=3, min_time_s=0.0, max_reps=3, grad_to_none=grad_to_none)
        return time_cpu(fn, min_reps=5, min_time_s=1.0, max_reps=50, grad_to_none=grad_to_none)

    def peak_memory(self) -> PeakMemory:
        return PeakMemory(self.device)

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def fill(self, row: Row, timing: Timing, work: Optional[float] = None, metric: Optional[str] = None,
             peak_mem: Optional[PeakMemory] = None) -> Row:
        """Copy the timing into ``row`` and derive throughput: ``work`` FLOPs (metric TFLOP/s), bytes (GB/s)
        or items (any other metric, per second)."""
        row.median_ms, row.min_ms, row.p20_ms, row.p80_ms, row.n = (
            timing.median_ms, timing.min_ms, timing.p20_ms, timing.p80_ms, timing.n)
        if work is not None and metric is not None and timing.median_ms > 0:
            per_s = work / (timing.median_ms * 1e-3)
            row.metric = metric
            if metric == "TFLOP/s":
                row.value = per_s / 1e12
                peak = self.peaks.get("matmul_TFLOPs")
            elif metric == "GB/s":
                row.value = per_s / 1e9
                peak = self.peaks.get("copy_GBps")
            else:
                row.value, peak = per_s, None
            row.peak_frac = row.value / peak if peak else None
        if peak_mem is not None and peak_mem.mb is not None:
            row.peak_mem_mb = peak_mem.mb
            if self.device == "cpu" and peak_mem.kind != "peak RSS":
                row.notes = _join(row.notes, peak_mem.kind)
        return row


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def skipped(suite: str, op: str, shape: str, dtype: str, provider: str, mode: str, reason: str, ours=False) -> Row:
    return Row(suite, op, shape, dtype, provider, mode, status="skipped", notes=reason, ours=ours)


def failed(suite: str, op: str, shape: str, dtype: str, provider: str, mode: str, reason: str, ours=False) -> Row:
    return Row(suite, op, shape, dtype, provider, mode, status="failed", notes=reason, ours=ours)


def fill_speedups(rows: list, baselines: dict) -> None:
    """speedup = baseline median / row median within each (suite, op, shape, dtype, mode) group.

    ``baselines``: suite -> ordered candidate provider names; the first present and ok in the group is used.
    """
    groups: dict = {}
    for r in rows:
        groups.setdefault(r.group(), []).append(r)
    for g, members in groups.items():
        ok = {r.provider: r for r in members if r.status == "ok" and r.median_ms}
        base = next((ok[p] for p in baselines.get(g[0], ()) if p in ok), None)
        if base is None:
            continue
        for r in ok.values():
            r.baseline = base.provider
            r.speedup = base.median_ms / r.median_ms


NOT_A_FIGURE = "not a performance figure"


def best_peer_ratios(rows: list) -> list[dict]:
    """Per group: best arc-fast provider vs best peer (peer median / ours median; > 1 = we are faster)."""
    groups: dict = {}
    for r in rows:
        if r.status == "ok" and r.median_ms and NOT_A_FIGURE not in r.notes:
            groups.setdefault(r.group(), []).append(r)
    out = []
    for g, members in groups.items():
        ours = [r for r in members if r.ours]
        peers = [r for r in members if not r.ours]
        if ours and peers:
            bo = min(ours, key=lambda r: r.median_ms)
            bp = min(peers, key=lambda r: r.median_ms)
            out.append({"suite": g[0], "op": g[1], "shape": g[2], "dtype": g[3], "mode": g[4], "ours": bo.provider,
                        "ours_ms": bo.median_ms, "best_peer": bp.provider, "peer_ms": bp.median_ms,
                        "ratio": bp.median_ms / bo.median_ms})
    return out


# --------------------------------------------------------------------------------------------- output
def result_dict(env: dict, peaks: dict, rows: list, args: dict, notes: list) -> dict:
    return {"schema": SCHEMA, **env, "peaks": peaks, "args": args, "notes": notes,
            "rows": [dataclasses.asdict(r) for r in rows], "best_peer": best_peer_ratios(rows)}


def rows_from_dict(result: dict) -> list:
    names = {f.name for f in dataclasses.fields(Row)}
    return [Row(**{k: v for k, v in r.items() if k in names}) for r in result.get("rows", [])]


def _fmt(v, spec=".3g") -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.2e}"
        return format(v, spec)
    return str(v)


def _ms(v) -> str:
    if v is None:
        return ""
    return f"{v:.4g}" if v < 1e4 else f"{v:.0f}"


def markdown(result: dict) -> str:
    """The report: header (device, date, commit, peaks), one table per suite, best-peer summary."""
    rows = rows_from_dict(result)
    p = result.get("peaks", {})
    commit = result.get("commit", "unknown")
    dirty = " + uncommitted changes under arc_fast/ kernels/ csrc/ bench/" if result.get("dirty") else ""
    lines = [f"### {result.get('device_name')} ({result.get('device_type')})", "",
             f"- date: {result.get('date')} | commit: `{commit[:12]}`{dirty}"
             f" | torch {result.get('torch')} | triton {result.get('triton')} | CUDA {result.get('cuda')}"
             f" | threads {result.get('threads')}",
             f"- measured peaks: copy {p.get('copy_GBps')} GB/s, {p.get('matmul_dtype')} matmul "
             f"{p.get('matmul_TFLOPs')} TFLOP/s ({p.get('matmul_shape')}; {p.get('how')})"]
    cpu = result.get("cpu")
    if cpu:
        lines.append(f"- CPU: {cpu.get('model')}; flags {', '.join(cpu.get('flags') or []) or 'none of interest'}; "
                     f"{cpu.get('physical_cores')} physical cores, {cpu.get('logical_cpus')} logical; oneDNN bf16 "
                     f"{cpu.get('mkldnn_bf16')}; torch CPU capability {cpu.get('torch_cpu_capability')}")
    if p.get("linear_shape"):
        kinds = [(k, p.get(f"linear_{k}_TFLOPs")) for k in ("fp32", "bf16", "int8", "int8_torchao")]
        lines.append(f"- measured linear peaks (F.linear {p['linear_shape']}, best of repeats): " + ", ".join(
            f"{k} {v} TFLOP/s" if v is not None else f"{k} n/a" for k, v in kinds))
    if result.get("load_average") is not None:
        lines.append(f"- load average at start: {result['load_average']} (the CPU is shared with other processes: "
                     f"times are noisy; min is the least disturbed figure)")
    for n in result.get("notes", []):
        lines.append(f"- {n}")
    heads = [r for r in rows if r.status == "ok" and r.op.startswith("total") and r.median_ms]
    if heads:
        lines += ["", "#### headline: end-to-end text -> audio", ""]
        for r in heads:
            vs = f", {r.speedup:.2f}x vs {r.baseline}" if r.speedup is not None and r.baseline != r.provider else ""
            mem = f", peak {r.peak_mem_mb:.0f} MB" if r.peak_mem_mb is not None else ""
            lines.append(f"- {r.shape}, {r.dtype}: **{r.provider}** {_ms(r.median_ms)} ms median "
                         f"({_ms(r.min_ms)} min){vs}{mem}")
    lines += stage_table(rows)
    lines.append("")
    suites = []
    for r in rows:
        if r.suite not in suites:
            suites.append(r.suite)
    for s in suites:
        lines += [f"#### {s}", "",
                  "| op | shape | dtype | provider | mode | median ms | min ms | p20/p80 ms | throughput | % peak | "
                  "speed-up | peak MB | notes |",
                  "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in rows:
            if r.suite != s:
                continue
            prov = f"**{r.provider}**" if r.ours else r.provider
            if r.status != "ok":
                lines.append(f"| {r.op} | {r.shape} | {r.dtype} | {prov} | {r.mode} | {r.status} |  |  |  |  |  |  | "
                             f"{_md(r.notes)} |")
                continue
            pq = f"{_ms(r.p20_ms)}/{_ms(r.p80_ms)}" if r.p20_ms is not None else ""
            thr = f"{_fmt(r.value)} {r.metric}" if r.value is not None else ""
            frac = f"{100 * r.peak_frac:.1f}%" if r.peak_frac is not None else ""
            sp = f"{r.speedup:.2f}x vs {r.baseline}" if r.speedup is not None and r.baseline != r.provider else ""
            mem = f"{r.peak_mem_mb:.0f}" if r.peak_mem_mb is not None else ""
            lines.append(f"| {r.op} | {r.shape} | {r.dtype} | {prov} | {r.mode} | {_ms(r.median_ms)} | {_ms(r.min_ms)} | "
                         f"{pq} | {thr} | {frac} | {sp} | {mem} | {_md(r.notes)} |")
        lines.append("")
    bp = result.get("best_peer") or []
    if bp:
        lines += ["#### best arc-fast provider vs best peer (peer ms / ours ms; > 1 = arc-fast faster)", "",
                  "| suite | op | shape | dtype | mode | ours | ms | best peer | ms | ratio |",
                  "|---|---|---|---|---|---|---:|---|---:|---:|"]
        for b in bp:
            lines.append(f"| {b['suite']} | {b['op']} | {b['shape']} | {b['dtype']} | {b['mode']} | {b['ours']} | "
                         f"{_ms(b['ours_ms'])} | {b['best_peer']} | {_ms(b['peer_ms'])} | {b['ratio']:.2f} |")
        lines.append("")
    lines.append("Bold providers are arc-fast's; speed-up is the baseline's median over the row's median. Skipped and "
                 "failed rows say why; a failed check is never timed.")
    return "\n".join(lines) + "\n"


STAGE_TABLE_HEAD = ("| provider | DiT / decoder | conditioner ms | DiT ms/step | decoder ms | total ms (min) | speed-up "
                    "| audio rel err | SNR dB | peak RSS MB (standalone est.) | DiT % peak | decoder % peak | setup s |")


def stage_table(rows: list) -> list[str]:
    """The CPU e2e headline as one table: a line per provider from its total row's ``extra`` (stage medians,
    the audio's error against the fp32 reference run, memory, fractions of the measured peaks, setup time)."""
    heads = [r for r in rows if r.op.startswith("total") and "snr_db" in (r.extra or {})]
    if not heads:
        return []
    out = ["", f"#### headline table: {heads[0].shape}", "", STAGE_TABLE_HEAD,
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in heads:
        e = r.extra
        prov = f"**{r.provider}**" if r.ours else r.provider
        if r.status != "ok":
            out.append(f"| {prov} | {r.dtype} | {r.status}: {_md(r.notes)[:120]} |  |  |  |  |  |  |  |  |  |  |")
            continue
        sp = f"{r.speedup:.2f}x" if r.speedup is not None else ""
        snr = e.get("snr_db")
        snr_s = "inf (identical)" if snr is None and e.get("rel_err") == 0 else _fmt(snr, ".1f")
        mem = f"{_fmt(r.peak_mem_mb, '.0f')} ({_fmt(e.get('standalone_mb'), '.0f')})"
        pct = lambda v: f"{100 * v:.1f}%" if v is not None else ""  # noqa: E731
        out.append(f"| {prov} | {r.dtype} | {_ms(e.get('conditioner_ms'))} | {_ms(e.get('dit_step_ms'))} | "
                   f"{_ms(e.get('decoder_ms'))} | {_ms(r.median_ms)} ({_ms(r.min_ms)}) | {sp} | "
                   f"{_fmt(e.get('rel_err'))} | {snr_s} | {mem} | {pct(e.get('dit_peak_frac'))} | "
                   f"{pct(e.get('decoder_peak_frac'))} | {_setup(e.get('setup_s'))} |")
    out.append("")
    out.append("Speed-up: the baseline's total over the row's (medians of interleaved runs). Audio error against "
               "the fp32 reference run: rel err = max|out - ref| / max|ref|, SNR = 10 log10(sum ref^2 / sum "
               "(out - ref)^2). Peak RSS: the process's peak during the run (the shared reference / "
               "stable-audio-tools weights and this provider's own resident, other providers' released); standalone est. = RSS before any model + the provider's own weights + what the run "
               "added at its peak. % peak: the stage's FLOPs over the measured linear peak of its compute dtype. "
               "Setup: load / compile / export time, never inside the timed runs.")
    return out


def _setup(v) -> str:
    return "" if v is None else f"{v:.1f}"


def _md(s: str) -> str:
    return (s or "").replace("|", "\\|").replace("\n", " ")


def compare(result: dict, baseline: dict, threshold: float = 0.10) -> str:
    """Markdown table of median ratios (new / baseline) for rows present in both; flags changes > threshold."""
    new = {r.key(): r for r in rows_from_dict(result) if r.status == "ok"}
    old = {r.key(): r for r in rows_from_dict(baseline) if r.status == "ok"}
    common = [k for k in new if k in old]
    lines = [f"#### compare with {baseline.get('device_name')} @ {str(baseline.get('commit', ''))[:12]} "
             f"({baseline.get('date')})", ""]
    if not common:
        return "\n".join(lines + ["no rows in common with the baseline", ""])
    lines += ["| suite | op | shape | dtype | provider | mode | baseline ms | now ms | now/base | |",
              "|---|---|---|---|---|---|---:|---:|---:|---|"]
    n_slow = 0
    for k in common:
        a, b = old[k].median_ms, new[k].median_ms
        ratio = b / a if a else float("nan")
        flag = "slower" if ratio > 1 + threshold else ("faster" if ratio < 1 - threshold else "")
        n_slow += flag == "slower"
        lines.append(f"| {' | '.join(map(str, k))} | {_ms(a)} | {_ms(b)} | {ratio:.2f} | {flag} |")
    lines += ["", f"{len(common)} rows compared, {n_slow} slower by more than {threshold:.0%}.", ""]
    return "\n".join(lines)


def write_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    os.replace(tmp, path)


README_BEGIN = "<!-- bench:results:{slug} -->"
README_END = "<!-- /bench:results:{slug} -->"


def update_readme(readme: Path, slug: str, md: str) -> None:
    """Replace (or append) the section of ``readme`` holding the latest table for device ``slug``."""
    begin, end = README_BEGIN.format(slug=slug), README_END.format(slug=slug)
    block = f"{begin}\n{md.rstrip()}\n{end}"
    text = readme.read_text() if readme.is_file() else "# Benchmarks\n"
    if begin in text and end in text:
        pre, rest = text.split(begin, 1)
        post = rest.split(end, 1)[1]
        text = pre + block + post
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    readme.write_text(text)
