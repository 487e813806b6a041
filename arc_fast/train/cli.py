"""``arc-fast train`` / ``python -m arc_fast.train``: run ARC post-training from a JSON config.

Exit codes: 0 done, 2 bad config/data or other error (one line, no traceback unless ARC_FAST_DEBUG=1),
3 stopped on a non-finite loss (the last good checkpoint is kept), 130 interrupted.
"""
from __future__ import annotations

import argparse
import os
import sys

from .._errors import report_error


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` sub-command to an argparse ``subparsers`` object; returns its parser."""
    p = subparsers.add_parser("train", help="ARC post-training from a JSON config (docs/train.md)",
                              description="ARC post-training (also: torchrun --nproc-per-node N -m arc_fast.train ...)")
    _add_arguments(p)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="JSON config file (keys: docs/train.md)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue from <out_dir>/checkpoints/last.pt (or the given checkpoint)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (value parsed as JSON when possible); repeatable")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda:LOCAL_RANK when available)")


def run(args) -> int:
    """Run training for parsed ``args`` (from ``add_parser``). Returns the exit code; one-line errors."""
    from .config import TrainConfig, parse_override
    from .trainer import ARCTrainer, NonFiniteLossError

    trainer = None
    try:
        cfg = TrainConfig.from_json(args.config)
        if args.set:
            cfg = cfg.replace(**dict(parse_override(s) for s in args.set))
        trainer = ARCTrainer(cfg, resume=args.resume, device=args.device)
        metrics = trainer.train()
        if trainer.dist.is_main:
            shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("loss_g", "loss_d", "d_acc") if k in metrics)
            print(f"arc-fast train: done at step {trainer.step}"
                  + (f" ({shown})" if shown else "")
                  + f"; checkpoint {trainer.last_checkpoint}"
                  + (f"; model {cfg.export_dir or os.path.join(cfg.out_dir, 'export')}" if cfg.export_on_finish else ""))
        return 0
    except NonFiniteLossError as exc:
        print(f"arc-fast train: stopped: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("arc-fast train: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI contract: one line, no traceback
        return report_error("arc-fast train", exc)
    finally:
        if trainer is not None:
            trainer.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m arc_fast.train", description="ARC post-training from a JSON config")
    _add_arguments(p)
    return run(p.parse_args(argv))
