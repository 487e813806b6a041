"""Loading: a model folder or checkpoint files -> a ``Pipeline`` (``load_pipeline``), or seeded random weights
(``build_pipeline``).

``load_pipeline()`` with no argument gives the bundled default model (offline). ``load_pipeline(path)``
takes a model folder (``model_config.json`` + ``model.safetensors`` / ``model.ckpt``, or the split
``dit.safetensors`` + ``autoencoder.safetensors`` that ``arc-fast convert --split`` writes) or one checkpoint
file with ``model_config.json`` beside it, in any layout ``arc_fast.loader`` reads (unwrapped, Lightning
with EMA and discriminator, ARC training, the arc_fast trainer's checkpoints); ``dit=`` / ``autoencoder=``
give components as separate files, ``config=`` the config. Loading is strict: every missing, unexpected or
mis-shaped key is named (``allow_partial=True`` turns them into warnings).

Three steps, each usable alone: ``resolve_model`` (find and read the config and the state dict, decide the
model kind), ``materialize`` (build the modules and load the weights, fp32), ``fast_modules`` (swap in
FastDiT / FastOobleckDecoder, same weights). ``arc_fast.loader`` holds the file formats and key layouts.

The model kind (ARC post-trained or base, which sets the sampler defaults) comes from, in order: the
``arc_post_trained`` argument, the checkpoint (ARC training keys, the arc_fast trainer, arc_fast safetensors
metadata), the config's ``arc_fast.arc_post_trained``, a ``manifest.json`` beside the config
(``{"arc_post_trained": true}``), a ``diffusion_objective`` of ``rf_denoiser`` (Stable Audio's marker for
ARC models); otherwise base.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from .configs import check_config
from .int8 import apply_int8_layout, dequantize_int8_layers
from .loader import (PREFIXES, CheckpointError, build_models, check_state_dict, loadable, read_component,
                     read_resolved, refresh_weight_norm)
from .pipeline import Pipeline, parse_dtype

logger = logging.getLogger("arc_fast")

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
DEFAULT_MODEL_DIR = os.path.join(ASSETS, "default")
CHECKPOINT_NAMES = ("model.safetensors", "model.ckpt", "model.pt", "model.pth")
SPLIT_NAMES = {"dit": "dit.safetensors", "autoencoder": "autoencoder.safetensors"}


def find_checkpoint(directory: str) -> dict[str, str]:
    """The checkpoint files of a model folder: {'main': path} or, for a split folder, {'dit': ..,
    'autoencoder': ..}. Raises FileNotFoundError naming what was looked for, and CheckpointError for a folder
    holding more than one model (say model.safetensors and model.ckpt): which one was meant is not guessed."""
    found = [name for name in CHECKPOINT_NAMES if os.path.isfile(os.path.join(directory, name))]
    split = {k: os.path.join(directory, v) for k, v in SPLIT_NAMES.items()}
    if all(os.path.isfile(p) for p in split.values()):
        found.append(" + ".join(SPLIT_NAMES.values()))
    if len(found) > 1:
        raise CheckpointError(f"{directory} holds more than one model ({' and '.join(found)}): keep one and move "
                              f"the others away, or load a file by name (e.g. {os.path.join(directory, found[0])})")
    if found and found[0] in CHECKPOINT_NAMES:
        return {"main": os.path.join(directory, found[0])}
    if found:
        return split
    raise FileNotFoundError(f"no model.safetensors or model.ckpt (or dit.safetensors + autoencoder.safetensors) "
                            f"in {directory}")


def _find_checkpoint(directory: str) -> str:  # kept for callers of the old name
    found = find_checkpoint(directory)
    return found.get("main") or found["dit"]


def read_config(config) -> dict:
    """A model config from a dict (deep-copied) or a JSON file path, validated field by field
    (``arc_fast.configs.check_config``: ValueError naming the file, the field and the allowed values)."""
    if isinstance(config, dict):
        return check_config(copy.deepcopy(config), "the given model config")
    path = os.fspath(config)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model_config.json not found at {path}")
    with open(path) as f:
        try:
            return check_config(json.load(f), path)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc


@dataclass
class ResolvedModel:
    """Everything ``load_pipeline`` and ``convert_model`` need: the config, one full-layout state dict, the
    notes of what was read, and the model kind with where it came from."""
    config: dict
    state_dict: dict
    notes: list
    arc_post_trained: bool
    arc_source: str
    sources: dict


def _replace_component(sd: dict, part: dict, component: str) -> dict:
    drop = [PREFIXES[component]]
    if component == "dit" and any(k.startswith(PREFIXES["conditioner"]) for k in part):
        drop.append(PREFIXES["conditioner"])
    out = {k: v for k, v in sd.items() if not k.startswith(tuple(drop))}
    out.update(part)
    return out


def resolve_model(model: str | None = None, *, config=None, dit: str | None = None, autoencoder: str | None = None,
                  ema: bool | None = None, arc_post_trained: bool | None = None) -> ResolvedModel:
    """Find and read the config and the checkpoint(s) of a model (see ``load_pipeline``), without building it."""
    notes: list[str] = []
    if model is None and dit is None and autoencoder is None:
        model = DEFAULT_MODEL_DIR
    main = None
    cfg_dir = None
    files: dict[str, str] = {}
    if model is not None:
        model = os.fspath(model)
        if os.path.isdir(model):
            cfg_dir = model
            try:
                files = find_checkpoint(model)
            except FileNotFoundError:
                if dit is None or autoencoder is None:
                    raise
            main = files.get("main")
        elif os.path.isfile(model):
            main, cfg_dir = model, os.path.dirname(os.path.abspath(model))
        else:
            raise FileNotFoundError(f"model not found: {model}")
    else:
        cfg_dir = os.path.dirname(os.path.abspath(dit or autoencoder))
    dit = dit or files.get("dit")
    autoencoder = autoencoder or files.get("autoencoder")

    sd: dict = {}
    evidence: list[tuple[bool, str]] = []
    base = None
    if main is not None:
        res = read_resolved(main, None if (dit is not None and ema) else ema)  # dit= replaces main's DiT
        notes += res.notes
        sd = dict(res.state_dict)
        if res.arc_post_trained is not None:
            evidence.append((res.arc_post_trained, res.arc_evidence or main))
        if res.needs_base:
            base = os.fspath(res.base_model) if res.base_model else DEFAULT_MODEL_DIR
    cfg_source = None
    if config is None:
        path = os.path.join(cfg_dir, "model_config.json")
        if not os.path.isfile(path) and base is not None:
            path = os.path.join(base, "model_config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model_config.json not found at {path} "
                                    f"(give the config with config=... / --config)")
        cfg_source = path
        config = read_config(path)
    else:
        cfg_source = config if isinstance(config, str) else "the given config"
        config = read_config(config)
    if base is not None:
        covered = {c for c in ("autoencoder", "conditioner") if any(k.startswith(PREFIXES[c]) for k in sd)}
        need = {"autoencoder", "conditioner"} - covered
        if autoencoder is not None:
            need.discard("autoencoder")
        if need:
            base_files = find_checkpoint(base)
            base_sd = {}
            if "main" in base_files:
                base_sd = read_resolved(base_files["main"]).state_dict
            else:
                base_sd = {**read_component(base_files["dit"], "dit").state_dict,
                           **read_component(base_files["autoencoder"], "autoencoder").state_dict}
            for c in sorted(need):
                sd.update({k: v for k, v in base_sd.items() if k.startswith(PREFIXES[c])})
            notes.append(f"{' and '.join(sorted(need))} taken from the model the ARC run started from ({base})")
    for component, path in (("dit", dit), ("autoencoder", autoencoder)):
        if path is None:
            continue
        res = read_component(os.fspath(path), component, ema)
        notes += res.notes
        if main is not None and any(k.startswith(PREFIXES[component]) for k in sd):
            notes.append(f"{component} weights from {path} replace those in {main}")
        sd = _replace_component(sd, res.state_dict, component)
        if component == "dit" and res.arc_post_trained is not None:
            evidence.append((res.arc_post_trained, res.arc_evidence or path))

    # Model kind: argument > checkpoint > config > manifest.json > diffusion objective.
    arc_cfg = config.get("arc_fast", {}).get("arc_post_trained")
    manifest = os.path.join(cfg_dir, "manifest.json") if cfg_dir else None
    arc_manifest = None
    if manifest and os.path.isfile(manifest):
        try:
            with open(manifest) as f:
                arc_manifest = json.load(f).get("arc_post_trained")
        except (OSError, ValueError, AttributeError):
            notes.append(f"{manifest} is unreadable: ignored")
    objective = config.get("model", {}).get("diffusion", {}).get("diffusion_objective")
    if arc_post_trained is not None:
        arc, source = bool(arc_post_trained), "the arc_post_trained argument"
    elif evidence:
        arc, source = evidence[-1][0], evidence[-1][1]
    elif arc_cfg is not None:
        arc, source = bool(arc_cfg), f"arc_fast.arc_post_trained in {cfg_source}"
    elif arc_manifest is not None:
        arc, source = bool(arc_manifest), manifest
    elif objective == "rf_denoiser":
        arc, source = True, "diffusion_objective 'rf_denoiser'"
    else:
        arc, source = False, "no ARC marker in the config or checkpoint"
    config.setdefault("arc_fast", {})["arc_post_trained"] = arc
    return ResolvedModel(config, sd, notes, arc, source, {"main": main, "dit": dit, "autoencoder": autoencoder,
                                                          "config": cfg_source})


def _seeded_build(config: dict, parts: tuple):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_models(config, parts=parts)


def materialize(resolved: ResolvedModel, allow_partial: bool = False) -> tuple[nn.Module, nn.Module, nn.Module, list]:
    """Build (dit, autoencoder, conditioner) from a resolved model and load its weights strictly (fp32,
    eval mode, no grad). Components are built without initialisation and take the checkpoint's tensors
    directly; with ``allow_partial``, a component with missing keys is built with seeded random weights."""
    notes: list[str] = []
    config, sd = resolved.config, resolved.state_dict
    dit, ae, cond = build_models(config, init=False)
    dit_sd = {k[len(PREFIXES["dit"]):]: v for k, v in sd.items() if k.startswith(PREFIXES["dit"])}
    n_int8 = apply_int8_layout(dit, dit_sd)
    if n_int8:
        notes.append(f"int8 DiT: {n_int8} linear layers with int8 weights (dynamic int8 GEMM on the CPU)")
    report = check_state_dict({"dit": dit, "autoencoder": ae, "conditioner": cond}, sd)
    if report.problems and not allow_partial:
        raise CheckpointError("checkpoint does not match the config: " + " | ".join(report.problems))
    for p in report.problems:
        warnings.warn(p, RuntimeWarning, stacklevel=3)
    if report.no_encoder:
        ae.encoder = None  # its memory was never initialised: no encoder rather than a garbage one
        notes.append("no encoder weights in the checkpoint: text-to-audio works, audio-to-audio does not")
    modules = {"dit": dit, "autoencoder": ae, "conditioner": cond}
    rebuild = tuple(sorted(report.incomplete & {"dit", "autoencoder"}))
    if rebuild:
        # Missing weights cannot stay on the meta device: those components get seeded random weights.
        real_dit, real_ae, _ = _seeded_build(config, rebuild)
        if real_dit is not None:
            apply_int8_layout(real_dit, dit_sd)
            modules["dit"] = real_dit
        if real_ae is not None:
            if report.no_encoder:
                real_ae.encoder = None
            modules["autoencoder"] = real_ae
    for name in ("dit", "autoencoder", "conditioner"):
        mod = modules[name]
        own = mod.state_dict()
        usable = {k: v for k, v in report.parts[name].items()
                  if k in own and loadable(v, own[k])}
        mod.load_state_dict(usable, strict=False, assign=True)
    dit, ae, cond = modules["dit"], modules["autoencoder"], modules["conditioner"]
    refresh_weight_norm(ae)
    for m in (dit, ae, cond):
        m.float().eval().requires_grad_(False)
    return dit, ae, cond, notes


def load_pipeline(model: str | None = None, device: str | torch.device | None = None,
                  dtype: torch.dtype | str | None = None, allow_partial: bool = False, fast: bool = True, *,
                  config=None, dit: str | None = None, autoencoder: str | None = None, ema: bool | None = None,
                  arc_post_trained: bool | None = None, autoencoder_dtype=None) -> Pipeline:
    """Load a pipeline.

    model: a model folder (model_config.json + model.safetensors / model.ckpt, or dit.safetensors +
    autoencoder.safetensors), one checkpoint file (config beside it, or ``config=``), or None for the
    bundled default. Any layout of ``arc_fast.loader`` (Lightning wrappers, EMA, ARC training, the arc_fast
    trainer). dit / autoencoder: separate files that replace (or supply) those components. config: a dict
    or a JSON path. ema: None = prefer EMA weights when present (noted in ``load_notes``), True = require
    them for the DiT (CheckpointError naming the file if it has none), False = online weights.
    arc_post_trained: override the detected model kind. dtype: the DiT's precision: None / "auto" = on the
    CPU the fastest precision this CPU runs well, per stage
    (``arc_fast.cpu.choose_precisions``: bf16 where oneDNN has native bf16 and a cached one-off probe confirms
    the gain, else fp32; an int8 export keeps int8), fp32 on CUDA for None and bf16 for "auto"; "fp32" / "bf16" /
    "fp16"; "int8" (CPU: torchao dynamic int8 of the DiT's linears, ``arc_fast.cpu.quantize_dit_int8``).
    autoencoder_dtype: the decoder's compute dtype (default: the automatic choice on the CPU when dtype is
    None/"auto", else dtype on CUDA and fp32 on the CPU); non-finite decoder output falls back to fp32.
    fast: swap in FastDiT and FastOobleckDecoder (same weights) where they apply.
    Raises FileNotFoundError / CheckpointError (every problem key named) / ValueError (config)."""
    resolved = resolve_model(model, config=config, dit=dit, autoencoder=autoencoder, ema=ema,
                             arc_post_trained=arc_post_trained)
    d, ae, cond, notes = materialize(resolved, allow_partial)
    # The modules now hold the checkpoint's tensors (assign=True): drop the dict's references so that casting
    # to bf16 below frees each fp32 tensor as it goes, instead of keeping a whole fp32 copy alive (peak RSS).
    resolved.state_dict = {}
    notes = resolved.notes + notes
    # An int8 export's weights, restored exactly (q * scale): the int8 compute is torchao's, on plain Linear
    # layers of either DiT, when the DiT's precision is int8 (the automatic choice for such a model).
    n_int8 = dequantize_int8_layers(d)
    if n_int8:
        notes.append(f"int8 export: {n_int8} linear layers (re-quantised by torchao when the DiT runs in int8)")
    if fast:
        d, ae, fast_notes = fast_modules(d, ae)
        notes += fast_notes
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    pipe = Pipeline(resolved.config, d, ae, cond)
    dit_dtype, ae_dtype, precision_notes = resolve_precisions(device, dtype, autoencoder_dtype, n_int8 > 0)
    notes += precision_notes
    if device.type == "cpu" and dit_dtype not in (None, torch.float32):
        _own_memory(ae, cond)   # before the DiT's cast, so that the cast releases the checkpoint's mapping
    pipe.to(device, dit_dtype, ae_dtype)
    kind = "ARC post-trained" if pipe.is_arc else "base"
    dflt = pipe.defaults()
    notes.append(f"{kind} model (from {resolved.arc_source}): defaults {dflt['sampler']}, {dflt['steps']} steps, "
                 f"CFG {dflt['cfg_scale']:g}")
    pipe.load_notes = notes
    for n in notes:
        logger.info(n)
    return pipe


def _own_memory(*modules: nn.Module) -> None:
    """Give every float32 CPU parameter and buffer of ``modules`` its own memory (a copy).

    Why: safetensors maps the checkpoint file and each loaded tensor views that mapping; the mapping, and every
    page of it that was read, stays resident while any one tensor still views it. When the DiT is cast (bf16,
    int8), copying the components that keep fp32 first lets the cast release the whole mapping: measured on a
    1.9 GB fp32 SAO-size checkpoint at bf16, 3.5 GB resident after load_pipeline without it, ~2 GB with it. (An
    fp32 DiT keeps viewing the mapping, so nothing is copied then: the copies would only add to it.)
    """
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            if t.device.type == "cpu" and t.dtype == torch.float32 and type(t.data) is torch.Tensor:
                t.data = t.data.clone()


def resolve_precisions(device: torch.device, dtype, autoencoder_dtype, int8_export: bool = False):
    """(DiT dtype or "int8", decoder dtype or None, notes) for ``load_pipeline``'s dtype arguments (see there)."""
    auto = dtype is None or (isinstance(dtype, str) and dtype.lower() == "auto")
    dit_dtype = None if auto else parse_dtype(dtype, allow_int8=True)
    ae_dtype = parse_dtype(autoencoder_dtype)
    notes = []
    if device.type != "cpu":
        if auto and dtype is not None:
            dit_dtype = torch.bfloat16
        return dit_dtype, ae_dtype, notes
    if auto:
        from .cpu import choose_precisions, torchao_available
        p = choose_precisions()
        dit_dtype = p.dtypes()[0]
        why = p.reasons["dit"]
        if int8_export:
            missing = torchao_available()
            if missing is None:
                dit_dtype, why = "int8", "int8: the checkpoint is an int8 export (torchao dynamic int8)"
            else:
                why += f" (int8 export run in float: {missing})"
        notes.append(f"CPU precision (auto): DiT {why}")
        if ae_dtype is None:
            ae_dtype = p.dtypes()[1]
            notes.append(f"CPU precision (auto): decoder {p.reasons['decoder']}")
    elif ae_dtype is None:
        ae_dtype = torch.float32
    return dit_dtype, ae_dtype, notes


def fast_modules(dit: nn.Module, autoencoder: nn.Module) -> tuple[nn.Module, nn.Module, list[str]]:
    """Swap in the fused modules when the package has them and the model suits them (same weights, same
    outputs): FastDiT for the DiT, FastOobleckDecoder for ``autoencoder.decoder`` (in place). Returns
    (dit, autoencoder, notes saying what was not swapped and why)."""
    notes = []
    try:
        from .models.dit import FastDiT
        fast = FastDiT.from_module(dit).eval()
        check = getattr(fast, "_check_betas", None)
        if check is not None:
            check()  # non-zero LayerNorm betas: the fused LayerNorm is bias-less, keep the reference
        dit = fast
    except ImportError:
        pass
    except (NotImplementedError, ValueError) as exc:
        notes.append(f"fused DiT not used: {exc}")
    try:
        from .models.decoder import FastOobleckDecoder
        autoencoder.decoder = FastOobleckDecoder.from_module(autoencoder.decoder, copy=False).eval()
        # Longer audio / bigger batches decode in exact overlapping chunks past this activation budget (12 s of
        # SAO audio needs ~0.4 GB in bf16, ~0.8 GB in fp32: one pass).
        autoencoder.decoder.max_activation_bytes = int(float(os.environ.get("ARC_FAST_DECODER_MAX_MB", "1536"))
                                                       * 2 ** 20)
    except ImportError:
        pass
    except (NotImplementedError, TypeError) as exc:
        notes.append(f"fused decoder not used: {exc}")
    return dit, autoencoder, notes


_fast_modules = fast_modules  # the older private name


def build_pipeline(config: dict, seed: int = 0, device="cpu", fast: bool = False) -> Pipeline:
    """A pipeline with seeded random weights (for tests, benchmarks and the bundled default), fp32.

    fast: swap in the fused modules exactly as ``load_pipeline(fast=True)`` does (``fast_modules``), so both
    give the same module classes. Off by default here, unlike ``load_pipeline``: seeded pipelines serve as
    references for the fused modules, and on the CPU under TRITON_INTERPRET=1 the fused DiT is interpreted."""
    torch.manual_seed(seed)
    dit, autoencoder, conditioner = build_models(config)
    for m in (dit, autoencoder, conditioner):
        m.eval().requires_grad_(False)
    notes = []
    if fast:
        dit, autoencoder, notes = fast_modules(dit, autoencoder)
    pipe = Pipeline(config, dit, autoencoder, conditioner).to(device)
    pipe.load_notes = notes
    return pipe


def load_state_dict_into(dit: nn.Module, autoencoder: nn.Module, conditioner: nn.Module, sd: dict,
                         allow_partial: bool = False) -> list[str]:
    """Load a full-layout state dict into real modules. Strict: raises CheckpointError naming every
    missing/unexpected/mis-shaped key unless ``allow_partial`` (then warns and returns them)."""
    report = check_state_dict({"dit": dit, "autoencoder": autoencoder, "conditioner": conditioner}, sd)
    if report.problems and not allow_partial:
        raise CheckpointError("checkpoint does not match the config: " + " | ".join(report.problems))
    for p in report.problems:
        warnings.warn(p, RuntimeWarning, stacklevel=2)
    for name, mod in (("dit", dit), ("autoencoder", autoencoder), ("conditioner", conditioner)):
        own = mod.state_dict()
        usable = {k: v for k, v in report.parts[name].items() if k in own and loadable(v, own[k])}
        mod.load_state_dict(usable, strict=False)
    return report.problems

