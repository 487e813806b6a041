"""Rectified-flow samplers: Euler with classifier-free guidance (base models) and ping-pong (ARC models).

Convention (SPEC.md section 4): x_t = (1 - t) x0 + t eps, the model predicts v = eps - x0, so
x0_hat = x_t - t v. Timesteps come from a logSNR-linear schedule (``rf_timesteps``).

Both samplers are deterministic for a given ``generator``/``seed``: noise is drawn on the CPU from a
seeded ``torch.Generator`` and moved to the target device, so a seed gives the same audio on every device.
"""
from __future__ import annotations

import contextlib
import math
import time
import typing as tp

import torch

ModelFn = tp.Callable[..., torch.Tensor]


def rf_timesteps(steps: int, sigma_max: float = 1.0, logsnr_max: float = -6.0, logsnr_min: float = 2.0,
                 device=None) -> torch.Tensor:
    """The ``sample_rf`` schedule: ``steps + 1`` times from ``sigma_max`` down to exactly 0, fp32.

    logsnr = linspace(logsnr_max', logsnr_min, steps + 1), t = sigmoid(-logsnr); t[0] = sigma_max and
    t[-1] = 0. When sigma_max < 1, logsnr_max' = log((1 - sigma_max) / sigma_max) so the schedule starts there.
    For 8 steps: [1, 0.9933, 0.9820, 0.9526, 0.8808, 0.7311, 0.5, 0.2689, 0].
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not 0.0 < sigma_max <= 1.0:
        raise ValueError(f"sigma_max must be in (0, 1], got {sigma_max}")
    if sigma_max < 1.0:
        logsnr_max = math.log((1 - sigma_max) / sigma_max)
    logsnr = torch.linspace(logsnr_max, logsnr_min, steps + 1, dtype=torch.float64)
    t = torch.sigmoid(-logsnr)
    t[0] = sigma_max
    t[-1] = 0.0
    return t.to(dtype=torch.float32, device=device)


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (a fresh random seed when None)."""
    g = torch.Generator(device="cpu")
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


def randn(shape, generator: torch.Generator, device, dtype=torch.float32) -> torch.Tensor:
    """Seeded Gaussian noise drawn on the CPU (device-independent), moved to ``device``."""
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)


def reuse_conditioning(model) -> tp.ContextManager:
    """``model.reuse_conditioning()`` where the model offers it (``FastDiT``: the text context and its
    cross-attention keys/values are computed once for all steps), else a scope that does nothing."""
    scope = getattr(model, "reuse_conditioning", None)
    return scope() if callable(scope) else contextlib.nullcontext()


def _progress(iterable, total: int, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=desc, leave=False)


def sample_euler(model: ModelFn, noise: torch.Tensor, steps: int = 100, cfg_scale: float = 1.0,
                 sigma_max: float = 1.0, init_data: torch.Tensor | None = None, progress: bool = False,
                 step_times: list | None = None, **cond) -> torch.Tensor:
    """Rectified-flow Euler sampler. ``model(x, t, cfg_scale=..., **cond) -> v`` with x (B, C, T), t (B,).

    noise (B, C, T); returns x0 (B, C, T) in noise's dtype. With ``init_data`` (audio-to-audio) the start
    is (1 - sigma_max) init + sigma_max noise. ``step_times`` (a list), if given, receives seconds per step.
    """
    ts = rf_timesteps(steps, sigma_max, device=noise.device)
    x = noise if init_data is None else (1 - sigma_max) * init_data + sigma_max * noise
    b = x.shape[0]
    with reuse_conditioning(model):
        for i in _progress(range(steps), steps, progress, "euler"):
            t0 = time.perf_counter()
            t_cur, t_next = ts[i], ts[i + 1]
            v = model(x, t_cur.expand(b).to(x.dtype), cfg_scale=cfg_scale, **cond)
            x = x + (t_next - t_cur).to(x.dtype) * v
            if step_times is not None:
                step_times.append(time.perf_counter() - t0)
    return x


def sample_pingpong(model: ModelFn, noise: torch.Tensor, steps: int = 8, cfg_scale: float = 1.0,
                    sigma_max: float = 1.0, init_data: torch.Tensor | None = None,
                    generator: torch.Generator | None = None, progress: bool = False,
                    step_times: list | None = None, **cond) -> torch.Tensor:
    """Ping-pong few-step sampler for ARC models: denoise to x0_hat, re-noise with FRESH noise to the next t.

    for i in 0..N-1: x0_hat = x - t_i v(x, t_i); x = (1 - t_{i+1}) x0_hat + t_{i+1} eps_i (eps_i drawn from
    ``generator``); the last step returns x0_hat. noise (B, C, T) -> x0 (B, C, T).
    """
    if generator is None:
        raise ValueError("sample_pingpong needs a torch.Generator for its fresh per-step noise (see make_generator)")
    ts = rf_timesteps(steps, sigma_max, device=noise.device)
    x = noise if init_data is None else (1 - sigma_max) * init_data + sigma_max * noise
    b = x.shape[0]
    with reuse_conditioning(model):
        for i in _progress(range(steps), steps, progress, "ping-pong"):
            t0 = time.perf_counter()
            t_cur, t_next = ts[i], ts[i + 1]
            v = model(x, t_cur.expand(b).to(x.dtype), cfg_scale=cfg_scale, **cond)
            x0_hat = x - t_cur.to(x.dtype) * v
            if i == steps - 1:
                x = x0_hat
            else:
                eps = randn(x.shape, generator, x.device, x.dtype)
                x = (1 - t_next).to(x.dtype) * x0_hat + t_next.to(x.dtype) * eps
            if step_times is not None:
                step_times.append(time.perf_counter() - t0)
    return x


SAMPLERS = {"euler": sample_euler, "pingpong": sample_pingpong}
