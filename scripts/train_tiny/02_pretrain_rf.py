#!/usr/bin/env python
"""Stage 2 of the tiny model: rectified-flow pretraining of the DiT (jointly with the hash text encoder and
the seconds_total embedder) on the latents of stage 1. Writes <out>/pretrain/model (the base model).

    python scripts/train_tiny/02_pretrain_rf.py --out /work/tiny_runs            # full
    python scripts/train_tiny/02_pretrain_rf.py --out /tmp/t --quick             # CI: seconds
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="run folder of stage 1 (autoencoder.pt, latents/)")
    p.add_argument("--steps", type=int, default=8000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--time-limit", type=float, default=None,
                   help="stop after this many seconds (the cosine schedule then ends at the time limit)")
    p.add_argument("--check-steps", type=int, default=25, help="Euler steps of the pitch check choosing EMA or raw")
    p.add_argument("--snapshot-every", type=int, default=0, help="save <out>/pretrain/snapshot.pt every N steps")
    p.add_argument("--tone-weight", type=float, default=1.0, help="draw tone clips this many times as often")
    p.add_argument("--patch-size", type=int, default=None, help="override the DiT patch size of TINY_TRAINED")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (CI)")
    a = p.parse_args(argv)
    import torch
    from arc_fast.data.tiny import pretrain_dit
    torch.set_num_threads(a.threads)
    if a.quick:
        a.steps, a.batch, a.check_steps = 3, 4, 2
    summary = pretrain_dit(os.path.join(a.out, "pretrain"), os.path.join(a.out, "autoencoder.pt"),
                           os.path.join(a.out, "latents"), steps=a.steps, batch=a.batch, lr=a.lr, seed=a.seed,
                           time_limit=a.time_limit, log_every=1 if a.quick else 50,
                           check_steps=a.check_steps, snapshot_every=a.snapshot_every,
                           tone_weight=a.tone_weight, patch_size=a.patch_size)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
