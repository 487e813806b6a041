"""Write the bundled default model (arc_fast/assets/default): the TINY config with seeded random weights.

Usage: python scripts/make_default_model.py [--seed 0] [--out arc_fast/assets/default]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from arc_fast.configs import get_config  # noqa: E402
from arc_fast.pipeline import DEFAULT_MODEL_DIR, build_pipeline  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=DEFAULT_MODEL_DIR)
    args = ap.parse_args()
    pipe = build_pipeline(get_config("tiny"), seed=args.seed)
    pipe.save(args.out)
    n = sum(v.numel() for v in pipe.state_dict().values())
    print(f"wrote {args.out}: {n:,} tensor elements")


if __name__ == "__main__":
    main()
