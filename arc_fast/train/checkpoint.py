"""ARC trainer checkpoints: what a checkpoint holds, how it is written (atomically, rank 0) and read back
(``torch.load(weights_only=True)``; format-1 files through the loader's inert unpickler), and the checks that
name what does not match on resume. ``CheckpointingMixin`` gives ``ARCTrainer`` its ``save_checkpoint`` /
``load_checkpoint``; the file format is described in ``arc_fast/train/trainer.py``'s docstring and docs/train.md.
"""
from __future__ import annotations

import os
import pickle
import random
import warnings

import numpy as np
import torch

from ..loader import (CheckpointError, fsync_dir, read_file, resolve_pointer, weights_only_reason,
                      write_pointer)
from . import distributed as D

CHECKPOINT_FORMAT = 2  # 2: weights_only-loadable (NumPy RNG state as a tensor); 1: NumPy arrays pickled
_READABLE_FORMATS = (1, 2)
# What every checkpoint holds (load_checkpoint names the missing ones instead of failing on the first).
_REQUIRED = ("format", "step", "ema_updates", "config", "world_size", "fsdp", "opt_g", "opt_d", "sched_g", "sched_d",
             "scaler_g", "scaler_d", "ranks", "G", "D", "ema")
# Config fields that may change across a resume without changing the training trajectory.
_RESUME_FREE = {"steps", "log_every", "ckpt_every", "keep_checkpoints", "progress", "tensorboard", "export_dir",
                "export_on_finish", "out_dir", "num_workers", "model", "data"}


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    # NumPy's state as plain values and a tensor: the checkpoint stays torch.load(weights_only=True)-loadable.
    numpy_state = {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state,
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _legacy_numpy_array(obj) -> np.ndarray:
    """A uint32 NumPy array that the loader's inert unpickler kept as a placeholder (format-1 checkpoints)."""
    state = getattr(obj, "__dict__", {}).get("_state")
    if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[4], (bytes, bytearray))):
        raise ValueError("the NumPy RNG state is not a pickled array")
    dtype = state[2]
    code = getattr(dtype, "__dict__", {}).get("_args", (None,))[0]
    order = (getattr(dtype, "__dict__", {}).get("_state") or (None, "<"))[1]
    if code != "u4" or order not in ("<", ">", "=", "|"):
        raise ValueError(f"the NumPy RNG state has dtype {code!r}, expected 'u4'")
    return np.frombuffer(bytes(state[4]), dtype=np.dtype(">u4" if order == ">" else "<u4")).reshape(state[1])


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    ns = state["numpy"]
    if isinstance(ns, dict):
        np.random.set_state((ns["kind"], ns["keys"].numpy().astype(np.uint32), ns["pos"], ns["has_gauss"],
                             ns["cached_gaussian"]))
    else:  # format 1: NumPy's own tuple (an array, or the inert unpickler's placeholder of one)
        keys = ns[1] if isinstance(ns[1], np.ndarray) else _legacy_numpy_array(ns[1])
        np.random.set_state((ns[0], keys, *ns[2:]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_save(obj, path: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_checkpoint_file(path: str) -> dict:
    """The state dict of an ARC trainer checkpoint (``last.pt`` pointers followed), read without running code:
    ``torch.load(weights_only=True)``; format-1 checkpoints (pickled NumPy arrays) through the loader's inert
    unpickler. Raises RuntimeError naming the file when it cannot be read or is not a trainer checkpoint."""
    try:
        target = resolve_pointer(path)
    except (CheckpointError, OSError) as exc:
        raise RuntimeError(f"cannot read checkpoint {path}: {exc}") from exc
    try:
        state = torch.load(target, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as refusal:
        try:
            state = read_file(target)[0]
        except (CheckpointError, OSError) as exc:
            raise RuntimeError(f"cannot read checkpoint {path}: {exc}") from exc
        if not (isinstance(state, dict) and state.get("format") == 1):
            raise RuntimeError(f"refused checkpoint {path}: it holds pickled objects other than tensors "
                               f"({weights_only_reason(refusal)}; only format-1 arc_fast checkpoints may); nothing "
                               f"from the file was run") from refusal
    except Exception as exc:  # noqa: BLE001 - any decoding failure is one error naming the file
        raise RuntimeError(f"cannot read checkpoint {path}: {exc.__class__.__name__}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") not in _READABLE_FORMATS:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise RuntimeError(f"{path} is not an arc_fast ARC checkpoint (format {found!r}; readable: "
                           f"{', '.join(map(str, _READABLE_FORMATS))})")
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise RuntimeError(f"checkpoint {path} lacks {', '.join(repr(k) for k in missing)} (an incomplete or foreign "
                           f"file; resume from another step-*.pt)")
    return state


def _shape(t) -> str:
    if not isinstance(t, torch.Tensor):
        return type(t).__name__
    return f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}"


def _check_tensors(path: str, what: str, live: dict, saved) -> None:
    """Raise one line naming every key/shape/dtype difference between ``saved`` and a live state dict, and the
    first non-finite saved tensor."""
    if not isinstance(saved, dict):
        raise RuntimeError(f"checkpoint {path}: {what!r} is a {type(saved).__name__}, expected tensors by name")
    missing = [k for k in live if k not in saved]
    unexpected = [k for k in saved if k not in live]
    wrong = [k for k in live if k in saved and (not isinstance(saved[k], torch.Tensor)
                                                or saved[k].shape != D.local(live[k]).shape
                                                or saved[k].dtype != live[k].dtype)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("; ".join(f"{k}: checkpoint {_shape(saved[k])}, model {_shape(D.local(live[k]))}"
                                   for k in wrong[:3]) + (f" (+{len(wrong) - 3} more)" if len(wrong) > 3 else ""))
        for label, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                parts.append(f"{label} {', '.join(keys[:4])}" + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""))
        raise RuntimeError(f"checkpoint {path}: {what!r} does not fit this run's model: {'; '.join(parts)} (resume "
                           f"with the config and world size the run was started with)")
    for k in live:
        v = saved[k]
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise RuntimeError(f"checkpoint {path}: {what}[{k!r}] holds NaN/Inf values (a damaged file; resume from "
                               f"another step-*.pt)")


def _check_optimizer(path: str, what: str, opt: torch.optim.Optimizer, saved, names: dict) -> None:
    """Raise one line when a saved optimiser state does not fit ``opt`` (group sizes, per-parameter shapes)."""
    if not (isinstance(saved, dict) and isinstance(saved.get("state"), dict)
            and isinstance(saved.get("param_groups"), list)):
        raise RuntimeError(f"checkpoint {path}: {what!r} is not an optimiser state (needs 'state' and 'param_groups')")
    sizes = [len(g["params"]) for g in opt.param_groups]
    saved_sizes = [len(g.get("params", [])) if isinstance(g, dict) else -1 for g in saved["param_groups"]]
    if sizes != saved_sizes:
        raise RuntimeError(f"checkpoint {path}: {what!r} has parameter groups of {saved_sizes} tensors, this run "
                           f"{sizes} (resume with the config the run was started with)")
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, st in saved["state"].items():
        if not (isinstance(i, int) and 0 <= i < len(params) and isinstance(st, dict)):
            raise RuntimeError(f"checkpoint {path}: {what!r} has state for parameter {i!r} of {len(params)}")
        shape = D.local(params[i]).shape
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != shape:
                raise RuntimeError(f"checkpoint {path}: {what} state {k!r} of {names.get(id(params[i]), i)}: "
                                   f"checkpoint {_shape(v)}, parameter {tuple(shape)}")


class CheckpointingMixin:
    """``ARCTrainer``'s checkpoint methods (they use its G, D, EMA, optimisers, schedulers, scalers, RNGs)."""

    def checkpoint_path(self, name: str = "last") -> str:
        return os.path.join(self.cfg.out_dir, "checkpoints", f"{name}.pt")

    def _local_state(self) -> dict:
        return {"rng": _rng_state(), "t_sampler": self.t_sampler.state_dict(), "s_sampler": self.s_sampler.state_dict(),
                "noise_gen": self.noise_gen.get_state()}

    def _model_state(self) -> dict:
        if self.fsdp:  # this rank's shards
            self.G.reshard()
            self.D.reshard()
            return {"G": D.to_local_tree(self.G.state_dict()), "D": D.to_local_tree(self.D.state_dict()),
                    "ema": D.to_local_tree(self.ema_params)}
        return {"G": self.G_raw.state_dict(), "D": self.D_raw.state_dict(), "ema": self.ema.state_dict()}

    def save_checkpoint(self) -> str:
        """Write ``step-XXXXXXXX.pt`` (pruned to ``keep_checkpoints``) and point ``last.pt`` at it, or, with
        ``keep_checkpoints: 0``, ``last.pt`` itself; atomically. Returns the ``last.pt`` path. Rank 0 writes
        (every rank under FSDP, one shard file each); all ranks wait for it."""
        cfg = self.cfg
        ranks = D.gather_objects(self.dist, self._local_state())
        state = {"format": CHECKPOINT_FORMAT, "step": self.step, "ema_updates": self.ema_updates,
                 "config": cfg.to_dict(), "world_size": self.dist.world_size, "fsdp": self.fsdp,
                 "opt_g": D.to_local_tree(self.opt_g.state_dict()), "opt_d": D.to_local_tree(self.opt_d.state_dict()),
                 "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict(),
                 "scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict(),
                 "ranks": ranks, **self._model_state()}
        last = self.checkpoint_path("last")
        writer = self.fsdp or self.dist.is_main
        if writer:
            folder = os.path.dirname(last)
            os.makedirs(folder, exist_ok=True)
            suffix = f".rank{self.dist.rank}" if self.fsdp else ""
            last = last + suffix
            if cfg.keep_checkpoints > 0:
                numbered = os.path.join(folder, f"step-{self.step:08d}.pt{suffix}")
                _atomic_save(state, numbered)
                write_pointer(last, numbered)  # never a hard link: damaging one file must not damage the other
                old = sorted(f for f in os.listdir(folder) if f.startswith("step-") and f.endswith(f".pt{suffix}"))
                for f in old[:-cfg.keep_checkpoints]:
                    os.remove(os.path.join(folder, f))
            else:
                _atomic_save(state, last)
        D.barrier(self.dist)
        self.last_checkpoint = self.checkpoint_path("last")
        self._saved_step = self.step
        return self.last_checkpoint

    def load_checkpoint(self, path: str) -> None:
        """Restore everything ``save_checkpoint`` wrote; the next ``train_step`` continues the saved run.
        ``path`` may be a ``last.pt`` pointer. Any mismatch with this run is one RuntimeError naming the file,
        the entry and the shapes; the weights and optimiser states are all checked before any is changed."""
        if self.fsdp:
            path = f"{path}.rank{self.dist.rank}"
        state = read_checkpoint_file(path)
        if bool(state["fsdp"]) != self.fsdp:
            raise RuntimeError(f"{path} was written with fsdp={state['fsdp']}, this run has fsdp={self.fsdp}")
        if not isinstance(state["config"], dict) or not isinstance(state["ranks"], list) or not state["ranks"]:
            raise RuntimeError(f"checkpoint {path}: 'config' must be a dict and 'ranks' a non-empty list")
        changed = sorted(k for k, v in state["config"].items()
                         if k not in _RESUME_FREE and getattr(self.cfg, k, None) != v)
        if changed:
            warnings.warn(f"resuming with changed settings {changed}: the run will not match an uninterrupted one",
                          RuntimeWarning, stacklevel=2)
        if self.fsdp:
            self.G.reshard()
            self.D.reshard()
            live = {"G": self.G.state_dict(), "D": self.D.state_dict(),
                    "ema": {str(i): p for i, p in enumerate(self.ema_params)}}
            saved_ema = state["ema"]
            if not isinstance(saved_ema, (list, tuple)) or len(saved_ema) != len(self.ema_params):
                raise RuntimeError(f"checkpoint {path}: 'ema' must hold {len(self.ema_params)} local shards")
            saved = {"G": state["G"], "D": state["D"], "ema": {str(i): t for i, t in enumerate(saved_ema)}}
        else:
            live = {"G": self.G_raw.state_dict(), "D": self.D_raw.state_dict(), "ema": self.ema.state_dict()}
            saved = {k: state[k] for k in live}
        for what in live:
            _check_tensors(path, what, live[what], saved[what])
        names = {id(p): n for m in (self.G_raw, self.D_raw) for n, p in m.named_parameters()}
        _check_optimizer(path, "opt_g", self.opt_g, state["opt_g"], names)
        _check_optimizer(path, "opt_d", self.opt_d, state["opt_d"], names)
        try:
            if self.fsdp:
                _load_local_(live["G"], state["G"])
                _load_local_(live["D"], state["D"])
                _load_local_(self.ema_params, list(state["ema"]))
                _load_fsdp_optimizer(self.opt_g, state["opt_g"])
                _load_fsdp_optimizer(self.opt_d, state["opt_d"])
            else:
                self.G_raw.load_state_dict(state["G"])
                self.D_raw.load_state_dict(state["D"])
                self.ema.load_state_dict(state["ema"])
                self.opt_g.load_state_dict(state["opt_g"])
                self.opt_d.load_state_dict(state["opt_d"])
            self._restore_counters(path, state)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise RuntimeError(f"checkpoint {path}: cannot restore the training state ({exc.__class__.__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
        self._batches = None
        self.last_checkpoint = path if not self.fsdp else path.rsplit(".rank", 1)[0]
        self._saved_step = self.step

    def _restore_counters(self, path: str, state: dict) -> None:
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        self.scaler_g.load_state_dict(state["scaler_g"])
        self.scaler_d.load_state_dict(state["scaler_d"])
        self.step, self.ema_updates = int(state["step"]), int(state["ema_updates"])
        if self.step < 0 or self.ema_updates < 0:
            raise ValueError(f"negative step {self.step} / ema_updates {self.ema_updates}")
        ranks = state["ranks"]
        if state["world_size"] == self.dist.world_size:
            local = ranks[self.dist.rank]
            _set_rng_state(local["rng"])
            self.t_sampler.load_state_dict(local["t_sampler"])
            self.s_sampler.load_state_dict(local["s_sampler"])
            self.noise_gen.set_state(local["noise_gen"])
        else:
            warnings.warn(f"checkpoint from {state['world_size']} process(es), now {self.dist.world_size}: random "
                          f"streams are re-seeded from the step (weights and optimisers are restored)", RuntimeWarning,
                          stacklevel=2)
            _seed_all(self.cfg.seed + 1000003 * self.dist.rank + self.step)
            self.noise_gen.manual_seed(self.cfg.seed * 104729 + self.dist.rank + self.step)

    # ----------------------------------------------------------------------------------------- export


@torch.no_grad()
def _load_local_(dst, src) -> None:
    """Copy saved local shards into live (DTensor or plain) tensors of the same structure."""
    if isinstance(dst, dict):
        missing = sorted(set(dst) ^ set(src))
        if missing:
            raise RuntimeError(f"checkpoint shard keys differ from the model's: {missing[:5]}")
        for k in dst:
            _load_local_(dst[k], src[k])
    elif isinstance(dst, (list, tuple)):
        if len(dst) != len(src):
            raise RuntimeError(f"checkpoint shard has {len(src)} tensors, the model {len(dst)}")
        for a, b in zip(dst, src):
            _load_local_(a, b)
    else:
        d = D.local(dst)
        if d.shape != src.shape:
            raise RuntimeError(f"checkpoint shard of shape {tuple(src.shape)} for a local shard of {tuple(d.shape)} "
                               f"(resume FSDP runs with the same number of processes)")
        d.copy_(src)


def _load_fsdp_optimizer(opt: torch.optim.Optimizer, saved: dict) -> None:
    """Restore an AdamW state whose tensors were saved as local shards: rebuild DTensors like the params'."""
    from torch.distributed.tensor import DTensor

    params = [p for g in opt.param_groups for p in g["params"]]
    state = {}
    for i, st in saved["state"].items():
        p = params[int(i)]
        state[i] = {k: (DTensor.from_local(v.to(D.local(p).device), p.device_mesh, p.placements, shape=p.shape,
                                           stride=p.stride())
                        if isinstance(p, DTensor) and isinstance(v, torch.Tensor) and v.dim() > 0 else v)
                    for k, v in st.items()}
    opt.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
