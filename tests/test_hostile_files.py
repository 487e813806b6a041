"""Hostile files and bad values (issue 15).

Hostile pickles: checkpoints whose pickle would run code (REDUCE of ``os.system``), build or patch a real class
(BUILD with ``__setstate__`` or slot state on ``collections.Counter`` or a probe class of this module), fill a
class through APPENDS/SETITEMS, reach the copyreg extension registry, or hand ``persistent_load`` a foreign
storage type. Each is fed to every loader path (``load_pipeline``, ``--dit``, ``arc-fast convert``, trainer
resume from a file and through ``last.pt``, the eval classifier). Every case asserts that the marker file the
payload would create is absent and that the probe classes are unchanged; loads either succeed with the payload
turned into an inert placeholder or fail with one line naming the file.

Bad values: each family the CLI, the trainer and ``FastDiT`` check gives one line naming the culprit, a
non-zero exit, no traceback, and leaves existing files untouched.
"""
import collections
import io
import os
import pickle
import re
import struct
import types

import pytest
import torch

from arc_fast.loader import CheckpointError, read_component, read_file
from arc_fast.pipeline import load_pipeline
from test_loader import micro_config, random_pipeline, save_model


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: micro models run on one thread


# --------------------------------------------------------------------------------------- hostile pickles

class Probe:
    """A real, importable class: a hostile pickle tries to run its ``__setstate__`` or patch its attributes."""

    def __setstate__(self, state):
        with open(state, "w") as f:
            f.write("setstate ran")


class Plain:
    """A real class without ``__setstate__``: pickle's slot state would ``setattr`` on it."""

    flag = False


class Raw:
    """Raw pickle opcodes spliced into an otherwise ordinary ``torch.save`` stream (they leave one object)."""

    def __init__(self, data: bytes):
        self.data = data


class _RawPickler(pickle._Pickler):
    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, Raw):
            self.write(obj.data)
            return
        super().save(obj, save_persistent_id)


_RAW_MODULE = types.ModuleType("raw_pickle")
_RAW_MODULE.Pickler = _RawPickler


def _glob(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


MARK, TUPLE, TUPLE1, TUPLE2, EMPTY_TUPLE = b"(", b"t", b"\x85", b"\x86", b")"
NONE, TRUE, EMPTY_DICT, SETITEM, SETITEMS, APPENDS = b"N", b"\x88", b"}", b"s", b"u", b"e"
REDUCE, BUILD, NEWOBJ, BINPERSID = b"R", b"b", b"\x81", b"Q"


def _slot_patch(module: str, name: str, attr: str, value: bytes) -> bytes:
    """GLOBAL cls; BUILD (None, {attr: value}): pickle's slot state does setattr(cls, attr, value)."""
    return _glob(module, name) + NONE + EMPTY_DICT + _str(attr) + value + SETITEM + TUPLE2 + BUILD


def payloads(marker: str) -> dict[str, bytes]:
    """name -> opcodes that would create ``marker`` or patch a class if the unpickler obeyed them."""
    probe = (Probe.__module__, "Probe")
    return {
        "reduce-os-system": _glob("os", "system") + MARK + _str(f"touch '{marker}'") + TUPLE + REDUCE,
        "reduce-builtins-exec": _glob("builtins", "exec") + MARK + _str(f"open({marker!r}, 'w').close()") + TUPLE
        + REDUCE,
        "newobj-probe-setstate": _glob(*probe) + EMPTY_TUPLE + NEWOBJ + _str(marker) + BUILD,
        "build-probe-class": _slot_patch(Plain.__module__, "Plain", "flag", TRUE),
        "build-counter-missing": _slot_patch("collections", "Counter", "__missing__", _glob("builtins", "set")),
        "setitems-on-class": _glob("collections", "OrderedDict") + MARK + _str("x") + TRUE + SETITEMS,
        "appends-on-class": _glob("builtins", "set") + MARK + _str("x") + APPENDS,
        "extension-code": b"\x82\x01",
        "persistent-load-foreign-storage": MARK + _str("storage") + _glob("os", "system") + _str("0") + _str("cpu")
        + b"K\x01" + TUPLE + BINPERSID,
    }


PAYLOADS = list(payloads("m"))


def class_snapshot():
    return {c: dict(vars(c)) for c in (Probe, Plain, collections.Counter, collections.OrderedDict, set)}


@pytest.fixture
def guard(tmp_path):
    """Yields the marker path; afterwards asserts that nothing ran and no probe class changed."""
    marker = str(tmp_path / "PWNED")
    before = class_snapshot()
    yield marker
    assert not os.path.exists(marker), "code from a hostile file ran"
    assert class_snapshot() == before, "a hostile file changed a class"
    assert collections.Counter()["x"] == 0


def hostile_save(obj, path, payload: bytes) -> str:
    """torch.save ``{**obj, "training_state": <payload>}`` (zip format, tensors as usual)."""
    buf = io.BytesIO()
    torch.save({**obj, "training_state": Raw(payload)}, buf, pickle_module=_RAW_MODULE)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return str(path)


def _load_or_refuse(fn, path):
    """Run a loader: it either succeeds (payload inert) or raises an error naming the file."""
    try:
        return fn()
    except (CheckpointError, ValueError, RuntimeError) as exc:
        assert str(path) in str(exc) and "\n" not in str(exc).strip(), str(exc)
        return None


@pytest.fixture(scope="module")
def micro():
    return random_pipeline(micro_config())


@pytest.mark.parametrize("name", PAYLOADS)
def test_read_file_never_runs_or_patches(guard, tmp_path, name):
    path = hostile_save({"w": torch.arange(3.0)}, tmp_path / "x.ckpt", payloads(guard)[name])
    got = _load_or_refuse(lambda: read_file(path), path)
    if got is not None:
        obj, _, notes = got
        # the tensor's stored bytes, read back (no arithmetic)
        assert torch.equal(obj["w"], torch.arange(3.0)) and "no code from the file was run" in notes[-1]


def test_build_on_a_real_class_is_refused_by_name(guard, tmp_path):
    path = hostile_save({"w": torch.zeros(1)}, tmp_path / "x.ckpt", payloads(guard)["build-counter-missing"])
    with pytest.raises(CheckpointError, match=r"refused checkpoint .*x\.ckpt.*collections\.Counter"):
        read_file(path)
    # Tallies of one load do not leak into the next (they used to live on a class-level Counter).
    ok = hostile_save({"w": torch.zeros(1)}, tmp_path / "y.ckpt", payloads(guard)["reduce-os-system"])
    assert "skipped 1 kind(s)" in read_file(ok)[2][-1]


@pytest.mark.parametrize("name", PAYLOADS)
def test_model_loaders_never_run_or_patch(guard, micro, tmp_path, name):
    payload = payloads(guard)[name]
    folder = tmp_path / "m"
    save_model(micro, folder, name="model.ckpt", sd={})
    ckpt = hostile_save({"state_dict": micro.state_dict()}, folder / "model.ckpt", payload)
    _load_or_refuse(lambda: load_pipeline(str(folder), device="cpu", fast=False), ckpt)
    dit = hostile_save({k: v for k, v in micro.state_dict().items() if k.startswith("model.model.")},
                       tmp_path / "dit.ckpt", payload)
    _load_or_refuse(lambda: read_component(dit, "dit"), dit)


LIVE = ["reduce-os-system", "reduce-builtins-exec", "newobj-probe-setstate", "build-probe-class",
        "build-counter-missing"]


def test_payloads_are_live_under_a_plain_unpickler(tmp_path):
    """The payloads above are real attacks: a plain ``torch.load(weights_only=False)`` (in a child process)
    obeys each one. Without this, the tests above could pass against files that do nothing."""
    import subprocess
    import sys
    script = (
        "import collections, os, sys, torch\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "import test_hostile_files as h\n"
        "for name, path in zip(sys.argv[2::2], sys.argv[3::2]):\n"
        "    before = h.class_snapshot()\n"
        "    try:\n"
        "        torch.load(path, weights_only=False)\n"
        "    except Exception:\n"
        "        pass\n"
        "    print(name, os.path.exists(path + '.marker') or h.class_snapshot() != before)\n")
    args = []
    for name in LIVE:
        path = str(tmp_path / f"{name}.ckpt")
        hostile_save({"w": torch.zeros(1)}, path, payloads(path + ".marker")[name])
        args += [name, path]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", script, os.path.dirname(__file__), *args], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == [w for name in LIVE for w in (name, "True")], r.stdout + r.stderr[-2000:]


# ------------------------------------------------------------------------------- trainer checkpoints

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained micro run (2 steps, keep_checkpoints 2): (trainer, pipeline, data folder, root)."""
    from test_train_loop import make_cfg, random_pipeline as train_pipeline
    from arc_fast.train import ARCTrainer, write_shard
    root = tmp_path_factory.mktemp("run")
    data = root / "data"
    data.mkdir()
    g = torch.Generator().manual_seed(0)
    write_shard(str(data / "s.safetensors"), torch.randn(4, 16, 8, generator=g), ["a", "b", "c", "d"], [1.0] * 4)
    pipe = train_pipeline()
    pipe.save(str(root / "model"))  # the run's base model (a trainer checkpoint names it)
    tr = ARCTrainer(make_cfg(root / "out", str(data), model=str(root / "model")), pipeline=pipe)
    tr.train(2)
    return tr, pipe, str(data), root


def _trainer(run, out, resume=False, **kw):
    from test_train_loop import make_cfg
    from arc_fast.train import ARCTrainer
    _, pipe, data, _ = run
    return ARCTrainer(make_cfg(out, kw.pop("data", data), **kw), pipeline=pipe, resume=resume)


def test_last_pt_is_an_atomic_pointer_not_a_hard_link(run):
    from arc_fast.loader import POINTER_MAGIC
    tr, *_ = run
    folder = os.path.dirname(tr.checkpoint_path("last"))
    assert sorted(os.listdir(folder)) == ["last.pt", "step-00000002.pt"]
    last, step = os.path.join(folder, "last.pt"), os.path.join(folder, "step-00000002.pt")
    assert os.stat(last).st_ino != os.stat(step).st_ino and os.stat(step).st_nlink == 1
    assert open(last, "rb").read() == POINTER_MAGIC + b"step-00000002.pt\n"
    # Every reader follows it: weights_only load of the target, the model loader, the trainer.
    assert torch.load(step, weights_only=True)["format"] == 2
    q = load_pipeline(last, device="cpu", fast=False)
    assert any("last.pt points to step-00000002.pt" in n for n in q.load_notes)


def test_resume_follows_the_pointer_and_old_hard_linked_runs_still_resume(run, tmp_path):
    import numpy as np
    from arc_fast.train.distributed import state_digest
    tr, *_ = run
    src = tr.checkpoint_path("last")
    resumed = _trainer(run, tmp_path / "a")
    resumed.load_checkpoint(src)
    assert resumed.step == 2 and state_digest(resumed.G_raw) == state_digest(tr.G_raw)
    # A format-1 run: NumPy's RNG state pickled as an array (not weights_only-loadable), last.pt a hard link.
    state = torch.load(os.path.join(os.path.dirname(src), "step-00000002.pt"), weights_only=True)
    ns = state["ranks"][0]["rng"]["numpy"]
    state["ranks"][0]["rng"]["numpy"] = (ns["kind"], ns["keys"].numpy().astype(np.uint32), ns["pos"],
                                         ns["has_gauss"], ns["cached_gaussian"])
    state["format"] = 1
    old = tmp_path / "old" / "checkpoints"
    old.mkdir(parents=True)
    torch.save(state, old / "step-00000002.pt")
    os.link(old / "step-00000002.pt", old / "last.pt")
    legacy = _trainer(run, tmp_path / "old")
    np.random.seed(123)
    legacy.load_checkpoint(str(old / "last.pt"))
    assert legacy.step == 2 and state_digest(legacy.ema) == state_digest(tr.ema)
    # resume restores the RNG state itself: a contract on the exact state
    assert np.array_equal(np.random.get_state()[1], state["ranks"][0]["rng"]["numpy"][1])


@pytest.mark.parametrize("via", ["file", "last.pt pointer", "last.pt file"])
@pytest.mark.parametrize("name", PAYLOADS)
def test_resume_never_runs_or_patches(guard, run, tmp_path, name, via):
    tr, *_ = run
    good = torch.load(os.path.join(os.path.dirname(tr.checkpoint_path("last")), "step-00000002.pt"),
                      weights_only=True)
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for fmt in (2, 1):  # format 1 is read through the inert unpickler: the payload must stay inert there too
        step = hostile_save({**good, "format": fmt}, folder / "step-00000002.pt", payloads(guard)[name])
        path = step
        if via == "last.pt pointer":
            from arc_fast.loader import write_pointer
            path = str(folder / "last.pt")
            write_pointer(path, step)
        elif via == "last.pt file":
            path = str(folder / "last.pt")
            os.replace(step, path)
        _load_or_refuse(lambda: tr.load_checkpoint(path), path)


@pytest.mark.parametrize("damage, match", [
    (lambda s: s.pop("fsdp"), r"lacks 'fsdp'"),
    (lambda s: s.update(format=7), r"not an arc_fast ARC checkpoint \(format 7"),
    (lambda s: s["D"].update({k: torch.zeros(3, 5) for k in list(s["D"])[:1]}),
     r"'D' does not fit this run's model: .*: checkpoint \(3, 5\) float32, model \("),
    (lambda s: s["G"].pop(next(iter(s["G"]))), r"'G' does not fit .*missing "),
    (lambda s: s["ema"].update({k: v.int() for k, v in list(s["ema"].items())[:1]}), r"int32, model .* float32"),
    (lambda s: s["G"].update({k: torch.full_like(v, float("nan")) for k, v in s["G"].items() if k.endswith("beta")}),
     r"G\[.*beta'\] holds NaN/Inf"),
    (lambda s: s["opt_d"]["param_groups"][0]["params"].pop(), r"'opt_d' has parameter groups of \[\d+\] tensors"),
    (lambda s: s["opt_g"]["state"][0].update(exp_avg=torch.zeros(1, 2, 3)), r"opt_g state 'exp_avg' of .*\(1, 2, 3\)"),
])
def test_resume_errors_name_the_entry_and_shapes(run, tmp_path, capsys, damage, match):
    tr, *_ = run
    state = torch.load(os.path.join(os.path.dirname(tr.checkpoint_path("last")), "step-00000002.pt"),
                       weights_only=True)
    damage(state)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(RuntimeError, match=match) as err:
        _trainer(run, tmp_path / "x", resume=str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_nan_layernorm_beta_is_called_damaged_not_non_zero():
    from arc_fast.models.dit import FastDiT
    dit = FastDiT(io_channels=4, embed_dim=32, depth=1, num_heads=1, cond_token_dim=0, global_cond_dim=0)
    with torch.no_grad():
        dit.transformer.layers[0].pre_norm.beta.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"layers\.0\.pre_norm\.beta holds NaN/Inf values: the DiT weights are dam"):
        dit(torch.randn(1, 4, 8), torch.rand(1))


# ------------------------------------------------------------------------------------- trainer data

def _write_bad_seconds(folder, seconds):
    from arc_fast.train import write_shard
    folder.mkdir()
    path = folder / "s.safetensors"
    write_shard(str(path), torch.randn(2, 16, 8), ["a", "b"])
    from safetensors.torch import load_file, save_file
    save_file(load_file(str(path)), str(path), metadata={"prompts": '["a", "b"]', "seconds_total": seconds})
    return path


@pytest.mark.parametrize("seconds", ["[1.0, NaN]", "[1.0, Infinity]", "[1.0, -2]", '[1.0, "3"]', "[1.0, true]"])
def test_bad_shard_metadata_names_the_shard_and_leaves_no_run_folder(run, tmp_path, capsys, seconds):
    import json
    from arc_fast.train.cli import main as train_main
    from test_train_loop import make_cfg
    shard = _write_bad_seconds(tmp_path / "data", seconds)
    cfg = make_cfg(tmp_path / "out", str(tmp_path / "data"), model=str(tmp_path / "model")).to_dict()
    run[1].save(str(tmp_path / "model"))
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    assert train_main(["--config", str(tmp_path / "cfg.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(shard) in err and "'seconds_total'[1]" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()  # no empty run folder left behind


def test_data_errors_leave_no_run_folder(run, tmp_path):
    from arc_fast.train import ShardError
    empty = tmp_path / "empty"
    empty.mkdir()
    tr = _trainer(run, tmp_path / "out", data=str(empty))
    with pytest.raises(ShardError, match="no \\*.safetensors shards"):
        tr.train(2)
    tr = _trainer(run, tmp_path / "out", batch_size=64)
    with pytest.raises(ValueError, match="too small for batch_size 64"):
        tr.train(2)
    assert not (tmp_path / "out").exists()


# -------------------------------------------------------------------------------------- eval classifier

def test_classifier_round_trips_through_weights_only(tmp_path):
    from arc_fast.eval.classifier import ParamClassifier, load_classifier, save_classifier
    model = ParamClassifier()
    save_classifier(model, {"accuracy": {"family": 0.9}, "steps": 3}, str(tmp_path / "c.pt"))
    got, info = load_classifier(str(tmp_path / "c.pt"))
    assert info == {"accuracy": {"family": 0.9}, "steps": 3} and os.listdir(tmp_path) == ["c.pt"]
    # weights round-trip through the file as bytes (no arithmetic)
    assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), model.state_dict().values()))
    sd = model.state_dict()
    sd["embed.weight"] = sd["embed.weight"][:4]
    torch.save({"state_dict": sd}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt: embed\.weight: file \(4, 192\) torch\.float32, model \(32, 192\)"):
        load_classifier(str(tmp_path / "bad.pt"))


@pytest.mark.parametrize("name", PAYLOADS)
def test_classifier_never_runs_or_patches(guard, tmp_path, capsys, name):
    from arc_fast import cli
    from arc_fast.eval.classifier import ParamClassifier, load_classifier
    path = hostile_save({"state_dict": ParamClassifier().state_dict()}, tmp_path / "clf.pt", payloads(guard)[name])
    with pytest.raises(ValueError, match=r"(refused|cannot read) classifier .*clf\.pt"):
        load_classifier(path)
    (tmp_path / "model").mkdir()
    out = tmp_path / "eval_out"
    code = cli.main(["eval", "--base", str(tmp_path / "model"), "--classifier", path, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "clf.pt" in err and "Traceback" not in err, err
    assert not out.exists()


# ------------------------------------------------------------------------------------ FastDiT inputs

def _fast_dit():
    from test_fast_dit import _inputs, _pair
    _, fast = _pair({"use_cross_attn_mask": True})
    return fast, _inputs()


@pytest.mark.parametrize("change, match", [
    (lambda i: i.update(x=i["x"].long()), r"x must be a floating-point tensor .*got torch\.int64"),
    (lambda i: i.update(t=i["t"] > 0.5), r"t must be a float tensor of noise levels, got torch\.bool"),
    (lambda i: i.update(cross_attn_cond_mask=i["cross_attn_cond_mask"][:, :3]),
     r"cross_attn_cond_mask must have shape \(2, 5\) .*got \(2, 3\)"),
    (lambda i: i.update(cross_attn_cond_mask=i["cross_attn_cond_mask"][:1]), r"cross_attn_cond_mask must have shape"),
    (lambda i: i.update(mask=torch.ones(2, 3, dtype=torch.bool)), r"mask must have shape \(2, 10\), got \(2, 3\)"),
    (lambda i: i.update(cfg_scale=float("nan")), r"cfg_scale must be finite, got nan"),
    (lambda i: i.update(cfg_scale=float("inf")), r"cfg_scale must be finite, got inf"),
    (lambda i: i.update(cfg_scale="3"), r"cfg_scale must be a number, got str"),
])
def test_fast_dit_rejects_bad_inputs_by_name(change, match):
    fast, inp = _fast_dit()
    change(inp)
    with pytest.raises(ValueError, match=match), torch.no_grad():
        fast(inp.pop("x"), inp.pop("t"), **inp)


def test_fast_dit_finiteness_check_is_opt_in_and_compile_friendly():
    fast, inp = _fast_dit()
    x, t = inp.pop("x"), inp.pop("t")
    bad_x = x.clone()
    bad_x[1, 2, 3] = float("nan")
    with torch.no_grad():
        assert not torch.isfinite(fast(bad_x, t, **inp)).all()  # default: off (the samplers' guard names the step)
        for mode in (None, True):  # None: CPU inputs only; True: every device
            fast.check_finite = mode
            with pytest.raises(ValueError, match=r"x holds NaN/Inf values \(non-finite input"):
                fast(bad_x, t, **inp)
            with pytest.raises(ValueError, match=r"t holds NaN/Inf values"):
                fast(x, torch.tensor([0.5, float("inf")]), **inp)
        expect = fast(x, t, **inp)
        torch._dynamo.reset()
        compiled = torch.compile(fast, backend="eager", fullgraph=True)  # no graph break from the checks
        torch.testing.assert_close(compiled(x, t, **inp), expect, rtol=1e-6, atol=1e-6)
        with torch._dynamo.config.patch(error_on_recompile=True):
            torch.testing.assert_close(compiled(x + 1, t, **inp), fast(x + 1, t, **inp), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------ CLI values

@pytest.fixture(scope="module")
def micro_model(tmp_path_factory):
    p = random_pipeline(micro_config(arc=True), seed=0)
    d = tmp_path_factory.mktemp("micro") / "m"
    p.save(str(d))
    return str(d)


def _cli(capsys, *args):
    from arc_fast import cli
    try:
        code = cli.main(list(args))
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_failure(code, err, *needles):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code not in (0, None) and len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], err


@pytest.mark.parametrize("args, needle", [
    (["--steps", "1000000"], "--steps: must be <= 1000"),
    (["--steps", "0"], "--steps: must be >= 1"),
    (["--steps", "2.5"], "--steps: not an integer"),
    (["--batch-size", "1000000000000"], "--batch-size: must be <= 64"),
    (["--cfg-scale", "nan"], "--cfg-scale: must be a finite number"),
    (["--cfg-scale=-inf"], "--cfg-scale: must be a finite number"),
    (["--seconds", "inf"], "--seconds: must be > 0 and finite"),
    (["--seconds", "nan"], "--seconds: must be > 0 and finite"),
    (["--seed", "1.5"], "--seed: not an integer"),
    (["--seed", str(2 ** 64)], "--seed: must be an integer in"),
    (["--init-noise-level", "nan"], "--init-noise-level: must be > 0"),
    (["--dit", "MISSING/dit.safetensors"], "--dit not found: MISSING/dit.safetensors"),
    (["--autoencoder", "DIR"], "--autoencoder not a file: DIR"),
    (["--config", "MISSING/model_config.json"], "--config not found"),
    (["--device", "gpu"], "--device 'gpu' is not a device"),
    (["-o", "MISSING/x.wav"], "output folder does not exist"),
])
def test_generate_values_are_refused_before_any_work(capsys, monkeypatch, tmp_path, args, needle):
    import arc_fast.pipeline

    def no_work(*a, **k):
        raise AssertionError("a model was loaded before the options were checked")
    monkeypatch.setattr(arc_fast.pipeline, "load_pipeline", no_work)
    out = tmp_path / "out.wav"
    out.write_bytes(b"old take")
    args = [a.replace("MISSING", str(tmp_path / "missing")).replace("DIR", str(tmp_path)) for a in args]
    needle = needle.replace("MISSING", str(tmp_path / "missing")).replace("DIR", str(tmp_path))
    code, _, err = _cli(capsys, "generate", "a tone", "-o", str(out), "--quiet", *args)
    _one_line_failure(code, err, needle)
    assert out.read_bytes() == b"old take" and sorted(os.listdir(tmp_path)) == ["out.wav"]


def test_seconds_shorter_than_a_latent_frame(capsys, micro_model, tmp_path):
    code, _, err = _cli(capsys, "generate", "x", "-o", str(tmp_path / "a.wav"), "--model", micro_model, "--quiet",
                        "--seconds", "1e-9")
    _one_line_failure(code, err, "--seconds 1e-09 is shorter than one latent frame (0.0040 s = 32 samples at 8000 Hz)")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("err_no, needle", [
    (28, "No space left on device: {path} (free some space or write elsewhere)"),
    (13, "Permission denied: {path} (check the permissions or write elsewhere)"),
])
def test_os_errors_name_the_path_and_a_batch_is_all_or_nothing(capsys, monkeypatch, micro_model, tmp_path, err_no,
                                                                needle):
    (tmp_path / "b_0.wav").write_bytes(b"old take 0")
    real_fsync, calls = os.fsync, []

    def failing_fsync(fd):  # the second clip's write fails, after the first one's temporary file is complete
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(err_no, os.strerror(err_no))
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", failing_fsync)
    code, _, err = _cli(capsys, "generate", "x", "-o", str(tmp_path / "b.wav"), "--model", micro_model, "--quiet",
                        "--seconds", "0.05", "--steps", "1", "--short-window", "--reference", "--batch-size", "2")
    _one_line_failure(code, err, needle.format(path=tmp_path / "b_1.wav"))
    assert sorted(os.listdir(tmp_path)) == ["b_0.wav"] and (tmp_path / "b_0.wav").read_bytes() == b"old take 0"
    monkeypatch.setattr(os, "fsync", real_fsync)
    code, out, err = _cli(capsys, "generate", "x", "-o", str(tmp_path / "b.wav"), "--model", micro_model, "--quiet",
                          "--seconds", "0.05", "--steps", "1", "--short-window", "--reference", "--batch-size", "2")
    assert code == 0 and sorted(os.listdir(tmp_path)) == ["b_0.wav", "b_1.wav"], err


def test_convert_names_a_missing_dit_file(capsys, tmp_path):
    code, _, err = _cli(capsys, "convert", "-o", str(tmp_path / "out"), "--dit", str(tmp_path / "missing.safetensors"))
    _one_line_failure(code, err, f"--dit not found: {tmp_path / 'missing.safetensors'}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["reduce-os-system", "build-counter-missing", "newobj-probe-setstate"])
def test_convert_cli_never_runs_or_patches(guard, capsys, micro, tmp_path, name):
    ckpt = hostile_save({"state_dict": micro.state_dict()}, tmp_path / "model.ckpt", payloads(guard)[name])
    import json
    (tmp_path / "model_config.json").write_text(json.dumps(micro.config))
    code, out, err = _cli(capsys, "convert", ckpt, "-o", str(tmp_path / "out"))
    if code == 0:  # the payload was inert: the model converted, with a note saying so
        assert "no code from the file was run" in out
    else:
        _one_line_failure(code, err, "refused checkpoint", "model.ckpt")
        assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


# ------------------------------------------------------------------------------------ Pipeline arguments

@pytest.fixture
def no_work(micro, monkeypatch):
    """The micro pipeline with every stage of a generation refusing to run."""
    def refuse(*a, **k):
        raise AssertionError("work started before the arguments were checked")
    for stage in ("condition", "prepare_init_audio", "encode", "decode"):
        monkeypatch.setattr(micro, stage, refuse)
    return micro


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(steps=True), TypeError, r"steps must be an integer, got True \(bool\)"),
    (dict(steps=2.0), TypeError, r"steps must be an integer, got 2.0 \(float\)"),
    (dict(steps=0), ValueError, r"steps must be in \[1, 1000\] \(samplers converge long before\), got 0"),
    (dict(steps=1001), ValueError, r"steps must be in \[1, 1000\]"),
    (dict(batch_size=True), TypeError, r"batch_size must be an integer, got True \(bool\)"),
    (dict(batch_size=10 ** 12), ValueError, r"batch_size must be in \[1, 64\] \(memory"),
    (dict(batch_size=0), ValueError, r"batch_size must be in \[1, 64\]"),
    (dict(seed=1.5), TypeError, r"seed must be an integer, got 1.5 \(float\)"),
    (dict(seed=False), TypeError, r"seed must be an integer, got False \(bool\)"),
    (dict(seed=2 ** 64), ValueError, r"seed must be in \[-9223372036854775808, 18446744073709551615\]"),
    (dict(seconds=True), TypeError, r"seconds must be a number, got True \(bool\)"),
    (dict(seconds="1"), TypeError, r"seconds must be a number, got '1' \(str\)"),
    (dict(seconds=float("nan")), ValueError, r"seconds must be a finite number, got nan"),
    (dict(seconds=1e-9), ValueError, r"seconds must be at least one latent frame \(0.0040 s\) for this model"),
    (dict(seconds=1.0), ValueError, r"seconds must be in \(0, 0.26\] for this model, got 1"),
    (dict(cfg_scale=float("nan")), ValueError, r"cfg_scale must be a finite number, got nan"),
    (dict(cfg_scale=float("-inf")), ValueError, r"cfg_scale must be a finite number, got -inf"),
    (dict(cfg_scale="3"), TypeError, r"cfg_scale must be a number, got '3' \(str\)"),
    (dict(cfg_scale=-1.0), ValueError, r"cfg_scale must be >= 0"),
    (dict(prompt=None), TypeError, r"prompt must be a string or a list of strings, got NoneType"),
    (dict(prompt=b"a tone"), TypeError, r"prompt must be a string or a list of strings, got bytes"),
    (dict(prompt=["a", 3]), TypeError, r"prompt\[1\] must be a string, got int"),
    (dict(prompt=[]), ValueError, r"no prompt given"),
])
def test_pipeline_arguments_are_refused_by_name_before_any_work(no_work, kwargs, exc, match):
    kwargs = {"prompt": "a tone", **kwargs}
    with pytest.raises(exc, match=match):
        no_work(**kwargs)


def test_pipeline_accepts_numpy_integers_and_the_cli_shares_its_limits(micro):
    import numpy as np

    from arc_fast import cli, guards, limits
    audio, _ = micro("a", seconds=0.05, steps=np.int64(1), seed=np.int32(3), batch_size=np.int64(2),
                     cfg_scale=np.float32(1.0), short_window=True)
    assert audio.shape[0] == 2
    assert cli.MAX_STEPS == guards.MAX_STEPS == limits.MAX_STEPS and cli.MAX_BATCH == guards.MAX_BATCH


# ------------------------------------------------------------- non-finite input versus non-finite weights

@pytest.mark.parametrize("audio, match", [
    (torch.full((2, 400), 1e30), r"init_audio peaks at 1e\+30, over 100 \(audio is expected in \[-1, 1\]"),
    (torch.full((2, 400), 32767.0), r"init_audio peaks at 3.28e\+04.*divided by its full scale, e.g. 32768"),
    (torch.tensor([[0.1, float("nan"), 0.2, float("inf")]]), r"init_audio holds 2 NaN/Inf sample\(s\) \(non-finite input"),
])
def test_bad_init_audio_is_named_as_input_before_the_encoder(micro, monkeypatch, audio, match):
    def refuse(*a, **k):
        raise AssertionError("the encoder ran on a bad init audio")
    monkeypatch.setattr(micro, "encode", refuse)
    with pytest.raises(ValueError, match=match):
        micro("a", seconds=0.05, init_audio=audio)


def _planted(module, name, value=float("nan")):
    p = dict(module.named_parameters())[name]
    saved = p.detach().clone()
    with torch.no_grad():
        p.view(-1)[0] = value
    return p, saved


@pytest.mark.parametrize("where, name, stage", [
    ("dit", "transformer.project_in.weight", "DiT step 1 of 2"),
    ("decoder", "layers.0.bias", "decoder"),
])
def test_non_finite_weights_are_named_apart_from_inputs(micro, where, name, stage):
    from arc_fast.guards import NonFiniteError
    module = micro.dit if where == "dit" else micro.autoencoder.decoder
    p, saved = _planted(module, name)
    try:
        with pytest.raises(NonFiniteError, match=rf"non-finite weights: the {stage.split()[0]} parameter "
                                                 rf"{name} holds NaN/Inf") as e:
            micro("a", seconds=0.05, steps=2, short_window=True)
    finally:
        with torch.no_grad():
            p.copy_(saved)
    assert e.value.stage == stage and "\n" not in str(e.value)


def test_overflowing_guidance_is_called_input_not_weights(micro):
    from arc_fast.guards import NonFiniteError
    with pytest.raises(NonFiniteError, match=r"step 1 of 2 .*non-finite input: cfg_scale 3e\+38") as e:
        micro("a", seconds=0.05, steps=2, cfg_scale=3e38, short_window=True)
    assert "weights" not in str(e.value)


def test_cli_init_audio_of_1e30_is_one_line_and_writes_nothing(capsys, micro_model, tmp_path):
    import soundfile as sf
    src = tmp_path / "loud.wav"
    sf.write(str(src), torch.full((800, 2), 1e30).numpy(), 8000, subtype="FLOAT")
    out = tmp_path / "out.wav"
    out.write_bytes(b"old take")
    code, _, err = _cli(capsys, "generate", "x", "-o", str(out), "--model", micro_model, "--quiet",
                        "--init-audio", str(src), "--steps", "1", "--reference")
    _one_line_failure(code, err, "init_audio peaks at 1e+30")
    assert out.read_bytes() == b"old take" and sorted(os.listdir(tmp_path)) == ["loud.wav", "out.wav"]


# ------------------------------------------------------------------------------------------ EMA required

@pytest.mark.parametrize("layout", ["unwrapped", "lightning"])
def test_ema_true_without_ema_weights_is_refused_by_name(micro, tmp_path, layout):
    sd = micro.state_dict()
    if layout == "lightning":
        sd = {"diffusion." + k: v for k, v in sd.items()}
    save_model(micro, tmp_path / layout, "model.ckpt", sd={"state_dict": sd} if layout == "lightning" else sd)
    with pytest.raises(CheckpointError, match=r"EMA weights were asked for \(ema=True\) but .*model\.ckpt has none"):
        load_pipeline(str(tmp_path / layout), device="cpu", dtype="fp32", fast=False, ema=True)
    # Without ema=True both load; an autoencoder file needs no EMA weights even with ema=True.
    load_pipeline(str(tmp_path / layout), device="cpu", dtype="fp32", fast=False)
    ae = tmp_path / "ae.safetensors"
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in micro.autoencoder.state_dict().items()}, str(ae))
    lightning = tmp_path / "ema.ckpt"
    ema_sd = {**{"diffusion." + k: v for k, v in micro.state_dict().items()},
              **{"diffusion_ema.ema_model." + k[len("model."):]: v for k, v in micro.state_dict().items()
                 if k.startswith("model.model.")}}
    torch.save({"state_dict": ema_sd}, str(lightning))
    load_pipeline(str(lightning), config=micro.config, autoencoder=str(ae), device="cpu", dtype="fp32", fast=False,
                  ema=True)


# ------------------------------------------------------------------------------------------ config fields

def _set(cfg, path, value):
    *parents, last = path.split(".")
    for p in parents:
        cfg = cfg[p]
    cfg[last] = value


@pytest.mark.parametrize("path, value, match", [
    ("sample_rate", 0, r"sample_rate must be a positive integer \(Hz\), got 0"),
    ("sample_rate", "abc", r"sample_rate must be a positive integer \(Hz\), got 'abc'"),
    ("sample_size", -5, r"sample_size must be a positive integer \(audio samples in the model's window\), got -5"),
    ("sample_size", 16, r"sample_size must be at least one latent frame \(model.pretransform.config."
                        r"downsampling_ratio = 32 samples\), got 16"),
    ("model.diffusion.config.embed_dim", "big", r"model.diffusion.config.embed_dim must be a positive integer, "
                                                r"got 'big'"),
    ("model.diffusion.config.depth", 3.5, r"model.diffusion.config.depth must be a positive integer, got 3.5"),
    ("model.diffusion.config.num_heads", True, r"num_heads must be a positive integer, got True"),
    ("model.pretransform.config.decoder.config.strides", [4, 0], r"decoder.config.strides must be a non-empty "
                                                                 r"list of positive integers, got a JSON list \[4, 0\]"),
    ("model.diffusion.diffusion_objective", "x0", r"model.diffusion.diffusion_objective must be one of 'v', "
                                                  r"'rectified_flow', 'rf_denoiser', got 'x0'"),
    ("model.conditioning", [], r"model.conditioning must be a JSON object, got a JSON list \[\]"),
    ("model_type", "autoencoder", r"model_type must be one of 'diffusion_cond', got 'autoencoder'"),
    ("arc_fast.defaults.steps", 0, r"arc_fast.defaults.steps must be a positive integer <= 1000, got 0"),
    ("arc_fast.defaults.steps", 10 ** 6, r"arc_fast.defaults.steps must be a positive integer <= 1000"),
    ("arc_fast.defaults.steps", "8", r"arc_fast.defaults.steps must be a positive integer <= 1000, got '8'"),
    ("arc_fast.defaults.sampler", "ddim", r"arc_fast.defaults.sampler must be one of 'euler', 'pingpong'"),
    ("arc_fast.defaults.cfg_scale", float("nan"), r"arc_fast.defaults.cfg_scale must be a finite number >= 0"),
])
def test_config_fields_are_validated_by_name(micro, tmp_path, path, value, match):
    import copy
    import json
    cfg = copy.deepcopy(micro.config)
    cfg.setdefault("arc_fast", {}).setdefault("defaults", {})
    _set(cfg, path, value)
    save_model(micro, tmp_path, config=cfg)
    with pytest.raises(ValueError, match=match) as e:
        load_pipeline(str(tmp_path), device="cpu", dtype="fp32", fast=False)
    assert str(tmp_path / "model_config.json") in str(e.value) and "\n" not in str(e.value)
    assert "--steps" not in str(e.value)
    with pytest.raises(ValueError, match=match):  # a config given as a dict is checked the same way
        load_pipeline(str(tmp_path / "model.safetensors"), config=json.loads(json.dumps(cfg, allow_nan=True)),
                      device="cpu", dtype="fp32", fast=False)


def test_config_that_is_a_json_list_is_named(micro, tmp_path, capsys):
    save_model(micro, tmp_path)
    (tmp_path / "model_config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"model_config.json must be a JSON object .*got a JSON list"):
        load_pipeline(str(tmp_path), device="cpu", fast=False)
    code, _, err = _cli(capsys, "convert", str(tmp_path), "-o", str(tmp_path / "out"))
    _one_line_failure(code, err, "must be a JSON object", "got a JSON list")
    assert not (tmp_path / "out").exists()


def test_bad_config_steps_are_blamed_on_the_config_not_on_steps(micro, capsys, tmp_path):
    import copy
    cfg = copy.deepcopy(micro.config)
    cfg["arc_fast"]["defaults"] = {"steps": 0}
    save_model(micro, tmp_path / "m", config=cfg)
    code, _, err = _cli(capsys, "generate", "x", "-o", str(tmp_path / "a.wav"), "--model", str(tmp_path / "m"),
                        "--quiet")
    _one_line_failure(code, err, "arc_fast.defaults.steps must be a positive integer <= 1000, got 0")
    assert "--steps" not in err and not (tmp_path / "a.wav").exists()
    from arc_fast.pipeline import Pipeline
    with pytest.raises(ValueError, match=r"arc_fast.defaults.steps"):  # a Pipeline built from a dict too
        Pipeline(cfg, micro.dit, micro.autoencoder, micro.conditioner).defaults()


# ----------------------------------------------------------------------------------- mistyped weights

@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.complex64])
def test_mistyped_weights_name_key_dtypes_and_shapes_on_one_line(micro, tmp_path, capsys, dtype):
    key = "model.model.transformer.project_in.weight"
    sd = micro.state_dict()
    sd[key] = sd[key].to(dtype)
    shape = tuple(sd[key].shape)
    save_model(micro, tmp_path / "m", "model.ckpt", sd=sd)
    said = rf"transformer.project_in.weight: checkpoint {dtype} {re_shape(shape)} vs model torch.float32 {re_shape(shape)}"
    with pytest.raises(CheckpointError, match=r"DiT \(model.model.\*\): dtype mismatch: " + said) as e:
        load_pipeline(str(tmp_path / "m"), device="cpu", dtype="fp32", fast=False)
    assert "\n" not in str(e.value)
    code, _, err = _cli(capsys, "convert", str(tmp_path / "m"), "-o", str(tmp_path / "out"))
    _one_line_failure(code, err, f"transformer.project_in.weight: checkpoint {dtype} {shape} vs model torch.float32")
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
    with pytest.warns(RuntimeWarning, match="dtype mismatch"):  # allow_partial: warned, and the key not loaded
        p = load_pipeline(str(tmp_path / "m"), device="cpu", dtype="fp32", fast=False, allow_partial=True)
    assert p.dit.transformer.project_in.weight.dtype == torch.float32


def re_shape(shape):
    return re.escape(str(shape))


def test_half_precision_weights_still_load(micro, tmp_path):
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in micro.state_dict().items()}
    save_model(micro, tmp_path, sd=sd)
    p = load_pipeline(str(tmp_path), device="cpu", dtype="fp32", fast=False)
    torch.testing.assert_close(p.dit.transformer.project_in.weight, micro.dit.transformer.project_in.weight.half().float())


# ------------------------------------------------------------------------------ ambiguous model folders

@pytest.mark.parametrize("second", ["model.ckpt", "split"])
def test_folder_with_two_models_is_refused_naming_both(micro, tmp_path, capsys, second):
    d = tmp_path / "m"
    save_model(micro, d)
    if second == "split":
        for name in ("dit.safetensors", "autoencoder.safetensors"):
            (d / name).write_bytes(b"")
        both = "model.safetensors and dit.safetensors + autoencoder.safetensors"
    else:
        save_model(micro, d, "model.ckpt")
        both = "model.safetensors and model.ckpt"
    with pytest.raises(CheckpointError, match=rf"holds more than one model \({re.escape(both)}\): keep one and move the "
                                              rf"others away, or load a file by name"):
        load_pipeline(str(d), device="cpu", fast=False)
    code, _, err = _cli(capsys, "generate", "x", "-o", str(tmp_path / "a.wav"), "--model", str(d), "--quiet")
    _one_line_failure(code, err, f"{d} holds more than one model ({both})", str(d / "model.safetensors"))
    assert not (tmp_path / "a.wav").exists()
    load_pipeline(str(d / "model.safetensors"), device="cpu", fast=False)  # naming the file resolves it


# ------------------------------------------------------------------------- convert --overwrite, atomically

def _snapshot(d):
    return {name: (d / name).read_bytes() for name in sorted(os.listdir(d))}


@pytest.fixture
def converted(micro, tmp_path, capsys):
    """A model folder to convert from, and an output folder already holding a split model plus a user file."""
    src = tmp_path / "src"
    save_model(micro, src)
    out = tmp_path / "out"
    code, _, err = _cli(capsys, "convert", str(src), "-o", str(out), "--split")
    assert code == 0, err
    (out / "notes.txt").write_text("mine")
    return src, out, _snapshot(out)


@pytest.mark.parametrize("fail_at", ["write", "install"])
def test_convert_overwrite_failing_halfway_leaves_the_old_model(converted, tmp_path, capsys, monkeypatch, fail_at):
    import arc_fast.convert
    import arc_fast.files
    src, out, before = converted
    if fail_at == "write":  # the disk fills up after the first file of the new model
        real = arc_fast.convert.save_json

        def full_disk(obj, path):
            raise OSError(28, os.strerror(28), path)
        monkeypatch.setattr(arc_fast.convert, "save_json", full_disk)
    else:  # the second move into place fails: the first one and the old files are moved back
        real, calls = os.replace, []

        def failing_replace(a, b):
            if os.path.dirname(os.fspath(b)) == str(out) and ".arc-fast-" in os.fspath(a):
                calls.append(b)
                if len(calls) == 2:
                    raise OSError(5, os.strerror(5), b)
            return real(a, b)
        monkeypatch.setattr(arc_fast.files.os, "replace", failing_replace)
    code, _, err = _cli(capsys, "convert", str(src), "-o", str(out), "--overwrite")
    _one_line_failure(code, err, "No space left on device" if fail_at == "write" else "Input/output error")
    assert _snapshot(out) == before  # the old split model, untouched, and the user's file
    assert sorted(os.listdir(tmp_path)) == ["out", "src"]  # no staging or backup folder left behind


def test_convert_overwrite_replaces_the_old_model_as_a_set(converted, tmp_path, capsys):
    src, out, before = converted
    code, _, err = _cli(capsys, "convert", str(src), "-o", str(out), "--overwrite")
    assert code == 0, err
    assert sorted(os.listdir(out)) == ["model.safetensors", "model_config.json", "notes.txt"]  # no stale split
    assert (out / "notes.txt").read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["out", "src"]
    load_pipeline(str(out), device="cpu", fast=False)
    code, _, err = _cli(capsys, "convert", str(src), "-o", str(out))
    _one_line_failure(code, err, "already holds model.safetensors, model_config.json")


# ---------------------------------------------------------------------------- FastOobleckDecoder inputs

def _fast_decoder():
    from arc_fast.models.decoder import FastOobleckDecoder
    return FastOobleckDecoder(out_channels=2, channels=4, latent_dim=8, c_mults=[1, 2], strides=[2, 2],
                              use_snake=True, final_tanh=False).eval()


@pytest.mark.parametrize("x, exc, match", [
    (torch.zeros(1, 8, 5, dtype=torch.int64), ValueError,
     r"FastOobleckDecoder input: x must be a floating-point tensor of latents .*got torch.int64"),
    (torch.zeros(1, 8, 5, dtype=torch.bool), ValueError, r"x must be a floating-point tensor .*got torch.bool"),
    (torch.zeros(1, 7, 5), ValueError, r"expected 8 channels \(dim 1\) for latents, got 7"),
    (torch.zeros(8, 5), ValueError, r"expected latents of shape \(B, 8, T\), got rank 2"),
    (torch.zeros(1, 8, 0), ValueError, r"no latent frames \(shape \(1, 8, 0\)\)"),
    ([[0.0]], TypeError, r"expected a torch.Tensor, got list"),
])
def test_fast_decoder_rejects_bad_latents_by_name(x, exc, match):
    with pytest.raises(exc, match=match), torch.no_grad():
        _fast_decoder()(x)


def test_fast_decoder_finiteness_check_is_opt_in_and_skipped_when_compiling(monkeypatch):
    dec = _fast_decoder()
    x = torch.randn(2, 8, 6)
    bad = x.clone()
    bad[1, 3, 2] = float("inf")
    with torch.no_grad():
        assert not torch.isfinite(dec(bad)).all()  # default: off (the pipeline's guard names the stage)
        for mode in (None, True):
            dec.check_finite = mode
            with pytest.raises(ValueError, match=r"x holds NaN/Inf values \(non-finite input, not a weights"):
                dec(bad)
        assert torch.isfinite(dec(x)).all()  # finite latents pass the check
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # a traced graph holds no host sync
        assert not torch.isfinite(dec(bad)).all()
