"""torch.distributed helpers for ARC training: process-group setup from torchrun's environment, DDP/FSDP
wrapping, rank-0 gating, cross-rank reductions and a bitwise parameter-sync check.

    torchrun --nproc-per-node N -m arc_fast.train --config cfg.json

Backends: NCCL when CUDA is available (one GPU per process, ``cuda:LOCAL_RANK``), gloo on the CPU. Without
torchrun's ``WORLD_SIZE`` (or with WORLD_SIZE=1) everything here degrades to single-process no-ops.

DDP (default): G and D are each wrapped in ``DistributedDataParallel``; gradients are averaged in backward,
so parameters stay bitwise identical across ranks (``assert_in_sync`` checks it).
FSDP (``fsdp: true``): G and D are sharded with FSDP2 (``fully_shard``, one unit per transformer block and
head); parameters are DTensors, the EMA is a list of DTensors with G's sharding (a local lerp per update).
Checkpoints are then written per rank (local shards; resume needs the same world size) and the export
gathers full tensors (``full_tensor()``) for rank 0 to write.
"""
from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    """Where this process sits: rank / world_size / local_rank, its device and the backend (None = single)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | torch.device | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by torchrun's env (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    device: None = ``cuda:LOCAL_RANK`` when CUDA is available, else CPU. A group that already exists is
    reused (and left open by ``cleanup``).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        dev = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{local}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device cuda requested but CUDA is not available")
        torch.cuda.set_device(dev)
    if world <= 1:
        return DistInfo(device=dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    owns = False
    if not dist.is_initialized():
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
        owns = True
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local, device=dev,
                    backend=dist.get_backend(), owns_group=owns)


def cleanup(info: DistInfo) -> None:
    """Destroy the process group if ``init_distributed`` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def any_rank(info: DistInfo, flag: bool) -> bool:
    """True on every rank if ``flag`` is True on any rank (keeps control flow identical across ranks)."""
    if not info.distributed:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_across_ranks(info: DistInfo, values: dict[str, float]) -> dict[str, float]:
    """Average a dict of floats over ranks (every rank must pass the same keys)."""
    if not info.distributed or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: v / info.world_size for k, v in zip(keys, t.tolist())}


def gather_objects(info: DistInfo, obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def state_digest(module: nn.Module) -> str:
    """SHA-1 over the bytes of every parameter and buffer (name order): equal digests = bitwise-equal weights."""
    h = hashlib.sha1()
    for name, t in sorted(list(module.named_parameters()) + list(module.named_buffers())):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def assert_in_sync(info: DistInfo, module: nn.Module, what: str) -> str:
    """Raise RuntimeError unless ``module``'s weights are bitwise identical on all ranks; returns the digest."""
    digest = state_digest(module)
    digests = gather_objects(info, digest)
    if len(set(digests)) > 1:
        raise RuntimeError(f"{what}: ranks diverged (weight digests {digests})")
    return digest


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (FSDP modules are returned as they are)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def wrap_ddp(module: nn.Module, info: DistInfo) -> nn.Module:
    """DDP-wrap ``module`` (already on ``info.device``) when running distributed; else return it unchanged.

    Every trainable parameter must receive a gradient in each backward of the wrapper (the discriminator
    drops its unused trunk blocks for this reason), so ``find_unused_parameters`` stays off.
    """
    if not info.distributed:
        return module
    ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)


def fsdp_block_classes(module: nn.Module) -> tuple[type, ...]:
    """Module classes sharded as their own FSDP units: the DiT's transformer blocks and the D head."""
    from ..reference.dit import TransformerBlock
    from .discriminator import ConvHead, ConvNeXtHead
    return (TransformerBlock, ConvNeXtHead, ConvHead)


def wrap_fsdp(module: nn.Module, info: DistInfo, param_dtype: torch.dtype | None = None) -> nn.Module:
    """Shard ``module`` in place with FSDP2 (``torch.distributed.fsdp.fully_shard``): one unit per transformer
    block and head, then the root. Parameters become DTensors sharded on dim 0 over all ranks; the module keeps
    its class (and state-dict names), and is returned for symmetry with ``wrap_ddp``.

    param_dtype: FSDP mixed-precision compute dtype (None = keep fp32; autocast gives the low-precision math).
    Needs torchrun; meant for CUDA (NCCL) and also runs on gloo.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(info.device.type, (info.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    units = fsdp_block_classes(module)
    for m in list(module.modules()):
        if m is not module and isinstance(m, units):
            fully_shard(m, mesh=mesh, mp_policy=mp)
    fully_shard(module, mesh=mesh, mp_policy=mp)
    return module


def is_fsdp(module: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return False
    return isinstance(module, FSDPModule)


def local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (the tensor itself otherwise)."""
    return t.to_local() if hasattr(t, "to_local") else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor, gathered on every rank (the tensor itself otherwise). Collective."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def to_local_tree(obj):
    """Replace every DTensor in a nested dict/list (state dicts) by its local shard."""
    if isinstance(obj, dict):
        return {k: to_local_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_local_tree(v) for v in obj)
    return local(obj).detach().clone() if isinstance(obj, torch.Tensor) else obj
