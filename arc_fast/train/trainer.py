"""ARC post-training loop (SPEC.md section 5): relativistic adversarial + contrastive discriminator.

One step = one batch. Even steps train G, odd steps train D:

* G step: t ~ p_t, eps; x_t = (1 - t) x0 + t eps; x0_hat = x_t - t v_G(x_t, t, c) (CFG dropout on c);
  s ~ p_s, eps'; x_s, x0_hat_s re-noised with the same (s, eps'); L_G = w_gen softplus(D(x_s) - D(x0_hat_s)).
  The gradient flows through D into G; only G's optimiser steps (D gets no gradient: ``backward(inputs=)``).
  The EMA of G is updated after each G step.
* D step: the same construction with G under no_grad (no CFG dropout); one D forward over
  [x_s | x0_hat_s | x_s with deranged prompts (| x_s + delta | x0_hat_s + delta)]:
  L_D = w_dis softplus(-(D(x_s) - D(x0_hat_s))) + w_con softplus(-(D(x_s, c) - D(x_s, c_perm)))
        (+ gamma (R1 + R2) / 2).

G and D are FastDiTs (fused kernels forward and backward) built from the pretrained model; D is the trunk up
to ``exit_layer_ix`` plus a conv head (``ARCDiscriminator``). The text/seconds conditioner is frozen and
shared; D and G each have their own conditioning projections (part of each DiT).

Numerics: autocast bf16/fp16 on CUDA (fp16 with a GradScaler per network), fp32 on the CPU; fp32 master
weights, optimiser state and EMA. A non-finite loss (or, without a scaler, gradient norm) stops the run
before the optimiser step with ``NonFiniteLossError``; the last checkpoint on disk is the last good one.

Distributed (``torchrun``): DDP by default (G and D wrapped; in G steps D runs unwrapped and
``backward(inputs=G's parameters)`` skips its weight gradients), or FSDP2 with ``fsdp: true`` (``fully_shard``
per block; DTensor parameters and EMA). See ``distributed.py`` and docs/train.md.

Checkpoints (``<out_dir>/checkpoints/step-XXXXXXXX.pt``, and ``last.pt``: a small pointer file naming the newest
one, replaced atomically; with ``keep_checkpoints: 0`` ``last.pt`` is the checkpoint itself) are written
atomically by rank 0 and hold G, D, EMA, both optimisers, schedulers and scalers, the step, and every rank's RNG
states (torch CPU and CUDA, Python, NumPy, the noise-level samplers and the noise generator): a resumed run
continues bit-exactly (on the same hardware, world size and kernels). They hold only tensors, plain containers,
numbers and strings, and are read with ``torch.load(weights_only=True)``: no code from a checkpoint runs.
Checkpoints of format 1 (NumPy arrays in the RNG state; ``last.pt`` a hard link) are read through the loader's
inert unpickler and still resume. The final export writes the EMA generator as a Stable Audio
model folder marked ``arc_post_trained`` (ping-pong sampling by default in ``load_pipeline``).
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import pickle
import random
import time
import warnings

import numpy as np
import torch

from ..loader import (CheckpointError, fsync_dir, read_file, resolve_pointer, weights_only_reason,
                      write_pointer)
from ..reference.conditioners import assemble_dit_inputs
from . import distributed as D
from .config import TrainConfig
from .data import LatentDataset, ResumableBatchSampler, collate
from .discriminator import ARCDiscriminator
from .dit import make_dit
from .losses import (NoiseLevelSampler, contrastive_d_loss, derangement, ema_decay, ema_update_,
                     finite_difference_penalty, relativistic_d_loss, relativistic_g_loss, renoise)

CHECKPOINT_FORMAT = 2  # 2: weights_only-loadable (NumPy RNG state as a tensor); 1: NumPy arrays pickled
_READABLE_FORMATS = (1, 2)
# What every checkpoint holds (load_checkpoint names the missing ones instead of failing on the first).
_REQUIRED = ("format", "step", "ema_updates", "config", "world_size", "fsdp", "opt_g", "opt_d", "sched_g", "sched_d",
             "scaler_g", "scaler_d", "ranks", "G", "D", "ema")
# Config fields that may change across a resume without changing the training trajectory.
_RESUME_FREE = {"steps", "log_every", "ckpt_every", "keep_checkpoints", "progress", "tensorboard", "export_dir",
                "export_on_finish", "out_dir", "num_workers", "model", "data"}


class NonFiniteLossError(RuntimeError):
    """A loss (or gradient norm) became NaN/Inf; the run stopped before updating any weights."""


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    # NumPy's state as plain values and a tensor: the checkpoint stays torch.load(weights_only=True)-loadable.
    numpy_state = {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state,
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _legacy_numpy_array(obj) -> np.ndarray:
    """A uint32 NumPy array that the loader's inert unpickler kept as a placeholder (format-1 checkpoints)."""
    state = getattr(obj, "__dict__", {}).get("_state")
    if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[4], (bytes, bytearray))):
        raise ValueError("the NumPy RNG state is not a pickled array")
    dtype = state[2]
    code = getattr(dtype, "__dict__", {}).get("_args", (None,))[0]
    order = (getattr(dtype, "__dict__", {}).get("_state") or (None, "<"))[1]
    if code != "u4" or order not in ("<", ">", "=", "|"):
        raise ValueError(f"the NumPy RNG state has dtype {code!r}, expected 'u4'")
    return np.frombuffer(bytes(state[4]), dtype=np.dtype(">u4" if order == ">" else "<u4")).reshape(state[1])


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    ns = state["numpy"]
    if isinstance(ns, dict):
        np.random.set_state((ns["kind"], ns["keys"].numpy().astype(np.uint32), ns["pos"], ns["has_gauss"],
                             ns["cached_gaussian"]))
    else:  # format 1: NumPy's own tuple (an array, or the inert unpickler's placeholder of one)
        keys = ns[1] if isinstance(ns[1], np.ndarray) else _legacy_numpy_array(ns[1])
        np.random.set_state((ns[0], keys, *ns[2:]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_save(obj, path: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_checkpoint_file(path: str) -> dict:
    """The state dict of an ARC trainer checkpoint (``last.pt`` pointers followed), read without running code:
    ``torch.load(weights_only=True)``; format-1 checkpoints (pickled NumPy arrays) through the loader's inert
    unpickler. Raises RuntimeError naming the file when it cannot be read or is not a trainer checkpoint."""
    try:
        target = resolve_pointer(path)
    except (CheckpointError, OSError) as exc:
        raise RuntimeError(f"cannot read checkpoint {path}: {exc}") from exc
    try:
        state = torch.load(target, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as refusal:
        try:
            state = read_file(target)[0]
        except (CheckpointError, OSError) as exc:
            raise RuntimeError(f"cannot read checkpoint {path}: {exc}") from exc
        if not (isinstance(state, dict) and state.get("format") == 1):
            raise RuntimeError(f"refused checkpoint {path}: it holds pickled objects other than tensors "
                               f"({weights_only_reason(refusal)}; only format-1 arc_fast checkpoints may); nothing "
                               f"from the file was run") from refusal
    except Exception as exc:  # noqa: BLE001 - any decoding failure is one error naming the file
        raise RuntimeError(f"cannot read checkpoint {path}: {exc.__class__.__name__}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") not in _READABLE_FORMATS:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise RuntimeError(f"{path} is not an arc_fast ARC checkpoint (format {found!r}; readable: "
                           f"{', '.join(map(str, _READABLE_FORMATS))})")
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise RuntimeError(f"checkpoint {path} lacks {', '.join(repr(k) for k in missing)} (an incomplete or foreign "
                           f"file; resume from another step-*.pt)")
    return state


def _shape(t) -> str:
    if not isinstance(t, torch.Tensor):
        return type(t).__name__
    return f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}"


def _check_tensors(path: str, what: str, live: dict, saved) -> None:
    """Raise one line naming every key/shape/dtype difference between ``saved`` and a live state dict, and the
    first non-finite saved tensor."""
    if not isinstance(saved, dict):
        raise RuntimeError(f"checkpoint {path}: {what!r} is a {type(saved).__name__}, expected tensors by name")
    missing = [k for k in live if k not in saved]
    unexpected = [k for k in saved if k not in live]
    wrong = [k for k in live if k in saved and (not isinstance(saved[k], torch.Tensor)
                                                or saved[k].shape != D.local(live[k]).shape
                                                or saved[k].dtype != live[k].dtype)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("; ".join(f"{k}: checkpoint {_shape(saved[k])}, model {_shape(D.local(live[k]))}"
                                   for k in wrong[:3]) + (f" (+{len(wrong) - 3} more)" if len(wrong) > 3 else ""))
        for label, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                parts.append(f"{label} {', '.join(keys[:4])}" + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""))
        raise RuntimeError(f"checkpoint {path}: {what!r} does not fit this run's model: {'; '.join(parts)} (resume "
                           f"with the config and world size the run was started with)")
    for k in live:
        v = saved[k]
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise RuntimeError(f"checkpoint {path}: {what}[{k!r}] holds NaN/Inf values (a damaged file; resume from "
                               f"another step-*.pt)")


def _check_optimizer(path: str, what: str, opt: torch.optim.Optimizer, saved, names: dict) -> None:
    """Raise one line when a saved optimiser state does not fit ``opt`` (group sizes, per-parameter shapes)."""
    if not (isinstance(saved, dict) and isinstance(saved.get("state"), dict)
            and isinstance(saved.get("param_groups"), list)):
        raise RuntimeError(f"checkpoint {path}: {what!r} is not an optimiser state (needs 'state' and 'param_groups')")
    sizes = [len(g["params"]) for g in opt.param_groups]
    saved_sizes = [len(g.get("params", [])) if isinstance(g, dict) else -1 for g in saved["param_groups"]]
    if sizes != saved_sizes:
        raise RuntimeError(f"checkpoint {path}: {what!r} has parameter groups of {saved_sizes} tensors, this run "
                           f"{sizes} (resume with the config the run was started with)")
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, st in saved["state"].items():
        if not (isinstance(i, int) and 0 <= i < len(params) and isinstance(st, dict)):
            raise RuntimeError(f"checkpoint {path}: {what!r} has state for parameter {i!r} of {len(params)}")
        shape = D.local(params[i]).shape
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != shape:
                raise RuntimeError(f"checkpoint {path}: {what} state {k!r} of {names.get(id(params[i]), i)}: "
                                   f"checkpoint {_shape(v)}, parameter {tuple(shape)}")


class _MetricsLogger:
    """Rank 0: JSON lines in ``<out_dir>/metrics.jsonl`` (+ TensorBoard scalars when installed)."""

    def __init__(self, out_dir: str, tensorboard: bool):
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.file = open(self.path, "a")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(os.path.join(out_dir, "tensorboard"))
            except Exception:  # noqa: BLE001 - tensorboard is optional ([train] extra)
                self.tb = None

    def log(self, step: int, metrics: dict) -> None:
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


class ARCTrainer:
    """ARC post-training of a Stable-Audio-format model.

    config: a ``TrainConfig``. pipeline: a loaded ``Pipeline`` to start from (default: ``load_pipeline
    (config.model)``). dataset: a ``LatentDataset``-like dataset (default: ``LatentDataset(config.data)``).
    resume: False, True (``<out_dir>/checkpoints/last.pt``) or a checkpoint path.
    Under torchrun the process group is joined from the environment (DDP, or FSDP with ``fsdp: true``).

    Use ``train()`` for the whole run; ``train_step(batch)`` for one step; ``save_checkpoint()``,
    ``load_checkpoint(path)``, ``export(directory)``. Attributes: ``G``, ``D`` (possibly DDP/FSDP-wrapped),
    ``ema`` (the EMA generator), ``step``, ``dist`` (``DistInfo``), ``device``.
    """

    def __init__(self, config: TrainConfig, pipeline=None, dataset=None, resume: bool | str = False,
                 device: str | torch.device | None = None):
        self.cfg = config.validate()
        self.dist = D.init_distributed(device)
        self.device = self.dist.device
        self.amp_dtype = self._resolve_precision()
        _seed_all(self.cfg.seed)  # identical initial weights (D's head) on every rank
        with self._backend():
            self._build_models(pipeline)
        _seed_all(self.cfg.seed + 1000003 * self.dist.rank)  # then per-rank streams (CFG dropout, ...)
        self._build_optim()
        r = self.dist.rank
        self.t_sampler = NoiseLevelSampler(self.cfg.t_dist, seed=self.cfg.seed * 7919 + 2 * r, **self.cfg.t_dist_params)
        self.s_sampler = NoiseLevelSampler(self.cfg.s_dist, seed=self.cfg.seed * 7919 + 2 * r + 1,
                                           **self.cfg.s_dist_params)
        self.noise_gen = torch.Generator().manual_seed(self.cfg.seed * 104729 + r)
        self.step = 0
        self.ema_updates = 0
        self.last_checkpoint: str | None = None
        self._saved_step = -1
        self.dataset = dataset
        if resume:
            path = resume if isinstance(resume, str) else self.checkpoint_path("last")
            if not os.path.isfile(path + (f".rank{self.dist.rank}" if self.fsdp else "")):
                raise FileNotFoundError(f"--resume: no checkpoint at {path}")
            self.load_checkpoint(path)
        self._batches = None
        self._logger = None

    # -------------------------------------------------------------------------------------- building
    def _resolve_precision(self) -> torch.dtype | None:
        p = self.cfg.precision
        if self.device.type != "cuda":
            if p not in ("auto", "fp32"):
                raise ValueError(f"precision {p!r} needs CUDA; on the {self.device.type} use 'fp32' (or 'auto')")
            return None
        if p == "auto":  # the reference's fp16 + loss scaling; bf16 under FSDP (no loss scaler over DTensor shards)
            return torch.bfloat16 if (self.cfg.fsdp and self.dist.distributed) else torch.float16
        return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}[p]

    def _backend(self):
        if self.cfg.ops_backend is None:
            return contextlib.nullcontext()
        from ..ops import use_backend
        return use_backend(self.cfg.ops_backend)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _build_models(self, pipeline) -> None:
        cfg = self.cfg
        if pipeline is None:
            from ..pipeline import load_pipeline
            pipeline = load_pipeline(cfg.model, device=self.device, fast=False)
        self.pipe = pipeline
        self.pipe.conditioner.to(self.device).eval().requires_grad_(False)
        ref = pipeline.dit
        if next(ref.parameters()).dtype != torch.float32:
            ref = copy.deepcopy(ref).float()  # master weights in fp32; autocast gives the low-precision compute
        depth = len(ref.transformer.layers)
        k = cfg.exit_layer_ix if cfg.exit_layer_ix is not None else max(0, depth // 2 - 1)
        if not 0 <= k < depth:
            raise ValueError(f"config: exit_layer_ix {k} is out of range for a {depth}-block DiT (0..{depth - 1})")
        self.exit_layer_ix = k
        g = make_dit(ref, cfg.dit_impl, cfg.gradient_checkpointing).to(self.device)
        trunk = make_dit(ref, cfg.dit_impl, cfg.gradient_checkpointing)
        d = ARCDiscriminator(trunk, k, head=cfg.head, head_channels=cfg.head_channels, head_c_mults=cfg.head_c_mults,
                             head_strides=cfg.head_strides, head_blocks=cfg.head_blocks).to(self.device)
        d.train()
        ema = copy.deepcopy(g).eval().requires_grad_(False)
        self.prompt_ids = _prompt_ids(self.pipe.conditioner)
        self.fsdp = bool(cfg.fsdp) and self.dist.distributed
        if cfg.fsdp and not self.dist.distributed:
            warnings.warn("fsdp: true has no effect in a single process (run under torchrun)", RuntimeWarning)
        if self.fsdp:
            self.G = D.wrap_fsdp(g, self.dist)
            self.D = D.wrap_fsdp(d, self.dist)
            # The EMA: DTensor copies of G's sharded parameters (same placements: the update is a local lerp).
            self.ema = None
            self.ema_params = [p.detach().clone() for p in self.G.parameters()]
            del ema
        else:
            self.G = D.wrap_ddp(g, self.dist)
            self.D = D.wrap_ddp(d, self.dist)
            self.ema = ema
        self.G_raw, self.D_raw = D.unwrap(self.G), D.unwrap(self.D)

    def _build_optim(self) -> None:
        cfg = self.cfg
        kw = dict(betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, eps=cfg.adam_eps)
        kw.update({"fused": True} if self.device.type == "cuda" else {"foreach": True})
        self.g_params = [p for p in self.G.parameters() if p.requires_grad]
        self.d_params = [p for p in self.D.parameters() if p.requires_grad]
        self.opt_g = torch.optim.AdamW(self.g_params, lr=cfg.lr_g, **kw)
        self.opt_d = torch.optim.AdamW(self.d_params, lr=cfg.lr_d, **kw)
        warm = cfg.lr_warmup_steps

        def ramp(n):
            return 1.0 if warm == 0 else min(1.0, (n + 1) / warm)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, ramp)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, ramp)
        fp16 = self.amp_dtype == torch.float16
        self.scaler_g = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.scaler_d = torch.amp.GradScaler(self.device.type, enabled=fp16)

    def _ensure_data(self) -> None:
        if self.dataset is None:
            if not self.cfg.data:
                raise ValueError("config: data is not set (a folder of latent shards; see build_latent_dataset)")
            self.dataset = LatentDataset(self.cfg.data, latent_channels=self.pipe.latent_channels,
                                         crop_frames=self.cfg.crop_frames, seed=self.cfg.seed)
        if getattr(self.dataset, "default_seconds", 0) is None:
            self.dataset.default_seconds = self.dataset.frames * self.pipe.hop / self.pipe.sample_rate

    def _batch_iter(self):
        self._ensure_data()
        sampler = ResumableBatchSampler(len(self.dataset), self.cfg.batch_size, self.dist.rank, self.dist.world_size,
                                        seed=self.cfg.seed, shuffle=self.cfg.shuffle, start_batch=self.step)
        # A private generator: DataLoader would otherwise draw its base seed from the global RNG, and a resumed
        # run (which builds its loader at a different point) would then diverge.
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=sampler, collate_fn=collate, num_workers=self.cfg.num_workers,
            pin_memory=self.device.type == "cuda", generator=torch.Generator().manual_seed(self.cfg.seed),
            persistent_workers=self.cfg.num_workers > 0)
        return iter(loader)

    # ------------------------------------------------------------------------------------ conditioning
    @torch.no_grad()
    def _condition(self, prompts: list[str], seconds: list[float]) -> tuple[dict, dict]:
        meta = [{"prompt": p, "seconds_start": 0, "seconds_total": float(s)} for p, s in zip(prompts, seconds)]
        parts = self.pipe.conditioner(meta, self.device)
        return assemble_dit_inputs(parts, self.pipe.cross_ids, self.pipe.global_ids), parts

    def _deranged(self, parts: dict, perm: torch.Tensor) -> dict:
        """The conditioning with every sample's prompt replaced by sample perm[i]'s (other fields kept)."""
        p = perm.to(self.device)
        shuf = {k: ((v[0][p], v[1][p]) if k in self.prompt_ids else v) for k, v in parts.items()}
        return assemble_dit_inputs(shuf, self.pipe.cross_ids, self.pipe.global_ids)

    def _randn(self, shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.noise_gen).to(self.device)

    # ------------------------------------------------------------------------------------------ steps
    def _generate(self, net, x0: torch.Tensor, cond: dict, cfg_dropout: float):
        b = x0.shape[0]
        t = self.t_sampler.sample(b, self.device)
        eps = self._randn(x0.shape)
        tt = t.view(-1, 1, 1)
        x_t = (1 - tt) * x0 + tt * eps
        with self._autocast():
            v = net(x_t, t, cfg_dropout_prob=cfg_dropout, **cond)
        x0_hat = x_t - tt * v.float()
        s = self.s_sampler.sample(b, self.device)
        x_s, xh_s = renoise(x0, x0_hat, s, self._randn(x0.shape))
        return x_s, xh_s, s, t

    def _g_losses(self, x0: torch.Tensor, cond: dict):
        cfg = self.cfg
        x_s, xh_s, s, t = self._generate(self.G, x0, cond, cfg.cfg_dropout)
        # DDP: D runs unwrapped here (no gradient reaches its weights, so nothing to synchronise). FSDP2 has
        # no wrapper: the sharded module itself runs (its hooks gather the shards).
        disc = self.D_raw
        with self._autocast():
            with torch.no_grad():
                d_real = disc(x_s, s, **cond).float()
            d_fake = disc(xh_s, s, **cond).float()
        loss = relativistic_g_loss(d_real, d_fake, cfg.w_gen)
        aux = {"loss_g": loss.detach(), "d_acc_g": _accuracy(d_real, d_fake.detach()),
               "d_real_g": d_real.mean(), "d_fake_g": d_fake.detach().mean(), "t_mean": t.mean(), "s_mean": s.mean()}
        return loss, aux

    def _d_losses(self, x0: torch.Tensor, cond: dict, parts: dict):
        cfg = self.cfg
        gen = self.G_raw
        with torch.no_grad():
            x_s, xh_s, s, t = self._generate(gen, x0, cond, 0.0)
        b = x0.shape[0]
        perm = derangement(b, self.noise_gen)
        wrong = self._deranged(parts, perm)
        xs, conds = [x_s, xh_s, x_s], [cond, cond, wrong]
        if cfg.r1r2_gamma > 0:
            xs += [x_s + cfg.r1r2_sigma * self._randn(x0.shape), xh_s + cfg.r1r2_sigma * self._randn(x0.shape)]
            conds += [cond, cond]
        big = {k: torch.cat([c[k] for c in conds]) for k in cond}
        with self._autocast():
            scores = self.D(torch.cat(xs), s.repeat(len(xs)), **big).float()
        chunks = scores.split(b)
        d_real, d_fake, d_wrong = chunks[:3]
        l_rel = relativistic_d_loss(d_real, d_fake, cfg.w_dis)
        l_con = contrastive_d_loss(d_real, d_wrong, cfg.w_con)
        loss = l_rel + l_con
        aux = {"loss_d_rel": l_rel.detach(), "loss_c": l_con.detach(), "d_acc": _accuracy(d_real, d_fake),
               "d_acc_prompt": _accuracy(d_real, d_wrong), "d_real": d_real.detach().mean(),
               "d_fake": d_fake.detach().mean(), "t_mean": t.mean(), "s_mean": s.mean()}
        if cfg.r1r2_gamma > 0:
            r1 = finite_difference_penalty(d_real, chunks[3])
            r2 = finite_difference_penalty(d_fake, chunks[4])
            loss = loss + cfg.r1r2_gamma * (r1 + r2) / 2
            aux.update(r1=r1.detach(), r2=r2.detach())
        aux["loss_d"] = loss.detach()
        return loss, aux

    def _run(self, kind: str, x0: torch.Tensor, cond: dict, parts: dict):
        """Losses and backward of one G or D step (gradients left in .grad). Returns (loss, aux)."""
        with self._backend():
            if kind == "G":
                # backward(inputs=G's parameters): the gradient flows through D into G, D's weight gradients are
                # never computed (and DDP sees none). FSDP2's graph holds unsharded copies of the parameters,
                # not the sharded leaves, so there D's gradients are computed and dropped (the D step clears them).
                loss, aux = self._g_losses(x0, cond)
                self.scaler_g.scale(loss).backward(inputs=None if self.fsdp else self.g_params)
            else:
                loss, aux = self._d_losses(x0, cond, parts)
                self.scaler_d.scale(loss).backward(inputs=None if self.fsdp else self.d_params)
        return loss, aux

    def loss_and_grads(self, batch: dict, kind: str) -> dict:
        """Forward + backward of one G (``kind="G"``) or D (``"D"``) step without the optimiser step: the
        gradients are left in the parameters' ``.grad`` (for tests and debugging). Returns the metrics."""
        if kind not in ("G", "D"):
            raise ValueError(f"kind must be 'G' or 'D', got {kind!r}")
        x0 = batch["latents"].to(self.device, torch.float32)
        cond, parts = self._condition(batch["prompts"], batch["seconds_total"])
        (self.opt_g if kind == "G" else self.opt_d).zero_grad(set_to_none=True)
        _, aux = self._run(kind, x0, cond, parts)
        return {k: float(v) for k, v in aux.items()}

    def train_step(self, batch: dict) -> dict:
        """One step on ``batch`` ({"latents" (B, C, T), "prompts", "seconds_total"}): a G step when ``step`` is
        even, a D step when odd. Returns the metrics (floats). Raises NonFiniteLossError (weights untouched)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        x0 = batch["latents"].to(self.device, torch.float32, non_blocking=True)
        if x0.shape[0] < 2:
            raise ValueError(f"batch of {x0.shape[0]}: ARC needs >= 2 samples per process (contrastive loss)")
        cond, parts = self._condition(batch["prompts"], batch["seconds_total"])
        is_g = self.step % 2 == 0
        if is_g:
            opt, sched, scaler, params = self.opt_g, self.sched_g, self.scaler_g, self.g_params
        else:
            opt, sched, scaler, params = self.opt_d, self.sched_d, self.scaler_d, self.d_params
        opt.zero_grad(set_to_none=True)
        loss, aux = self._run("G" if is_g else "D", x0, cond, parts)
        scaler.unscale_(opt)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        norm = D.full(torch.nn.utils.clip_grad_norm_(params, max_norm))  # a DTensor under FSDP2
        # One host sync per step: the loss (and, without a scaler to skip the step, the grad norm) must be
        # finite on every rank before any weight changes.
        bad_local = ~torch.isfinite(loss.detach())
        if not scaler.is_enabled():
            bad_local = bad_local | ~torch.isfinite(norm)
        if D.any_rank(self.dist, bool(bad_local)):
            what = "loss_g" if is_g else "loss_d"
            raise NonFiniteLossError(
                f"non-finite {what} ({float(loss.detach()):.4g}, grad norm {float(norm):.4g}) at step {self.step}: stopped "
                f"without updating; last good checkpoint: {self.last_checkpoint or 'none written yet'}")
        scaler.step(opt)
        scaler.update()
        sched.step()
        if is_g:
            self._update_ema()
        lr = opt.param_groups[0]["lr"]
        keys = list(aux)
        values = torch.stack([aux[k].float().reshape(()).to(self.device) for k in keys] + [norm.float().to(self.device)])
        out = dict(zip(keys + ["grad_norm_g" if is_g else "grad_norm_d"], values.tolist()))
        out["lr_g" if is_g else "lr_d"] = lr
        out["step_time"] = time.perf_counter() - t0
        self.step += 1
        return out

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = ema_decay(self.ema_updates, self.cfg.ema_beta, self.cfg.ema_power)
        if self.fsdp:
            self.G.reshard()  # FSDP2 leaves the root unsharded after its pass: register the DTensor shards again
            torch._foreach_lerp_(self.ema_params, [p.detach() for p in self.G.parameters()], 1.0 - decay)
        else:
            ema_update_(self.ema, self.G_raw, decay)
        self.ema_updates += 1

    # ------------------------------------------------------------------------------------------- loop
    def train(self, steps: int | None = None) -> dict:
        """Run until ``steps`` (default ``config.steps``) total steps; checkpoint every ``ckpt_every`` and at the
        end; export the EMA generator (rank 0) when done. Returns the last logged metrics."""
        cfg = self.cfg
        total = cfg.steps if steps is None else int(steps)
        main = self.dist.is_main
        if self._batches is None:
            # The data first: a bad shard or setting fails here, before the run folder exists (the metrics log
            # and the checkpoints create it once a step has run).
            self._batches = self._batch_iter()
        bar = None
        if main and cfg.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=total, initial=self.step, desc="ARC", dynamic_ncols=True)
        window: dict[str, list[float]] = {}
        logged: dict = {}
        try:
            while self.step < total:
                metrics = self.train_step(next(self._batches))
                for k, v in metrics.items():
                    window.setdefault(k, []).append(v)
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == total:
                    logged = self._log(window)
                    window = {}
                    if bar is not None:
                        bar.set_postfix({k: f"{logged[k]:.3f}" for k in ("loss_g", "loss_d", "d_acc") if k in logged})
                if self.step % cfg.ckpt_every == 0 and self.step < total:
                    self.save_checkpoint()
            if self._saved_step != self.step:
                self.save_checkpoint()
            in_sync = self.check_ranks_in_sync()
            if in_sync is not None and main:
                self._metrics_logger().log(self.step, {"ranks_in_sync": in_sync})
            if cfg.export_on_finish:
                self.export()
        finally:
            if bar is not None:
                bar.close()
        return logged

    def _log(self, window: dict) -> dict:
        means = {k: float(np.mean(v)) for k, v in window.items()}
        # Every rank sees the same metric keys (the G/D schedule is global), so the reduction lines up.
        means = D.mean_across_ranks(self.dist, means)
        if self.dist.is_main:
            self._metrics_logger().log(self.step, means)
        return means

    def _metrics_logger(self) -> "_MetricsLogger":
        if self._logger is None:
            self._logger = _MetricsLogger(self.cfg.out_dir, self.cfg.tensorboard)
        return self._logger

    def check_ranks_in_sync(self) -> bool | None:
        """Under DDP: True if G, D and the EMA are bitwise equal on every rank, else False with a warning
        (the run keeps rank 0's weights; a divergence means the ranks did not average the same gradients).
        None when there is nothing to compare (one process, or FSDP where each rank holds other shards)."""
        if not self.dist.distributed or self.fsdp:
            return None
        try:
            for what, module in (("generator", self.G_raw), ("discriminator", self.D_raw), ("EMA", self.ema)):
                D.assert_in_sync(self.dist, module, what)
        except RuntimeError as exc:
            warnings.warn(str(exc), RuntimeWarning, stacklevel=2)
            return False
        return True

    def close(self) -> None:
        """Close logs and leave the process group (if this trainer joined it)."""
        if self._logger is not None:
            self._logger.close()
            self._logger = None
        D.cleanup(self.dist)

    # ------------------------------------------------------------------------------------ checkpoints
    def checkpoint_path(self, name: str = "last") -> str:
        return os.path.join(self.cfg.out_dir, "checkpoints", f"{name}.pt")

    def _local_state(self) -> dict:
        return {"rng": _rng_state(), "t_sampler": self.t_sampler.state_dict(), "s_sampler": self.s_sampler.state_dict(),
                "noise_gen": self.noise_gen.get_state()}

    def _model_state(self) -> dict:
        if self.fsdp:  # this rank's shards
            self.G.reshard()
            self.D.reshard()
            return {"G": D.to_local_tree(self.G.state_dict()), "D": D.to_local_tree(self.D.state_dict()),
                    "ema": D.to_local_tree(self.ema_params)}
        return {"G": self.G_raw.state_dict(), "D": self.D_raw.state_dict(), "ema": self.ema.state_dict()}

    def save_checkpoint(self) -> str:
        """Write ``step-XXXXXXXX.pt`` (pruned to ``keep_checkpoints``) and point ``last.pt`` at it, or, with
        ``keep_checkpoints: 0``, ``last.pt`` itself; atomically. Returns the ``last.pt`` path. Rank 0 writes
        (every rank under FSDP, one shard file each); all ranks wait for it."""
        cfg = self.cfg
        ranks = D.gather_objects(self.dist, self._local_state())
        state = {"format": CHECKPOINT_FORMAT, "step": self.step, "ema_updates": self.ema_updates,
                 "config": cfg.to_dict(), "world_size": self.dist.world_size, "fsdp": self.fsdp,
                 "opt_g": D.to_local_tree(self.opt_g.state_dict()), "opt_d": D.to_local_tree(self.opt_d.state_dict()),
                 "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict(),
                 "scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict(),
                 "ranks": ranks, **self._model_state()}
        last = self.checkpoint_path("last")
        writer = self.fsdp or self.dist.is_main
        if writer:
            folder = os.path.dirname(last)
            os.makedirs(folder, exist_ok=True)
            suffix = f".rank{self.dist.rank}" if self.fsdp else ""
            last = last + suffix
            if cfg.keep_checkpoints > 0:
                numbered = os.path.join(folder, f"step-{self.step:08d}.pt{suffix}")
                _atomic_save(state, numbered)
                write_pointer(last, numbered)  # never a hard link: damaging one file must not damage the other
                old = sorted(f for f in os.listdir(folder) if f.startswith("step-") and f.endswith(f".pt{suffix}"))
                for f in old[:-cfg.keep_checkpoints]:
                    os.remove(os.path.join(folder, f))
            else:
                _atomic_save(state, last)
        D.barrier(self.dist)
        self.last_checkpoint = self.checkpoint_path("last")
        self._saved_step = self.step
        return self.last_checkpoint

    def load_checkpoint(self, path: str) -> None:
        """Restore everything ``save_checkpoint`` wrote; the next ``train_step`` continues the saved run.
        ``path`` may be a ``last.pt`` pointer. Any mismatch with this run is one RuntimeError naming the file,
        the entry and the shapes; the weights and optimiser states are all checked before any is changed."""
        if self.fsdp:
            path = f"{path}.rank{self.dist.rank}"
        state = read_checkpoint_file(path)
        if bool(state["fsdp"]) != self.fsdp:
            raise RuntimeError(f"{path} was written with fsdp={state['fsdp']}, this run has fsdp={self.fsdp}")
        if not isinstance(state["config"], dict) or not isinstance(state["ranks"], list) or not state["ranks"]:
            raise RuntimeError(f"checkpoint {path}: 'config' must be a dict and 'ranks' a non-empty list")
        changed = sorted(k for k, v in state["config"].items()
                         if k not in _RESUME_FREE and getattr(self.cfg, k, None) != v)
        if changed:
            warnings.warn(f"resuming with changed settings {changed}: the run will not match an uninterrupted one",
                          RuntimeWarning, stacklevel=2)
        if self.fsdp:
            self.G.reshard()
            self.D.reshard()
            live = {"G": self.G.state_dict(), "D": self.D.state_dict(),
                    "ema": {str(i): p for i, p in enumerate(self.ema_params)}}
            saved_ema = state["ema"]
            if not isinstance(saved_ema, (list, tuple)) or len(saved_ema) != len(self.ema_params):
                raise RuntimeError(f"checkpoint {path}: 'ema' must hold {len(self.ema_params)} local shards")
            saved = {"G": state["G"], "D": state["D"], "ema": {str(i): t for i, t in enumerate(saved_ema)}}
        else:
            live = {"G": self.G_raw.state_dict(), "D": self.D_raw.state_dict(), "ema": self.ema.state_dict()}
            saved = {k: state[k] for k in live}
        for what in live:
            _check_tensors(path, what, live[what], saved[what])
        names = {id(p): n for m in (self.G_raw, self.D_raw) for n, p in m.named_parameters()}
        _check_optimizer(path, "opt_g", self.opt_g, state["opt_g"], names)
        _check_optimizer(path, "opt_d", self.opt_d, state["opt_d"], names)
        try:
            if self.fsdp:
                _load_local_(live["G"], state["G"])
                _load_local_(live["D"], state["D"])
                _load_local_(self.ema_params, list(state["ema"]))
                _load_fsdp_optimizer(self.opt_g, state["opt_g"])
                _load_fsdp_optimizer(self.opt_d, state["opt_d"])
            else:
                self.G_raw.load_state_dict(state["G"])
                self.D_raw.load_state_dict(state["D"])
                self.ema.load_state_dict(state["ema"])
                self.opt_g.load_state_dict(state["opt_g"])
                self.opt_d.load_state_dict(state["opt_d"])
            self._restore_counters(path, state)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise RuntimeError(f"checkpoint {path}: cannot restore the training state ({exc.__class__.__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
        self._batches = None
        self.last_checkpoint = path if not self.fsdp else path.rsplit(".rank", 1)[0]
        self._saved_step = self.step

    def _restore_counters(self, path: str, state: dict) -> None:
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        self.scaler_g.load_state_dict(state["scaler_g"])
        self.scaler_d.load_state_dict(state["scaler_d"])
        self.step, self.ema_updates = int(state["step"]), int(state["ema_updates"])
        if self.step < 0 or self.ema_updates < 0:
            raise ValueError(f"negative step {self.step} / ema_updates {self.ema_updates}")
        ranks = state["ranks"]
        if state["world_size"] == self.dist.world_size:
            local = ranks[self.dist.rank]
            _set_rng_state(local["rng"])
            self.t_sampler.load_state_dict(local["t_sampler"])
            self.s_sampler.load_state_dict(local["s_sampler"])
            self.noise_gen.set_state(local["noise_gen"])
        else:
            warnings.warn(f"checkpoint from {state['world_size']} process(es), now {self.dist.world_size}: random "
                          f"streams are re-seeded from the step (weights and optimisers are restored)", RuntimeWarning,
                          stacklevel=2)
            _seed_all(self.cfg.seed + 1000003 * self.dist.rank + self.step)
            self.noise_gen.manual_seed(self.cfg.seed * 104729 + self.dist.rank + self.step)

    # ----------------------------------------------------------------------------------------- export
    def export(self, directory: str | None = None) -> str | None:
        """Write the EMA generator as a Stable Audio model folder (model_config.json + model.safetensors,
        with ``arc_fast.arc_post_trained = true``) that ``load_pipeline`` loads. Rank 0 writes; returns the
        folder there (None on other ranks)."""
        from ..pipeline import Pipeline
        directory = directory or self.cfg.export_dir or os.path.join(self.cfg.out_dir, "export")
        if self.fsdp:
            # Every rank joins the gathers; rank 0 keeps the full tensors.
            self.G.reshard()
            sd = {n: D.full(e).detach().cpu() for (n, _), e in zip(self.G.named_parameters(), self.ema_params)}
            sd.update({n: b.detach().cpu() for n, b in self.G.named_buffers()})
            dit = None
            if self.dist.is_main:
                from ..reference.dit import DiffusionTransformer
                with torch.device("meta"):
                    dit = DiffusionTransformer(**self.pipe.dit.config_kwargs)
                dit.load_state_dict(sd, strict=True, assign=True)
        else:
            dit = self.ema
        out = None
        if self.dist.is_main:
            config = copy.deepcopy(self.pipe.config)
            arc = config.setdefault("arc_fast", {})
            arc.pop("note", None)
            arc["arc_post_trained"] = True
            arc["arc_training"] = {"steps": self.step, "generator_updates": self.ema_updates,
                                   "exit_layer_ix": self.exit_layer_ix, "head": self.cfg.head,
                                   "t_dist": self.cfg.t_dist, "s_dist": self.cfg.s_dist, "ema_beta": self.cfg.ema_beta}
            Pipeline(config, dit, self.pipe.autoencoder, self.pipe.conditioner, device="cpu").save(directory)
            out = directory
        D.barrier(self.dist)
        return out


def _accuracy(d_real: torch.Tensor, d_other: torch.Tensor) -> torch.Tensor:
    """Fraction of samples whose mean real score beats the other (fake or wrong-prompt) score."""
    return (d_real.detach().flatten(1).mean(1) > d_other.detach().flatten(1).mean(1)).float().mean()


def _prompt_ids(conditioner) -> set[str]:
    """Conditioner ids that read the ``prompt`` field (those a contrastive derangement permutes)."""
    keys = getattr(conditioner, "default_keys", {}) or {}
    fields = ("prompt", "seconds_start", "seconds_total")
    ids = {k for k in conditioner.conditioners if (k if k in fields else keys.get(k, k)) == "prompt"}
    if not ids:
        raise ValueError(f"no conditioner reads the 'prompt' field (ids {list(conditioner.conditioners)}): the "
                         f"contrastive loss has nothing to shuffle")
    return ids


@torch.no_grad()
def _load_local_(dst, src) -> None:
    """Copy saved local shards into live (DTensor or plain) tensors of the same structure."""
    if isinstance(dst, dict):
        missing = sorted(set(dst) ^ set(src))
        if missing:
            raise RuntimeError(f"checkpoint shard keys differ from the model's: {missing[:5]}")
        for k in dst:
            _load_local_(dst[k], src[k])
    elif isinstance(dst, (list, tuple)):
        if len(dst) != len(src):
            raise RuntimeError(f"checkpoint shard has {len(src)} tensors, the model {len(dst)}")
        for a, b in zip(dst, src):
            _load_local_(a, b)
    else:
        d = D.local(dst)
        if d.shape != src.shape:
            raise RuntimeError(f"checkpoint shard of shape {tuple(src.shape)} for a local shard of {tuple(d.shape)} "
                               f"(resume FSDP runs with the same number of processes)")
        d.copy_(src)


def _load_fsdp_optimizer(opt: torch.optim.Optimizer, saved: dict) -> None:
    """Restore an AdamW state whose tensors were saved as local shards: rebuild DTensors like the params'."""
    from torch.distributed.tensor import DTensor

    params = [p for g in opt.param_groups for p in g["params"]]
    state = {}
    for i, st in saved["state"].items():
        p = params[int(i)]
        state[i] = {k: (DTensor.from_local(v.to(D.local(p).device), p.device_mesh, p.placements, shape=p.shape,
                                           stride=p.stride())
                        if isinstance(p, DTensor) and isinstance(v, torch.Tensor) and v.dim() > 0 else v)
                    for k, v in st.items()}
    opt.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
