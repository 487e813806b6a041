"""ARC training configuration: one flat dataclass, loadable from JSON (unknown keys are an error).

Every field is documented in docs/train.md. Defaults follow SPEC.md section 5 where the reference states
them (batch 4, EMA 0.9999 / power 3/4, CFG dropout 0.1, loss weights 1, R1/R2 noise 0.05, fp16 mixed precision,
gradient checkpointing, ConvNeXt head channels 128 / c_mults [1, 2, 4, 8] / strides [2, 4, 8, 8]). Where the
paper and the reference code are silent (learning rates, discriminator depth, noise-level distributions),
the defaults are our choices and say so.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field

from .discriminator import HEADS
from .dit import DIT_IMPLS
from .losses import NOISE_DISTRIBUTIONS

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    """ARC post-training settings (see docs/train.md for each field)."""

    # --- paths
    model: str | None = None            # pretrained model folder (Stable Audio format); None = bundled default
    data: str | None = None             # folder of latent shards (arc_fast.train.data)
    out_dir: str = "arc_run"            # checkpoints/, metrics.jsonl, tensorboard/, export/
    export_dir: str | None = None       # final EMA model (default <out_dir>/export)

    # --- models
    dit_impl: str = "fast"              # "fast" (FastDiT, fused ops fwd+bwd) | "reference" (eager oracle)
    ops_backend: str | None = None      # force the fused ops' backend: None (auto) | "eager" | "triton" | "cuda"
    exit_layer_ix: int | None = None    # D trunk exit block; None = depth // 2 - 1 (half the trunk; our choice)
    head: str = "convnext"              # "convnext" | "conv"
    head_channels: int = 128
    head_c_mults: list = field(default_factory=lambda: [1, 2, 4, 8])
    head_strides: list = field(default_factory=lambda: [2, 4, 8, 8])
    head_blocks: int = 1                # ConvNeXt blocks per head stage

    # --- objective
    t_dist: str = "logsnr_uniform"      # G's input level t; logSNR-uniform in [-6, 2] = the sampler's range (our choice)
    t_dist_params: dict = field(default_factory=dict)
    s_dist: str = "logit_normal"        # D's re-noising level s (our choice)
    s_dist_params: dict = field(default_factory=dict)
    w_gen: float = 1.0
    w_dis: float = 1.0
    w_con: float = 1.0
    r1r2_gamma: float = 0.0             # 0 = off; else L_D += gamma * (R1 + R2) / 2
    r1r2_sigma: float = 0.05
    cfg_dropout: float = 0.1            # conditioning dropout in G steps (keeps the model CFG-capable)

    # --- optimisation
    steps: int = 20000                  # total steps, G and D alternating (even = G, odd = D)
    batch_size: int = 4                 # per process; >= 2 (the contrastive loss deranges prompts in a batch)
    lr_g: float = 1e-5                  # our choice: the paper's ARC learning rates are unknown
    lr_d: float = 1e-5
    betas: list = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.01
    adam_eps: float = 1e-8
    lr_warmup_steps: int = 0            # linear warm-up per optimiser, counted in its own updates
    grad_clip: float = 1.0              # max global grad norm per network; 0 = no clipping (norm still logged)
    ema_beta: float = 0.9999
    ema_power: float = 0.75
    precision: str = "auto"             # auto = fp16 mixed on CUDA (reference), fp32 on CPU
    gradient_checkpointing: bool = True
    fsdp: bool = False                  # shard G, D and the EMA with FSDP2 (fully_shard, torchrun); else DDP
    seed: int = 0

    # --- data
    crop_frames: int | None = None      # random crops of this many latent frames (needed for mixed lengths)
    num_workers: int = 0
    shuffle: bool = True

    # --- logging / checkpoints
    log_every: int = 10
    ckpt_every: int = 1000
    keep_checkpoints: int = 2           # step-numbered checkpoints kept besides last.pt (0 = last.pt only)
    progress: bool = True               # tqdm bar on rank 0
    tensorboard: bool = True            # also log to <out_dir>/tensorboard when tensorboard is installed
    export_on_finish: bool = True

    def __post_init__(self):
        self.validate()

    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the field for any out-of-range or mistyped value."""
        def need(cond, name, msg):
            if not cond:
                raise ValueError(f"config: {name} {msg} (got {getattr(self, name)!r})")

        def choice(name, options):
            need(getattr(self, name) in options, name, f"must be one of {', '.join(map(str, options))}")

        choice("dit_impl", DIT_IMPLS)
        choice("ops_backend", (None, "eager", "triton", "cuda"))
        choice("head", HEADS)
        choice("precision", PRECISIONS)
        for name in ("t_dist", "s_dist"):
            choice(name, tuple(NOISE_DISTRIBUTIONS))
            params = getattr(self, name + "_params")
            need(isinstance(params, dict), name + "_params", "must be an object")
            bad = sorted(set(params) - set(NOISE_DISTRIBUTIONS[getattr(self, name)]))
            need(not bad, name + "_params", f"has keys {bad} that {getattr(self, name)!r} does not take "
                                            f"(takes {sorted(NOISE_DISTRIBUTIONS[getattr(self, name)]) or 'none'})")
        for name in ("steps", "batch_size", "log_every", "ckpt_every", "head_channels", "head_blocks"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, name, "must be a positive integer")
        need(self.batch_size >= 2, "batch_size", "must be >= 2 per process (the contrastive loss gives every "
                                                 "sample another sample's prompt)")
        for name in ("num_workers", "lr_warmup_steps", "keep_checkpoints", "seed"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 0, name, "must be an integer >= 0")
        for name in ("lr_g", "lr_d", "adam_eps", "ema_power"):
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, name, "must be a number > 0")
        for name in ("w_gen", "w_dis", "w_con", "r1r2_gamma", "r1r2_sigma", "weight_decay", "grad_clip"):
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0, name, "must be a number >= 0")
        need(0 <= self.cfg_dropout < 1, "cfg_dropout", "must be in [0, 1)")
        need(0 <= self.ema_beta < 1, "ema_beta", "must be in [0, 1)")
        need(isinstance(self.betas, (list, tuple)) and len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
             "betas", "must be two numbers in [0, 1)")
        need(len(self.head_c_mults) == len(self.head_strides) and len(self.head_strides) >= 1, "head_c_mults",
             f"and head_strides must be non-empty lists of the same length (head_strides={self.head_strides!r})")
        need(all(isinstance(s, int) and s >= 1 for s in self.head_strides), "head_strides", "must be positive ints")
        need(all(isinstance(m, int) and m >= 1 for m in self.head_c_mults), "head_c_mults", "must be positive ints")
        need(self.exit_layer_ix is None or (isinstance(self.exit_layer_ix, int) and self.exit_layer_ix >= 0),
             "exit_layer_ix", "must be null or an integer >= 0")
        need(self.crop_frames is None or (isinstance(self.crop_frames, int) and self.crop_frames >= 1),
             "crop_frames", "must be null or a positive integer")
        return self

    # ------------------------------------------------------------------------------------------- I/O
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "TrainConfig":
        """Build from a dict; unknown keys raise ValueError with the closest valid names."""
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected a JSON object at the top level, got {type(d).__name__}")
        names = cls.field_names()
        unknown = [k for k in d if k not in names]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, names, n=1)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(f"{source}: unknown key(s) {', '.join(hints)}; valid keys: {', '.join(names)}")
        try:
            return cls(**d)
        except TypeError as exc:
            raise ValueError(f"{source}: {exc}") from exc

    @classmethod
    def from_json(cls, path: str) -> "TrainConfig":
        """Load a JSON file (paths inside it are taken as given, relative to the working directory)."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config file not found: {path}")
        with open(path) as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(d, source=path)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with some fields changed (validated; unknown names raise ValueError)."""
        d = self.to_dict()
        d.update(changes)
        return TrainConfig.from_dict(d, source="overrides")


def parse_override(item: str) -> tuple[str, object]:
    """``key=value`` from the command line; the value is parsed as JSON when it can be, else kept a string."""
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like key=value")
    key, raw = item.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value
