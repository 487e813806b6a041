"""Command line: ``arc-fast generate | info | bench`` (also ``python -m arc_fast ...``).

Every failure prints one line ``arc-fast: error: <what> (<what to do>)`` and exits non-zero, without a
traceback and without leaving a partial output file (set ARC_FAST_DEBUG=1 for the traceback).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile


class CLIError(Exception):
    """A user-facing error: printed as one line."""


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}")
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
    return v


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {s!r}")
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {s}")
    return v


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (the CLI contract) instead of the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="arc-fast", description="Fast text-to-audio generation (ARC, fused kernels)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    g = sub.add_parser("generate", help="generate a wav from a text prompt")
    g.add_argument("prompt", help="text prompt")
    g.add_argument("-o", "--output", default="out.wav", help="output .wav path (default out.wav)")
    g.add_argument("--seconds", type=_positive_float, default=None, help="length in seconds (default: the model's window)")
    g.add_argument("--steps", type=_positive_int, default=None, help="sampling steps (default per model)")
    g.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance scale (default per model)")
    g.add_argument("--sampler", choices=["pingpong", "euler"], default=None, help="sampler (default per model)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--batch-size", type=_positive_int, default=1, help="number of clips (files get _i suffixes)")
    g.add_argument("--model", default=None, help="model directory or checkpoint (default: the bundled model)")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    g.add_argument("--allow-partial", action="store_true", help="load checkpoints with missing/unexpected keys (warn)")
    g.add_argument("--reference", action="store_true", help="use the eager reference modules instead of the fused ones")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    sub.add_parser("info", help="which backends are live on this machine, and why not")
    return p


def _write_wav(path: str, audio, sample_rate: int) -> None:
    import soundfile as sf

    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise CLIError(f"output folder does not exist: {directory} (create it first)")
    fd, tmp = tempfile.mkstemp(suffix=".wav", dir=directory, prefix=".arc-fast-")
    os.close(fd)
    try:
        sf.write(tmp, audio.T.numpy(), sample_rate, subtype="PCM_16")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _generate(args) -> int:
    import torch

    from .pipeline import load_pipeline

    if not args.output.lower().endswith(".wav"):
        raise CLIError(f"output must be a .wav file, got {args.output!r}")
    if not args.prompt.strip():
        raise CLIError("empty prompt (give a text description of the sound)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda but no CUDA device is available (use --device cpu)")
    pipe = load_pipeline(args.model, device=args.device, allow_partial=args.allow_partial, fast=not args.reference)
    audio, sr = pipe(args.prompt, seconds=args.seconds, steps=args.steps, cfg_scale=args.cfg_scale,
                     sampler=args.sampler, seed=args.seed, batch_size=args.batch_size, progress=not args.quiet)
    outputs = [args.output] if audio.shape[0] == 1 else [
        f"{os.path.splitext(args.output)[0]}_{i}.wav" for i in range(audio.shape[0])]
    peak = audio.abs().amax().item()
    if not torch.isfinite(audio).all():
        raise CLIError("the model produced NaN/Inf audio (check the checkpoint and dtype); nothing written")
    if peak > 1.0:
        audio = audio / peak  # avoid clipping in the 16-bit file
    for i, path in enumerate(outputs):
        _write_wav(path, audio[i], sr)
    t = pipe.last_timings
    print(f"wrote {', '.join(outputs)}: {audio.shape[1]} ch, {audio.shape[-1] / sr:.2f} s @ {sr} Hz "
          f"({pipe.defaults()['sampler'] if args.sampler is None else args.sampler}, device {pipe.device.type})")
    print(f"timings: {t.summary()}")
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "info":
            from .info import main as info_main
            return info_main()
    except KeyboardInterrupt:
        print("arc-fast: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI contract: one line, no traceback
        if os.environ.get("ARC_FAST_DEBUG") == "1":
            raise
        msg = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        print(f"arc-fast: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
