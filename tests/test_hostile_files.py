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
import struct
import types

import pytest
import torch

from arc_fast.loader import CheckpointError, read_component, read_file
from arc_fast.pipeline import load_pipeline
from test_loader import micro_config, random_pipeline, save_model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
