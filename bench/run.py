"""``python -m bench``: run the benchmark suites and write JSON, a markdown table and plots.

    python -m bench --device cpu|cuda [--suite kernels,decoder,e2e,train-step] [--quick] [--out DIR]
                    [--compare baseline.json] [--dtype bf16,fp32] [--no-compile] [--budget-s S]

Outputs (in ``--out``, default ``bench/results`` or ``bench/results/quick`` with ``--quick``), named after the
device (e.g. ``cpu-amd-epyc``): ``<device>.json`` (environment, measured peaks, every row), ``<device>.md`` (the
table, also printed), ``<device>-<suite>.png`` (if matplotlib is importable). A full run into the default
folder also refreshes that device's table in ``bench/README.md``. Progress goes to stderr.
"""
from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
import time
import traceback
from pathlib import Path

from . import common

SUITES = {"kernels": "bench.kernels", "decoder": "bench.decoder", "e2e": "bench.e2e", "train-step": "bench.train_step"}
BASELINES = {"kernels": ("eager",), "decoder": ("reference",), "e2e": ("stable-audio-tools", "reference"),
             "train-step": ("reference",)}
# The CPU e2e suite's selectable providers (bench/e2e_cpu.py PROVIDERS; listed here so that parsing the
# arguments imports no suite).
E2E_CPU_PROVIDERS = ("sat", "sat-bf16", "compile", "onnx", "defaults", "fp32", "bf16", "int8", "extras")
RESULTS = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parent / "README.md"


def _csv(kind: str, allowed=None):
    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"empty {kind} list")
        if allowed is not None:
            bad = [s for s in items if s not in allowed]
            if bad:
                raise argparse.ArgumentTypeError(f"unknown {kind} {', '.join(bad)}; choose from {', '.join(allowed)}")
        return items
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description="arc-fast benchmarks (kernels vs peers, decoder, "
                                "end-to-end text-to-audio, ARC train step)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available, else cpu")
    p.add_argument("--suite", type=_csv("suite", tuple(SUITES)), default=list(SUITES),
                   help=f"comma-separated subset of {','.join(SUITES)} (default: all)")
    p.add_argument("--quick", action="store_true", help="tiny shapes and few repeats (a smoke run; numbers mean nothing)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default bench/results, or bench/results/quick)")
    p.add_argument("--compare", type=Path, default=None, help="a previous JSON result: print median ratios")
    p.add_argument("--dtype", type=_csv("dtype", tuple(common.DTYPES)), default=None,
                   help="kernel/decoder dtypes (default: bf16 on cuda, fp32 on cpu)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile providers")
    p.add_argument("--budget-s", type=float, default=None,
                   help="wall-time budget: rows started after it are reported as skipped")
    p.add_argument("--ops", type=_csv("op"), default=None, help="kernels suite: only ops whose name starts with these")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for the CPU run")
    p.add_argument("--e2e-reps", type=int, default=None, help="e2e suite: timed runs per provider (CPU default 3)")
    p.add_argument("--e2e-frames", type=int, default=None,
                   help="e2e suite on the CPU: latent frames (default 256 = the full 11.9 s window; --quick: 2)")
    p.add_argument("--e2e-providers", type=_csv("e2e provider", E2E_CPU_PROVIDERS), default=None,
                   help="e2e suite on the CPU: the providers to run (default all): " + ",".join(E2E_CPU_PROVIDERS)
                        + " (the fp32 reference audio is computed whatever is chosen)")
    p.add_argument("--decoder-compile", action="store_true",
                   help="decoder suite: also time torch.compile of the whole decoder (CUDA; minutes of compile)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--render", type=Path, default=None, metavar="JSON",
                   help="run nothing: re-render the markdown, plots (and README table) of a result JSON into --out "
                        "(default: the JSON's folder), e.g. a GPU result copied into bench/results")
    p.add_argument("--no-readme", action="store_true", help="do not refresh bench/README.md")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.threads is not None and args.threads < 1:
        build_parser().error(f"--threads must be >= 1, got {args.threads}")
    if args.e2e_reps is not None and args.e2e_reps < 1:
        build_parser().error(f"--e2e-reps must be >= 1, got {args.e2e_reps}")
    if args.e2e_frames is not None and args.e2e_frames < 1:
        build_parser().error(f"--e2e-frames must be >= 1, got {args.e2e_frames}")
    if args.budget_s is not None and args.budget_s <= 0:
        build_parser().error(f"--budget-s must be > 0, got {args.budget_s}")
    if args.compare is not None and not args.compare.is_file():
        build_parser().error(f"--compare: no such file {args.compare}")
    if args.render is not None and not args.render.is_file():
        build_parser().error(f"--render: no such file {args.render}")
    return args


def _logger(t0: float):
    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)
    return log


def _write_report(result: dict, out_dir: Path, slug: str, args) -> str:
    """Markdown (+ compare, plots) of ``result`` into ``out_dir``; refreshes README for bench/results."""
    md = common.markdown(result)
    if args.compare is not None:
        md += "\n" + common.compare(result, json.loads(args.compare.read_text()))
    if args.no_plots:
        md += "\nplots: skipped (--no-plots)\n"
    else:
        from . import plotting
        md += "\n" + plotting.plot_all(result, out_dir, slug) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{slug}.md").write_text(md)
    if out_dir.resolve() == RESULTS.resolve() and not args.no_readme:
        common.update_readme(README, slug, md)
    return md


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        result = json.loads(args.render.read_text())
        print(_write_report(result, args.out or args.render.parent, args.render.stem, args))
        return 0
    try:
        device = common.resolve_device(args.device)
    except common.NoDevice as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    log = _logger(t0)
    dtypes = tuple(common.DTYPES[d] for d in (args.dtype or (["bf16"] if device == "cuda" else ["fp32"])))
    out_dir = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    env = common.environment(device)
    slug = common.device_slug(device)
    log(f"device {env['device_name']} | torch {env['torch']} | triton {env['triton']} | commit {env['commit'][:12]}")
    peaks = common.measure_peaks(device, args.quick)
    log(f"peaks: copy {peaks['copy_GBps']} GB/s, {peaks['matmul_dtype']} matmul {peaks['matmul_TFLOPs']} TFLOP/s")
    ctx = common.Context(device=device, quick=args.quick, dtypes=dtypes, peaks=peaks,
                         compile=not (args.no_compile or args.quick),
                         deadline=None if args.budget_s is None else t0 + args.budget_s, log=log,
                         options={"ops": args.ops, "e2e_reps": args.e2e_reps, "e2e_frames": args.e2e_frames,
                                  "e2e_providers": args.e2e_providers,
                                  "decoder_compile": args.decoder_compile})
    notes = []
    if device == "cpu":
        notes.append("CPU numbers: this machine's cores are shared with other processes, so absolute times vary "
                     "run to run; ratios inside one run (interleaved where stated) are the meaningful figures")
    if args.quick:
        notes.append("--quick: tiny shapes, 2 repeats; a smoke run, not a measurement")
    rows: list = []
    argd = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    argd["device"] = device
    json_path = out_dir / f"{slug}.json"
    stopped = None
    signal.signal(signal.SIGTERM, _stop)
    for suite in args.suite:
        log(f"suite {suite}")
        try:
            mod = importlib.import_module(SUITES[suite])
            rows += mod.run(ctx)
        except Stopped:
            # `timeout` (a GPU loan's budget) stopped us mid-suite: keep the rows it finished, say where it stopped.
            rows += ctx.partial
            stopped = suite
            notes.append(f"stopped by SIGTERM during suite {suite!r}: its remaining rows and later suites are missing")
            log(f"SIGTERM during suite {suite}: writing the {len(rows)} finished rows")
            common.fill_speedups(rows, BASELINES)
            break
        except Exception as exc:  # noqa: BLE001 - one broken suite must not lose the others' results
            tb = traceback.format_exc(limit=4)
            log(f"suite {suite} failed:\n{tb}")
            rows.append(common.failed(suite, "(suite)", "", "", "", "", f"{type(exc).__name__}: {exc}"))
        common.fill_speedups(rows, BASELINES)
        common.write_json(common.result_dict(env, peaks, rows, argd, notes), json_path)  # partial results survive
    result = common.result_dict(env, peaks, rows, argd, notes)
    common.write_json(result, json_path)
    md = _write_report(result, out_dir, slug, args)
    print(md)
    n_failed = sum(r.status == "failed" for r in rows)
    log(f"wrote {json_path} and {out_dir / (slug + '.md')} ({len(rows)} rows, {n_failed} failed) "
        f"in {time.monotonic() - t0:.0f}s")
    if stopped is not None:
        return 124
    return 1 if n_failed else 0


class Stopped(BaseException):
    """Raised in the main thread by SIGTERM; a BaseException so that the suites' per-row `except Exception`
    handlers do not swallow it."""


def _stop(signum, frame):
    raise Stopped()
