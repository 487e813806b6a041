"""FastOobleckDecoder vs the reference OobleckDecoder: same keys, same outputs, chunking, backends."""
from __future__ import annotations

import pytest
import torch
from utils import assert_close_to_ref

from arc_fast.models.decoder import FastOobleckDecoder
from arc_fast.reference.autoencoder import OobleckDecoder, SnakeBeta

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SMALL = dict(out_channels=2, channels=8, latent_dim=6, c_mults=[1, 2], strides=[2, 4], use_snake=True,
             final_tanh=False)
TINY = dict(out_channels=2, channels=4, latent_dim=4, c_mults=[1, 2], strides=[2, 2], use_snake=True,
            final_tanh=False)
SAO = dict(out_channels=2, channels=128, latent_dim=64, c_mults=[1, 2, 4, 8, 16], strides=[2, 4, 4, 8, 8],
           use_snake=True, final_tanh=False)


def make_ref(cfg, seed=0) -> OobleckDecoder:
    torch.manual_seed(seed)
    ref = OobleckDecoder(**cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, SnakeBeta):    # trained values are spread around 0 in log scale
                m.alpha.copy_(0.4 * torch.randn(m.alpha.shape, generator=g))
                m.beta.copy_(0.4 * torch.randn(m.beta.shape, generator=g))
            if hasattr(m, "weight_g"):      # g != ||v||, so the fold matters
                m.weight_g.mul_(0.5 + torch.rand(m.weight_g.shape, generator=g))
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def latents(cfg, B=2, T=5, seed=3):
    return 0.2 + torch.randn(B, cfg["latent_dim"], T, generator=torch.Generator().manual_seed(seed))


def test_same_keys_shapes_and_constructor():
    ref = make_ref(SMALL)
    fast = FastOobleckDecoder(**SMALL, backend="eager")
    assert {k: v.shape for k, v in fast.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    fast.load_state_dict(ref.state_dict(), strict=True)
    assert fast.backend == "eager" and fast.hop_length == 8
    with torch.device("meta"):
        sao = FastOobleckDecoder(**SAO)
    assert len(sao.state_dict()) == 182
    assert sum(p.numel() for p in sao.parameters()) == 78_122_626
    assert sao.context_frames() == 11


@pytest.mark.parametrize("cfg", [pytest.param(SMALL, id="snake"),
                                 pytest.param(dict(SMALL, use_snake=False, final_tanh=True), id="elu-tanh")])
def test_eager_matches_reference(cfg):
    ref = make_ref(cfg)
    fast = FastOobleckDecoder.from_module(ref, backend="eager")
    z = latents(cfg)
    with torch.no_grad():
        expected = ref(z)
        out = fast(z)
    assert out.shape == (2, 2, 5 * 8)
    assert_close_to_ref("fast eager decoder", out, expected)
    with torch.inference_mode():
        assert_close_to_ref("inference_mode", fast(z), expected)


def test_low_precision_eager_matches_reference_rule():
    ref = make_ref(SMALL)
    fast = FastOobleckDecoder.from_module(ref, backend="eager")
    z = latents(SMALL)
    with torch.no_grad():
        expected = ref(z)
        lowp = make_ref(SMALL).to(torch.bfloat16)(z.bfloat16())
        out = fast.to(torch.bfloat16)(z.bfloat16())
    assert out.dtype == torch.bfloat16
    assert_close_to_ref("bf16 decoder", out, expected, lowp, torch.bfloat16)


def test_triton_backend_matches_reference():
    ref = make_ref(TINY)
    fast = FastOobleckDecoder.from_module(ref, backend="triton")
    z = latents(TINY, B=1, T=2)
    with torch.no_grad():
        out = fast(z)
        expected = ref(z)
    assert_close_to_ref("fast triton decoder", out, expected)
    assert_close_to_ref("backend arg", fast(z, backend="eager"), expected)


def test_refolds_after_load_and_in_place_updates():
    ref_a, ref_b = make_ref(SMALL, seed=0), make_ref(SMALL, seed=5)
    fast = FastOobleckDecoder.from_module(ref_a, backend="eager")
    z = latents(SMALL)
    with torch.no_grad():
        assert_close_to_ref("a", fast(z), ref_a(z))
        fast.load_state_dict(ref_b.state_dict())
        assert_close_to_ref("b after load", fast(z), ref_b(z))
        fast.layers[0].weight_g.mul_(2.0)
        ref_b.layers[0].weight_g.mul_(2.0)
        assert_close_to_ref("b after in-place edit", fast(z), ref_b(z))


def test_gradients_flow_when_trainable():
    ref = make_ref(SMALL)
    fast = FastOobleckDecoder.from_module(ref, backend="eager")
    for m in (ref, fast):
        for p in m.parameters():
            p.requires_grad_(True)
    z = latents(SMALL)
    cot = torch.randn(2, 2, 40, generator=torch.Generator().manual_seed(9))
    (ref(z) * cot).sum().backward()
    (fast(z) * cot).sum().backward()
    grads = dict(fast.named_parameters())
    for name, p in ref.named_parameters():
        assert_close_to_ref(f"grad {name}", grads[name].grad, p.grad, rtol32=1e-4)


def test_chunked_decoding_equals_full():
    ref = make_ref(SMALL)
    fast = FastOobleckDecoder.from_module(ref, backend="eager")
    z = latents(SMALL, B=1, T=60)
    with torch.no_grad():
        full = fast(z)
        chunked = fast.decode_chunked(z, chunk_size=16)        # default overlap = context_frames()
        assert fast.context_frames() == 21
        assert_close_to_ref("chunked", chunked, full)
        # Too little context is visibly wrong: the check above can fail.
        short = fast.decode_chunked(z, chunk_size=16, overlap=1)
    assert (short - full).abs().max() > 1e-3 * full.abs().max()
    with pytest.raises(ValueError, match="chunk_size"):
        fast.decode_chunked(z, chunk_size=0)


def test_peak_memory_estimate():
    with torch.device("meta"):
        sao = FastOobleckDecoder(**SAO)
    full = sao.peak_activation_bytes(256, torch.bfloat16)
    assert full == 3 * 128 * 256 * 2048 * 2          # last residual unit: 3 tensors of 128 x 524288 bf16
    assert sao.peak_activation_bytes(128 + 2 * 11, torch.bfloat16) < 0.6 * full


def test_rejects_bad_input():
    fast = FastOobleckDecoder(**TINY)
    with pytest.raises(ValueError, match="expected 4 channels"):
        fast(torch.randn(1, 3, 2))
    with pytest.raises(ValueError, match="rank 2"):
        fast(torch.randn(4, 2))
    with pytest.raises(ValueError, match="unknown backend"):
        fast(torch.randn(1, 4, 2), backend="fastest")
    with pytest.raises(TypeError, match="Oobleck decoder"):
        FastOobleckDecoder.from_module(torch.nn.Linear(2, 2))


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_gpu_sao_decoder_parity(dtype):
    ref = make_ref(SAO).cuda()
    fast = FastOobleckDecoder.from_module(ref, backend="triton")
    z = latents(SAO, B=1, T=16).cuda()
    prev = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            expected = ref(z)
            lowp = ref.to(dtype)(z.to(dtype))
            out = fast.to(dtype)(z.to(dtype))
    finally:
        torch.backends.cudnn.allow_tf32 = prev
    assert_close_to_ref(f"gpu decoder {dtype}", out, expected, lowp, dtype, rtol32=1e-4)  # ~20 layers deep


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("B,T", [(1, 7), (2, 5)])
def test_cpu_channels_last_inference_matches_reference(B, T, dtype, monkeypatch):
    """The CPU inference path (channels-last activations from the first conv to the last) equals the reference
    within the dtype's rule, returns a contiguous (B, C, T) tensor, and is the path actually taken."""
    from arc_fast.ops import snake_conv as sc
    cfg = dict(SMALL, final_tanh=True)
    ref = make_ref(cfg)
    fast = FastOobleckDecoder.from_module(ref, backend="eager")
    z = latents(cfg, B=B, T=T)
    calls = []
    conv_cl = sc._conv_cl
    monkeypatch.setattr(sc, "_conv_cl", lambda *a, **k: calls.append(1) or conv_cl(*a, **k))
    with torch.no_grad():
        expected = ref(z)
        lowp = make_ref(cfg).to(dtype)(z.to(dtype))
        out = fast.to(dtype)(z.to(dtype))
    assert out.dtype == dtype and out.is_contiguous()
    assert len(calls) == 1 + 2 * 3 * 2 + 2 + 1, "every conv of the decoder should run channels-last"
    assert_close_to_ref(f"channels-last decoder {dtype}", out, expected, lowp, dtype)
    fast.cpu_channels_last = False      # the (B, C, T) layout: same result within the same rule
    with torch.no_grad():
        assert_close_to_ref("(B, C, T) decoder", fast(z.to(dtype)), expected, lowp, dtype)
    assert len(calls) == 1 + 2 * 3 * 2 + 2 + 1


def test_decode_bounded_chunks_only_when_over_budget(monkeypatch):
    """One pass when the activations fit the budget; otherwise the largest exact chunks that fit, equal to the
    one-pass decode within fp32 rounding (the chunks see exactly the inputs the full decode sees)."""
    ref = make_ref(SMALL)
    fast = FastOobleckDecoder.from_module(ref, backend="eager")
    z = latents(SMALL, B=1, T=120)
    sizes = []
    chunked = fast.decode_chunked
    monkeypatch.setattr(fast, "decode_chunked", lambda x, chunk_size, **k: sizes.append(chunk_size) or
                        chunked(x, chunk_size=chunk_size, **k))
    with torch.no_grad():
        full = fast(z)
        # decode_bounded with no budget is forward's own one-pass call: same call, same bytes
        assert torch.equal(fast.decode_bounded(z, None), full) and not sizes
        assert torch.equal(fast.decode_bounded(z, fast.peak_activation_bytes(120, z.dtype)), full) and not sizes
        budget = fast.peak_activation_bytes(10 + 2 * fast.context_frames(), z.dtype)
        out = fast.decode_bounded(z, budget)
        assert sizes == [10], sizes
        fast.max_activation_bytes = budget          # the module's own budget: forward chunks the same way
        assert torch.equal(fast(z), out) and sizes == [10, 10]
    assert_close_to_ref("bounded (chunked) decode", out, full)
