"""The CLI contract: generate / convert / export / info / train; one-line errors, no traceback, no partial wav.

Two runs go through a real ``python -m arc_fast`` process (the README's main command on the bundled model,
and audio-to-audio from a wav of another rate and channel count); the rest call ``cli.main`` in-process,
which is the same code without ~3 s of imports per case."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from arc_fast import cli
from test_loader import micro_config, random_pipeline, randomize_

# The CLI writes wav files through soundfile, a package dependency (absent where installed with --no-deps).
sf = pytest.importorskip("soundfile")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, cwd=None):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the CLI runs the CPU eager path, like a user's first try
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "-m", "arc_fast", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def _main(capsys, *args):
    try:
        code = cli.main(list(args))
    except SystemExit as e:  # argparse usage errors and --help
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def micro_dir(tmp_path_factory):
    p = random_pipeline(micro_config(arc=True), seed=0)
    randomize_(p.autoencoder, 4, 0.2)
    d = tmp_path_factory.mktemp("micro")
    p.save(str(d / "m"))
    return d / "m"


def _no_wav(folder):
    return not [p for p in os.listdir(folder) if p.endswith(".wav")]


def test_cli_writes_wav(tmp_path):
    out = tmp_path / "clip.wav"
    r = _cli("generate", "a low sine tone", "-o", str(out), "--seconds", "0.25", "--steps", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    data, sr = sf.read(out)
    assert sr == 44100 and data.shape == (11025, 2)
    assert "timings:" in r.stdout and "decoder" in r.stdout


def test_cli_audio_to_audio_from_another_rate_and_channel_count(micro_dir, tmp_path):
    t = torch.arange(2205) / 11025.0
    three = torch.stack([torch.sin(2 * torch.pi * f * t) for f in (200.0, 300.0, 450.0)]) * 0.4
    sf.write(tmp_path / "in.wav", three.T.numpy(), 11025)  # 3 channels, 11.025 kHz, 0.2 s
    out = tmp_path / "v.wav"
    r = _cli("generate", "x", "-o", str(out), "--model", str(micro_dir), "--init-audio", str(tmp_path / "in.wav"),
             "--init-noise-level", "0.5", "--steps", "2", "--short-window")
    assert r.returncode == 0, r.stderr
    data, sr = sf.read(out)
    assert sr == 8000 and data.shape == (1600, 2)  # the model's rate and channels, the input's length
    assert "note: ARC post-trained model" in r.stdout


@pytest.mark.parametrize("args, match", [
    (["--seconds", "-2"], "must be > 0"),
    (["--model", "/nonexistent/model"], "model not found"),
    (["--seconds", "999"], "seconds must be in"),
    (["--init-noise-level", "0.5"], "needs --init-audio"),
    (["--init-audio", "/nonexistent.wav"], "init audio not found"),
    pytest.param(["--cuda-graph", "--device", "cpu"], "--cuda-graph needs a CUDA device", id="cuda-graph-on-cpu"),
])
def test_cli_errors_are_one_line_and_leave_no_file(capsys, tmp_path, args, match):
    out = tmp_path / "clip.wav"
    code, _, err = _main(capsys, "generate", "a tone", "-o", str(out), "--quiet", *args)
    assert code != 0, err
    assert match in err and "Traceback" not in err, err
    assert len([line for line in err.splitlines() if line.strip()]) <= 2, err
    assert not out.exists() and _no_wav(tmp_path)


def test_cli_missing_checkpoint_file(capsys, tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    shutil.copy(os.path.join(REPO, "arc_fast", "assets", "default", "model_config.json"), d)
    code, _, err = _main(capsys, "generate", "x", "-o", str(tmp_path / "a.wav"), "--model", str(d))
    assert code != 0 and "no model.safetensors" in err and "Traceback" not in err


def test_cli_nan_model_reports_step_and_writes_nothing(capsys, micro_dir, tmp_path):
    from safetensors.torch import load_file, save_file
    bad = tmp_path / "bad"
    shutil.copytree(micro_dir, bad)
    sd = load_file(bad / "model.safetensors")
    sd["model.model.postprocess_conv.weight"] = torch.full_like(sd["model.model.postprocess_conv.weight"], float("nan"))
    save_file(sd, bad / "model.safetensors")
    out = tmp_path / "n.wav"
    code, _, err = _main(capsys, "generate", "x", "-o", str(out), "--model", str(bad), "--steps", "2", "--quiet",
                         "--reference", "--short-window", "--seconds", "0.05")
    assert code == 2 and "DiT output at step 1 of 2" in err and "no file written" in err
    assert len(err.strip().splitlines()) == 1 and _no_wav(tmp_path)


def test_cli_convert_and_export(capsys, micro_dir, tmp_path):
    code, out, err = _main(capsys, "convert", str(micro_dir), "-o", str(tmp_path / "split"), "--split", "--no-ema")
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "split")) == ["autoencoder.safetensors", "dit.safetensors", "model_config.json"]
    code, _, err = _main(capsys, "convert", str(micro_dir), "-o", str(tmp_path / "split"))
    assert code == 2 and "already holds" in err
    code, out, err = _main(capsys, "convert", "-o", str(tmp_path / "joined"), "--config",
                           str(tmp_path / "split" / "model_config.json"), "--dit", str(tmp_path / "split" / "dit.safetensors"),
                           "--autoencoder", str(tmp_path / "split" / "autoencoder.safetensors"), "--model-kind", "base")
    assert code == 0, err
    cfg = json.loads((tmp_path / "joined" / "model_config.json").read_text())
    assert cfg["arc_fast"]["arc_post_trained"] is False and "base model" in out
    code, out, err = _main(capsys, "export", str(micro_dir), "-o", str(tmp_path / "q"), "--frames", "8")
    assert code == 0, err
    assert "relative error" in out and "ms int8" in out
    assert json.loads((tmp_path / "q" / "model_config.json").read_text())["arc_fast"]["dit_int8"] is True


def test_cli_info_help_and_train_delegation(capsys, tmp_path):
    code, out, _ = _main(capsys, "info")
    assert code == 0 and "SDPA" in out
    code, out, _ = _main(capsys, "--help")
    assert code == 0 and all(c in out for c in ("generate", "convert", "export", "train"))
    code, out, _ = _main(capsys, "train", "--help")
    assert code == 0 and "--config" in out
    code, _, err = _main(capsys, "train", "--config", str(tmp_path / "missing.json"))
    assert code == 2 and "arc-fast train: error:" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    code, out, _ = _main(capsys, "eval", "--help")
    assert code == 0 and "--base" in out
    code, _, err = _main(capsys, "train")  # missing --config: a one-line usage error
    assert code == 2 and "--config" in err and len(err.strip().splitlines()) == 1


def test_cli_delegation_without_the_package(capsys, monkeypatch):
    monkeypatch.setitem(cli.DELEGATED, "train", ("arc_fast.no_such_module", "training", "train"))
    code, _, err = _main(capsys, "train", "--config", "x.json")
    assert code == 2 and "training is unavailable" in err and "arc-fast[train]" in err
    code, out, _ = _main(capsys, "info")  # the rest of the CLI is unaffected
    assert code == 0


# ------------------------------------------------------------------------ output formats and --prompts FILE
GEN_FAST = ("--steps", "1", "--short-window", "--seconds", "0.05", "--quiet")


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg"])
def test_cli_output_format_from_the_extension(capsys, micro_dir, tmp_path, ext):
    out = tmp_path / f"clip.{ext.upper() if ext == 'flac' else ext}"   # the extension's case does not matter
    code, _, err = _main(capsys, "generate", "x", "-o", str(out), "--model", str(micro_dir), *GEN_FAST)
    assert code == 0, err
    info = sf.info(out)
    assert info.format == {"wav": "WAV", "flac": "FLAC", "ogg": "OGG"}[ext] and info.samplerate == 8000
    assert info.channels == 2 and abs(info.frames - 400) <= 1


@pytest.mark.parametrize("args, match", [
    (["-o", "clip.mp3"], "extension, one of .wav, .flac, .ogg"),
    (["-o", "clip.wav", "--format", "flac"], "--format applies to --prompts"),
    ([], "give either a prompt or --prompts"),
])
def test_cli_refuses_other_formats_in_one_line(capsys, micro_dir, tmp_path, args, match):
    args = [a if not a.startswith("clip.") else str(tmp_path / a) for a in args]
    prompt = [] if not args else ["x"]
    code, _, err = _main(capsys, "generate", *prompt, "--model", str(micro_dir), *args, *GEN_FAST)
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err
    assert os.listdir(tmp_path) == []


def _prompts_file(tmp_path, lines):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _count_loads(monkeypatch, fail_on_call=None):
    """Wrap load_pipeline: count loads; the returned pipeline fails its ``fail_on_call``-th generation."""
    from arc_fast import pipeline
    from arc_fast.pipeline import GenerationError
    real, loads = pipeline.load_pipeline, []

    class Proxy:
        def __init__(self, pipe):
            self._pipe, self.calls = pipe, 0

        def __getattr__(self, name):
            return getattr(self._pipe, name)

        def __call__(self, *a, **k):
            self.calls += 1
            if self.calls == fail_on_call:
                raise GenerationError("planted failure", stage="DiT step 1 of 1")
            return self._pipe(*a, **k)

    def load(*a, **k):
        loads.append(Proxy(real(*a, **k)))
        return loads[-1]

    monkeypatch.setattr(pipeline, "load_pipeline", load)
    return loads


def test_cli_prompts_file_one_clip_per_line_model_loaded_once(capsys, micro_dir, tmp_path, monkeypatch):
    loads = _count_loads(monkeypatch)
    prompts = _prompts_file(tmp_path, ["a low tone", "", "rain", "a dog barking"])
    out = tmp_path / "clips"
    code, stdout, err = _main(capsys, "generate", "--prompts", str(prompts), "-o", str(out), "--format", "flac",
                              "--model", str(micro_dir), "--steps", "1", "--short-window", "--seconds", "0.05")
    assert code == 0, err
    assert sorted(os.listdir(out)) == ["000.flac", "002.flac", "003.flac"]       # named by line index
    assert len(loads) == 1 and loads[0].calls == 3                               # one load, one clip per line
    assert "clips" in err and "3/3" in err                                       # the progress bar
    assert "wrote 3 clips" in stdout
    a, b = sf.read(out / "000.flac")[0], sf.read(out / "002.flac")[0]
    assert a.shape == (400, 2) and not (a == b).all()                            # each line its own clip
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".arc-fast-")]   # no staging left


def test_cli_prompts_file_all_or_nothing(capsys, micro_dir, tmp_path, monkeypatch):
    _count_loads(monkeypatch, fail_on_call=2)
    prompts = _prompts_file(tmp_path, ["a", "b", "c"])
    out = tmp_path / "clips"
    code, _, err = _main(capsys, "generate", "--prompts", str(prompts), "-o", str(out), "--model", str(micro_dir),
                         *GEN_FAST)
    assert code == 2 and "line 1 ('b')" in err and "no file written" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".arc-fast-")]
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, _ = _main(capsys, "generate", "--prompts", str(prompts), "-o", str(out), "--model", str(micro_dir),
                       *GEN_FAST)
    assert code == 2 and os.listdir(out) == ["keep.txt"]                         # an existing folder is untouched


@pytest.mark.parametrize("setup, args, match", [
    ("missing", [], "prompts file not found"),
    ("empty", [], "has no prompt"),
    ("ok", ["--batch-size", "2"], "--batch-size applies to one prompt"),
    ("ok", ["x"], "not both"),
    ("ok", ["--no-output"], "--prompts needs -o DIR"),
])
def test_cli_prompts_file_errors(capsys, micro_dir, tmp_path, setup, args, match):
    path = tmp_path / "p.txt"
    if setup != "missing":
        path.write_text("\n \n" if setup == "empty" else "a\n", encoding="utf-8")
    out = [] if "--no-output" in args else ["-o", str(tmp_path / "clips")]
    args = [a for a in args if a != "--no-output"]
    code, _, err = _main(capsys, "generate", *args, "--prompts", str(path), *out, "--model", str(micro_dir), *GEN_FAST)
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "clips").exists()


def test_cli_prompts_output_parent_must_exist_before_loading(capsys, micro_dir, tmp_path, monkeypatch):
    loads = _count_loads(monkeypatch)
    prompts = _prompts_file(tmp_path, ["a"])
    code, _, err = _main(capsys, "generate", "--prompts", str(prompts), "-o", str(tmp_path / "no" / "clips"),
                         "--model", str(micro_dir), *GEN_FAST)
    assert code == 2 and "parent does not exist" in err and not loads


# ------------------------------------------------------------------------ seeds
def _printed_seed(stdout: str) -> int:
    import re
    m = re.search(r"--seed (\d+) makes", stdout)
    assert m, stdout
    return int(m.group(1))


def test_cli_without_seed_prints_a_random_seed_that_reproduces_the_clip(capsys, micro_dir, tmp_path):
    runs = []
    for name, seed in (("a.wav", None), ("b.wav", None)):
        code, stdout, err = _main(capsys, "generate", "x", "-o", str(tmp_path / name), "--model", str(micro_dir),
                                  *GEN_FAST)
        assert code == 0, err
        runs.append(_printed_seed(stdout))
    assert runs[0] != runs[1]
    a, b = sf.read(tmp_path / "a.wav")[0], sf.read(tmp_path / "b.wav")[0]
    assert not (a == b).all()
    code, stdout, _ = _main(capsys, "generate", "x", "-o", str(tmp_path / "again.wav"), "--seed", str(runs[0]),
                            "--model", str(micro_dir), *GEN_FAST)
    assert code == 0 and _printed_seed(stdout) == runs[0]
    assert (sf.read(tmp_path / "again.wav")[0] == a).all()


def test_cli_prompts_without_seed_print_one_base_seed(capsys, micro_dir, tmp_path):
    prompts = _prompts_file(tmp_path, ["a", "b"])
    code, stdout, err = _main(capsys, "generate", "--prompts", str(prompts), "-o", str(tmp_path / "one"),
                              "--model", str(micro_dir), *GEN_FAST)
    assert code == 0, err
    base = _printed_seed(stdout)
    code, stdout, _ = _main(capsys, "generate", "--prompts", str(prompts), "-o", str(tmp_path / "two"),
                            "--seed", str(base), "--model", str(micro_dir), *GEN_FAST)
    assert code == 0 and _printed_seed(stdout) == base
    for name in ("000.wav", "001.wav"):
        assert (sf.read(tmp_path / "one" / name)[0] == sf.read(tmp_path / "two" / name)[0]).all()
    # line i uses base + i: line 1 of this run is line 0 of a run seeded base + 1
    single = tmp_path / "single.wav"
    code, _, _ = _main(capsys, "generate", "b", "-o", str(single), "--seed", str(base + 1), "--model",
                       str(micro_dir), *GEN_FAST)
    assert code == 0 and (sf.read(single)[0] == sf.read(tmp_path / "one" / "001.wav")[0]).all()
    code, _, err = _main(capsys, "generate", "--prompts", str(prompts), "-o", str(tmp_path / "three"),
                         "--seed", str(2 ** 64 - 1), "--model", str(micro_dir), *GEN_FAST)
    assert code == 2 and "past the largest seed" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------ --negative-prompt
@pytest.mark.filterwarnings("ignore:this is an ARC post-trained model")
def test_cli_negative_prompt(capsys, micro_dir, tmp_path):
    """The micro model is ARC (CFG 1 by default): a negative prompt is refused in one line naming the flags;
    with --cfg-scale it changes the clip (same seed), and it applies to every line of --prompts."""
    code, _, err = _main(capsys, "generate", "x", "-o", str(tmp_path / "no.wav"), "--negative-prompt", "noise",
                         "--model", str(micro_dir), *GEN_FAST)
    assert code == 2 and "--negative-prompt" in err and "--cfg-scale" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "no.wav").exists()
    common = ("--cfg-scale", "3", "--seed", "4", "--model", str(micro_dir), *GEN_FAST)
    for name, extra in (("plain.wav", ()), ("neg.wav", ("--negative-prompt", "noise"))):
        code, _, err = _main(capsys, "generate", "x", "-o", str(tmp_path / name), *extra, *common)
        assert code == 0, err
    assert not (sf.read(tmp_path / "plain.wav")[0] == sf.read(tmp_path / "neg.wav")[0]).all()
    prompts = _prompts_file(tmp_path, ["x"])
    code, _, err = _main(capsys, "generate", "--prompts", str(prompts), "-o", str(tmp_path / "clips"),
                         "--negative-prompt", "noise", *common)
    assert code == 0, err
    assert (sf.read(tmp_path / "clips" / "000.wav")[0] == sf.read(tmp_path / "neg.wav")[0]).all()
