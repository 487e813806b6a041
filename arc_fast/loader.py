"""Reading and writing Stable Audio checkpoints in every layout in use, strictly.

Layouts read (``resolve_layout``), all mapped to the *unwrapped inference layout* that ``load_pipeline`` and
``arc-fast convert`` write::

    model.model.*          DiT (DiTWrapper.model = DiffusionTransformer)
    pretransform.model.*   Oobleck autoencoder (AutoencoderPretransform.model)
    conditioner.*          conditioners (number embedders, projections; the frozen T5 is not in a checkpoint)

* unwrapped ``.safetensors`` / ``.ckpt`` (what Stable Audio releases and ``unwrap_model.py`` write);
* Lightning training checkpoints (``{"state_dict": ...}``) of the diffusion and ARC training wrappers:
  ``diffusion.*`` is the model; ``diffusion_ema.ema_model.*`` (the EMA copy of ``diffusion.model``) replaces
  the DiT when present (``ema=False`` keeps the online weights); ARC's ``discriminator.*`` /
  ``discriminator_head.*``, a ``teacher_model.*``, a ``clap_model.*`` and EMA bookkeeping are ignored, each
  with a note, and mark the checkpoint as ARC post-trained;
* the arc_fast ARC trainer's ``checkpoints/*.pt`` (``G``, ``D``, ``ema``, optimiser state): the EMA generator
  is the DiT; the autoencoder and conditioner come from the model the run started from (``base_model``);
* single-component files (``read_component``): a DiT alone (plain ``DiffusionTransformer`` keys or any of
  the prefixes above) or an autoencoder alone (plain ``encoder.*``/``decoder.*``, ``pretransform.model.*``,
  or a Lightning autoencoder training checkpoint with ``autoencoder.*`` / ``autoencoder_ema.ema_model.*``).

Pickled checkpoints are read with ``torch.load(weights_only=True)``; when a training checkpoint also holds
pickled Python objects (Lightning callbacks, NumPy RNG states, ...), it is re-read with an unpickler that
builds tensors as usual but turns every other class into an inert placeholder: no code from the file runs,
and a pickle that tries to set the state of a real class or object (BUILD / ``__setstate__``), to fill a
class, or to use the copyreg extension registry is refused (``CheckpointError`` "refused checkpoint ...").

Loading is strict (``check_state_dict``): every missing, unexpected or mis-shaped key is named. One exception:
a checkpoint with *no* encoder weights at all loads (text-to-audio needs only the decoder) and says so;
audio-to-audio then reports that the encoder is missing.

The int8 DiT (``Int8Linear`` and its export format) lives in ``arc_fast.int8``; its names still import from
here.
"""
from __future__ import annotations

import json
import logging
import os
import typing as tp
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

from .configs import check_config
from .files import (POINTER_MAGIC, CheckpointError, HostilePickleError, fsync_dir,  # noqa: F401 - public here too
                    read_file, resolve_pointer, save_json, save_safetensors, weights_only_reason, write_pointer)

logger = logging.getLogger("arc_fast")

#: Stable Audio's unwrapped checkpoint layout: component -> key prefix.
PREFIXES = {"dit": "model.model.", "autoencoder": "pretransform.model.", "conditioner": "conditioner."}
COMPONENT_NAMES = {"dit": "DiT (model.model.*)", "autoencoder": "autoencoder (pretransform.model.*)",
                   "conditioner": "conditioner (conditioner.*)"}

# Training-only modules of the Stable Audio Lightning wrappers: never part of an inference model.
_IGNORED_TRAINING = (
    ("discriminator_head.", "ARC discriminator head"),
    ("discriminator.", "discriminator"),
    ("teacher_model.", "teacher model"),
    ("clap_model.", "CLAP model"),
    ("losses_gen.", "generator losses"),
    ("losses_disc.", "discriminator losses"),
    ("eval_losses.", "evaluation losses"),
)
# Prefixes that mark a checkpoint as coming out of ARC post-training.
_ARC_PREFIXES = ("discriminator_head.", "discriminator.model.")


# Layouts
# ------------------------------------------------------------------------------------------------------
@dataclass
class ResolvedCheckpoint:
    """A checkpoint mapped to the unwrapped inference layout.

    state_dict: {key: tensor} with the ``PREFIXES`` keys; notes: what was chosen or ignored (EMA, discriminator,
    ...); kind: 'unwrapped' | 'lightning' | 'arc-lightning' | 'arc_fast-trainer'; arc_post_trained: True/False
    when the file says so (ARC training keys, arc_fast metadata), else None; base_model: for arc_fast
    trainer checkpoints, the model folder the run started from (None = the bundled default)."""
    state_dict: dict
    notes: list = field(default_factory=list)
    kind: str = "unwrapped"
    arc_post_trained: tp.Optional[bool] = None
    arc_evidence: tp.Optional[str] = None
    base_model: tp.Optional[str] = None
    needs_base: bool = False
    metadata: dict = field(default_factory=dict)


def _metadata_arc(metadata: dict) -> tp.Optional[bool]:
    raw = metadata.get("arc_fast")
    if not raw:
        return None
    try:
        info = json.loads(raw)
    except (TypeError, ValueError):
        return None
    v = info.get("arc_post_trained") if isinstance(info, dict) else None
    return bool(v) if v is not None else None


def _tensors(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def resolve_layout(obj, metadata: dict | None = None, ema: bool | None = None,
                   source: str = "checkpoint") -> ResolvedCheckpoint:
    """Map a checkpoint object (from ``read_file``) to the unwrapped layout. ``ema``: None = use EMA weights
    when the file has them, True = require them, False = use the online weights. Raises CheckpointError."""
    metadata = metadata or {}
    notes: list[str] = []
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source} does not hold a state dict (found {type(obj).__name__})")

    # arc_fast's own ARC trainer checkpoint.
    if "format" in obj and "ema" in obj and "G" in obj and "config" in obj:
        if obj.get("fsdp"):
            raise CheckpointError(f"{source} is an FSDP-sharded trainer checkpoint: export it with the trainer "
                                  f"(export_on_finish) or resume it with the same world size")
        use_ema = ema is not False
        dit_sd = _tensors((obj["ema"] or {}) if use_ema else obj["G"])
        if ema and not dit_sd:
            raise CheckpointError(f"EMA weights were asked for (ema=True) but {source} has none (its 'ema' entry "
                                  f"is empty): leave ema unset, or pass ema=False for the online generator")
        n_d = len(obj.get("D") or {})
        notes.append(f"arc_fast ARC trainer checkpoint (step {obj.get('step')}): using the "
                     f"{'EMA generator' if use_ema else 'online generator G (ema=False)'}; the discriminator "
                     f"({n_d} tensors) and optimiser state are ignored")
        cfg = obj.get("config") if isinstance(obj.get("config"), dict) else {}
        return ResolvedCheckpoint({PREFIXES["dit"] + k: v for k, v in dit_sd.items()}, notes, "arc_fast-trainer",
                                  True, "an arc_fast ARC trainer checkpoint", cfg.get("model"), True, metadata)

    sd = obj["state_dict"] if isinstance(obj.get("state_dict"), dict) else obj
    tensors = _tensors(sd)
    if not tensors:
        raise CheckpointError(f"{source} holds no tensors")
    arc = _metadata_arc(metadata)
    evidence = "the checkpoint's arc_fast metadata" if arc is not None else None
    if not any(k.startswith("diffusion.") for k in tensors):
        if ema:
            raise CheckpointError(f"EMA weights were asked for (ema=True) but {source} has none: it is an "
                                  f"unwrapped inference checkpoint (one set of weights, no diffusion_ema.* keys); "
                                  f"leave ema unset or pass ema=False")
        return ResolvedCheckpoint(tensors, notes, "unwrapped", arc, evidence, metadata=metadata)

    out: dict = {}
    ema_sd: dict = {}
    ignored: Counter = Counter()
    for k, v in tensors.items():
        if k.startswith("diffusion_ema."):
            rest = k[len("diffusion_ema."):]
            if rest.startswith("ema_model."):
                # ema_model is a copy of diffusion.model (the DiTWrapper): its keys continue with 'model.'.
                ema_sd["model." + rest[len("ema_model."):]] = v
            else:
                ignored["EMA bookkeeping / online copy"] += 1
        elif k.startswith("diffusion."):
            out[k[len("diffusion."):]] = v
        else:
            for prefix, what in _IGNORED_TRAINING:
                if k.startswith(prefix):
                    ignored[what] += 1
                    break
            else:
                out[k] = v  # not a known training module: the strict check names it
    is_arc = any(k.startswith(_ARC_PREFIXES) for k in tensors)
    kind = "arc-lightning" if is_arc else "lightning"
    if ema_sd and ema is not False:
        online = [k for k in out if k.startswith(PREFIXES["dit"])]
        for k in online:
            del out[k]
        out.update(ema_sd)
        notes.append(f"using the EMA DiT weights (diffusion_ema.ema_model.*, {len(ema_sd)} tensors) instead of "
                     f"the online ones; ema=False / --no-ema keeps the online weights")
    elif ema_sd:
        notes.append("EMA weights present but not used (ema=False)")
    elif ema:
        raise CheckpointError(f"EMA weights were asked for (ema=True) but {source} has none (no "
                              f"diffusion_ema.ema_model.* keys): leave ema unset or pass ema=False")
    for what, n in sorted(ignored.items()):
        notes.append(f"ignored {n} {what} tensor(s) (training only)")
    if is_arc:
        arc, evidence = True, "an ARC training checkpoint (discriminator weights present)"
    return ResolvedCheckpoint(out, notes, kind, arc, evidence, metadata=metadata)


def read_checkpoint(path: str, ema: bool | None = None) -> dict[str, torch.Tensor]:
    """Tensors of any supported checkpoint file in the unwrapped inference layout (see module docstring)."""
    obj, metadata, _ = read_file(path)
    return resolve_layout(obj, metadata, ema, source=path).state_dict


def read_resolved(path: str, ema: bool | None = None) -> ResolvedCheckpoint:
    """``read_file`` + ``resolve_layout`` with the file's notes included."""
    obj, metadata, notes = read_file(path)
    res = resolve_layout(obj, metadata, ema, source=path)
    res.notes = notes + res.notes
    return res


def _strip(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def read_component(path: str, component: str, ema: bool | None = None) -> ResolvedCheckpoint:
    """One component from its own file, returned with the full-layout prefix (``PREFIXES[component]``).

    component 'dit': plain DiffusionTransformer keys, ``model.*`` (DiTWrapper), ``model.model.*`` or any
    wrapped layout; ``conditioner.*`` keys in the same file come along (``convert --split`` writes them there).
    component 'autoencoder': plain ``encoder.*``/``decoder.*``, ``pretransform.model.*``, or a Lightning
    autoencoder training checkpoint (``autoencoder.*``; ``autoencoder_ema.ema_model.*`` preferred)."""
    if component not in ("dit", "autoencoder"):
        raise ValueError(f"component must be 'dit' or 'autoencoder', got {component!r}")
    obj, metadata, notes = read_file(path)
    prefix = PREFIXES[component]
    if component == "autoencoder" and isinstance(obj, dict):
        raw = _tensors(obj["state_dict"] if isinstance(obj.get("state_dict"), dict) else obj)
        if any(k.startswith("autoencoder.") for k in raw):
            ema_part = _strip(raw, "autoencoder_ema.ema_model.")
            if ema_part and ema is not False:
                part = ema_part
                notes.append(f"{os.path.basename(path)}: using the autoencoder's EMA weights "
                             f"(autoencoder_ema.ema_model.*)")
            else:
                part = _strip(raw, "autoencoder.")
            n_other = sum(1 for k in raw if not k.startswith(("autoencoder.", "autoencoder_ema.")))
            if n_other:
                notes.append(f"{os.path.basename(path)}: ignored {n_other} autoencoder-training tensor(s) "
                             f"(discriminator, losses)")
            return ResolvedCheckpoint({prefix + k: v for k, v in part.items()}, notes, "autoencoder-lightning",
                                      metadata=metadata)
    # ema=True requires EMA weights for the DiT; an autoencoder file takes its EMA weights only where it has them.
    res = resolve_layout(obj, metadata, None if (component == "autoencoder" and ema) else ema, source=path)
    res.notes = notes + res.notes
    sd = res.state_dict
    if component == "dit":
        part = {k: v for k, v in sd.items() if k.startswith((prefix, PREFIXES["conditioner"]))}
        if not any(k.startswith(prefix) for k in part):
            if all(k.startswith("model.") for k in sd):
                part = {"model." + k: v for k, v in sd.items()}  # DiTWrapper level
            else:
                part = {prefix + k: v for k, v in sd.items()}
    else:
        part = {k: v for k, v in sd.items() if k.startswith(prefix)}
        if not part:
            part = {prefix + k: v for k, v in sd.items()}
    res.state_dict = part
    return res


# ------------------------------------------------------------------------------------------------------
# Models from a config, strict checks
# ------------------------------------------------------------------------------------------------------
class _skip_init:
    """Makes ``torch.nn.init`` functions no-ops: modules built inside hold uninitialised memory, to be
    replaced by checkpoint tensors (``load_state_dict(assign=True)``). Large untouched allocations are not
    even committed by the OS, so building a 1B-parameter model this way costs neither time nor memory."""
    NAMES = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
             "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_")

    def __enter__(self):
        self.saved = {n: getattr(nn.init, n) for n in self.NAMES if hasattr(nn.init, n)}
        for n in self.saved:
            setattr(nn.init, n, lambda tensor, *a, **k: tensor)
        return self

    def __exit__(self, *exc):
        for n, f in self.saved.items():
            setattr(nn.init, n, f)
        return False


def build_models(config: dict, meta: bool = False, parts: tuple = ("dit", "autoencoder", "conditioner"),
                 init: bool = True) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(dit, autoencoder, conditioner) from a Stable Audio ``diffusion_cond`` config (DiT + Oobleck).

    ``meta=True`` builds the DiT and the autoencoder on the meta device (shapes only); ``init=False`` builds
    them on the CPU without initialising the weights (for ``load_state_dict(assign=True)``). The conditioner
    is always real and initialised (it may load a local T5). Components not in ``parts`` are None."""
    from .reference.autoencoder import autoencoder_from_config
    from .reference.conditioners import conditioner_from_config
    from .reference.dit import DiffusionTransformer

    check_config(config)  # every field used below, by name (ValueError)
    m = config["model"]
    diff = m["diffusion"]
    dit_cfg = dict(diff["config"])
    dit_cfg.setdefault("diffusion_objective", diff.get("diffusion_objective", "v"))
    ctx = torch.device("meta") if meta else (_nullcontext() if init else _skip_init())
    with ctx:
        dit = DiffusionTransformer(**dit_cfg) if "dit" in parts else None
        autoencoder = autoencoder_from_config(m["pretransform"]) if "autoencoder" in parts else None
    conditioner = conditioner_from_config(m["conditioning"]) if "conditioner" in parts else None
    return dit, autoencoder, conditioner


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def full_state_dict(dit: nn.Module, autoencoder: nn.Module, conditioner: nn.Module) -> dict[str, torch.Tensor]:
    """The Stable Audio unwrapped layout (``PREFIXES``) of the three components' state dicts."""
    sd = {}
    for name, mod in (("dit", dit), ("autoencoder", autoencoder), ("conditioner", conditioner)):
        for k, v in mod.state_dict().items():
            sd[PREFIXES[name] + k] = v
    return sd


def _list(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (" ..." if len(keys) > n else "")


def _kind(dtype: torch.dtype) -> str:
    """The kind of values a dtype holds: a checkpoint tensor must hold the kind the model's does (float
    weights may come in any float precision; int8 is the int8 DiT layout, not a number kind)."""
    if dtype == torch.int8:
        return "int8"
    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    return "float" if dtype.is_floating_point else "integer"


def _both(got: torch.Tensor, own: torch.Tensor) -> str:
    return f"checkpoint {got.dtype} {tuple(got.shape)} vs model {own.dtype} {tuple(own.shape)}"


def loadable(got: torch.Tensor, own: torch.Tensor) -> bool:
    """Whether a checkpoint tensor can take a model tensor's place: same shape, same kind of values."""
    return tuple(got.shape) == tuple(own.shape) and _kind(got.dtype) == _kind(own.dtype)


@dataclass
class CheckReport:
    """Result of ``check_state_dict``: per-component sub-state-dicts (prefix stripped), problems (one line
    each, key names included), components with missing/mis-shaped keys, and whether encoder weights are absent."""
    parts: dict
    problems: list
    incomplete: set
    no_encoder: bool = False


def check_state_dict(modules: dict[str, nn.Module], sd: dict) -> CheckReport:
    """Compare a full-layout state dict with the modules (real or meta): missing, unexpected, mis-shaped and
    mis-typed keys per component (each named with both dtypes and shapes, one line per problem: an int32,
    bool or complex tensor where the model has float weights is refused here, not by a kernel), and keys
    outside the layout. A missing encoder (every ``encoder.*`` key absent) is
    tolerated and reported as ``no_encoder``."""
    parts = {name: {} for name in PREFIXES}
    leftover = []
    for k, v in sd.items():
        for name, prefix in PREFIXES.items():
            if k.startswith(prefix):
                parts[name][k[len(prefix):]] = v
                break
        else:
            leftover.append(k)
    problems: list[str] = []
    incomplete: set = set()
    no_encoder = False
    for name, module in modules.items():
        own = module.state_dict()
        got = parts[name]
        missing = [k for k in own if k not in got]
        if name == "autoencoder" and missing:
            enc = [k for k in own if k.startswith("encoder.")]
            if enc and all(k in missing for k in enc) and not any(k.startswith("encoder.") for k in got):
                no_encoder = True
                missing = [k for k in missing if not k.startswith("encoder.")]
        unexpected = [k for k in got if k not in own]
        shape = [f"{k}: {_both(got[k], own[k])}" for k in own
                 if k in got and tuple(got[k].shape) != tuple(own[k].shape)]
        kinds = [f"{k}: {_both(got[k], own[k])}" for k in own
                 if k in got and _kind(got[k].dtype) != _kind(own[k].dtype)]
        label = COMPONENT_NAMES[name]
        if missing:
            hint = ""
            if len(missing) == len(own) - (sum(1 for k in own if k.startswith("encoder.")) if no_encoder else 0):
                hint = (f" (the checkpoint has no {name} weights at all"
                        + (": give the autoencoder file (autoencoder=... / --autoencoder)" if name == "autoencoder"
                           else ": give the DiT file (dit=... / --dit)" if name == "dit" else "") + ")")
            problems.append(f"{label}: missing {len(missing)} key(s){hint}: {_list(missing)}")
            incomplete.add(name)
        if unexpected:
            problems.append(f"{label}: unexpected {len(unexpected)} key(s): {_list(unexpected)}")
        if shape:
            problems.append(f"{label}: shape mismatch: {'; '.join(shape[:4])}")
            incomplete.add(name)
        if kinds:
            problems.append(f"{label}: dtype mismatch: {'; '.join(kinds[:4])}")
            incomplete.add(name)
    if leftover:
        problems.append(f"unused key(s) outside the model layout: {_list(leftover)}")
    return CheckReport(parts, problems, incomplete, no_encoder)


def refresh_weight_norm(module: nn.Module) -> None:
    """Recompute the ``weight`` attribute of legacy weight-normed convs from ``weight_g``/``weight_v`` (after
    ``load_state_dict(assign=True)`` it still holds the old tensor). Computed without grad, so the module
    can be deep-copied (a weight computed with grad is a non-leaf, which ``copy.deepcopy`` refuses)."""
    with torch.no_grad():
        for m in module.modules():
            for hook in list(m._forward_pre_hooks.values()):
                if type(hook).__name__ == "WeightNorm":
                    hook(m, None)


# ------------------------------------------------------------------------------------------------------
# Moved to arc_fast.int8 (imported on first use: arc_fast.int8 itself imports this module)
# ------------------------------------------------------------------------------------------------------
_INT8_NAMES = ("INT8_SCALE", "Int8Linear", "int8_linear_names", "quantize_dit_state_dict", "apply_int8_layout")


def __getattr__(name):
    if name in _INT8_NAMES:
        from . import int8
        return getattr(int8, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
