"""ARC loss functions, derangement, noise-level samplers and EMA against hand-computed values."""
import math

import pytest
import torch

from arc_fast.train import losses as L


def _sp(u: float) -> float:
    return math.log1p(math.exp(u))


def test_relativistic_losses_match_hand_computation():
    real = torch.tensor([[[0.5, -1.0]], [[2.0, 0.0]]])  # (B=2, 1, T'=2)
    fake = torch.tensor([[[1.5, -3.0]], [[0.0, 0.25]]])
    diffs = [0.5 - 1.5, -1.0 + 3.0, 2.0 - 0.0, 0.0 - 0.25]
    want_d = sum(_sp(-d) for d in diffs) / 4
    want_g = sum(_sp(d) for d in diffs) / 4
    assert L.relativistic_d_loss(real, fake).item() == pytest.approx(want_d, rel=1e-6)
    assert L.relativistic_g_loss(real, fake).item() == pytest.approx(want_g, rel=1e-6)
    assert L.relativistic_d_loss(real, fake, weight=0.3).item() == pytest.approx(0.3 * want_d, rel=1e-6)
    assert L.relativistic_g_loss(real, fake, weight=2.0).item() == pytest.approx(2.0 * want_g, rel=1e-6)


def test_relativistic_losses_are_mirror_images():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(3, 1, 5, generator=g), torch.randn(3, 1, 5, generator=g)
    torch.testing.assert_close(L.relativistic_d_loss(real, fake), L.relativistic_g_loss(fake, real))
    # softplus(-u) - softplus(u) = -u, averaged: the two losses differ by mean(real - fake).
    diff = L.relativistic_g_loss(real, fake) - L.relativistic_d_loss(real, fake)
    torch.testing.assert_close(diff, (real - fake).mean())


def test_contrastive_loss_matches_hand_computation():
    matched = torch.tensor([[[1.0]], [[-0.5]], [[0.0]]])
    wrong = torch.tensor([[[0.0]], [[0.5]], [[-2.0]]])
    want = (_sp(-1.0) + _sp(1.0) + _sp(-2.0)) / 3
    assert L.contrastive_d_loss(matched, wrong, weight=1.5).item() == pytest.approx(1.5 * want, rel=1e-6)


def test_losses_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="d_fake"):
        L.relativistic_d_loss(torch.zeros(2, 1, 3), torch.zeros(2, 1, 4))
    with pytest.raises(ValueError, match="d_mismatched"):
        L.contrastive_d_loss(torch.zeros(2, 1, 3), torch.zeros(3, 1, 3))


@pytest.mark.parametrize("n", range(2, 8))
def test_derangement_has_no_fixed_points(n):
    g = torch.Generator().manual_seed(n)
    seen = set()
    for _ in range(200):
        perm = L.derangement(n, g)
        assert perm.dtype == torch.int64 and sorted(perm.tolist()) == list(range(n))
        assert not (perm == torch.arange(n)).any(), perm
        seen.add(tuple(perm.tolist()))
    derangements = round(math.factorial(n) / math.e)  # !n
    assert min(derangements, 20) <= len(seen) <= derangements  # uniform-ish over derangements, not one cycle


def test_derangement_of_two_swaps_and_one_is_rejected():
    assert L.derangement(2).tolist() == [1, 0]
    with pytest.raises(ValueError, match="at least 2"):
        L.derangement(1)
    with pytest.raises(ValueError, match="at least 2"):
        L.derangement(0)


def test_finite_difference_penalty_is_per_sample_sum_then_batch_mean():
    clean = torch.tensor([[[1.0, 2.0, 0.0]], [[0.0, 0.0, 0.0]]])
    pert = torch.tensor([[[1.5, 1.0, 0.0]], [[0.0, 3.0, -1.0]]])
    want = ((0.25 + 1.0) + (9.0 + 1.0)) / 2
    assert L.finite_difference_penalty(clean, pert).item() == pytest.approx(want)
    assert L.finite_difference_penalty(clean, clean).item() == 0.0


def test_renoise_uses_the_same_noise_for_both():
    g = torch.Generator().manual_seed(1)
    x0, xh, eps = (torch.randn(2, 3, 4, generator=g) for _ in range(3))
    s = torch.tensor([0.25, 1.0])
    xs, xhs = L.renoise(x0, xh, s, eps)
    torch.testing.assert_close(xs[0], 0.75 * x0[0] + 0.25 * eps[0])
    torch.testing.assert_close(xhs[0], 0.75 * xh[0] + 0.25 * eps[0])
    torch.testing.assert_close(xs[1], eps[1])  # s = 1: pure noise, identical for the pair
    torch.testing.assert_close(xhs[1], eps[1])
    with pytest.raises(ValueError, match="s must have shape"):
        L.renoise(x0, xh, torch.ones(3), eps)


@pytest.mark.parametrize("kind, params, lo, hi", [
    ("uniform", {}, 0.0, 1.0),
    ("logit_normal", {}, 0.0, 1.0),
    ("truncated_logit_normal", {}, 0.0, 1.0),
    ("logsnr_uniform", {}, 1 / (1 + math.exp(2.0)), 1 / (1 + math.exp(-6.0))),
    ("logsnr_uniform", {"lo": -1.0, "hi": 1.0}, 1 / (1 + math.e), 1 / (1 + math.exp(-1.0))),
    ("one_shot", {}, 1.0, 1.0),
])
def test_noise_samplers_ranges_and_shapes(kind, params, lo, hi):
    smp = L.NoiseLevelSampler(kind, seed=3, **params)
    t = smp.sample(4096)
    assert t.shape == (4096,) and t.dtype == torch.float32
    assert t.min().item() >= lo - 1e-6 and t.max().item() <= hi + 1e-6
    if kind not in ("one_shot",):
        assert t.std().item() > 0.05  # actually spread out, not a constant


def test_uniform_sobol_is_stratified():
    # The first 2^m points of a scrambled 1-D Sobol sequence put exactly one point in each of 2^m bins.
    t = L.NoiseLevelSampler("uniform", seed=11).sample(16)
    assert sorted((t * 16).floor().long().tolist()) == list(range(16))


def test_logit_normal_and_truncated_distributions():
    t = L.NoiseLevelSampler("logit_normal", seed=0).sample(20000)
    assert abs(t.median().item() - 0.5) < 0.02  # sigmoid(N(0, 1)) is symmetric around 1/2
    z = torch.logit(t.double())
    assert abs(z.std().item() - 1.0) < 0.03
    # Truncated: 1 - (the logit-normal conditioned on r >= lo, rescaled (r - lo) / (1 - lo)), as Stable Audio's
    # trunc_logit_normal: the flip leans the draws to high noise.
    lo = 0.2
    tt = L.NoiseLevelSampler("truncated_logit_normal", seed=0, lo=lo).sample(20000)
    raw = (1 - tt.double()) * (1 - lo) + lo
    ref = t.double()[t.double() >= lo]
    assert abs(raw.median().item() - ref.median().item()) < 0.02
    assert raw.min().item() >= lo - 1e-6
    default = L.sample_truncated_logit_normal(20000, torch.Generator().manual_seed(1))
    assert 0.52 < default.mean().item() < 0.56 and default.max().item() <= 1.0


def test_noise_sampler_state_round_trip_is_exact():
    for kind in ("uniform", "logit_normal", "truncated_logit_normal", "logsnr_uniform"):
        a = L.NoiseLevelSampler(kind, seed=5)
        a.sample(7)
        state = a.state_dict()
        want = a.sample(9)
        b = L.NoiseLevelSampler(kind, seed=5)
        b.load_state_dict(state)
        torch.testing.assert_close(b.sample(9), want, rtol=0, atol=0)


def test_noise_sampler_rejects_bad_settings():
    with pytest.raises(ValueError, match="unknown noise distribution"):
        L.NoiseLevelSampler("cosine")
    with pytest.raises(ValueError, match="takes"):
        L.NoiseLevelSampler("uniform", mean=0.0)
    with pytest.raises(ValueError, match="lo < hi"):
        L.NoiseLevelSampler("logsnr_uniform", lo=2.0, hi=-6.0)
    with pytest.raises(ValueError, match="0 <= lo < hi <= 1"):
        L.NoiseLevelSampler("truncated_logit_normal", lo=1.5)


def test_ema_decay_schedule():
    assert L.ema_decay(0) == 0.0
    assert L.ema_decay(1) == pytest.approx(1 - 2 ** -0.75)
    assert L.ema_decay(10) == pytest.approx(1 - 11 ** -0.75)
    assert L.ema_decay(10 ** 9) == 0.9999  # capped at beta
    assert L.ema_decay(10 ** 9, beta=0.99) == 0.99
    vals = [L.ema_decay(n) for n in range(1, 2000)]
    assert all(a <= b for a, b in zip(vals, vals[1:]))
    with pytest.raises(ValueError):
        L.ema_decay(-1)


def test_ema_update_matches_hand_computation():
    model = torch.nn.Linear(3, 2)
    ema = torch.nn.Linear(3, 2)
    model.register_buffer("counter", torch.tensor([5.0]))
    ema.register_buffer("counter", torch.tensor([0.0]))
    want_w = 0.9 * ema.weight.detach().clone() + 0.1 * model.weight.detach()
    L.ema_update_(ema, model, 0.9)
    torch.testing.assert_close(ema.weight, want_w)
    assert ema.counter.item() == 5.0
    L.ema_update_(ema, model, 0.0)  # decay 0: a copy
    torch.testing.assert_close(ema.bias, model.bias, rtol=0, atol=0)
