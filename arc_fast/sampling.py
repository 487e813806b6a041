"""Samplers: the step arithmetic of every sampling run in the package, written once.

Rectified flow (SPEC.md section 4): x_t = (1 - t) x0 + t eps, the model predicts v = eps - x0, so
x0_hat = x_t - t v. Euler integrates v (base models); ping-pong (ARC models) denoises to x0_hat and re-noises
to the next time with FRESH noise. v-objective models (alpha = cos(t pi/2), sigma = sin(t pi/2),
x0 = alpha x - sigma v, eps = sigma x + alpha v) use DDIM ('euler') or the same ping-pong idea.

``Sampler`` holds the arithmetic (``model_t``, ``draws_noise``, ``step``); ``run`` is the one loop (progress
bar, step timer and a per-step hook such as ``FiniteSteps``, the pipeline's NaN guard). The public
``sample_euler`` / ``sample_pingpong``, ``arc_fast.pipeline.Pipeline`` and the CUDA-graph capture
(``arc_fast.cuda_graphs``) all run through them, so they agree bitwise for the same noise.

Noise is drawn on the CPU from a seeded ``torch.Generator`` and moved to the target device, so a seed gives
the same audio on every device. The draw order is a contract (``sample_pingpong``): the start noise first
(drawn by the caller), then one draw per step that needs one, after that step's model call.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
import typing as tp

import torch

ModelFn = tp.Callable[..., torch.Tensor]
NoiseFn = tp.Callable[[int, torch.Tensor], torch.Tensor]
METHODS = ("euler", "pingpong")
OBJECTIVES = ("rf", "v")


# ------------------------------------------------------------------------------------------------------
# Schedules, noise, start point
# ------------------------------------------------------------------------------------------------------
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


def rf_schedule(steps: int, sigma_max: float = 1.0) -> torch.Tensor:
    """Rectified-flow times (steps + 1,) fp32 on the CPU from ``sigma_max`` to 0, always decreasing.

    ``rf_timesteps`` (the reference schedule: logSNR from that of sigma_max up to 2) whenever it decreases;
    for sigma_max below sigmoid(-2) ~ 0.119 that schedule would climb back to 0.119, so the logSNR range is
    instead that of sigma_max up to 8 more (the span of the full schedule)."""
    ts = rf_timesteps(steps, sigma_max)
    if bool((ts[1:] <= ts[:-1]).all()):
        return ts
    l0 = math.log((1 - sigma_max) / sigma_max)
    t = torch.sigmoid(-torch.linspace(l0, l0 + 8.0, steps + 1, dtype=torch.float64))
    t[0], t[-1] = sigma_max, 0.0
    return t.float()


def schedule(objective: str, steps: int, sigma_max: float = 1.0) -> torch.Tensor:
    """The times (steps + 1,) fp32 (CPU) a model samples at: ``rf_schedule`` for rectified flow ('rf'),
    linear from ``sigma_max`` to 0 for v-objective models ('v')."""
    _check_objective(objective)
    if objective == "v":
        return torch.linspace(sigma_max, 0.0, steps + 1)
    return rf_schedule(steps, sigma_max)


def random_seed() -> int:
    """A fresh seed in [0, 2**63) from the operating system's entropy (``os.urandom``): what ``seed=None``
    stands for in ``Pipeline.__call__``, drawn explicitly so that the seed a clip was made with can be
    reported and given back. 63 bits: inside ``torch.Generator.manual_seed``'s range, with room for the
    CLI's ``seed + line index``."""
    return int.from_bytes(os.urandom(8), "little") >> 1


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


def start(objective: str, noise: torch.Tensor, init: torch.Tensor | None = None,
          sigma_max: float = 1.0) -> torch.Tensor:
    """The sampler's first x (B, C, T): ``noise`` alone, or with ``init`` latents (audio-to-audio) the
    noised init at ``sigma_max``: ``(1 - s) init + s noise`` (rectified flow, in the promoted dtype of the
    two; pass ``init`` in noise's dtype) or ``cos(s pi/2) init + sin(s pi/2) noise`` (v-objective, in fp32,
    returned in noise's dtype)."""
    _check_objective(objective)
    if init is None:
        return noise
    if objective == "v":
        a = 0.0 if sigma_max >= 1.0 else math.cos(sigma_max * math.pi / 2)
        return (a * init + math.sin(sigma_max * math.pi / 2) * noise.float()).to(noise.dtype)
    return (1 - sigma_max) * init + sigma_max * noise


def reuse_conditioning(model) -> tp.ContextManager:
    """``model.reuse_conditioning()`` where the model offers it (``FastDiT``: the text context and its
    cross-attention keys/values are computed once for all steps), else a scope that does nothing."""
    scope = getattr(model, "reuse_conditioning", None)
    return scope() if callable(scope) else contextlib.nullcontext()


def _check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


# ------------------------------------------------------------------------------------------------------
# The step arithmetic
# ------------------------------------------------------------------------------------------------------
class Sampler:
    """The arithmetic of one sampling run over explicit times ``ts`` (steps + 1,) fp32, on x's device.

    method: 'euler' | 'pingpong'; objective: 'rf' | 'v' (see the module docstring). Per step i the model
    gets ``model_t(i, x)`` (B,) in x's dtype, then ``step(i, x, v, eps)`` gives the next x in x's dtype;
    ``eps`` (x's shape, ``noise_dtype``) is needed exactly when ``draws_noise(i)``. The step constants are
    rounded to x's dtype from fp32 times; this rounding is part of the result (graph == eager relies on it).
    """

    def __init__(self, method: str, ts: torch.Tensor, objective: str = "rf"):
        if method not in METHODS:
            raise ValueError(f"unknown sampler {method!r}; choose from {', '.join(METHODS)}")
        _check_objective(objective)
        if ts.dim() != 1 or ts.shape[0] < 2:
            raise ValueError(f"ts must be (steps + 1,) with steps >= 1, got shape {tuple(ts.shape)}")
        self.method, self.objective, self.ts = method, objective, ts
        self.steps = ts.shape[0] - 1

    def model_t(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """The time the model sees at step i: (B,) in x's dtype."""
        return self.ts[i].expand(x.shape[0]).to(x.dtype)

    def draws_noise(self, i: int) -> bool:
        """Whether step i takes fresh noise: every ping-pong step but the last (rectified flow), every
        ping-pong step (v-objective, whose last step weighs it by sin(0) = 0)."""
        return self.method == "pingpong" and (self.objective == "v" or i < self.steps - 1)

    def noise_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype of the fresh noise for an x of ``dtype``."""
        return torch.float32 if self.objective == "v" else dtype

    def draw(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One fresh noise tensor like x from ``generator`` (CPU draw)."""
        return randn(x.shape, generator, x.device, self.noise_dtype(x.dtype))

    def predraw(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
        """All the draws ``run`` would make from ``generator``, in its order: (n, *x.shape), or None if none."""
        draws = [self.draw(x, generator) for i in range(self.steps) if self.draws_noise(i)]
        return torch.stack(draws) if draws else None

    def step(self, i: int, x: torch.Tensor, v: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        """x at ts[i] and the model's v there -> x at ts[i + 1] (x0 after the last step), x's dtype."""
        t_cur, t_next = self.ts[i], self.ts[i + 1]
        last = i == self.steps - 1
        if self.objective == "v":
            a, s = torch.cos(t_cur * math.pi / 2), torch.sin(t_cur * math.pi / 2)
            a_n = torch.cos(t_next * math.pi / 2) if not last else torch.ones_like(t_next)
            s_n = torch.sin(t_next * math.pi / 2) if not last else torch.zeros_like(t_next)
            xf, vf = x.float(), v.float()
            x0 = a * xf - s * vf
            if self.method == "euler":
                eps = s * xf + a * vf
            return (a_n * x0 + s_n * eps).to(x.dtype)
        if self.method == "euler":
            return x + (t_next - t_cur).to(x.dtype) * v
        x0_hat = x - t_cur.to(x.dtype) * v
        if last:
            return x0_hat
        return (1 - t_next).to(x.dtype) * x0_hat + t_next.to(x.dtype) * eps


class FiniteSteps:
    """A ``run`` hook: records, without a device sync, whether each step's model output is finite."""

    def __init__(self):
        self.flags: list = []
        self.times: list = []

    def __call__(self, i: int, t: torch.Tensor, v: torch.Tensor) -> None:
        self.flags.append(torch.isfinite(v).all())
        self.times.append(t[:1])

    def first_bad(self) -> tp.Optional[tuple[int, float]]:
        """(step index, its t) of the first non-finite step, or None (one device sync)."""
        if not self.flags:
            return None
        ok = torch.stack(self.flags)
        if bool(ok.all()):
            return None
        i = int((~ok).nonzero()[0, 0])
        return i, float(self.times[i].float())


def _progress(iterable, total: int, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=desc, leave=False)


def run(model: ModelFn, x: torch.Tensor, sampler: Sampler, noise: torch.Generator | NoiseFn | None = None, *,
        cfg_scale: float = 1.0, cond: dict | None = None,
        on_step: tp.Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
        progress: bool = False, step_times: list | None = None) -> torch.Tensor:
    """The sampling loop: ``model(x, t, cfg_scale=..., **cond) -> v`` with x (B, C, T), t (B,), then
    ``sampler.step``; returns x0 (B, C, T).

    noise: a ``torch.Generator`` (fresh draws, see ``Sampler.draw``) or ``noise(i, x) -> eps`` (e.g. the
    static buffers of a CUDA graph); needed when the sampler draws. on_step(i, t, v): called after each
    model call (``FiniteSteps``). step_times: a list that receives seconds per step. progress: a tqdm bar."""
    cond = cond or {}
    if isinstance(noise, torch.Generator):
        gen = noise
        noise = lambda i, x: sampler.draw(x, gen)  # noqa: E731
    if noise is None and any(sampler.draws_noise(i) for i in range(sampler.steps)):
        raise ValueError(f"the {sampler.method} sampler needs noise: a torch.Generator (see make_generator)")
    desc = "ping-pong" if sampler.method == "pingpong" else sampler.method
    with reuse_conditioning(model):
        for i in _progress(range(sampler.steps), sampler.steps, progress, desc):
            t0 = time.perf_counter() if step_times is not None else 0.0
            t = sampler.model_t(i, x)
            v = model(x, t, cfg_scale=cfg_scale, **cond)
            if on_step is not None:
                on_step(i, t, v)
            x = sampler.step(i, x, v, noise(i, x) if sampler.draws_noise(i) else None)
            if step_times is not None:
                step_times.append(time.perf_counter() - t0)
    return x


# ------------------------------------------------------------------------------------------------------
# Public samplers
# ------------------------------------------------------------------------------------------------------
def sample_euler(model: ModelFn, noise: torch.Tensor, steps: int = 100, cfg_scale: float = 1.0,
                 sigma_max: float = 1.0, init_data: torch.Tensor | None = None, progress: bool = False,
                 step_times: list | None = None, **cond) -> torch.Tensor:
    """Rectified-flow Euler sampler. ``model(x, t, cfg_scale=..., **cond) -> v`` with x (B, C, T), t (B,).

    noise (B, C, T); returns x0 (B, C, T) in noise's dtype. With ``init_data`` (audio-to-audio) the start
    is (1 - sigma_max) init + sigma_max noise. ``step_times`` (a list), if given, receives seconds per step.
    """
    ts = rf_timesteps(steps, sigma_max, device=noise.device)
    x = start("rf", noise, init_data, sigma_max)
    return run(model, x, Sampler("euler", ts), cfg_scale=cfg_scale, cond=cond, progress=progress,
               step_times=step_times)


def sample_pingpong(model: ModelFn, noise: torch.Tensor, steps: int = 8, cfg_scale: float = 1.0,
                    sigma_max: float = 1.0, init_data: torch.Tensor | None = None,
                    generator: torch.Generator | None = None, progress: bool = False,
                    step_times: list | None = None, **cond) -> torch.Tensor:
    """Ping-pong few-step sampler for ARC models: denoise to x0_hat, re-noise with FRESH noise to the next t.

    for i in 0..N-1: x0_hat = x - t_i v(x, t_i); then, but after the last step (which returns x0_hat), x is
    re-noised to t_{i+1} with eps_i, drawn from ``generator`` after the model call of step i (the noise
    order every sampler of the package keeps). noise (B, C, T) -> x0 (B, C, T).
    """
    if generator is None:
        raise ValueError("sample_pingpong needs a torch.Generator for its fresh per-step noise (see make_generator)")
    ts = rf_timesteps(steps, sigma_max, device=noise.device)
    x = start("rf", noise, init_data, sigma_max)
    return run(model, x, Sampler("pingpong", ts), generator, cfg_scale=cfg_scale, cond=cond, progress=progress,
               step_times=step_times)


SAMPLERS = {"euler": sample_euler, "pingpong": sample_pingpong}
