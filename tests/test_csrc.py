"""Tests of the CUDA C++ decoder kernels (csrc/) and their Python runtime (arc_fast._cuda).

Without a GPU:
* the host/device math of csrc/snake_math.h, compiled as plain C++ with g++ (csrc/tests/test_snake_math.cpp),
  against torch: SnakeBeta, the 'same' dilated conv and polyphase transposed-conv index sets (brute force
  with one-hot inputs), the fp16/bf16 conversions (every 16-bit pattern), the launch plan;
* the real kernels of csrc/snake_conv.cu run under a CPU emulation of CUDA (csrc/tests/cuda_emulation.h:
  one std::thread per CUDA thread, a barrier for __syncthreads) vs the eager reference;
* the NVRTC compile of the CuPy runtime path, when a libnvrtc is found (ARC_FAST_NVRTC_LIB, CUDA_HOME or the
  nvidia-cuda-nvrtc wheel);
* arc_fast._cuda imports on the CPU and says why it is unavailable;
* the torch ops' argument checks (csrc/checks.h, shared with csrc/bindings.cpp) built into a CPU torch extension
  (csrc/tests/checks_cpu.cpp): every rejected argument raises a RuntimeError naming it.
The nvcc/CMake compile for sm_80 and sm_90a is scripts/compile_csrc.sh (CI runs it; too slow for pytest).
With a GPU (pytest -m gpu): both ops through arc_fast._C and through CuPy vs eager, fp32/fp16/bf16.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib.util
import math
import os
import re
import shutil
import site
import subprocess
import sys
import types
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from arc_fast import _cuda
from arc_fast.reference.functional import snake_beta

sys.path.insert(0, str(Path(__file__).resolve().parent))
from utils import assert_close_to_ref  # noqa: E402

CSRC = Path(__file__).resolve().parents[1] / "csrc"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SUFFIX = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
requires_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


def _build(tmp_path_factory, source: str, exe: str, std: str, extra=()) -> Path:
    out = tmp_path_factory.mktemp("csrc_build") / exe
    cmd = ["g++", f"-std={std}", "-O1", "-Wall", "-Wextra", "-Wno-unknown-pragmas", "-x", "c++",
           str(CSRC / "tests" / source), "-o", str(out), *extra]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"g++ failed on {source}:\n{res.stderr}"
    assert "warning" not in res.stderr, f"g++ warnings on {source}:\n{res.stderr}"
    return out


@pytest.fixture(scope="module")
def math_harness(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    return _build(tmp_path_factory, "test_snake_math.cpp", "test_snake_math", "c++17")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """The kernels under CPU emulation, with AddressSanitizer where g++ has it (out-of-bounds reads of any
    tensor or of shared memory then fail the run; never-staged shared memory is NaN-poisoned regardless)."""
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    try:
        return _build(tmp_path_factory, "emulate_kernels.cpp", "emulate_kernels", "c++20",
                      ("-pthread", "-fsanitize=address", "-fno-omit-frame-pointer"))
    except AssertionError:  # no libasan: still run the kernels, without bounds checks
        return _build(tmp_path_factory, "emulate_kernels.cpp", "emulate_kernels", "c++20", ("-pthread",))


def _run(exe: Path, *args, stdin: str | None = None) -> str:
    res = subprocess.run([str(exe), *map(str, args)], input=stdin, capture_output=True, text=True)
    assert res.returncode == 0, f"{exe.name} {args}: exit {res.returncode}\n{res.stderr}"
    return res.stdout


def _bits(t: torch.Tensor) -> list[int]:
    """Bit patterns of a float tensor as non-negative ints."""
    iv = t.contiguous().view(INT_VIEW[t.dtype]).to(torch.int64)
    return (iv & ((1 << (8 * t.element_size())) - 1)).tolist()


def _from_bits(vals: list[int], dtype: torch.dtype) -> torch.Tensor:
    width = 8 * torch.empty((), dtype=dtype).element_size()
    signed = [v - (1 << width) if v >= 1 << (width - 1) else v for v in vals]
    return torch.tensor(signed, dtype=INT_VIEW[dtype]).view(dtype)


# ------------------------------------------------------------------------------ host/device math
@requires_gxx
def test_snake_beta_matches_reference(math_harness):
    g = torch.Generator().manual_seed(0)
    n = 4000
    x = torch.cat([torch.randn(n, generator=g) * 3 + 0.5, torch.tensor([0.0, -0.0, 1e-30, -1e-4, 7.5, -60.0, 300.0])])
    alpha = torch.randn(x.numel(), generator=g) * 0.7
    beta = torch.randn(x.numel(), generator=g) * 0.7
    stdin = "\n".join(f"{a:08x} {b:08x} {c:08x}" for a, b, c in zip(_bits(x), _bits(alpha), _bits(beta)))
    out = _from_bits([int(v, 16) for v in _run(math_harness, "snake", stdin=stdin).split()], torch.float32)
    ref = snake_beta(x.view(1, -1, 1), alpha, beta).view(-1)
    ref64 = snake_beta(x.double().view(1, -1, 1), alpha.double(), beta.double()).view(-1)
    # glibc's sinf and torch's vectorised sin may differ by an ulp, and the fp32 product a*x carries a relative
    # error eps that sin^2 amplifies by |a x|: both must stay within a few ulps of fp64 in that conditioning.
    err = (out.double() - ref64).abs()
    inv_b = 1.0 / (beta.double().exp() + 1e-9)
    tol = 4 * torch.finfo(torch.float32).eps * (ref64.abs() + inv_b * (1 + (alpha.double().exp() * x.double()).abs()))
    assert bool((err <= tol).all()), f"snake_beta: max err {err.max():.3e}, worst at x={x[(err - tol).argmax()]}"
    torch_err = (ref.double() - ref64).abs()
    assert bool((torch_err <= tol).all()), "the tolerance is tighter than torch's own fp32 error"


@requires_gxx
@pytest.mark.parametrize("mode,src,dst", [("h2f", torch.float16, torch.float32), ("bf2f", torch.bfloat16, torch.float32)])
def test_widening_conversions_are_exact(math_harness, mode, src, dst):
    pats = list(range(1 << 16))
    out = _from_bits([int(v, 16) for v in _run(math_harness, mode, stdin="\n".join(f"{p:04x}" for p in pats)).split()], dst)
    ref = _from_bits(pats, src).to(dst)
    nan = torch.isnan(ref)
    assert torch.equal(torch.isnan(out), nan), f"{mode}: NaN patterns differ"
    assert torch.equal(_from_bits(_bits(out[~nan]), dst), ref[~nan]) and _bits(out[~nan]) == _bits(ref[~nan]), \
        f"{mode}: {sum(a != b for a, b in zip(_bits(out[~nan]), _bits(ref[~nan])))} values differ"


@requires_gxx
@pytest.mark.parametrize("mode,dst", [("f2h", torch.float16), ("f2bf", torch.bfloat16)])
def test_narrowing_conversions_round_to_nearest_even(math_harness, mode, dst):
    g = torch.Generator().manual_seed(1)
    rand = torch.randint(0, 1 << 32, (60000,), generator=g, dtype=torch.int64).tolist()
    # overflow, subnormal and tie edges of fp16, and values just around them
    edges = torch.tensor([65504.0, 65519.996, 65520.0, 65536.0, 1e30, 2.0 ** -24, 2.0 ** -25, 1.5 * 2.0 ** -25,
                          3 * 2.0 ** -26, 2.0 ** -26, 2.0 ** -14, 2.0 ** -14 * (1 - 2.0 ** -11), 1 + 2.0 ** -11,
                          1 + 3 * 2.0 ** -11, 1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, 3.3895314e38, 0.0, -0.0,
                          float("inf"), -float("inf"), float("nan")], dtype=torch.float32)
    edges = torch.cat([edges, -edges, torch.nextafter(edges, torch.full_like(edges, float("inf"))),
                       torch.nextafter(edges, torch.full_like(edges, -float("inf")))])
    pats = rand + _bits(edges)
    out = _from_bits([int(v, 16) for v in _run(math_harness, mode, stdin="\n".join(f"{p:08x}" for p in pats)).split()], dst)
    ref = _from_bits(pats, torch.float32).to(dst)
    nan = torch.isnan(ref)
    assert torch.equal(torch.isnan(out), nan), f"{mode}: NaN handling differs"
    got, want = _bits(out[~nan]), _bits(ref[~nan])
    bad = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
    assert not bad, f"{mode}: {len(bad)} of {len(got)} differ, e.g. input {_from_bits(pats, torch.float32)[~nan][bad[0]].item()!r}"


def _index_set(text: str) -> set[tuple[int, int, int]]:
    return {tuple(map(int, line.split())) for line in text.splitlines() if line and not line.startswith("Tout")}


@requires_gxx
@pytest.mark.parametrize("K", [1, 3, 7])
@pytest.mark.parametrize("dilation", [1, 3, 9])
def test_same_conv_index_mapping(math_harness, K, dilation):
    T = 23  # shorter than the reach of K=7, d=9 (pad 27): every position sees the zero padding
    got = _index_set(_run(math_harness, "conv", T, K, dilation))
    # one-hot brute force: batch item i holds e_i, output channel k is tap k alone -> y[i, k, t] = [t + k d - pad == i]
    y = F.conv1d(torch.eye(T).view(T, 1, T), torch.eye(K).view(K, 1, K), padding=dilation * (K - 1) // 2,
                 dilation=dilation)
    want = {(t, k, i) for i, k, t in y.nonzero().tolist()}
    assert got == want, f"extra {sorted(got - want)[:5]}, missing {sorted(want - got)[:5]}"


@requires_gxx
@pytest.mark.parametrize("stride,K", [(2, 4), (4, 8), (8, 16), (3, 6), (4, 5), (1, 2)],
                         ids=lambda v: str(v))
def test_polyphase_index_mapping(math_harness, stride, K):
    T = 9
    text = _run(math_harness, "convT", T, stride, K)
    t_out = int(text.splitlines()[0].split()[1])
    got = _index_set(text)
    y = F.conv_transpose1d(torch.eye(T).view(T, 1, T), torch.eye(K).view(1, K, K), stride=stride,
                           padding=math.ceil(stride / 2))
    assert t_out == y.shape[-1] == _cuda.conv_transpose1d_out_length(T, stride, K)
    if K == 2 * stride and stride % 2 == 0:
        assert t_out == T * stride
    want = {(o, k, i) for i, k, o in y.nonzero().tolist()}
    assert got == want, f"extra {sorted(got - want)[:5]}, missing {sorted(want - got)[:5]}"


@requires_gxx
@pytest.mark.parametrize("op,Cin,K,ds", [("conv1d", 37, 7, 9), ("conv1d", 5, 7, 1), ("conv1d", 2048, 1, 1),
                                         ("convT", 2048, 16, 8), ("convT", 3, 4, 2), ("convT", 128, 6, 3)])
def test_launch_plan_matches_header(math_harness, op, Cin, K, ds):
    got = tuple(map(int, _run(math_harness, "config", op, Cin, K, ds).split()))
    assert got == _cuda.plan_launch(op, Cin, K, ds)
    assert 1 <= got[1] <= 16 and got[2] <= _cuda.tile_config()["SMEM_BUDGET"]


# ------------------------------------------------------------------------- kernels, CPU emulation
def make_inputs(op: str, B: int, Cin: int, Cout: int, T: int, K: int, dtype: torch.dtype, seed: int,
                bias: bool = True, residual: bool = False) -> dict[str, torch.Tensor | None]:
    """Seeded decoder-like inputs, already rounded to ``dtype`` (the reference uses the same values)."""
    g = torch.Generator().manual_seed(seed)
    w_shape = (Cout, Cin, K) if op == "conv1d" else (Cin, Cout, K)
    t = {
        "x": torch.randn(B, Cin, T, generator=g) * 1.5 + 0.3,
        "alpha": torch.randn(Cin, generator=g) * 0.3,
        "beta": torch.randn(Cin, generator=g) * 0.3,
        "weight": torch.randn(*w_shape, generator=g) / math.sqrt(Cin * K),
        "bias": torch.randn(Cout, generator=g) * 0.1 if bias else None,
        "residual": torch.randn(B, Cout, T, generator=g) if residual else None,
    }
    return {k: (v.to(dtype) if v is not None else None) for k, v in t.items()}


def eager(op: str, inp: dict, dtype: torch.dtype, dilation_or_stride: int, apply_snake: bool = True) -> torch.Tensor:
    """The eager composition the fused kernels replace, computed in ``dtype``."""
    cast = {k: (v.to(dtype) if v is not None else None) for k, v in inp.items()}
    h = snake_beta(cast["x"], cast["alpha"], cast["beta"]) if apply_snake else cast["x"]
    if op == "conv1d":
        K = cast["weight"].shape[-1]
        y = F.conv1d(h, cast["weight"], cast["bias"], padding=dilation_or_stride * (K - 1) // 2,
                     dilation=dilation_or_stride)
        return y + cast["residual"] if cast["residual"] is not None else y
    return F.conv_transpose1d(h, cast["weight"], cast["bias"], stride=dilation_or_stride,
                              padding=math.ceil(dilation_or_stride / 2))


def check_against_eager(name: str, out: torch.Tensor, op: str, inp: dict, dtype: torch.dtype, ds: int,
                        apply_snake: bool = True) -> None:
    ref64 = eager(op, inp, torch.float64, ds, apply_snake)
    ref_lowp = eager(op, inp, dtype, ds, apply_snake) if dtype != torch.float32 else None
    assert out.dtype == dtype, f"{name}: dtype {out.dtype} != {dtype}"
    assert_close_to_ref(name, out.cpu(), ref64.float().cpu(), None if ref_lowp is None else ref_lowp.cpu(), dtype)


def _emulate(emulator: Path, tmp_path: Path, op: str, inp: dict, dtype: torch.dtype, args: list) -> torch.Tensor:
    src = tmp_path / "in.bin"
    dst = tmp_path / "out.bin"
    with open(src, "wb") as f:
        for key in ("x", "alpha", "beta", "weight", "bias", "residual"):
            if inp[key] is not None:
                f.write(inp[key].contiguous().view(INT_VIEW[dtype]).numpy().tobytes())
    _run(emulator, op, SUFFIX[dtype], *args, src, dst)
    raw = torch.frombuffer(bytearray(dst.read_bytes()), dtype=INT_VIEW[dtype])
    return raw.view(dtype)


CONV1D_CASES = [  # B, Cin, Cout, T, K, dilation, bias, residual, apply_snake
    pytest.param(2, 37, 70, 150, 7, 1, True, True, True, id="B2-Ci37-Co70-T150-k7d1-res"),
    pytest.param(1, 20, 16, 131, 7, 3, True, False, True, id="B1-Ci20-Co16-T131-k7d3"),
    pytest.param(2, 9, 8, 200, 7, 9, True, True, True, id="B2-Ci9-Co8-T200-k7d9-res"),
    pytest.param(1, 19, 2, 40, 7, 9, False, False, True, id="B1-Ci19-Co2-T40-k7d9-nobias"),
    pytest.param(1, 33, 65, 129, 1, 1, True, True, True, id="B1-Ci33-Co65-T129-k1-res"),
    pytest.param(2, 6, 20, 64, 3, 1, True, False, False, id="B2-Ci6-Co20-T64-k3-nosnake"),
]
CONVT_CASES = [  # B, Cin, Cout, T, stride, K, bias, apply_snake
    pytest.param(2, 37, 20, 19, 2, 4, True, True, id="B2-Ci37-Co20-T19-s2"),
    pytest.param(1, 24, 70, 33, 4, 8, True, True, id="B1-Ci24-Co70-T33-s4"),
    pytest.param(2, 13, 9, 17, 8, 16, False, True, id="B2-Ci13-Co9-T17-s8-nobias"),
    pytest.param(1, 10, 7, 11, 3, 6, True, True, id="B1-Ci10-Co7-T11-s3-generic-phase"),
    pytest.param(1, 5, 3, 7, 4, 5, True, True, id="B1-Ci5-Co3-T7-s4-k5"),
    pytest.param(1, 6, 4, 9, 4, 8, True, False, id="B1-Ci6-Co4-T9-s4-nosnake"),
]


@requires_gxx
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,Cin,Cout,T,K,dilation,bias,residual,apply_snake", CONV1D_CASES)
def test_emulated_snake_conv1d(emulator, tmp_path, B, Cin, Cout, T, K, dilation, bias, residual, apply_snake, dtype):
    inp = make_inputs("conv1d", B, Cin, Cout, T, K, dtype, seed=B * 1000 + Cin + T, bias=bias, residual=residual)
    args = [B, Cin, Cout, T, K, dilation, int(bias), int(residual), int(apply_snake)]
    out = _emulate(emulator, tmp_path, "conv1d", inp, dtype, args).view(B, Cout, T)
    check_against_eager("snake_conv1d(emulated)", out, "conv1d", inp, dtype, dilation, apply_snake)


@requires_gxx
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,Cin,Cout,T,stride,K,bias,apply_snake", CONVT_CASES)
def test_emulated_snake_conv_transpose1d(emulator, tmp_path, B, Cin, Cout, T, stride, K, bias, apply_snake, dtype):
    inp = make_inputs("convT", B, Cin, Cout, T, K, dtype, seed=B * 1000 + Cin + T, bias=bias)
    out = _emulate(emulator, tmp_path, "convT", inp, dtype, [B, Cin, Cout, T, K, stride, int(bias), int(apply_snake)])
    t_out = _cuda.conv_transpose1d_out_length(T, stride, K)
    check_against_eager("snake_conv_transpose1d(emulated)", out.view(B, Cout, t_out), "convT", inp, dtype, stride,
                        apply_snake)


# --------------------------------------------------------------------------------- NVRTC (no GPU)
def _find_nvrtc() -> str | None:
    env = os.environ.get("ARC_FAST_NVRTC_LIB")
    if env:
        return env
    cands = []
    for base in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if base:
            cands += sorted(glob.glob(os.path.join(base, "lib64", "libnvrtc.so*")))
    for sp in site.getsitepackages() + [site.getusersitepackages()]:
        cands += sorted(glob.glob(os.path.join(sp, "nvidia", "*", "lib", "libnvrtc.so*")))
    cands = [c for c in cands if "builtins" not in c and ".alt." not in c]
    return cands[0] if cands else ctypes.util.find_library("nvrtc")


@pytest.mark.parametrize("arch", ["sm_80", "sm_90a"])
def test_nvrtc_compiles_runtime_source(arch):
    lib_path = _find_nvrtc()
    if lib_path is None:
        pytest.skip("no libnvrtc (set ARC_FAST_NVRTC_LIB or pip install nvidia-cuda-nvrtc)")
    # libnvrtc dlopens its builtins library by soname: load it first when it sits beside a wheel's libnvrtc.
    for builtins in sorted(glob.glob(os.path.join(os.path.dirname(lib_path), "libnvrtc-builtins.so*"))):
        if ".alt." not in builtins:
            ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(lib_path)
    prog = ctypes.c_void_p()
    src = _cuda.nvrtc_source().encode()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"snake_conv.cu", 0, None, None) == 0
    opts = [o.encode() for o in (*_cuda.NVRTC_OPTIONS, f"--gpu-architecture={arch}")]
    status = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    cubin_size = ctypes.c_size_t()
    got_cubin = status == 0 and lib.nvrtcGetCUBINSize(prog, ctypes.byref(cubin_size)) == 0
    cubin = ctypes.create_string_buffer(cubin_size.value)
    if got_cubin:
        lib.nvrtcGetCUBIN(prog, cubin)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    assert status == 0, f"NVRTC ({lib_path}) failed for {arch}:\n{log.value.decode(errors='replace')}"
    assert "warning" not in log.value.decode(errors="replace"), log.value.decode(errors="replace")
    for kernel in ("arc_snake_conv1d", "arc_snake_conv_transpose1d"):
        for sfx in SUFFIX.values():
            assert f"{kernel}_{sfx}".encode() in cubin.raw, f"{kernel}_{sfx} missing from the {arch} cubin"


# ------------------------------------------------------------------------------ arc_fast._cuda, CPU
def test_cuda_module_reports_reason_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert _cuda.available() is False
    reason = _cuda.unavailable_reason()
    assert isinstance(reason, str) and "CUDA" in reason
    assert _cuda.active_runtime() is None
    x = torch.randn(1, 4, 8)
    with pytest.raises(ValueError, match="x: expected a CUDA tensor"):
        _cuda.snake_conv1d(x, torch.zeros(4), torch.zeros(4), torch.randn(3, 4, 7))
    with pytest.raises(ValueError, match="runtime"):
        _cuda.unavailable_reason("nvcc")


def test_rejects_unsupported_arguments():
    x = torch.empty(2, 4, 10, device="meta")
    reasons = _cuda.snake_conv1d_not_supported_reasons(
        x, torch.empty(5, device="meta"), torch.empty(4, device="meta", dtype=torch.float16),
        torch.empty(3, 4, 6, device="meta"), bias=torch.empty(4, device="meta"), dilation=0,
        residual=torch.empty(2, 3, 9, device="meta"))
    text = "\n".join(reasons)
    for needle in ("x: expected a CUDA tensor", "alpha: expected shape (4,)", "beta: expected dtype torch.float32",
                   "kernel size must be odd", "dilation: expected a positive int", "bias: expected shape (3,)",
                   "residual: expected shape (2, 3, 10)"):
        assert needle in text, f"missing {needle!r} in {reasons}"
    reasons = _cuda.snake_conv_transpose1d_not_supported_reasons(
        torch.empty(1, 4, 10, device="meta", dtype=torch.float64), torch.empty(4, device="meta"),
        torch.empty(4, device="meta"), torch.empty(5, 3, 8, device="meta"), None, stride=4)
    text = "\n".join(reasons)
    assert "x: expected dtype float32, float16 or bfloat16" in text and "weight: expected shape (4, Cout, K)" in text
    with pytest.raises(ValueError, match="snake_conv_transpose1d: .*stride: expected a positive int"):
        _cuda.snake_conv_transpose1d(torch.empty(1, 4, 10, device="meta"), torch.empty(4, device="meta"),
                                     torch.empty(4, device="meta"), torch.empty(4, 3, 8, device="meta"), None, 0)


def test_csrc_is_found_and_pasted():
    assert _cuda.csrc_dir() is not None
    src = _cuda.nvrtc_source()
    assert '#include "snake_math.h"' not in src and "ARC_SC_T_TILE" in src
    assert _cuda.tile_config()["T_TILE"] % _cuda.tile_config()["TN"] == 0


def _kernel_param_types(kernel: str) -> list[str]:
    """Parameter types of an extern "C" kernel as declared in csrc/snake_conv.cu (TYPE* -> 'ptr')."""
    src = (CSRC / "snake_conv.cu").read_text()
    m = re.search(kernel + r"_##SUFFIX\((.*?)\)\s*\{", src, flags=re.S)
    assert m, f"{kernel} not found in snake_conv.cu"
    params = [" ".join(p.replace("\\", " ").split()) for p in m.group(1).split(",")]
    return ["ptr" if "*" in p else p.rsplit(" ", 1)[0] for p in params]


def test_cupy_runtime_packs_arguments_as_the_kernels_declare(monkeypatch):
    """The CuPy path passes raw values: their order, C types and the launch plan must match the kernels."""
    np = pytest.importorskip("numpy")
    calls = []

    class FakeModule:
        def __init__(self, code, options):
            assert '#include "snake_math.h"' not in code and tuple(options) == _cuda.NVRTC_OPTIONS

        def get_function(self, name):
            return lambda grid, block, args, shared_mem=0: calls.append((name, grid, block, args, shared_mem))

    fake = types.SimpleNamespace(RawModule=FakeModule, cuda=types.SimpleNamespace(Device=lambda i: nullcontext()))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(_cuda._CupyRuntime, "_stream", lambda self, device: nullcontext())
    rt = _cuda._CupyRuntime()
    c_types = {"ptr": np.uint64, "int": np.int32, "long long": np.int64}

    inp = make_inputs("conv1d", 2, 37, 70, 150, 7, torch.bfloat16, seed=0, residual=False)
    y = rt.snake_conv1d(inp["x"], inp["alpha"], inp["beta"], inp["weight"], inp["bias"], 3, None, True)
    name, grid, block, args, smem = calls.pop()
    assert name == "arc_snake_conv1d_bf16" and y.shape == (2, 70, 150)
    assert [type(a) for a in args] == [c_types[t] for t in _kernel_param_types("arc_snake_conv1d")]
    ptrs = [inp[k].data_ptr() for k in ("x", "alpha", "beta", "weight", "bias")] + [0, y.data_ptr()]
    assert [int(a) for a in args[:7]] == ptrs
    _, ci, plan_smem = _cuda.plan_launch("conv1d", 37, 7, 3)
    assert [int(a) for a in args[7:]] == [37, 70, 150, 7, 3, ci, 1]
    assert grid == (2, 2, 2) and block == (256,) and smem == plan_smem

    inp = make_inputs("convT", 1, 24, 70, 33, 8, torch.float16, seed=1)
    y = rt.snake_conv_transpose1d(inp["x"], None, None, inp["weight"], inp["bias"], 4, False)
    name, grid, block, args, smem = calls.pop()
    assert name == "arc_snake_conv_transpose1d_f16" and y.shape == (1, 70, 132)
    assert [type(a) for a in args] == [c_types[t] for t in _kernel_param_types("arc_snake_conv_transpose1d")]
    assert [int(a) for a in args[:6]] == [inp["x"].data_ptr(), 0, 0, inp["weight"].data_ptr(), inp["bias"].data_ptr(),
                                          y.data_ptr()]
    _, ci, plan_smem = _cuda.plan_launch("convT", 24, 8, 4)
    assert [int(a) for a in args[6:]] == [24, 70, 33, 132, 8, 4, ci, 0]
    assert grid == (2, 2, 1) and smem == plan_smem


# ------------------------------------------------------------- the torch ops' argument checks, CPU
@pytest.fixture(scope="module")
def checks_ext(tmp_path_factory):
    """csrc/checks.h (the checks of arc_fast_C's ops) built into a CPU torch extension: torch.ops.arc_fast_checks."""
    if shutil.which("ninja") is None and importlib.util.find_spec("ninja") is not None:
        import ninja   # the pip package: its binary may sit outside PATH (a venv not activated)
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    if shutil.which("g++") is None or shutil.which("ninja") is None:
        pytest.skip("needs g++ and ninja to build a torch extension")
    from torch.utils.cpp_extension import load

    load(name="arc_fast_checks_cpu", sources=[str(CSRC / "tests" / "checks_cpu.cpp")], extra_include_paths=[str(CSRC)],
         build_directory=str(tmp_path_factory.mktemp("checks_ext")), is_python_module=False, verbose=False)
    return torch.ops.arc_fast_checks


def _conv_args(op, **over):
    """Valid arguments of snake_conv1d (op="conv1d") or snake_conv_transpose1d, with ``over`` replacing some."""
    x = torch.randn(2, 4, 16)
    if op == "conv1d":
        args = dict(x=x, alpha=torch.zeros(4), beta=torch.zeros(4), weight=torch.randn(3, 4, 7), bias=torch.zeros(3),
                    dilation=3, residual=torch.zeros(2, 3, 16), apply_snake=True)
    else:
        args = dict(x=x, alpha=torch.zeros(4), beta=torch.zeros(4), weight=torch.randn(4, 3, 8), bias=torch.zeros(3),
                    stride=4, apply_snake=True)
    args.update(over)
    return list(args.values())


def test_checks_accept_valid_arguments_and_give_the_output_shape(checks_ext):
    assert checks_ext.snake_conv1d(*_conv_args("conv1d")).shape == (2, 3, 16)
    assert checks_ext.snake_conv1d(*_conv_args("conv1d", alpha=None, beta=None, bias=None, residual=None,
                                               apply_snake=False)).shape == (2, 3, 16)
    x = torch.randn(2, 4, 16)
    for stride, k in ((4, 8), (2, 4), (3, 6), (5, 3)):
        w = torch.randn(4, 3, k)
        want = F.conv_transpose1d(x, w, stride=stride, padding=(stride + 1) // 2).shape
        got = checks_ext.snake_conv_transpose1d(*_conv_args("convT", weight=w, stride=stride))
        assert got.shape == want and got.dtype == x.dtype


BAD_CONV1D = [
    ("x 2-D", dict(x=torch.randn(4, 16)), "x must have shape"),
    ("x int", dict(x=torch.ones(2, 4, 16, dtype=torch.int32)), "x must be float32, float16 or bfloat16"),
    ("x strided", dict(x=torch.randn(2, 16, 4).transpose(1, 2)), "x must be contiguous"),
    ("weight dtype", dict(weight=torch.randn(3, 4, 7).half()), "weight must have dtype Float"),
    ("weight Cin", dict(weight=torch.randn(3, 5, 7)), r"weight must have shape \[3, 4, 7\], got \[3, 5, 7\]"),
    ("weight 2-D", dict(weight=torch.randn(3, 4)), r"weight must have shape \(Cout, 4, K\)"),
    ("weight even K", dict(weight=torch.randn(3, 4, 6)), "kernel size must be odd"),
    ("alpha shape", dict(alpha=torch.zeros(5)), r"alpha must have shape \[4\], got \[5\]"),
    ("alpha missing", dict(alpha=None), "alpha is required"),
    ("beta dtype", dict(beta=torch.zeros(4, dtype=torch.float64)), "beta must have dtype Float"),
    ("beta strided", dict(beta=torch.zeros(8)[::2]), "beta must be contiguous"),
    ("bias shape", dict(bias=torch.zeros(4)), r"bias must have shape \[3\]"),
    ("residual shape", dict(residual=torch.zeros(2, 3, 15)), r"residual must have shape \[2, 3, 16\]"),
    ("residual strided", dict(residual=torch.zeros(2, 16, 3).transpose(1, 2)), "residual must be contiguous"),
    ("dilation 0", dict(dilation=0), "dilation must be a positive int"),
]
BAD_CONVT = [
    ("weight Cin", dict(weight=torch.randn(5, 3, 8)), r"weight must have shape \[4, 3, 8\], got \[5, 3, 8\]"),
    ("stride 0", dict(stride=0), "stride must be a positive int"),
    ("empty output", dict(x=torch.randn(2, 4, 1), weight=torch.randn(4, 3, 1), stride=8), "gives an empty output"),
    ("no time steps", dict(x=torch.randn(2, 4, 0)), "at least one time step"),
    ("alpha shape", dict(alpha=torch.zeros(3)), r"alpha must have shape \[4\], got \[3\]"),
    ("bias dtype", dict(bias=torch.zeros(3, dtype=torch.bfloat16)), "bias must have dtype Float"),
]


@pytest.mark.parametrize("op,over,match", [("conv1d", o, m) for _, o, m in BAD_CONV1D]
                         + [("convT", o, m) for _, o, m in BAD_CONVT],
                         ids=[f"conv1d-{n}" for n, _, _ in BAD_CONV1D] + [f"convT-{n}" for n, _, _ in BAD_CONVT])
def test_checks_reject_bad_arguments_by_name(checks_ext, op, over, match):
    """Each bad argument raises a RuntimeError that names it, repeatedly (the extension segfaulted on its second
    rejected call on an H100, 2026-11-27: the same checks, exercised here twice per case)."""
    fn = checks_ext.snake_conv1d if op == "conv1d" else checks_ext.snake_conv_transpose1d
    for _ in range(2):
        with pytest.raises(RuntimeError, match=match):
            fn(*_conv_args(op, **over))


# --------------------------------------------------------------------------------------- GPU
GPU_CONV1D = [  # B, Cin, Cout, T, K, dilation, bias, residual, apply_snake
    pytest.param(2, 37, 70, 301, 7, 3, True, True, True, id="small-k7d3-res"),
    pytest.param(1, 128, 128, 65536, 7, 9, True, True, True, id="real-128ch-T64k-k7d9-res"),
    pytest.param(1, 1024, 1024, 2064, 7, 1, True, False, True, id="real-1024ch-T2k-k7d1"),
    pytest.param(1, 1024, 1024, 2064, 1, 1, True, True, True, id="real-1024ch-k1-res"),
    pytest.param(1, 64, 2048, 258, 7, 1, True, False, False, id="real-first-conv-nosnake"),
    pytest.param(1, 128, 2, 65536, 7, 1, False, False, True, id="real-final-conv-nobias"),
]
GPU_CONVT = [  # B, Cin, Cout, T, stride, K, bias, apply_snake
    pytest.param(2, 37, 20, 61, 4, 8, True, True, id="small-s4"),
    pytest.param(2, 9, 5, 30, 8, 16, False, False, id="small-s8-nosnake-nobias"),
    pytest.param(1, 2048, 1024, 258, 8, 16, True, True, id="real-2048to1024-s8"),
    pytest.param(1, 256, 128, 8256, 4, 8, True, True, id="real-256to128-s4"),
    pytest.param(1, 128, 128, 33024, 2, 4, True, True, id="real-128to128-s2"),
]


def _gpu_runtime_or_skip(runtime: str) -> None:
    # bench/gpu_run.sh sets ARC_FAST_CUDA_RUNTIME=cupy when the extension failed its own isolated run: a crashing
    # extension must not take xdist workers (and their CUDA contexts) down with the rest of the suite.
    pick = os.environ.get("ARC_FAST_CUDA_RUNTIME", "").strip().lower()
    if pick and pick != runtime:
        pytest.skip(f"ARC_FAST_CUDA_RUNTIME={pick} excludes the {runtime} runtime")
    reason = _cuda.unavailable_reason(runtime)
    if reason is not None:
        pytest.skip(reason)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("runtime", ["ext", "cupy"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,Cin,Cout,T,K,dilation,bias,residual,apply_snake", GPU_CONV1D)
def test_gpu_snake_conv1d(runtime, dtype, B, Cin, Cout, T, K, dilation, bias, residual, apply_snake):
    _gpu_runtime_or_skip(runtime)
    inp = make_inputs("conv1d", B, Cin, Cout, T, K, dtype, seed=T + Cin, bias=bias, residual=residual)
    inp = {k: (v.cuda() if v is not None else None) for k, v in inp.items()}
    out = _cuda.snake_conv1d(inp["x"], inp["alpha"], inp["beta"], inp["weight"], inp["bias"], dilation,
                             inp["residual"], apply_snake, runtime=runtime)
    check_against_eager(f"snake_conv1d[{runtime}]", out, "conv1d", inp, dtype, dilation, apply_snake)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("runtime", ["ext", "cupy"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,Cin,Cout,T,stride,K,bias,apply_snake", GPU_CONVT)
def test_gpu_snake_conv_transpose1d(runtime, dtype, B, Cin, Cout, T, stride, K, bias, apply_snake):
    _gpu_runtime_or_skip(runtime)
    inp = make_inputs("convT", B, Cin, Cout, T, K, dtype, seed=T + Cin, bias=bias)
    inp = {k: (v.cuda() if v is not None else None) for k, v in inp.items()}
    out = _cuda.snake_conv_transpose1d(inp["x"], inp["alpha"], inp["beta"], inp["weight"], inp["bias"], stride,
                                       apply_snake, runtime=runtime)
    check_against_eager(f"snake_conv_transpose1d[{runtime}]", out, "convT", inp, dtype, stride, apply_snake)


@pytest.mark.gpu
@requires_cuda
def test_gpu_ext_ops_opcheck():
    _gpu_runtime_or_skip("ext")
    inp = make_inputs("conv1d", 2, 5, 6, 40, 7, torch.float32, seed=3, residual=True)
    inp = {k: v.cuda() for k, v in inp.items()}
    torch.library.opcheck(torch.ops.arc_fast_C.snake_conv1d.default,
                          (inp["x"], inp["alpha"], inp["beta"], inp["weight"], inp["bias"], 3, inp["residual"], True),
                          test_utils=("test_schema", "test_faketensor"))
    inp = make_inputs("convT", 2, 5, 6, 40, 8, torch.float32, seed=4)
    inp = {k: v.cuda() for k, v in inp.items() if v is not None}
    torch.library.opcheck(torch.ops.arc_fast_C.snake_conv_transpose1d.default,
                          (inp["x"], inp["alpha"], inp["beta"], inp["weight"], inp["bias"], 4, True),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.gpu
@requires_cuda
def test_gpu_ext_rejects_bad_tensors_by_name():
    _gpu_runtime_or_skip("ext")
    x = torch.randn(1, 4, 16, device="cuda")
    w = torch.randn(3, 4, 7, device="cuda")
    with pytest.raises(RuntimeError, match="weight"):
        torch.ops.arc_fast_C.snake_conv1d(x, torch.zeros(4, device="cuda"), torch.zeros(4, device="cuda"),
                                          w.half(), None, 1, None, True)
    with pytest.raises(RuntimeError, match="alpha"):
        torch.ops.arc_fast_C.snake_conv1d(x, torch.zeros(5, device="cuda"), torch.zeros(4, device="cuda"),
                                          w, None, 1, None, True)
