"""ARC post-training (Adversarial Relativistic-Contrastive) on the fused DiT kernels.

    python -m arc_fast.train --config cfg.json [--resume]          # one process
    torchrun --nproc-per-node N -m arc_fast.train --config cfg.json  # DDP (or FSDP with "fsdp": true)

Modules: ``losses`` (pure loss/sampler/EMA functions), ``discriminator`` (trunk + conv head), ``dit``
(trainable FastDiT / reference with gradient checkpointing), ``data`` (latent shards), ``trainer``
(``ARCTrainer``), ``distributed`` (torchrun helpers), ``config`` (``TrainConfig``). See docs/train.md.
"""
from .config import TrainConfig
from .data import LatentDataset, ShardError, build_latent_dataset, write_shard
from .discriminator import ARCDiscriminator
from .trainer import ARCTrainer, NonFiniteLossError

__all__ = ["ARCTrainer", "ARCDiscriminator", "LatentDataset", "NonFiniteLossError", "ShardError", "TrainConfig",
           "build_latent_dataset", "write_shard"]
