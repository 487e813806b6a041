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
inert unpickler and still resume (the checkpoint code: ``arc_fast/train/checkpoint.py``). The final export writes the EMA generator as a Stable Audio
model folder marked ``arc_post_trained`` (ping-pong sampling by default in ``load_pipeline``).
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
import warnings

import numpy as np
import torch

from ..reference.conditioners import assemble_dit_inputs
from . import distributed as D
from .checkpoint import (CHECKPOINT_FORMAT, CheckpointingMixin, _seed_all,  # noqa: F401 - public here too
                         read_checkpoint_file)
from .config import TrainConfig
from .data import LatentDataset, ResumableBatchSampler, collate
from .discriminator import ARCDiscriminator
from .dit import make_dit
from .losses import (NoiseLevelSampler, contrastive_d_loss, derangement, ema_decay, ema_update_,
                     finite_difference_penalty, relativistic_d_loss, relativistic_g_loss, renoise)

class NonFiniteLossError(RuntimeError):
    """A loss (or gradient norm) became NaN/Inf; the run stopped before updating any weights."""


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


class ARCTrainer(CheckpointingMixin):
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
