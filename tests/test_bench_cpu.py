"""pytest-benchmark tables for the CPU paths (eager ops, FastDiT step, FastOobleckDecoder), with a correctness
check in each test so that a regression shows up as a slower row and a bug as a failure.

Tiny shapes and ``benchmark.pedantic`` with a few rounds keep the whole file at a few seconds; compare runs with
``pytest tests/test_bench_cpu.py --benchmark-autosave`` then ``--benchmark-compare``. Everything runs on the eager
backend explicitly (conftest turns on the Triton interpreter, which would otherwise be picked on the CPU).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("pytest_benchmark")

from arc_fast.ops import adaln as adaln_ops  # noqa: E402
from arc_fast.ops import attention as attn_ops  # noqa: E402
from arc_fast.ops import rope as rope_ops  # noqa: E402
from arc_fast.ops import snake_conv as sc  # noqa: E402
from arc_fast.ops import swiglu as swiglu_ops  # noqa: E402
from arc_fast.ops import use_backend  # noqa: E402
from arc_fast.reference import functional as ref  # noqa: E402

ROUNDS = dict(rounds=5, iterations=1, warmup_rounds=1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny ops: a second OpenMP thread only adds barrier waits on the shared 2-core machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def _close(out, want, rtol=1e-5):
    err = (out - want).abs().max().item()
    assert err <= rtol * want.abs().max().item() + 1e-6, f"max|out - ref| = {err:.3e}"


@pytest.mark.benchmark(group="cpu-ops")
def test_adaln_eager(benchmark):
    g = _g()
    x, gamma = torch.randn(2, 65, 256, generator=g) + 0.5, 1 + 0.1 * torch.randn(256, generator=g)
    scale, shift = 0.3 * torch.randn(2, 256, generator=g), 0.3 * torch.randn(2, 256, generator=g)
    out = benchmark.pedantic(adaln_ops.adaln_layer_norm, args=(x, gamma, scale, shift, 1e-5, "eager"), **ROUNDS)
    _close(out, ref.adaln_modulate(x, gamma, scale, shift, 1e-5))


@pytest.mark.benchmark(group="cpu-ops")
def test_gated_residual_eager(benchmark):
    g = _g(1)
    x, y, gate = torch.randn(2, 65, 256, generator=g), torch.randn(2, 65, 256, generator=g), torch.randn(2, 256, generator=g)
    out = benchmark.pedantic(adaln_ops.gated_residual, args=(x, y, gate, True, "eager"), **ROUNDS)
    _close(out, ref.gated_residual(x, y, gate, True))


@pytest.mark.benchmark(group="cpu-ops")
def test_swiglu_eager(benchmark):
    h = 2 * torch.randn(2, 65, 1024, generator=_g(2))

    def fn():
        with torch.no_grad():      # the in-place path the DiT takes at inference
            return swiglu_ops.swiglu(h, backend="eager")
    _close(benchmark.pedantic(fn, **ROUNDS), ref.swiglu(h))


@pytest.mark.benchmark(group="cpu-ops")
def test_rope_eager(benchmark):
    g = _g(3)
    q, k = torch.randn(1, 4, 65, 64, generator=g), torch.randn(1, 4, 65, 64, generator=g)
    inv = 1.0 / (10000 ** (torch.arange(0, 32, 2, dtype=torch.float32) / 32))
    freqs = ref.rope_freqs(65, inv)
    qo, ko = benchmark.pedantic(rope_ops.rope, args=(q, k, freqs, "eager"), **ROUNDS)
    _close(qo, ref.apply_rotary(q, freqs))
    _close(ko, ref.apply_rotary(k, freqs))


@pytest.mark.benchmark(group="cpu-ops")
def test_attention_eager(benchmark):
    g = _g(4)
    q, k, v = (torch.randn(1, 4, 65, 64, generator=g) for _ in range(3))
    w, b = 1 + 0.1 * torch.randn(64, generator=g), 0.1 * torch.randn(64, generator=g)
    freqs = ref.rope_freqs(65, 1.0 / (10000 ** (torch.arange(0, 32, 2, dtype=torch.float32) / 32)))
    kw = dict(q_norm_weight=w, q_norm_bias=b, k_norm_weight=w, k_norm_bias=b, freqs=freqs)
    out = benchmark.pedantic(lambda: attn_ops.attention(q, k, v, backend="eager", **kw), **ROUNDS)
    _close(out, ref.qk_norm_rope_attention(q, k, v, w, b, w, b, freqs=freqs), rtol=1e-4)


@pytest.mark.benchmark(group="cpu-decoder-ops")
def test_snake_conv1d_eager(benchmark):
    g = _g(5)
    x, a, bt = torch.randn(1, 32, 512, generator=g), 0.3 * torch.randn(32, generator=g), 0.3 * torch.randn(32, generator=g)
    w, bias = torch.randn(32, 32, 7, generator=g) / 15, 0.1 * torch.randn(32, generator=g)

    def fn():
        with torch.no_grad():
            return sc.snake_conv1d(x, a, bt, w, bias, 3, backend="eager")
    _close(benchmark.pedantic(fn, **ROUNDS), F.conv1d(ref.snake_beta(x, a, bt), w, bias, padding=9, dilation=3), 1e-4)


@pytest.mark.benchmark(group="cpu-decoder-ops")
def test_snake_conv_transpose1d_polyphase(benchmark):
    g = _g(6)
    x, a, bt = torch.randn(1, 32, 256, generator=g), 0.3 * torch.randn(32, generator=g), 0.3 * torch.randn(32, generator=g)
    w, bias = torch.randn(32, 16, 8, generator=g) / 15, 0.1 * torch.randn(16, generator=g)
    packed = sc.pack_polyphase(w, bias, 4)

    def fn():
        with torch.no_grad():
            return sc.snake_conv_transpose1d(x, a, bt, w, bias, 4, backend="eager", packed=packed)
    want = F.conv_transpose1d(ref.snake_beta(x, a, bt), w, bias, stride=4, padding=2)
    _close(benchmark.pedantic(fn, **ROUNDS), want, 1e-4)


def _tiny_models():
    from bench import configs, models
    cfg = configs.tiny_config()
    dit, dec, cond = models.build_reference(cfg, seed=0)
    return cfg, dit, dec


@pytest.fixture(scope="module")
def tiny():
    return _tiny_models()


@pytest.mark.benchmark(group="cpu-models")
@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_dit_step(benchmark, tiny, impl):
    from arc_fast.models.dit import FastDiT
    cfg, dit, _ = tiny
    model = FastDiT.from_module(dit).eval() if impl == "fast" else dit
    g = _g(7)
    x, t = torch.randn(1, 16, 32, generator=g), torch.full((1,), 0.6)
    cond = dict(cross_attn_cond=torch.randn(1, 25, 64, generator=g), global_embed=torch.randn(1, 64, generator=g))

    def fn():
        with torch.inference_mode(), use_backend("eager"):
            return model(x, t, **cond)
    out = benchmark.pedantic(fn, **ROUNDS)
    with torch.inference_mode():
        _close(out, dit(x, t, **cond), 1e-4)


@pytest.mark.benchmark(group="cpu-models")
@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_decoder(benchmark, tiny, impl):
    from arc_fast.models.decoder import FastOobleckDecoder
    _, _, dec = tiny
    model = FastOobleckDecoder.from_module(dec, backend="eager").eval() if impl == "fast" else dec
    z = torch.randn(1, 16, 4, generator=_g(8))

    def fn():
        with torch.inference_mode():
            return model(z)
    out = benchmark.pedantic(fn, **ROUNDS)
    with torch.inference_mode():
        _close(out, dec(z), 1e-4)
