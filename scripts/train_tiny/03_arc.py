#!/usr/bin/env python
"""Stage 3 of the tiny model: ARC post-training of the base model with arc_fast.train.ARCTrainer, with the
contrastive loss (<out>/arc) and, for the ablation, without it (<out>/arc_noc, w_con = 0).

    python scripts/train_tiny/03_arc.py --out /work/tiny_runs                      # full, both runs
    python scripts/train_tiny/03_arc.py --out /work/tiny_runs --only arc           # one of them
    python scripts/train_tiny/03_arc.py --out /tmp/t --quick                       # CI: seconds
    python scripts/train_tiny/03_arc.py --out RUN --only arc --lr-d 1e-3 --w-con 3 --exit-layer 2   # a faster,
        # prompt-aware D: better pitch and FD than the bundled run's settings (docs/tiny_model.md)
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="run folder of stages 1-2")
    p.add_argument("--steps", type=int, default=1000, help="total ARC steps (G and D alternate)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4, help="lr of G (and of D unless --lr-d)")
    p.add_argument("--lr-d", type=float, default=None, help="lr of D (default: --lr)")
    p.add_argument("--w-con", type=float, default=1.0, help="weight of the contrastive loss in the 'arc' run")
    p.add_argument("--exit-layer", type=int, default=1, help="D's trunk: the DiT up to this block (0-based)")
    p.add_argument("--only", choices=["arc", "arc_noc"], default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (CI)")
    a = p.parse_args(argv)
    import torch
    from arc_fast.data.tiny import arc_posttrain
    torch.set_num_threads(a.threads)
    if a.quick:
        a.steps, a.batch = 2, 2
    runs = {"arc": a.w_con, "arc_noc": 0.0}
    for name, w_con in runs.items():
        if a.only and name != a.only:
            continue
        summary = arc_posttrain(os.path.join(a.out, "pretrain", "model"), os.path.join(a.out, "latents"),
                                os.path.join(a.out, name), steps=a.steps, w_con=w_con, seed=a.seed,
                                batch_size=a.batch, lr_g=a.lr, lr_d=a.lr if a.lr_d is None else a.lr_d,
                                exit_layer_ix=a.exit_layer, log_every=1 if a.quick else 20)
        print(json.dumps({"run": name, **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
