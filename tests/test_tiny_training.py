"""CI-short versions of every stage of the tiny-model recipe (scripts/train_tiny), run in order, plus the
recipe's own pieces (latent-scale folding, the STFT loss). The full runs are not part of CI."""
import importlib.util
import json
import os

import pytest
import torch

from arc_fast.data import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _stage(name):
    path = os.path.join(REPO, "scripts", "train_tiny", name)
    spec = importlib.util.spec_from_file_location(name.replace(".py", "").replace("0", "s0", 1), path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return str(tmp_path_factory.mktemp("tiny"))


def test_fold_latent_scale_keeps_reconstruction():
    ae = tiny.build_autoencoder(seed=1).eval()
    x = torch.randn(1, 2, 4096) * 0.3
    with torch.no_grad():
        z = ae.encode(x, sample=False)
        y = ae.decode(z)
        tiny.fold_latent_scale(ae, 4.0)
        z2 = ae.encode(x, sample=False)
        y2 = ae.decode(z2)
    torch.testing.assert_close(z2, z / 4.0, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(y2, y, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="scale"):
        tiny.fold_latent_scale(ae, 0.0)


def test_mrstft_loss_is_zero_on_identity_and_positive_otherwise():
    x = torch.randn(2, 2, 4096)
    assert float(tiny.mrstft_loss(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(tiny.mrstft_loss(x * 0.5, x)) > 0.1


def test_stage1_autoencoder_and_latents(run_dir):
    assert _stage("01_autoencoder.py").main(["--out", run_dir, "--quick"]) == 0
    s = json.load(open(os.path.join(run_dir, "autoencoder.json")))
    assert s["steps_done"] == 2 and s["latent_std_before_fold"] > 0
    from arc_fast.train.data import LatentDataset
    ds = LatentDataset(os.path.join(run_dir, "latents"), latent_channels=16)
    hop = tiny.TINY_TRAINED["model"]["pretransform"]["config"]["downsampling_ratio"]
    assert len(ds) == 8 and ds.frames == tiny.WINDOW // hop
    assert ds[0]["prompt"] and 1.0 <= ds[0]["seconds_total"] <= 1.5
    rep = tiny.latent_power_report(os.path.join(run_dir, "latents"), frames=64)
    assert rep and all(0.0 <= r["ac"] <= r["mean_square"] + 1e-9 and r["n"] >= 1 for r in rep.values())


def test_stage2_pretrain_writes_a_loadable_base_model(run_dir):
    assert _stage("02_pretrain_rf.py").main(["--out", run_dir, "--quick"]) == 0
    from arc_fast.pipeline import load_pipeline
    pipe = load_pipeline(os.path.join(run_dir, "pretrain", "model"), device="cpu", fast=False)
    assert not pipe.is_arc and pipe.max_seconds == pytest.approx(tiny.WINDOW / 44100)
    audio, sr = pipe("a low sine tone at 220 Hz", steps=2, seed=0)
    assert audio.shape == (1, 2, tiny.WINDOW) and torch.isfinite(audio).all()


def test_stage3_arc_with_and_without_contrastive_loss(run_dir):
    assert _stage("03_arc.py").main(["--out", run_dir, "--quick"]) == 0
    from arc_fast.pipeline import load_pipeline
    for name, w_con in (("arc", 1.0), ("arc_noc", 0.0)):
        s = json.load(open(os.path.join(run_dir, name, "arc.json")))
        assert s["settings"]["w_con"] == w_con
        pipe = load_pipeline(os.path.join(run_dir, name, "export"), device="cpu", fast=False)
        assert pipe.is_arc and pipe.defaults()["sampler"] == "pingpong"


def test_stage4_eval_writes_table(run_dir):
    res = os.path.join(run_dir, "eval")
    assert _stage("04_eval.py").main(["--out", run_dir, "--results", res, "--quick"]) == 0
    md = open(os.path.join(res, "results.md")).read()
    for label in ("base Euler 2 + CFG", "base Euler 8 + CFG", "ARC ping-pong 1", "ARC w/o L_C ping-pong 1", "real clips"):
        assert label in md
    r = json.load(open(os.path.join(res, "results.json")))
    assert r["command"].startswith("arc-fast eval ")
    for row in r["rows"]:
        assert row["sec_per_clip"] > 0 and row["fd"] is not None and row["pitch_within_50c"] is not None


def test_eval_cli_errors_are_one_line(tmp_path, capsys):
    from arc_fast.eval.cli import main
    assert main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing to evaluate" in err[0]
    assert main(["--arc", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
