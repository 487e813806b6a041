"""arc_fast.sampling.Sampler / run: the one implementation of the step arithmetic and the noise order."""
import math

import pytest
import torch

from arc_fast import sampling as S


def test_ddim_with_the_exact_velocity_recovers_x0():
    """v-objective: x_t = cos(t pi/2) x0 + sin(t pi/2) eps, v = cos eps - sin x0; DDIM with the true v is exact."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 5, generator=g), torch.randn(2, 3, 5, generator=g)

    def model(x, t, cfg_scale=1.0):
        a, s = torch.cos(t * math.pi / 2)[:, None, None], torch.sin(t * math.pi / 2)[:, None, None]
        return a * eps - s * x0

    ts = S.schedule("v", 6)
    out = S.run(model, S.start("v", eps), S.Sampler("euler", ts, "v"))
    torch.testing.assert_close(out, x0, rtol=1e-5, atol=1e-5)


def test_rf_pingpong_noise_order_is_the_contract():
    """One draw after each model call but the last, in step order; predraw gives the same tensors."""
    events = []

    def model(x, t, cfg_scale=1.0):
        events.append(("model", round(float(t[0]), 4)))
        return torch.zeros_like(x)

    plan = S.Sampler("pingpong", S.rf_timesteps(4))
    x = torch.zeros(1, 2, 3)

    def noise(i, x):
        events.append(("noise", i))
        return torch.full_like(x, float(i + 1))
    out = S.run(model, x, plan, noise)
    ts = [round(float(t), 4) for t in S.rf_timesteps(4)]
    assert events == [("model", ts[0]), ("noise", 0), ("model", ts[1]), ("noise", 1), ("model", ts[2]),
                      ("noise", 2), ("model", ts[3])]
    want, t = 0.0, S.rf_timesteps(4).double()
    for i in range(3):   # v = 0, so x0_hat = x; re-noised with eps_i = i + 1
        want = (1 - t[i + 1]) * want + t[i + 1] * (i + 1)
    torch.testing.assert_close(out, torch.full_like(x, float(want)), rtol=1e-6, atol=0)
    g1, g2 = S.make_generator(5), S.make_generator(5)
    drawn = plan.predraw(x, g1)
    assert drawn.shape == (3, 1, 2, 3)
    # the same generator state and call: the same draws
    assert all(torch.equal(drawn[i], plan.draw(x, g2)) for i in range(3))


def test_v_pingpong_draws_every_step_in_fp32():
    plan = S.Sampler("pingpong", S.schedule("v", 3), "v")
    assert [plan.draws_noise(i) for i in range(3)] == [True, True, True]
    assert plan.noise_dtype(torch.bfloat16) == torch.float32
    assert S.Sampler("pingpong", S.rf_timesteps(3)).noise_dtype(torch.bfloat16) == torch.bfloat16
    assert not any(S.Sampler("euler", S.rf_timesteps(3)).draws_noise(i) for i in range(3))


def test_run_hooks_timer_and_public_samplers_agree():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4, 4, generator=g) * 0.1

    def model(x, t, cfg_scale=1.0, bias=None):
        return torch.einsum("ij,bjt->bit", a, x) + t[:, None, None] + bias

    noise = torch.randn(2, 4, 6, generator=g)
    bias = torch.randn(2, 4, 6, generator=g)
    seen, times = [], []
    ref = S.sample_pingpong(model, noise, steps=5, generator=S.make_generator(3), bias=bias)
    out = S.run(model, noise, S.Sampler("pingpong", S.rf_timesteps(5)), S.make_generator(3), cond={"bias": bias},
                on_step=lambda i, t, v: seen.append(i), step_times=times)
    # sample_pingpong runs this same loop and step arithmetic: same computation, same bytes
    assert torch.equal(out, ref) and seen == [0, 1, 2, 3, 4] and len(times) == 5
    finite = S.FiniteSteps()
    S.run(lambda x, t, cfg_scale=1.0: x / (t[:, None, None] > 0.9).float(), noise,
          S.Sampler("euler", S.rf_timesteps(4)), on_step=finite)
    assert finite.first_bad()[0] == 2   # t drops to 0.88 at step 2: division by zero there


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown sampler"):
        S.Sampler("heun", S.rf_timesteps(2))
    with pytest.raises(ValueError, match="objective"):
        S.Sampler("euler", S.rf_timesteps(2), "eps")
    with pytest.raises(ValueError, match="steps >= 1"):
        S.Sampler("euler", torch.zeros(1))
    with pytest.raises(ValueError, match="needs noise"):
        S.run(lambda x, t, cfg_scale=1.0: x, torch.zeros(1, 1, 1), S.Sampler("pingpong", S.rf_timesteps(2)))
