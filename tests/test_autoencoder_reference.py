"""Eager Oobleck autoencoder (arc_fast.reference.autoencoder): SAO layout, shapes, weight norm, VAE, config."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from utils import assert_close_to_ref

from arc_fast.reference.autoencoder import (
    OobleckAutoencoder, OobleckDecoder, OobleckEncoder, SnakeBeta, VAEBottleneck, WNConv1d, WNConvTranspose1d,
    autoencoder_from_config, folded_weight,
)

SAO = dict(channels=128, c_mults=[1, 2, 4, 8, 16], strides=[2, 4, 4, 8, 8], use_snake=True)
TINY = dict(channels=4, c_mults=[1, 2, 4, 8, 16], strides=[2, 4, 4, 8, 8], use_snake=True)   # hop 2048


def sao_config(**over) -> dict:
    enc = dict(in_channels=2, latent_dim=128, **TINY)
    dec = dict(out_channels=2, latent_dim=64, final_tanh=False, **TINY)
    cfg = {"type": "autoencoder", "config": {
        "encoder": {"type": "oobleck", "config": enc}, "decoder": {"type": "oobleck", "config": dec},
        "bottleneck": {"type": "vae"}, "latent_dim": 64, "downsampling_ratio": 2048, "io_channels": 2}}
    cfg["config"].update(over)
    return cfg


def randomize_snake(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, SnakeBeta):
                m.alpha.copy_(0.3 * torch.randn(m.alpha.shape, generator=g))
                m.beta.copy_(0.3 * torch.randn(m.beta.shape, generator=g))


def test_sao_decoder_layout_on_meta():
    with torch.device("meta"):
        dec = OobleckDecoder(out_channels=2, latent_dim=64, final_tanh=False, **SAO)
        enc = OobleckEncoder(in_channels=2, latent_dim=128, **SAO)
    sd = dec.state_dict()
    assert len(sd) == 182
    assert sum(v.numel() for v in sd.values()) == 78_122_626
    esd = enc.state_dict()
    assert len(esd) == 183
    assert sum(v.numel() for v in esd.values()) == 77_989_888
    expected = {  # SPEC.md 7.4
        "layers.0.weight_g": (2048, 1, 1), "layers.0.weight_v": (2048, 64, 7), "layers.0.bias": (2048,),
        "layers.1.layers.0.alpha": (2048,), "layers.1.layers.0.beta": (2048,),
        "layers.1.layers.1.weight_g": (2048, 1, 1), "layers.1.layers.1.weight_v": (2048, 1024, 16),
        "layers.1.layers.1.bias": (1024,),
        "layers.1.layers.2.layers.0.alpha": (1024,), "layers.1.layers.2.layers.1.weight_g": (1024, 1, 1),
        "layers.1.layers.2.layers.1.weight_v": (1024, 1024, 7), "layers.1.layers.2.layers.1.bias": (1024,),
        "layers.1.layers.4.layers.2.beta": (1024,), "layers.1.layers.4.layers.3.weight_v": (1024, 1024, 1),
        "layers.5.layers.1.weight_v": (128, 128, 4), "layers.3.layers.1.weight_v": (512, 256, 8),
        "layers.6.alpha": (128,), "layers.6.beta": (128,),
        "layers.7.weight_g": (2, 1, 1), "layers.7.weight_v": (2, 128, 7),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert "layers.7.bias" not in sd and not any(k.startswith("layers.8") for k in sd)
    assert isinstance(dec.layers[8], torch.nn.Identity)
    convs = [(m.kernel_size[0], m.stride[0], m.padding[0]) for m in dec.modules()
             if isinstance(m, torch.nn.ConvTranspose1d)]
    assert convs == [(16, 8, 4), (16, 8, 4), (8, 4, 2), (8, 4, 2), (4, 2, 1)]
    assert tuple(esd["layers.7.weight_v"].shape) == (128, 2048, 3)     # encoder's last conv is k3
    assert tuple(esd["layers.1.layers.4.weight_v"].shape) == (128, 128, 4)


def test_legacy_weight_norm_keys_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")    # the FutureWarning of the legacy API is silenced locally
        conv = WNConvTranspose1d(6, 3, 8, stride=4, padding=2)
    assert set(conv.state_dict()) == {"weight_g", "weight_v", "bias"}
    assert tuple(conv.weight_g.shape) == (6, 1, 1)    # indexed by *input* channel for transposed convs


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "tconv"])
def test_weight_norm_folding_equals_module(transposed):
    torch.manual_seed(0)
    conv = (WNConvTranspose1d(5, 7, 8, stride=4, padding=2) if transposed
            else WNConv1d(5, 7, 7, dilation=3, padding=9))
    with torch.no_grad():
        conv.weight_g.mul_(torch.rand_like(conv.weight_g) + 0.5)    # g != ||v||
    x = torch.randn(2, 5, 19)
    w = folded_weight(conv)
    ref = (F.conv_transpose1d(x, w, conv.bias, stride=4, padding=2) if transposed
           else F.conv1d(x, w, conv.bias, padding=9, dilation=3))
    assert_close_to_ref("folded", ref, conv(x))
    norm = conv.weight_v.norm(dim=(1, 2), keepdim=True)
    assert_close_to_ref("g*v/|v|", w, conv.weight_g * conv.weight_v / norm)


def test_snake_beta():
    m = SnakeBeta(3)
    assert torch.equal(m.alpha, torch.zeros(3)) and torch.equal(m.beta, torch.zeros(3))
    randomize_snake(m)
    x = torch.randn(2, 3, 11)
    a, b = m.alpha.exp()[None, :, None], m.beta.exp()[None, :, None]
    assert_close_to_ref("snake", m(x), x + torch.sin(a * x) ** 2 / (b + 1e-9))
    lin = SnakeBeta(3, alpha=2.0, alpha_logscale=False)
    assert torch.equal(lin.alpha, torch.full((3,), 2.0))
    assert_close_to_ref("snake-linear", lin(x), x + torch.sin(2 * x) ** 2 / (2 + 1e-9))


@pytest.mark.parametrize("use_snake", [True, False], ids=["snake", "elu"])
def test_tiny_decoder_and_encoder_shapes(use_snake):
    cfg = dict(TINY, use_snake=use_snake)
    dec = OobleckDecoder(out_channels=2, latent_dim=64, final_tanh=not use_snake, **cfg)
    enc = OobleckEncoder(in_channels=2, latent_dim=128, **cfg)
    assert dec.hop_length == 2048
    with torch.no_grad():
        audio = dec(torch.randn(2, 64, 3))
        assert audio.shape == (2, 2, 3 * 2048)
        assert torch.isfinite(audio).all()
        if not use_snake:
            assert audio.abs().max() <= 1.0      # final tanh
        assert enc(audio).shape == (2, 128, 3)
    assert isinstance(dec.layers[1].layers[0], SnakeBeta if use_snake else torch.nn.ELU)


def test_decoder_rejects_bad_input():
    dec = OobleckDecoder(out_channels=2, latent_dim=8, channels=4, c_mults=[1, 2], strides=[2, 2], use_snake=True)
    with pytest.raises(ValueError, match="expected 8 channels"):
        dec(torch.randn(1, 7, 4))
    with pytest.raises(ValueError, match="rank 2"):
        dec(torch.randn(8, 4))
    with pytest.raises(TypeError, match="floating-point"):
        dec(torch.ones(1, 8, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="same length"):
        OobleckDecoder(c_mults=[1, 2], strides=[2])
    with pytest.raises(NotImplementedError, match="antialias"):
        OobleckDecoder(channels=4, antialias_activation=True)
    with pytest.raises(NotImplementedError, match="use_nearest_upsample"):
        OobleckDecoder(channels=4, use_nearest_upsample=True)


def test_vae_bottleneck():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5)
    mean, scale = x[:, :4], x[:, 4:]
    vae = VAEBottleneck()
    lat, info = vae.encode(x, return_info=True, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    stdev = F.softplus(scale) + 1e-4
    assert_close_to_ref("latents", lat, mean + stdev * noise)
    assert_close_to_ref("stdev", info["stdev"], stdev)
    kl = (mean ** 2 + stdev ** 2 - torch.log(stdev ** 2) - 1).sum(1).mean()
    assert_close_to_ref("kl", info["kl"], kl)
    assert torch.equal(vae.encode(x, sample=False), mean)
    assert torch.equal(vae.decode(lat), lat)
    with pytest.raises(ValueError, match="even channel count"):
        vae.encode(torch.randn(1, 5, 3))


def test_autoencoder_from_config_roundtrip_shapes_and_keys():
    ae = autoencoder_from_config(sao_config())
    assert isinstance(ae, OobleckAutoencoder) and isinstance(ae.bottleneck, VAEBottleneck)
    assert ae.downsampling_ratio == 2048 and ae.latent_dim == 64 and ae.io_channels == 2
    keys = list(ae.state_dict())
    assert all(k.startswith(("encoder.layers.", "decoder.layers.")) for k in keys)
    assert "decoder.layers.0.weight_g" in keys and "encoder.layers.7.weight_v" in keys
    audio = torch.randn(1, 2, 2 * 2048)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        z1 = ae.encode(audio, generator=g)
        z2 = ae.encode(audio, generator=torch.Generator().manual_seed(0))
        zm, info = ae.encode(audio, sample=False, return_info=True)
        assert z1.shape == (1, 64, 2) and torch.equal(z1, z2)
        assert torch.equal(zm, info["mean"]) and info["pre_bottleneck_latents"].shape == (1, 128, 2)
        assert ae.decode(z1).shape == (1, 2, 2 * 2048)
    with pytest.raises(ValueError, match="not a multiple"):
        ae.encode(torch.randn(1, 2, 3000))
    with pytest.raises(ValueError, match="expected 2 channels"):
        ae.encode(torch.randn(1, 1, 2048))
    with pytest.raises(ValueError, match="expected 64 channels"):
        ae.decode(torch.randn(1, 32, 2))


def test_autoencoder_from_config_errors():
    with pytest.raises(NotImplementedError, match="pretransform type 'wavelet'"):
        autoencoder_from_config({"type": "wavelet", "config": {}})
    with pytest.raises(NotImplementedError, match="bottleneck type 'rvq'"):
        autoencoder_from_config(sao_config(bottleneck={"type": "rvq"}))
    bad = sao_config()
    bad["config"]["decoder"]["type"] = "dac"
    with pytest.raises(NotImplementedError, match="decoder type 'dac'"):
        autoencoder_from_config(bad)
    bad = sao_config()
    bad["config"]["encoder"]["config"]["colour"] = 1
    with pytest.raises(ValueError, match="unknown encoder config keys"):
        autoencoder_from_config(bad)
    with pytest.raises(ValueError, match="downsampling_ratio=1024"):
        autoencoder_from_config(sao_config(downsampling_ratio=1024))
    with pytest.raises(TypeError):
        autoencoder_from_config("oobleck")
