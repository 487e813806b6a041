"""``arc-fast eval``: score models on the synthetic prompts (adherence, FD, diversity, time); writes
results.md / results.json / results.png. See docs/tiny_model.md.

    arc-fast eval --base runs/pretrain/model --arc runs/arc/export --arc-no-contrastive runs/arc_noc/export \\
        --out docs/tiny_eval

Rows: base model with Euler ``--base-steps`` (50) and CFG ``--cfg-scale``, the base model with Euler 8 (a
few-step baseline without ARC), the ARC model with ping-pong at each of ``--arc-steps`` (8,4,2,1) and CFG 1,
and the ARC model trained without the contrastive loss at the same steps. ``--run LABEL=DIR,SAMPLER,STEPS,CFG``
adds any other row.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from .._errors import report_error


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``eval`` sub-command to an argparse ``subparsers`` object; returns its parser."""
    p = subparsers.add_parser("eval", help="evaluate models on the synthetic prompts (docs/tiny_model.md)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", default=None, help="base (rectified-flow) model folder")
    p.add_argument("--arc", default=None, help="ARC model folder")
    p.add_argument("--arc-no-contrastive", default=None, help="ARC model trained with w_con = 0")
    p.add_argument("--run", action="append", default=[], metavar="LABEL=DIR,SAMPLER,STEPS,CFG", help="extra row")
    p.add_argument("--base-steps", type=int, default=50)
    p.add_argument("--cfg-scale", type=float, default=4.0, help="CFG scale of the base model rows")
    p.add_argument("--arc-steps", default="8,4,2,1", help="comma-separated ping-pong step counts")
    p.add_argument("--no-contrastive-steps", default=None, help="step counts for the w/o L_C rows (default: --arc-steps)")
    p.add_argument("--samples", type=int, default=8, help="samples per prompt")
    p.add_argument("--prompts", default=None, help="text file, one prompt per line (default: the built-in set)")
    p.add_argument("--classifier", default=None, help="trained classifier .pt (default: train one, saved in --out)")
    p.add_argument("--classifier-clips", type=int, default=2000)
    p.add_argument("--classifier-steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="eval_out", help="output folder")
    p.add_argument("--device", default="cpu")


def _steps(s: str) -> list[int]:
    try:
        out = [int(x) for x in s.split(",") if x.strip()]
    except ValueError as exc:
        raise ValueError(f"step list {s!r} must be comma-separated integers") from exc
    if not out or any(v < 1 for v in out):
        raise ValueError(f"step list {s!r} must hold positive integers")
    return out


def settings_from_args(args):
    """The rows (``runner.Setting``) requested by parsed arguments."""
    from .runner import Setting
    rows = []
    if args.base:
        rows.append(Setting(f"base Euler {args.base_steps} + CFG", args.base, "euler", args.base_steps, args.cfg_scale))
        rows.append(Setting("base Euler 8 + CFG", args.base, "euler", 8, args.cfg_scale))
    if args.arc:
        for n in _steps(args.arc_steps):
            rows.append(Setting(f"ARC ping-pong {n}", args.arc, "pingpong", n, 1.0))
    if args.arc_no_contrastive:
        for n in _steps(args.no_contrastive_steps or args.arc_steps):
            rows.append(Setting(f"ARC w/o L_C ping-pong {n}", args.arc_no_contrastive, "pingpong", n, 1.0))
    for item in args.run:
        try:
            label, rest = item.split("=", 1)
            model, sampler, steps, cfg = rest.split(",")
            rows.append(Setting(label, model, sampler, int(steps), float(cfg)))
        except ValueError as exc:
            raise ValueError(f"--run {item!r} must look like LABEL=DIR,SAMPLER,STEPS,CFG") from exc
    if not rows:
        raise ValueError("nothing to evaluate: give --base, --arc, --arc-no-contrastive or --run")
    for r in rows:
        if not os.path.isdir(r.model):
            raise FileNotFoundError(f"model folder not found: {r.model}")
    return rows


def run(args) -> int:
    """Run the evaluation for parsed ``args``; returns the exit code (one-line errors)."""
    try:
        import torch
        from ..data.synthetic import EVAL_PROMPTS, HELDOUT_PROMPTS
        from .classifier import load_classifier, train_classifier
        from .runner import evaluate, markdown_table, write_results
        settings = settings_from_args(args)
        if args.prompts:
            with open(args.prompts) as f:
                prompts = [ln.strip() for ln in f if ln.strip()]
        else:
            prompts = list(EVAL_PROMPTS) + list(HELDOUT_PROMPTS)
        if args.samples < 2:
            raise ValueError(f"--samples must be >= 2 (diversity needs pairs), got {args.samples}")
        clf = None
        if args.classifier and os.path.isfile(args.classifier):
            clf, info = load_classifier(args.classifier)  # before --out exists: a bad file leaves nothing behind
        os.makedirs(args.out, exist_ok=True)
        if clf is None:
            path = args.classifier or os.path.join(args.out, "classifier.pt")
            clf, info = train_classifier(n=args.classifier_clips, steps=args.classifier_steps, out_path=path)
            print(f"classifier trained: held-out accuracy {info['accuracy']}", flush=True)
        torch.manual_seed(args.seed)
        result = evaluate(settings, prompts, clf, samples=args.samples, seed=args.seed, device=args.device,
                          log=lambda s: print(s, flush=True))
        result["classifier"] = info
        command = "arc-fast eval " + " ".join(shlex.quote(a) for a in getattr(args, "argv", []) or [])
        paths = write_results(result, args.out, command=command if getattr(args, "argv", None) else None)
        print(markdown_table(result))
        print("wrote " + ", ".join(paths.values()))
        return 0
    except KeyboardInterrupt:
        print("arc-fast eval: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI contract: one line, no traceback
        return report_error("arc-fast eval", exc)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m arc_fast.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return run(args)
