"""Command line: ``arc-fast generate | convert | export | info | train | eval`` (also ``python -m arc_fast ...``).

Every failure prints one line ``arc-fast: error: <what> (<what to do>)`` and exits non-zero, without a
traceback and without leaving a partial output file (set ARC_FAST_DEBUG=1 for the traceback). Loader notes
(EMA chosen, discriminator ignored, model kind and its defaults) are printed as ``note:`` lines on stdout.
"""
from __future__ import annotations

import argparse
import errno
import math
import os
import sys
import tempfile

from ._errors import report_error
from .limits import MAX_BATCH, MAX_STEPS, SEED_RANGE  # noqa: F401 - MAX_* public here too


class CLIError(Exception):
    """A user-facing error: printed as one line."""


# Upper bounds of the options that set how much work a command does: --steps and --batch-size share
# Pipeline.__call__'s (MAX_STEPS, MAX_BATCH: arc_fast.limits says why).
# --frames (export): the measured DiT forward attends over all frames at once; 8192 frames are ~6 min of
#   audio at SAO's 46 ms per frame, far past any released model's window.
MAX_FRAMES = 8192


def _parse(kind, s: str):
    """float(s) / int(s), or the one-line argparse error that names what was expected."""
    try:
        return kind(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {'a number' if kind is float else 'an integer'}: {s!r}") from None


def _finite_float(s: str) -> float:
    v = _parse(float, s)
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {s}")
    return v


def _positive_float(s: str) -> float:
    v = _parse(float, s)
    if not math.isfinite(v) or not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 and finite, got {s}")
    return v


def _unit_interval(s: str) -> float:
    v = _positive_float(s)
    if v > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {s}")
    return v


def _positive_int(s: str) -> int:
    v = _parse(int, s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {s}")
    return v


def _bounded_int(upper: int, why: str):
    def parse(s: str) -> int:
        v = _positive_int(s)
        if v > upper:
            raise argparse.ArgumentTypeError(f"must be <= {upper} ({why}), got {s}")
        return v
    return parse


def _seed(s: str) -> int:
    v = _parse(int, s)
    if not SEED_RANGE[0] <= v < SEED_RANGE[1]:  # what torch.Generator.manual_seed accepts
        raise argparse.ArgumentTypeError(f"must be an integer in [-2**63, 2**64), got {s}")
    return v


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (the CLI contract) instead of the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="model_config.json to use (default: the one beside the model)")
    p.add_argument("--dit", default=None, help="DiT weights as a separate file (replaces/supplies the model's)")
    p.add_argument("--autoencoder", default=None,
                   help="autoencoder weights as a separate file (replaces/supplies the model's)")
    p.add_argument("--no-ema", dest="ema", action="store_false", default=None,
                   help="use the online weights of a training checkpoint (default: its EMA weights)")
    p.add_argument("--allow-partial", action="store_true", help="load checkpoints with missing/unexpected keys (warn)")
    p.add_argument("--model-kind", choices=["arc", "base"], default=None,
                   help="override the detected kind (arc: ping-pong/8 steps/CFG 1; base: Euler/100/CFG 7)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="arc-fast", description="Fast text-to-audio generation (ARC, fused kernels)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("generate", help="generate audio from a text prompt, or one clip per line of --prompts FILE")
    g.add_argument("prompt", nargs="?", default=None, help="text prompt (or --prompts FILE)")
    g.add_argument("--prompts", default=None, metavar="FILE",
                   help="a UTF-8 text file, one prompt per line (blank lines skipped): the model is loaded once, "
                        "-o names a folder and line i (from 0) becomes NNN.<format> there, with seed S + i (S: --seed, "
                        "else one random seed, printed)")
    g.add_argument("-o", "--output", default=None,
                   help="output file, its format from the extension: .wav, .flac or .ogg (default out.wav); "
                        "with --prompts, the output folder (created if missing)")
    g.add_argument("--format", choices=sorted(AUDIO_FORMATS), default=None,
                   help="with --prompts: the files' format (default wav)")
    g.add_argument("--seconds", type=_positive_float, default=None,
                   help="length in seconds (default: the init audio's, else the model's window)")
    g.add_argument("--steps", type=_bounded_int(MAX_STEPS, "samplers converge long before"), default=None,
                   help=f"sampling steps, 1-{MAX_STEPS} (default per model)")
    g.add_argument("--cfg-scale", type=_finite_float, default=None,
                   help="classifier-free guidance scale (default per model)")
    g.add_argument("--sampler", choices=["pingpong", "euler"], default=None, help="sampler (default per model)")
    g.add_argument("--negative-prompt", default=None, metavar="TEXT",
                   help="what classifier-free guidance steers away from (models sampled with CFG != 1; every clip)")
    g.add_argument("--seed", type=_seed, default=None,
                   help="random seed (default: a random one, printed, so that the clip can be made again)")
    g.add_argument("--batch-size", type=_bounded_int(MAX_BATCH, "memory; run again with other seeds for more"),
                   default=1, help=f"number of clips, 1-{MAX_BATCH} (files get _i suffixes)")
    g.add_argument("--model", default=None,
                   help="model folder or checkpoint file, any Stable Audio layout (default: the bundled model)")
    _add_source_args(g)
    g.add_argument("--init-audio", default=None, help="audio-to-audio: a sound file (any rate / channel count)")
    g.add_argument("--init-noise-level", type=_unit_interval, default=None,
                   help="where sampling starts for --init-audio, in (0, 1] (default 0.7; 1 ignores the audio)")
    g.add_argument("--short-window", action="store_true",
                   help="sample only the latent frames --seconds needs (faster short clips; for models that tolerate it)")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    g.add_argument("--dtype", choices=["auto", "fp32", "fp16", "bf16", "int8"], default="auto",
                   help="precision (auto: bf16 on CUDA; on the CPU per stage, bf16 where the CPU has native bf16, "
                        "else fp32 - see `arc-fast info`; int8: torchao dynamic int8 DiT on the CPU, bf16/fp32 "
                        "decoder as auto); the decoder falls back to fp32 on NaN/Inf")
    g.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU threads (default: the physical cores this process may use)")
    g.add_argument("--reference", action="store_true", help="use the eager reference modules instead of the fused ones")
    g.add_argument("--cuda-graph", action="store_true",
                   help="CUDA only: run the sampling loop and the decode as captured CUDA graphs")
    g.add_argument("--compile", action="store_true", help="run the DiT through torch.compile (slow first call)")
    g.add_argument("--quiet", action="store_true", help="no progress bar and no notes")

    c = sub.add_parser("convert", help="write a model in the unwrapped inference layout (.safetensors + config)")
    c.add_argument("model", nargs="?", default=None,
                   help="model folder or checkpoint (Lightning/EMA/ARC/trainer layouts included)")
    c.add_argument("-o", "--output", required=True, help="output folder (must be empty unless --overwrite)")
    _add_source_args(c)
    c.add_argument("--split", action="store_true",
                   help="write dit.safetensors (+ conditioner) and autoencoder.safetensors instead of one file")
    c.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None, help="cast float weights")
    c.add_argument("--int8", action="store_true", help="store the DiT's block linears as int8 (CPU inference)")
    c.add_argument("--overwrite", action="store_true", help="replace model files already in the output folder")

    e = sub.add_parser("export", help="int8 DiT export for CPU inference, with its error and speed vs fp32")
    e.add_argument("model", nargs="?", default=None, help="model folder or checkpoint (default: the bundled model)")
    e.add_argument("-o", "--output", required=True, help="output folder (must be empty unless --overwrite)")
    _add_source_args(e)
    e.add_argument("--frames", type=_bounded_int(MAX_FRAMES, "about 6 min of audio"), default=None,
                   help="latent frames of the measured DiT forward (default: the model's window)")
    e.add_argument("--overwrite", action="store_true", help="replace model files already in the output folder")

    sub.add_parser("info", help="which backends are live on this machine, and why not")
    sub.add_parser("train", help="ARC post-training from a JSON config (arc-fast train --help)", add_help=False)
    sub.add_parser("eval", help="evaluate models on the synthetic prompts (arc-fast eval --help)", add_help=False)
    return p


# Output formats by file extension: (soundfile container, subtype). 16-bit PCM for the lossless ones.
AUDIO_FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS")}


def _audio_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in AUDIO_FORMATS:
        raise CLIError(f"cannot write {path!r}: the output format comes from the extension, one of "
                       f"{', '.join('.' + e for e in AUDIO_FORMATS)}")
    return ext


def _check_output_folder(path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise CLIError(f"output folder does not exist: {directory} (create it first)")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CLIError(f"output folder is not writable: {directory} (choose another -o)")


def _write_audio_files(paths: list[str], clips, sample_rate: int) -> None:
    """Write clip i ((C, S) float) to ``paths[i]``, format from the extension, all or nothing: every clip is
    encoded in memory and written to a temporary file beside its target (fsynced) before any target is
    replaced."""
    import io

    import soundfile as sf

    temps: list[str] = []
    try:
        for path, clip in zip(paths, clips):
            _check_output_folder(path)
            fmt, subtype = AUDIO_FORMATS[_audio_format(path)]
            buf = io.BytesIO()
            sf.write(buf, clip.T.numpy(), sample_rate, format=fmt, subtype=subtype)
            # Python file I/O, not libsndfile's: a full disk is then an OSError with the path and errno,
            # not libsndfile's bare "System error.".
            fd, tmp = tempfile.mkstemp(suffix=os.path.splitext(path)[1], dir=os.path.dirname(os.path.abspath(path)),
                                       prefix=".arc-fast-")
            temps.append(tmp)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(buf.getvalue())
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:
                if exc.filename is None:  # write() and fsync() do not say which file: name the one the user asked for
                    raise OSError(exc.errno, exc.strerror or str(exc), path) from exc
                raise
        for path, tmp in zip(paths, temps):
            os.replace(tmp, path)
    finally:
        for tmp in temps:
            if os.path.exists(tmp):
                os.remove(tmp)


def _os_error_line(exc: OSError) -> str:
    """One line for an OS error: the OS's own message, the path, and what to do about the common ones."""
    what = exc.strerror or str(exc)
    path = exc.filename if exc.filename is not None else "?"
    if exc.filename2 is not None:
        path = f"{path} -> {exc.filename2}"
    hint = {errno.ENOSPC: "free some space or write elsewhere", errno.EDQUOT: "free some space or write elsewhere",
            errno.EACCES: "check the permissions or write elsewhere", errno.EPERM: "check the permissions",
            errno.EROFS: "write elsewhere", errno.ENOENT: "check the path"}.get(exc.errno, "")
    return f"{what}: {path}" + (f" ({hint})" if hint else "")


# How torch reports a failed allocation (CUDA's OutOfMemoryError and the CPU allocator's RuntimeError).
_OOM_MESSAGES = ("out of memory", "not enough memory", "can't allocate memory")


def _for_file(audio):
    """(C, S) float audio scaled into [-1, 1] when it exceeds it (no clipping in 16-bit files)."""
    peak = audio.abs().amax().item()
    return audio / peak if peak > 1.0 else audio


def _read_prompts(path: str) -> list[tuple[int, str]]:
    """(line index from 0, prompt) for each non-blank line of a UTF-8 file."""
    if not os.path.isfile(path):
        raise CLIError(f"prompts file not found: {path} (give a text file with one prompt per line)")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as exc:
        raise CLIError(f"prompts file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    prompts = [(i, line.strip()) for i, line in enumerate(lines) if line.strip()]
    if not prompts:
        raise CLIError(f"prompts file {path} has no prompt (one prompt per line)")
    return prompts


def _kind(args):
    return None if args.model_kind is None else args.model_kind == "arc"


def _notes(notes, quiet=False) -> None:
    if not quiet:
        for n in notes:
            print(f"note: {n}")


def _generate(args) -> int:
    import torch

    from .pipeline import GenerationError, load_pipeline

    if (args.prompt is None) == (args.prompts is None):
        raise CLIError("give either a prompt or --prompts FILE (one prompt per line)" if args.prompt is None else
                       "give either a prompt or --prompts FILE, not both")
    if args.prompts is not None:
        prompts = _read_prompts(args.prompts)
        if args.seed is not None and args.seed + prompts[-1][0] >= 2 ** 64:
            raise CLIError(f"--seed {args.seed} + line index {prompts[-1][0]} is past the largest seed (2**64 - 1); "
                           f"give a smaller --seed")
        if args.output is None:
            raise CLIError("--prompts needs -o DIR (the folder the clips are written to)")
        if os.path.isfile(args.output):
            raise CLIError(f"with --prompts, -o names a folder; {args.output} is a file")
        parent = os.path.dirname(os.path.abspath(args.output))
        if not os.path.isdir(parent):  # checked before the model loads
            raise CLIError(f"output folder's parent does not exist: {parent} (create it first)")
        if args.batch_size != 1:
            raise CLIError("--batch-size applies to one prompt; with --prompts every line is one clip")
        if args.init_audio is not None:
            raise CLIError("--init-audio applies to one prompt (drop --prompts or --init-audio)")
        args.format = args.format or "wav"
    else:
        if args.format is not None:
            raise CLIError("--format applies to --prompts; for one file the extension of -o picks the format")
        args.output = args.output or "out.wav"
        _audio_format(args.output)
        if not args.prompt.strip():
            raise CLIError("empty prompt (give a text description of the sound)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda but no CUDA device is available (use --device cpu)")
    if args.cuda_graph and (args.device == "cpu" or not torch.cuda.is_available()):
        raise CLIError("--cuda-graph needs a CUDA device (drop --cuda-graph to run on the CPU)")
    if args.init_noise_level is not None and args.init_audio is None:
        raise CLIError("--init-noise-level needs --init-audio")
    if args.init_audio is not None and not os.path.isfile(args.init_audio):
        raise CLIError(f"init audio not found: {args.init_audio}")
    _check_source_files(args)
    _check_device(args.device)
    if args.prompts is None:
        stem, ext = os.path.splitext(args.output)
        outputs = [args.output] if args.batch_size == 1 else [f"{stem}_{i}{ext}" for i in range(args.batch_size)]
        for path in outputs:
            _check_output_folder(path)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.dtype == "int8" and device != "cpu":
        raise CLIError("--dtype int8 is a CPU path (torchao); use --dtype bf16 on CUDA")
    if device == "cpu":
        from .cpu import physical_cores
        torch.set_num_threads(args.threads or physical_cores())
    ae_dtype = None
    if args.dtype == "int8":
        from .cpu import choose_precisions, torchao_available
        missing = torchao_available()
        if missing is not None:
            raise CLIError(f"--dtype int8: {missing}")
        ae_dtype = choose_precisions().dtypes()[1]
    pipe = load_pipeline(args.model, device=device, dtype=args.dtype, autoencoder_dtype=ae_dtype,
                         allow_partial=args.allow_partial,
                         fast=not args.reference, config=args.config, dit=args.dit, autoencoder=args.autoencoder,
                         ema=args.ema, arc_post_trained=_kind(args))
    _notes(pipe.load_notes, args.quiet)
    if args.seconds is not None and args.seconds * pipe.sample_rate < pipe.hop:
        frame = pipe.hop / pipe.sample_rate
        raise CLIError(f"--seconds {args.seconds:g} is shorter than one latent frame ({frame:.4f} s = {pipe.hop} "
                       f"samples at {pipe.sample_rate} Hz); no file written")
    if args.negative_prompt is not None:
        _check_negative_prompt(args, pipe)
    if args.compile:
        pipe.compile()
    if args.prompts is not None:
        return _generate_many(args, pipe, prompts)
    try:
        audio, sr = pipe(args.prompt, seconds=args.seconds, steps=args.steps, cfg_scale=args.cfg_scale,
                         sampler=args.sampler, seed=args.seed, batch_size=args.batch_size,
                         init_audio=args.init_audio, init_noise_level=args.init_noise_level,
                         short_window=True if args.short_window else None, progress=not args.quiet,
                         cuda_graph=args.cuda_graph, negative_prompt=args.negative_prompt)
    except GenerationError as exc:
        raise CLIError(f"{exc}; no file written") from exc
    except (MemoryError, RuntimeError) as exc:
        text = str(exc).lower()
        if not (isinstance(exc, MemoryError) or any(m in text for m in _OOM_MESSAGES)):
            raise
        raise CLIError(f"out of memory generating {args.batch_size} clip(s) on {pipe.device.type} (lower --batch-size "
                       f"or --seconds); no file written") from exc
    if audio.shape[0] != len(outputs):
        raise CLIError(f"the model returned {audio.shape[0]} clip(s) for --batch-size {args.batch_size}; "
                       f"no file written")
    if not torch.isfinite(audio).all():  # the pipeline's guard catches this first; kept as the last line of defence
        raise CLIError("the model produced NaN/Inf audio (try --dtype fp32); no file written")
    audio = _for_file(audio)  # one scale for the batch
    _write_audio_files(outputs, audio, sr)
    t = pipe.last_timings
    sampler = pipe.defaults()["sampler"] if args.sampler is None else args.sampler
    print(f"wrote {', '.join(outputs)}: {audio.shape[1]} ch, {audio.shape[-1] / sr:.2f} s @ {sr} Hz "
          f"({sampler}, device {pipe.device.type}, seed {pipe.last_seed}: --seed {pipe.last_seed} makes it again)")
    print(f"timings: {t.summary()}")
    return 0


def _check_negative_prompt(args, pipe) -> None:
    """The pipeline's rule for a negative prompt (guards.negative_prompts), in the CLI's flag names."""
    from .guards import negative_prompts

    cfg = pipe.defaults()["cfg_scale"] if args.cfg_scale is None else args.cfg_scale
    try:
        negative_prompts(args.negative_prompt, 1, cfg, pipe.has_text and bool(pipe.cross_ids))
    except ValueError as exc:
        raise CLIError(str(exc).replace("negative_prompt", "--negative-prompt").replace("cfg_scale", "--cfg-scale")) from None


def _check_source_files(args) -> None:
    """--config/--dit/--autoencoder name files: say which one is missing before anything is loaded."""
    for flag in ("config", "dit", "autoencoder"):
        path = getattr(args, flag, None)
        if path is not None and not os.path.isfile(path):
            what = "not a file" if os.path.exists(path) else "not found"
            raise CLIError(f"--{flag} {what}: {path}")


def _check_device(device) -> None:
    import torch
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise CLIError(f"--device {device!r} is not a device (cpu, cuda or cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise CLIError(f"--device {device!r}: only cpu and cuda are supported")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise CLIError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def _generate_many(args, pipe, prompts: list[tuple[int, str]]) -> int:
    """--prompts: one clip per line with the model loaded once; every file or none.

    Clips are written to a hidden staging folder beside the output folder and moved in only when all of them
    are done, so a failure (or Ctrl-C) part-way leaves the output folder as it was."""
    import shutil

    import torch
    from tqdm import tqdm

    from .pipeline import GenerationError
    from .sampling import random_seed

    out_dir = os.path.abspath(args.output)
    parent = os.path.dirname(out_dir)
    base = random_seed() if args.seed is None else args.seed
    width = max(3, len(str(prompts[-1][0])))
    names = [f"{i:0{width}d}.{args.format}" for i, _ in prompts]
    staging = tempfile.mkdtemp(prefix=".arc-fast-", dir=parent)
    try:
        bar = tqdm(prompts, desc="clips", unit="clip", disable=args.quiet, file=sys.stderr)
        for (i, prompt), name in zip(bar, names):
            seed = base + i
            try:
                audio, sr = pipe(prompt, seconds=args.seconds, steps=args.steps, cfg_scale=args.cfg_scale,
                                 sampler=args.sampler, seed=seed, short_window=True if args.short_window else None,
                                 progress=False, cuda_graph=args.cuda_graph, negative_prompt=args.negative_prompt)
            except GenerationError as exc:
                raise CLIError(f"line {i} ({prompt!r}): {exc}; no file written") from exc
            if not torch.isfinite(audio).all():
                raise CLIError(f"line {i} ({prompt!r}): NaN/Inf audio (try --dtype fp32); no file written")
            _write_audio_files([os.path.join(staging, name)], [_for_file(audio[0])], sr)
        os.makedirs(out_dir, exist_ok=True)
        for name in names:
            os.replace(os.path.join(staging, name), os.path.join(out_dir, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"wrote {len(names)} clips to {args.output}: {names[0]} .. {names[-1]} ({sr} Hz, seed {base} + line "
          f"index: --seed {base} makes them again)")
    return 0


def _convert(args, int8: bool) -> dict:
    from .pipeline import convert_model

    _check_source_files(args)

    return convert_model(args.model, args.output, config=args.config, dit=args.dit, autoencoder=args.autoencoder,
                         ema=args.ema, split=getattr(args, "split", False), dtype=getattr(args, "dtype", None),
                         int8=int8, allow_partial=args.allow_partial, arc_post_trained=_kind(args),
                         overwrite=args.overwrite)


def _convert_cmd(args) -> int:
    out = _convert(args, args.int8)
    _notes(out["notes"])
    kind = "ARC post-trained" if out["arc_post_trained"] else "base"
    print(f"wrote {', '.join(out['files'])} ({kind} model)")
    return 0


def _export_cmd(args) -> int:
    import torch

    from .cpu import torchao_available
    from .pipeline import compare_dit, load_pipeline

    out = _convert(args, True)
    _notes(out["notes"])
    print(f"wrote {', '.join(out['files'])} (int8 DiT)")
    missing = torchao_available()
    if missing is not None:   # the export itself is done; only its measurement needs the int8 compute path
        print(f"int8 DiT not measured: {missing}")
        return 0
    ref = load_pipeline(args.model, device="cpu", dtype="fp32", config=args.config, dit=args.dit,
                        autoencoder=args.autoencoder, ema=args.ema, allow_partial=args.allow_partial)
    q = load_pipeline(args.output, device="cpu", dtype="int8")
    frames = args.frames or ref.sample_size // ref.hop
    r = compare_dit(ref.dit, q.dit, frames=frames)
    print(f"int8 DiT (torchao) vs fp32 ({frames} latent frames, batch 1, CPU, {torch.get_num_threads()} threads): "
          f"relative error {r['relative_error']:.2e}; forward {r['reference_seconds'] * 1e3:.1f} ms fp32, "
          f"{r['candidate_seconds'] * 1e3:.1f} ms int8")
    return 0


# Sub-commands that live in their own packages (imported only when run, so that the rest of the CLI works
# where their dependencies are missing): name -> (module with add_parser(subparsers) and run(args), what, extra).
DELEGATED = {
    "train": ("arc_fast.train.cli", "training", "train"),
    "eval": ("arc_fast.eval.cli", "evaluation", "dev"),
}


def _delegate(name: str, argv: list[str]) -> int:
    import importlib
    module, what, extra = DELEGATED[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        print(f"arc-fast: error: {what} is unavailable here: {exc} (pip install 'arc-fast[{extra}]')", file=sys.stderr)
        return 2
    p = _Parser(prog="arc-fast", description=what)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    mod.add_parser(sub)
    args = p.parse_args([name, *argv])
    args.argv = list(argv)  # the command line as given (eval records it in its results)
    return mod.run(args)


def _one_line_warning(message, category, filename, lineno, line=None):
    return f"arc-fast: warning: {message}\n"


def main(argv=None) -> int:
    import warnings
    if "torch" not in sys.modules:
        # Transparent huge pages for torch's large CPU buffers (read once, when torch starts): the decoder's
        # hundreds-of-MB activations then fault in 512x fewer pages (a fresh 134 MB buffer: 28 vs 69 ms measured).
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    warnings.formatwarning = _one_line_warning
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        return _delegate(argv[0], argv[1:])  # their own parsers and one-line error handling
    args = _parser().parse_args(argv)
    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "convert":
            return _convert_cmd(args)
        if args.command == "export":
            return _export_cmd(args)
        if args.command == "info":
            from .info import main as info_main
            return info_main()
    except KeyboardInterrupt:
        print("arc-fast: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI contract: one line, no traceback
        if isinstance(exc, OSError) and exc.errno is not None and os.environ.get("ARC_FAST_DEBUG") != "1":
            # Disk full, permissions, ...: the OS's message and the path, not a library's paraphrase.
            print(f"arc-fast: error: {_os_error_line(exc)}", file=sys.stderr)
            return 2
        hint = " (or use a model whose text conditioner needs no T5)" if (
            isinstance(exc, ImportError) and "transformers" in str(exc)) else ""
        return report_error("arc-fast", exc, hint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
