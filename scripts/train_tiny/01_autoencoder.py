#!/usr/bin/env python
"""Stage 1 of the tiny model: train the Oobleck VAE on synthetic clips, then encode the training set to
latent shards. See docs/tiny_model.md.

    python scripts/train_tiny/01_autoencoder.py --out /work/tiny_runs            # full (~20 min, 2 cores)
    python scripts/train_tiny/01_autoencoder.py --out /tmp/t --quick             # CI: seconds
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="run folder (autoencoder.pt, latents/)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=8192)
    p.add_argument("--pool-clips", type=int, default=384)
    p.add_argument("--clips", type=int, default=1024, help="training clips encoded to latents")
    p.add_argument("--time-limit", type=float, default=None, help="stop training after this many seconds")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--l1-weight", type=float, default=0.1)
    p.add_argument("--ffts", default="2048,512,128", help="STFT sizes of the spectral loss")
    p.add_argument("--grad-clip", type=float, default=5.0)
    p.add_argument("--init", default=None, help="continue from this autoencoder.pt")
    p.add_argument("--tone-share", type=float, default=0.0, help="share of the training pool forced to be tones")
    p.add_argument("--latent-noise", type=float, default=0.0, help="max std of noise added to latents before decoding")
    p.add_argument("--freeze-encoder", action="store_true", help="fine-tune the decoder only (keeps latents valid)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (CI)")
    a = p.parse_args(argv)
    import torch
    from arc_fast.data.tiny import encode_dataset, load_autoencoder, train_autoencoder
    torch.set_num_threads(a.threads)
    if a.quick:
        a.steps, a.batch, a.crop, a.pool_clips, a.clips = 2, 2, 4096, 4, 8
    summary = train_autoencoder(a.out, steps=a.steps, batch=a.batch, crop=a.crop, pool_clips=a.pool_clips,
                                seed=a.seed, time_limit=a.time_limit, log_every=1 if a.quick else 25, lr=a.lr,
                                l1_weight=a.l1_weight, ffts=[int(f) for f in a.ffts.split(",")],
                                grad_clip=a.grad_clip, init=a.init, freeze_encoder=a.freeze_encoder,
                                tone_share=a.tone_share, latent_noise=a.latent_noise)
    paths = []
    if a.clips > 0:  # --clips 0: train only (e.g. to compare settings before encoding)
        ae = load_autoencoder(os.path.join(a.out, "autoencoder.pt"))
        paths = encode_dataset(ae, os.path.join(a.out, "latents"), a.clips, seed=a.seed, batch=4 if a.quick else 16)
    summary["latent_shards"] = paths
    summary["clips"] = a.clips
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
