"""ARC objectives as small pure functions: relativistic adversarial losses, the contrastive
(prompt-deranged) loss, the finite-difference R1/R2 penalty, noise-level samplers and the EMA schedule.

Notation (SPEC.md section 5): x0 clean latents, eps noise, x_t = (1 - t) x0 + t eps, the generator's
one-step estimate x0_hat = x_t - t v_G(x_t, t, c); both x0 and x0_hat are re-noised with the same s and
noise eps': x_s = (1 - s) x0 + s eps', x0_hat_s = (1 - s) x0_hat + s eps'. D(.) is the discriminator's score
map (B, 1, T'); softplus(u) = log(1 + e^u); every loss is a mean over the batch and the score map.

All functions take and return float tensors on any device; scores are used in the dtype given (the trainer
passes fp32). Nothing here holds state except ``NoiseLevelSampler`` (its RNG, saved in checkpoints).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "relativistic_d_loss", "relativistic_g_loss", "contrastive_d_loss", "derangement", "finite_difference_penalty",
    "renoise", "sample_uniform_sobol", "sample_logit_normal", "sample_truncated_logit_normal",
    "sample_logsnr_uniform", "sample_one_shot", "NoiseLevelSampler", "NOISE_DISTRIBUTIONS", "ema_decay",
    "ema_update_",
]


def _check_pair(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError(f"{name_a} and {name_b} must be tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.shape != b.shape:
        raise ValueError(f"{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} must have the same shape")


def relativistic_d_loss(d_real: torch.Tensor, d_fake: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """Discriminator's relativistic loss: ``weight * mean(softplus(-(D(x_s) - D(x0_hat_s))))``.

    d_real, d_fake: score maps of the same shape, e.g. (B, 1, T'). Returns a scalar. Minimised when D scores
    every real sample above its paired fake one (R3GAN's pairing: the fake is the real's own re-noised estimate).
    """
    _check_pair("d_real", d_real, "d_fake", d_fake)
    return weight * F.softplus(-(d_real - d_fake)).mean()


def relativistic_g_loss(d_real: torch.Tensor, d_fake: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """Generator's relativistic loss: ``weight * mean(softplus(D(x_s) - D(x0_hat_s)))``.

    Same shapes as ``relativistic_d_loss``; its mirror image (G wants its fake scored above the real).
    """
    _check_pair("d_real", d_real, "d_fake", d_fake)
    return weight * F.softplus(d_real - d_fake).mean()


def contrastive_d_loss(d_matched: torch.Tensor, d_mismatched: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """ARC's contrastive discriminator loss: ``weight * mean(softplus(-(D(x_s, c) - D(x_s, c_shuffled))))``.

    d_matched: D's scores of the real re-noised latents under their own prompts; d_mismatched: the same
    latents under a deranged prompt (``derangement``). Teaches D (and through it G) prompt adherence.
    """
    _check_pair("d_matched", d_matched, "d_mismatched", d_mismatched)
    return weight * F.softplus(-(d_matched - d_mismatched)).mean()


def derangement(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly random permutation of range(n) with no fixed point: perm[i] != i for every i.

    Returns an int64 tensor (n,) on the CPU. Rejection sampling from ``torch.randperm`` (about e tries on
    average); it falls back to a random rotation after 1000 rejections, which cannot happen in practice.
    n < 2 has no derangement: ValueError (the contrastive loss needs a batch of at least 2 per process).
    """
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 items (every sample must get another sample's prompt); "
                         f"got batch size {n}: use batch_size >= 2 per process for the contrastive loss")
    ar = torch.arange(n)
    for _ in range(1000):
        perm = torch.randperm(n, generator=generator)
        if not bool((perm == ar).any()):
            return perm
    shift = int(torch.randint(1, n, (1,), generator=generator))
    return torch.roll(ar, shift)


def finite_difference_penalty(d_clean: torch.Tensor, d_perturbed: torch.Tensor) -> torch.Tensor:
    """Finite-difference gradient penalty (R1 on real inputs, R2 on fakes):
    ``mean_b sum_{map} (D(x + delta) - D(x))^2`` with delta = sigma * N(0, I) drawn by the caller.

    d_clean, d_perturbed: score maps (B, ...) of the same shape. Returns a scalar: the per-sample sum over
    the score map, averaged over the batch. The trainer adds ``gamma * (R1 + R2) / 2`` to D's loss.
    """
    _check_pair("d_clean", d_clean, "d_perturbed", d_perturbed)
    return (d_perturbed - d_clean).pow(2).flatten(1).sum(1).mean()


def renoise(x0: torch.Tensor, x0_hat: torch.Tensor, s: torch.Tensor, noise: torch.Tensor):
    """Re-noise a real/fake pair to level s with the SAME noise: returns (x_s, x0_hat_s).

    x0, x0_hat, noise (B, C, T); s (B,). x_s = (1 - s) x0 + s noise, x0_hat_s = (1 - s) x0_hat + s noise.
    """
    if s.dim() != 1 or s.shape[0] != x0.shape[0]:
        raise ValueError(f"s must have shape ({x0.shape[0]},), got {tuple(s.shape)}")
    s = s.to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
    return (1 - s) * x0 + s * noise, (1 - s) * x0_hat + s * noise


# ---------------------------------------------------------------------------------------------- noise levels

def sample_uniform_sobol(engine: torch.quasirandom.SobolEngine, n: int) -> torch.Tensor:
    """t ~ U[0, 1) from a (scrambled) 1-D Sobol engine: low-discrepancy, so a small batch covers [0, 1) evenly.
    Returns fp32 (n,)."""
    return engine.draw(n).view(n).to(torch.float32)


def sample_logit_normal(n: int, generator: torch.Generator | None = None, mean: float = 0.0,
                        std: float = 1.0) -> torch.Tensor:
    """t = sigmoid(N(mean, std^2)): mass in the middle of (0, 1). Returns fp32 (n,) on the CPU."""
    return torch.sigmoid(torch.randn(n, generator=generator) * std + mean)


def sample_truncated_logit_normal(n: int, generator: torch.Generator | None = None, lo: float = 0.075,
                                  hi: float = 1.0) -> torch.Tensor:
    """1 - (logit-normal truncated to [lo, hi], rescaled to [0, 1]): Stable Audio's ``trunc_logit_normal`` noise
    level, ``1 - truncated_logistic_normal_rescaled``. The flip puts the truncated (lightly noised) end at t = 1,
    so the draws lean to high noise (mean ~0.54 for the defaults, never above 1).

    Inverse-CDF form: u = Phi(z), z ~ N(0, 1); u' = Phi(logit lo) + (Phi(logit hi) - Phi(logit lo)) u;
    r = (sigmoid(Phi^-1(u')) - lo) / (hi - lo); t = 1 - r. hi = 1 keeps the tail down to t = 0. fp32 (n,), CPU.
    """
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"truncated logit-normal needs 0 <= lo < hi <= 1, got lo={lo}, hi={hi}")
    z = torch.randn(n, generator=generator, dtype=torch.float64)
    a = torch.special.ndtr(torch.logit(torch.tensor(lo, dtype=torch.float64)))
    b = torch.special.ndtr(torch.logit(torch.tensor(hi, dtype=torch.float64)))
    u = a + (b - a) * torch.special.ndtr(z)
    t = torch.sigmoid(torch.special.ndtri(u))
    return (1.0 - ((t - lo) / (hi - lo)).clamp(0.0, 1.0)).to(torch.float32)


def sample_logsnr_uniform(n: int, generator: torch.Generator | None = None, lo: float = -6.0,
                          hi: float = 2.0) -> torch.Tensor:
    """logSNR ~ U[lo, hi], t = sigmoid(-logSNR): the same logSNR range as the ping-pong sampler's schedule
    (t in [sigmoid(-hi), sigmoid(-lo)] = [0.119, 0.9975] for the defaults). fp32 (n,) on the CPU."""
    if not lo < hi:
        raise ValueError(f"logsnr_uniform needs lo < hi, got lo={lo}, hi={hi}")
    logsnr = torch.rand(n, generator=generator) * (hi - lo) + lo
    return torch.sigmoid(-logsnr)


def sample_one_shot(n: int) -> torch.Tensor:
    """t = 1 for every sample: pure noise in, one step out (a one-step generator). fp32 (n,)."""
    return torch.ones(n)


#: name -> accepted keyword parameters (with defaults) of each noise-level distribution.
NOISE_DISTRIBUTIONS: dict[str, dict] = {
    "uniform": {},
    "logit_normal": {"mean": 0.0, "std": 1.0},
    "truncated_logit_normal": {"lo": 0.075, "hi": 1.0},
    "logsnr_uniform": {"lo": -6.0, "hi": 2.0},
    "one_shot": {},
}


class NoiseLevelSampler:
    """Draws noise levels t (or s) in [0, 1] from one of ``NOISE_DISTRIBUTIONS``, reproducibly.

    It owns its randomness (a CPU ``torch.Generator``, or a scrambled Sobol engine for ``uniform``), so the
    draws do not depend on anything else the trainer does, and ``state_dict()`` / ``load_state_dict()``
    make a resumed run draw exactly the same levels. ``sample(n, device)`` -> fp32 (n,) on ``device``.
    """

    def __init__(self, kind: str, seed: int = 0, **params):
        if kind not in NOISE_DISTRIBUTIONS:
            raise ValueError(f"unknown noise distribution {kind!r}; choose from {', '.join(NOISE_DISTRIBUTIONS)}")
        allowed = NOISE_DISTRIBUTIONS[kind]
        bad = sorted(set(params) - set(allowed))
        if bad:
            raise ValueError(f"noise distribution {kind!r} takes {sorted(allowed) or 'no parameters'}, got {bad}")
        self.kind, self.seed = kind, int(seed)
        self.params = {**allowed, **{k: float(v) for k, v in params.items()}}
        self.generator = torch.Generator().manual_seed(self.seed)
        self.engine = torch.quasirandom.SobolEngine(1, scramble=True, seed=self.seed) if kind == "uniform" else None
        self.sample(1)  # validate the parameters now, not at the first training step
        self._reset()

    def _reset(self) -> None:
        self.generator.manual_seed(self.seed)
        if self.engine is not None:
            self.engine.reset()

    def sample(self, n: int, device: torch.device | str | None = None) -> torch.Tensor:
        if self.kind == "uniform":
            t = sample_uniform_sobol(self.engine, n)
        elif self.kind == "logit_normal":
            t = sample_logit_normal(n, self.generator, **self.params)
        elif self.kind == "truncated_logit_normal":
            t = sample_truncated_logit_normal(n, self.generator, **self.params)
        elif self.kind == "logsnr_uniform":
            t = sample_logsnr_uniform(n, self.generator, **self.params)
        else:
            t = sample_one_shot(n)
        return t.to(device) if device is not None else t

    def state_dict(self) -> dict:
        return {"kind": self.kind, "seed": self.seed, "generator": self.generator.get_state(),
                "sobol_drawn": int(self.engine.num_generated) if self.engine is not None else 0}

    def load_state_dict(self, state: dict) -> None:
        if state["kind"] != self.kind:
            raise ValueError(f"checkpoint's noise sampler is {state['kind']!r}, the config says {self.kind!r}")
        self.generator.set_state(state["generator"])
        if self.engine is not None:
            self.engine = torch.quasirandom.SobolEngine(1, scramble=True, seed=int(state["seed"]))
            if state["sobol_drawn"]:
                self.engine.fast_forward(int(state["sobol_drawn"]))


# ------------------------------------------------------------------------------------------------------ EMA

def ema_decay(num_updates: int, beta: float = 0.9999, power: float = 0.75) -> float:
    """EMA decay for the ``num_updates``-th update (0-based), with power warm-up:
    ``decay = min(beta, 1 - (1 + n)^(-power))``, and 0 for n = 0 (the first update copies the weights).

    With power 3/4 the average covers ~n^(3/4) recent steps early on, so it tracks the fast-moving start of
    post-training instead of freezing near the pretrained weights; beta caps it (0.9999: ~10k steps).
    """
    if num_updates < 0:
        raise ValueError(f"num_updates must be >= 0, got {num_updates}")
    if num_updates == 0:
        return 0.0
    return min(beta, 1.0 - (1.0 + num_updates) ** (-power))


@torch.no_grad()
def ema_update_(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """In place: ema_p <- decay * ema_p + (1 - decay) * p for every parameter; buffers are copied.

    ``ema`` and ``model`` must have the same parameter names and shapes (ema = a deep copy of model).
    """
    e_params = dict(ema.named_parameters())
    m_params = dict(model.named_parameters())
    if e_params.keys() != m_params.keys():
        raise ValueError("ema and model have different parameters")
    e_list = [e_params[k] for k in m_params]
    m_list = [m_params[k].detach().to(e_params[k].dtype) for k in m_params]
    if e_list:
        torch._foreach_lerp_(e_list, m_list, 1.0 - decay)
    e_bufs = dict(ema.named_buffers())
    for k, b in model.named_buffers():
        if k in e_bufs:
            e_bufs[k].copy_(b)
