#!/usr/bin/env python
"""Stage 4 of the tiny model: evaluate the base model (Euler 50 + CFG, and Euler 8), ARC (ping-pong 8/4/2/1)
and ARC without the contrastive loss with `arc-fast eval`; writes results.md / .json / .png.

    python scripts/train_tiny/04_eval.py --out /work/tiny_runs --results docs/tiny_eval     # full
    python scripts/train_tiny/04_eval.py --out /tmp/t --results /tmp/t/eval --quick         # CI: seconds
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="run folder of stages 1-3")
    p.add_argument("--results", default=None, help="where the tables go (default <out>/eval)")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--cfg-scale", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (CI)")
    a = p.parse_args(argv)
    import torch
    from arc_fast.eval.cli import main as eval_main
    torch.set_num_threads(a.threads)
    results = a.results or os.path.join(a.out, "eval")
    args = ["--base", os.path.join(a.out, "pretrain", "model"), "--arc", os.path.join(a.out, "arc", "export"),
            "--arc-no-contrastive", os.path.join(a.out, "arc_noc", "export"), "--out", results,
            "--classifier", os.path.join(a.out, "classifier.pt"), "--cfg-scale", str(a.cfg_scale),
            "--seed", str(a.seed)]
    if a.quick:
        os.makedirs(results, exist_ok=True)
        prompts = os.path.join(results, "prompts.txt")
        with open(prompts, "w") as f:
            f.write("a low sine tone at 220 Hz\na fast hi-hat pattern at 160 bpm\n")
        args += ["--samples", "2", "--prompts", prompts, "--base-steps", "2", "--arc-steps", "1",
                 "--no-contrastive-steps", "1", "--classifier-clips", "16", "--classifier-steps", "2"]
    else:
        args += ["--samples", str(a.samples), "--no-contrastive-steps", "8"]
    return eval_main(args)


if __name__ == "__main__":
    sys.exit(main())
