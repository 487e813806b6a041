"""``python -m arc_fast.info`` (or ``arc-fast info``): which backends are live here and, for each that is not, why."""
from __future__ import annotations

import importlib
import importlib.util
import platform


def backend_status() -> list[tuple[str, bool, str]]:
    """(name, live, detail) for Triton GPU, Triton interpreter, CUDA extension, CuPy, flash-attn, SDPA."""
    import torch

    from .ops._dispatch import interpreter_active, triton_import_error

    rows = []
    terr = triton_import_error()
    cuda = torch.cuda.is_available()
    if terr:
        rows.append(("triton (GPU)", False, terr))
        rows.append(("triton (interpreter)", False, terr))
    else:
        import triton
        rows.append(("triton (GPU)", cuda, f"triton {triton.__version__}" if cuda else "no CUDA device"))
        rows.append(("triton (interpreter)", interpreter_active(),
                     "TRITON_INTERPRET=1" if interpreter_active() else "set TRITON_INTERPRET=1 to run kernels on CPU"))
    try:
        from . import _cuda
        ok = _cuda.available()
        rows.append(("CUDA extension / CuPy", ok, "ready" if ok else (_cuda.unavailable_reason() or "unavailable")))
    except ImportError as exc:
        rows.append(("CUDA extension / CuPy", False, f"arc_fast._cuda missing: {exc}"))
    if importlib.util.find_spec("cupy") is None:
        rows.append(("cupy", False, "not installed (pip install 'arc-fast[gpu]', CUDA 12: 'arc-fast[gpu-cu12]')"))
    else:
        rows.append(("cupy", cuda, "installed" if cuda else "installed, but no CUDA device"))
    if importlib.util.find_spec("flash_attn") is None:
        rows.append(("flash-attn", False, "not installed"))
    else:
        rows.append(("flash-attn", cuda, "installed" if cuda else "installed, but no CUDA device"))
    rows.append(("SDPA (torch)", hasattr(torch.nn.functional, "scaled_dot_product_attention"),
                 f"torch {torch.__version__}"))
    return rows


def main() -> int:
    import torch

    from . import __version__
    print(f"arc-fast {__version__} | python {platform.python_version()} | torch {torch.__version__} "
          f"(CUDA {torch.version.cuda or 'none'}) | threads {torch.get_num_threads()}")
    if torch.cuda.is_available():
        print(f"device: {torch.cuda.get_device_name(0)}")
    else:
        print("device: CPU only")
    for name, live, detail in backend_status():
        print(f"  {'[live]' if live else '[off] '} {name:24s} {detail}")
    for line in cpu_report():
        print(line)
    return 0


def cpu_report() -> list[str]:
    """The CPU path: features that matter (AVX2 / AVX-512 / AVX512-BF16 / VNNI / AMX, oneDNN, the quantized
    engines), the probe's measured bf16 speed-ups, and what ``dtype="auto"`` picks per stage and why."""
    from . import cpu

    f = cpu.cpu_features()
    lines = [f"CPU: {f.model}, {f.physical_cores} physical cores (default threads), torch capability {f.capability}"]
    has = lambda *names: "yes" if any(n in f.flags for n in names) else "no"  # noqa: E731
    lines.append(f"  AVX2 {has('avx2')} | AVX-512 {has('avx512f')} | AVX512-BF16 {has('avx512_bf16')} | "
                 f"AVX512-VNNI {has('avx512_vnni')} | AMX-BF16 {has('amx_bf16')} | AMX-INT8 {has('amx_int8')}")
    engines = "/".join(e for e in f.quantized_engines if e != "none") or "none"
    lines.append(f"  oneDNN {'yes' if f.mkldnn else 'no'} (native bf16: {'yes' if f.mkldnn_bf16 else 'no'}) | "
                 f"quantized engines (fbgemm/x86): {engines} | torchao (int8): "
                 f"{'yes' if cpu.torchao_available() is None else 'no'}")
    probed = cpu.probe()
    if probed is not None:
        lines.append(f"  probe (one thread, cached): bf16 matmul {probed['linear_bf16_speedup']:.1f}x fp32, bf16 conv "
                     f"{probed['conv_bf16_speedup']:.1f}x fp32")
    p = cpu.choose_precisions(f, probed)
    lines.append(f"  dtype auto -> DiT {p.reasons['dit']}")
    lines.append(f"  dtype auto -> decoder {p.reasons['decoder']}")
    return lines


if __name__ == "__main__":  # python -m arc_fast.info
    import sys

    sys.exit(main())
