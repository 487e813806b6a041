"""arc_fast.loading: build_pipeline and load_pipeline give the same modules for the same model."""
import torch

from arc_fast.loading import build_pipeline, load_pipeline
from test_loader import micro_config, save_model


def _classes(p):
    return type(p.dit).__name__, type(p.autoencoder.decoder).__name__, type(p.conditioner).__name__


def test_build_pipeline_swaps_in_the_fused_modules_as_load_pipeline_does(tmp_path):
    built = build_pipeline(micro_config(), seed=0, fast=True)
    save_model(built, tmp_path / "m")
    loaded = load_pipeline(str(tmp_path / "m"), device="cpu", fast=True)
    assert _classes(built) == _classes(loaded) == ("FastDiT", "FastOobleckDecoder", _classes(loaded)[2])
    for (k, v), (k2, v2) in zip(built.state_dict().items(), loaded.state_dict().items()):
        # weights round-trip through the file as bytes (no arithmetic)
        assert k == k2 and torch.equal(v, v2)
    reference = build_pipeline(micro_config(), seed=0)
    assert _classes(reference) == _classes(load_pipeline(str(tmp_path / "m"), device="cpu", fast=False))
    assert type(reference.dit).__name__ != "FastDiT"


def test_load_pipeline_gives_the_fused_decoder_its_activation_budget(monkeypatch):
    from arc_fast.loading import load_pipeline
    monkeypatch.setenv("ARC_FAST_DECODER_MAX_MB", "64")
    dec = load_pipeline(device="cpu").autoencoder.decoder
    assert type(dec).__name__ == "FastOobleckDecoder" and dec.max_activation_bytes == 64 * 2 ** 20
