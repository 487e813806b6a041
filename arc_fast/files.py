"""Reading and writing the project's files safely: no code from a file ever runs, no file is half-replaced.

Reading (``read_file``): ``.safetensors`` directly; pickled files (``.ckpt`` / ``.pt``) with
``torch.load(weights_only=True)``, and where a training checkpoint also holds pickled Python objects (Lightning
callbacks, NumPy RNG states, ...), with an unpickler that builds tensors as usual but turns every other class
into an inert placeholder: a pickle that tries to set the state of a real class or object (BUILD /
``__setstate__``), to fill a class, or to use the copyreg extension registry is refused (``CheckpointError``
"refused checkpoint ..."). ``last.pt`` pointer files (``write_pointer`` / ``resolve_pointer``) name the newest
trainer checkpoint and are followed.

Writing (``save_safetensors``, ``save_json``): a temporary file beside the target, fsynced, then an atomic
rename. A folder of files (``arc-fast convert -o DIR --overwrite``) is written into a ``staging_dir`` beside
it and moved into place by ``install_folder``: the old files go only once the new ones are complete.

``arc_fast.loader`` (layouts, key mapping, strict checks) builds on this module; its old names still import
from there.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import tempfile
import types
import typing as tp
from collections import OrderedDict

import torch

logger = logging.getLogger("arc_fast")


class CheckpointError(ValueError):
    """A checkpoint that does not match its config (missing/unexpected keys, wrong shapes, unreadable file)."""


# ------------------------------------------------------------------------------------------------------
# Reading files
# ------------------------------------------------------------------------------------------------------
class _Opaque(dict):
    """Stands in for any pickled object whose class is not a tensor type. It accepts every way pickle rebuilds
    an object (call, __new__, state, items, appends) and only stores what it is given: no code from the file,
    and no method of a real class, ever runs on it."""

    opaque_name = "?"

    def __init__(self, *args, **kwargs):  # noqa: D401 - swallow constructor arguments
        super().__init__()
        self.__dict__["_args"] = args

    def __setstate__(self, state):
        self.__dict__["_state"] = state

    def append(self, item):
        self.__dict__.setdefault("_items", []).append(item)

    def extend(self, items):
        self.__dict__.setdefault("_items", []).extend(items)

    def add(self, item):
        self.__dict__.setdefault("_items", []).append(item)


class HostilePickleError(pickle.UnpicklingError):
    """A pickle that tries to call, build or patch something an inert load never touches."""


def _allowed_globals() -> dict:
    try:
        from torch._weights_only_unpickler import _get_allowed_globals
        return dict(_get_allowed_globals())
    except Exception:  # noqa: BLE001 - private API: fall back to the few globals plain tensors need
        import collections

        import torch._utils as tu
        names = {"collections.OrderedDict": collections.OrderedDict, "torch._utils._rebuild_tensor_v2":
                 tu._rebuild_tensor_v2, "torch._utils._rebuild_parameter": tu._rebuild_parameter,
                 "torch.Size": torch.Size, "torch.device": torch.device}
        return names


def _reconstructor(cls, base, state=None):
    return cls() if isinstance(cls, type) and issubclass(cls, _Opaque) else _Opaque()


def _is_placeholder_class(obj) -> bool:
    return isinstance(obj, type) and issubclass(obj, _Opaque)


def _describe(obj) -> str:
    if isinstance(obj, type):
        return f"the class {obj.__module__}.{obj.__qualname__}"
    return f"a {type(obj).__module__}.{type(obj).__qualname__} object"


class _InertUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its opcodes can be overridden one by one
    """Unpickler for foreign training checkpoints: tensors are rebuilt through torch's allow-list of globals;
    every other global becomes a fresh ``_Opaque`` placeholder class. The opcodes that call, build or fill an
    object only ever reach placeholders, the allow-list or plain containers: BUILD (``__setstate__`` /
    attribute writes) on anything else, and the copyreg extension registry, are refused with
    ``HostilePickleError``. Subclassed per load (``_inert_pickle_module``) so each load has its own tallies."""

    allowed: dict = {}
    allowed_ids: frozenset = frozenset()
    skipped: dict = {}
    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module, name):
        key = f"{module}.{name}"
        if key in self.allowed:
            return self.allowed[key]
        if key == "copyreg._reconstructor":
            return _reconstructor
        type(self).skipped[key] = type(self).skipped.get(key, 0) + 1
        return type(str(name), (_Opaque,), {"opaque_name": key})

    def _callable(self, func, what: str):
        if _is_placeholder_class(func) or func is _reconstructor or id(func) in self.allowed_ids:
            return func
        raise HostilePickleError(f"{what} of {_describe(func)} refused (not a tensor type or a placeholder)")

    def _load_reduce(self):
        args = self.stack.pop()
        self.stack[-1] = self._callable(self.stack[-1], "call")(*args)
    dispatch[pickle.REDUCE[0]] = _load_reduce

    def _load_newobj(self):
        args = self.stack.pop()
        cls = self._callable(self.stack.pop(), "creation")
        self.append(cls.__new__(cls, *args))
    dispatch[pickle.NEWOBJ[0]] = _load_newobj

    def _load_newobj_ex(self):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self._callable(self.stack.pop(), "creation")
        self.append(cls.__new__(cls, *args, **kwargs))
    dispatch[pickle.NEWOBJ_EX[0]] = _load_newobj_ex

    def _instantiate(self, klass, args):
        return super()._instantiate(self._callable(klass, "creation"), args)

    def _load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, _Opaque):
            inst.__dict__["_state"] = state  # kept, never applied
        elif _is_placeholder_class(inst):
            pass  # a fresh class made for this load: its state means nothing
        elif type(inst) is torch.Tensor:  # legacy tensors (as torch's weights_only unpickler)
            inst.set_(*state)
        elif type(inst) is torch.nn.Parameter:
            inst.__setstate__(state)
        elif type(inst) is OrderedDict and isinstance(state, dict) and all(type(k) is str for k in state):
            inst.__dict__.update(state)  # a state dict's ``_metadata``
        else:
            raise HostilePickleError(f"setting the state of {_describe(inst)} refused (a pickle may only build "
                                     f"tensors and placeholders)")
    dispatch[pickle.BUILD[0]] = _load_build

    def _container(self, obj, what: str):
        if isinstance(obj, type):
            raise HostilePickleError(f"{what} on {_describe(obj)} refused")
        return obj

    def _extend(self, items) -> None:
        target = self._container(self.stack[-1], "append")
        if not isinstance(target, (list, _Opaque)):
            raise HostilePickleError(f"append on {_describe(target)} refused")
        target.extend(items)

    def _load_appends(self):
        self._extend(self.pop_mark())
    dispatch[pickle.APPENDS[0]] = _load_appends

    def _load_append(self):
        self._extend([self.stack.pop()])
    dispatch[pickle.APPEND[0]] = _load_append

    def _load_setitems(self):
        items = self.pop_mark()
        target = self._container(self.stack[-1], "item assignment")
        if not isinstance(target, dict):
            raise HostilePickleError(f"item assignment on {_describe(target)} refused")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]
    dispatch[pickle.SETITEMS[0]] = _load_setitems

    def _load_setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        target = self._container(self.stack[-1], "item assignment")
        if not isinstance(target, dict):
            raise HostilePickleError(f"item assignment on {_describe(target)} refused")
        target[key] = value
    dispatch[pickle.SETITEM[0]] = _load_setitem

    def _load_additems(self):
        items = self.pop_mark()
        target = self._container(self.stack[-1], "set update")
        if isinstance(target, set):
            target.update(items)
        elif isinstance(target, _Opaque):
            target.extend(items)
        else:
            raise HostilePickleError(f"set update on {_describe(target)} refused")
    dispatch[pickle.ADDITEMS[0]] = _load_additems

    def _refuse_extension(self):
        raise HostilePickleError("copyreg extension codes refused (they name globals outside the file)")
    for _op in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = _refuse_extension
    del _op


def _inert_pickle_module() -> types.ModuleType:
    allowed = _allowed_globals()
    unpickler = type("_InertUnpicklerForOneLoad", (_InertUnpickler,),
                     {"allowed": allowed, "allowed_ids": frozenset(map(id, allowed.values())), "skipped": {}})
    mod = types.ModuleType("arc_fast_inert_pickle")
    mod.Unpickler = unpickler
    mod.load = lambda f, **kw: unpickler(f, **kw).load()
    mod.Pickler = pickle.Pickler
    mod.skipped = unpickler.skipped
    return mod


def _is_safetensors(path: str) -> bool:
    """By content, not name: an 8-byte little-endian header size, then a JSON object."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return path.endswith(".safetensors")
    if len(head) < 9:
        return path.endswith(".safetensors")
    size = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < size < os.path.getsize(path)


def weights_only_reason(exc: BaseException) -> str:
    """The one informative line of a ``torch.load(weights_only=True)`` refusal (which global or opcode), without
    the paragraph of advice around it."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines[1:]:
        if not ln.startswith(("Check the documentation", "Please file an issue", "(1)", "(2)", "In PyTorch")):
            return ln.replace("WeightsUnpickler error: ", "")[:300]
    return lines[0][:300] if lines else exc.__class__.__name__


#: First line of a checkpoint pointer file (the trainer's ``last.pt``): the next line names the checkpoint.
POINTER_MAGIC = b"arc-fast checkpoint pointer v1\n"


def resolve_pointer(path: str) -> str:
    """``path`` itself, or, when it is a checkpoint pointer file, the file it names (a name in the same folder).

    Raises CheckpointError for a malformed pointer and FileNotFoundError when the named file is gone."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(POINTER_MAGIC) + 1024)
    except OSError:
        return path
    if not head.startswith(POINTER_MAGIC):
        return path
    name = head[len(POINTER_MAGIC):].decode("utf-8", "replace").strip()
    if not name or "\n" in name or name in (".", "..") or "/" in name or "\\" in name:
        raise CheckpointError(f"{path}: malformed checkpoint pointer (expected one file name in the same folder)")
    target = os.path.join(os.path.dirname(path), name)
    if not os.path.isfile(target):
        raise FileNotFoundError(f"{path} points to {name}, which is missing (resume from another step-*.pt file)")
    return target


def write_atomic(path: str, write, binary: bool = True) -> None:
    """Replace ``path`` with what ``write(f)`` writes to an open file, atomically: a temporary file beside
    ``path`` (same file system), flushed and fsynced, renamed over it, the rename made durable. ``path`` is
    either its old content or the whole new one; the temporary file is removed on any failure."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(directory)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_pointer(path: str, target: str) -> None:
    """Atomically make ``path`` a pointer to ``target`` (a file in the same folder): written beside, fsynced,
    renamed over ``path``. Unlike a hard link, damaging one file never damages the other."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.dirname(os.path.abspath(target)) != directory:
        raise ValueError(f"a checkpoint pointer must name a file in its own folder, got {target}")
    write_atomic(path, lambda f: f.write(POINTER_MAGIC + os.path.basename(target).encode() + b"\n"))


def fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_file(path: str) -> tuple[tp.Any, dict, list[str]]:
    """The stored object of a checkpoint file, its safetensors metadata ({} for pickles), and notes.
    A checkpoint pointer (the trainer's ``last.pt``) is followed to the file it names.

    ``.safetensors`` -> a flat {key: tensor}; ``.ckpt``/``.pt``/``.pth``/``.bin`` -> whatever was pickled
    (tensors on the CPU). Raises FileNotFoundError / CheckpointError (unreadable) with the path."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    notes: list[str] = []
    target = resolve_pointer(path)
    if target != path:
        notes.append(f"{os.path.basename(path)} points to {os.path.basename(target)}")
        path = target
    if _is_safetensors(path):
        try:
            from safetensors import safe_open
            from safetensors.torch import load_file
            with safe_open(path, framework="pt") as f:
                metadata = dict(f.metadata() or {})
            return load_file(path), metadata, notes
        except Exception as exc:  # noqa: BLE001 - one clear error for any decoding failure
            raise CheckpointError(f"cannot read checkpoint {path}: {exc.__class__.__name__}: {exc}") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True), {}, notes
    except pickle.UnpicklingError:
        pass  # holds non-tensor Python objects: re-read with inert placeholders below
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.__class__.__name__}: {exc}") from exc
    try:
        mod = _inert_pickle_module()
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=mod)
    except HostilePickleError as exc:
        raise CheckpointError(f"refused checkpoint {path}: {exc}; nothing from the file was run") from exc
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.__class__.__name__}: {exc}") from exc
    skipped = sorted(mod.skipped)
    notes.append(f"{os.path.basename(path)}: skipped {len(skipped)} kind(s) of pickled non-tensor objects "
                 f"(training state such as {', '.join(skipped[:3])}); no code from the file was run")
    return obj, {}, notes


# ------------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------------
def _fsync_file(path: str) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def save_safetensors(sd: dict, path: str, metadata: dict | None = None) -> None:
    """Write ``sd`` (CPU tensors, made contiguous; shared storages copied) atomically to ``path``: a temporary
    file beside it, fsynced, renamed over it."""
    from safetensors.torch import save_file
    seen: set = set()
    clean = {}
    for k, v in sd.items():
        t = v.detach().cpu().contiguous()
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        elif ptr is not None:
            seen.add(ptr)
        clean[k] = t
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp")
    try:
        save_file(clean, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()})
        _fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(directory)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_json(obj, path: str) -> None:
    """Write JSON atomically (``write_atomic``)."""
    write_atomic(path, lambda f: json.dump(obj, f, indent=2), binary=False)


def staging_dir(target: str) -> str:
    """A new hidden folder beside the folder ``target`` (same file system, so renames into place are atomic);
    its parent is created if missing."""
    import tempfile
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(target))}.arc-fast-", dir=parent)


def install_folder(staged: str, target: str, replaced: tp.Iterable[str] = ()) -> None:
    """Move the complete files of ``staged`` (a ``staging_dir``) into the folder ``target`` and remove
    ``staged``. A missing ``target`` is the renamed ``staged`` (one atomic rename). Otherwise the files named
    in ``replaced`` (the old model) are first moved aside into a backup folder beside ``target``, the new files
    moved in, and the backup deleted only then; if any move fails, the new files are taken out and the old
    ones put back before the error propagates, so ``target`` holds the old model or the whole new one."""
    import shutil
    target = os.path.abspath(target)
    parent = os.path.dirname(target)
    fsync_dir(staged)
    if not os.path.exists(target):
        os.rename(staged, target)
        fsync_dir(parent)
        return
    names = sorted(os.listdir(staged))
    backup = staging_dir(target)
    old_moved: list[str] = []
    new_moved: list[str] = []
    try:
        for name in replaced:
            os.replace(os.path.join(target, name), os.path.join(backup, name))
            old_moved.append(name)
        for name in names:
            os.replace(os.path.join(staged, name), os.path.join(target, name))
            new_moved.append(name)
        fsync_dir(target)
    except BaseException:
        for name in reversed(new_moved):
            os.replace(os.path.join(target, name), os.path.join(staged, name))
        for name in reversed(old_moved):
            os.replace(os.path.join(backup, name), os.path.join(target, name))
        fsync_dir(target)
        os.rmdir(backup)  # empty again; if a move back failed, the old files stay there and this is not reached
        raise
    shutil.rmtree(backup)
    shutil.rmtree(staged, ignore_errors=True)
