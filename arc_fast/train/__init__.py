"""ARC post-training (Adversarial Relativistic-Contrastive) on the fused DiT kernels.

    python -m arc_fast.train --config cfg.json [--resume]          # one process
    torchrun --nproc-per-node N -m arc_fast.train --config cfg.json  # DDP (or FSDP with "fsdp": true)

Modules: ``losses`` (pure loss/sampler/EMA functions), ``discriminator`` (trunk + conv head), ``dit``
(trainable FastDiT / reference with gradient checkpointing), ``data`` (latent shards), ``trainer``
(``ARCTrainer``), ``distributed`` (torchrun helpers), ``config`` (``TrainConfig``), ``cli``. See docs/train.md.

The names below are imported on first use, so ``arc_fast.train.cli`` (the ``arc-fast train`` hook) loads
without torch.
"""
import importlib

_EXPORTS = {
    "ARCTrainer": "trainer", "NonFiniteLossError": "trainer", "TrainConfig": "config", "ARCDiscriminator": "discriminator",
    "LatentDataset": "data", "ShardError": "data", "build_latent_dataset": "data", "write_shard": "data",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
