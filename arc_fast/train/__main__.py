"""``python -m arc_fast.train --config cfg.json [--resume] [--set key=value ...]`` (also under torchrun)."""
import sys

from .cli import main

sys.exit(main())
