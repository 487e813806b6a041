"""Pipeline loading (strict keys), generation and the CLI contract (one-line errors, no partial files)."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import soundfile as sf
import torch

from arc_fast.configs import get_config
from arc_fast.pipeline import CheckpointError, build_pipeline, load_pipeline, read_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, cwd=None):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the CLI runs the CPU eager path, like a user's first try
    return subprocess.run([sys.executable, "-m", "arc_fast", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(device="cpu", fast=False)


def test_bundled_model_generates_requested_length(pipe):
    audio, sr = pipe("a low sine tone", seconds=0.5, seed=1, steps=2)
    assert sr == 44100 and audio.shape == (1, 2, 22050) and audio.dtype == torch.float32
    assert torch.isfinite(audio).all()
    t = pipe.last_timings
    assert len(t.dit_steps) == 2 and t.total >= t.decoder > 0


def test_generation_is_seeded(pipe):
    a, _ = pipe("hi-hat", seconds=0.2, seed=5, steps=2)
    b, _ = pipe("hi-hat", seconds=0.2, seed=5, steps=2)
    c, _ = pipe("hi-hat", seconds=0.2, seed=6, steps=2)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


def test_batch_and_defaults(pipe):
    audio, _ = pipe(["a", "b"], seconds=0.1, steps=1, batch_size=2)
    assert audio.shape[0] == 2
    assert pipe.defaults() == {"sampler": "pingpong", "steps": 8, "cfg_scale": 1.0}
    with pytest.warns(UserWarning, match="ARC"):
        pipe._warned.clear()
        pipe("a", seconds=0.1, steps=1, cfg_scale=7.0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompt=[]), "empty prompt"),
    (dict(prompt="x", seconds=-1), "seconds"),
    (dict(prompt="x", seconds=1000), "seconds"),
    (dict(prompt="x", steps=0), "steps"),
    (dict(prompt="x", sampler="ddim"), "sampler"),
])
def test_bad_generation_arguments(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe(**kwargs)


def test_save_load_round_trip_and_strict_keys(tmp_path):
    p = build_pipeline(get_config("tiny"), seed=3)
    p.save(tmp_path / "m")
    q = load_pipeline(str(tmp_path / "m"), device="cpu", fast=False)
    for (k, v), (k2, v2) in zip(p.state_dict().items(), q.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    sd = read_checkpoint(str(tmp_path / "m" / "model.safetensors"))
    assert any(k.startswith("model.model.transformer.layers.0.") for k in sd)
    assert any(k.startswith("pretransform.model.decoder.layers.") for k in sd)
    assert any(k.startswith("conditioner.conditioners.seconds_total.embedder.embedding.") for k in sd)
    from safetensors.torch import save_file
    bad = dict(sd)
    bad.pop("model.model.transformer.layers.1.ff.ff.2.weight")
    bad["model.model.bogus.weight"] = torch.zeros(1)
    save_file(bad, tmp_path / "m" / "model.safetensors")
    with pytest.raises(CheckpointError) as e:
        load_pipeline(str(tmp_path / "m"), device="cpu", fast=False)
    assert "transformer.layers.1.ff.ff.2.weight" in str(e.value) and "bogus.weight" in str(e.value)
    with pytest.warns(RuntimeWarning, match="missing"):
        load_pipeline(str(tmp_path / "m"), device="cpu", fast=False, allow_partial=True)


def test_lightning_wrapped_checkpoint_loads(tmp_path):
    p = build_pipeline(get_config("tiny"), seed=4)
    p.save(tmp_path / "m")
    torch.save({"state_dict": {"diffusion." + k: v for k, v in p.state_dict().items()}}, tmp_path / "m" / "model.ckpt")
    os.remove(tmp_path / "m" / "model.safetensors")
    q = load_pipeline(str(tmp_path / "m"), device="cpu", fast=False)
    assert torch.equal(q.dit.transformer.project_in.weight, p.dit.transformer.project_in.weight)


def test_cli_writes_wav(tmp_path):
    out = tmp_path / "clip.wav"
    r = _cli("generate", "a low sine tone", "-o", str(out), "--seconds", "0.25", "--steps", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    data, sr = sf.read(out)
    assert sr == 44100 and data.shape == (11025, 2)
    assert "timings:" in r.stdout and "decoder" in r.stdout


@pytest.mark.parametrize("args, match", [
    (["--seconds", "-2"], "must be > 0"),
    (["--model", "/nonexistent/model"], "model not found"),
    (["--seconds", "999"], "seconds must be in"),
])
def test_cli_errors_are_one_line_and_leave_no_file(tmp_path, args, match):
    out = tmp_path / "clip.wav"
    r = _cli("generate", "a tone", "-o", str(out), "--quiet", *args)
    assert r.returncode != 0
    assert match in r.stderr and "Traceback" not in r.stderr
    assert len([l for l in r.stderr.splitlines() if l.strip()]) <= 2
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.endswith(".wav")]


def test_cli_missing_checkpoint_file(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    shutil.copy(os.path.join(REPO, "arc_fast", "assets", "default", "model_config.json"), d)
    r = _cli("generate", "x", "-o", str(tmp_path / "a.wav"), "--model", str(d))
    assert r.returncode != 0 and "no model.safetensors" in r.stderr and "Traceback" not in r.stderr


def test_cli_info_runs():
    r = _cli("info")
    assert r.returncode == 0 and "SDPA" in r.stdout
