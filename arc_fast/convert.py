"""Conversion and export: any checkpoint layout ``load_pipeline`` reads -> the unwrapped inference layout
(optionally split, cast, or with an int8 DiT), and ``compare_dit`` (how far and how fast a converted DiT is
from its source).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import time
import warnings

import torch
from torch import nn

from .files import install_folder, staging_dir
from .int8 import apply_int8_layout, quantize_dit_state_dict
from .loader import PREFIXES, CheckpointError, build_models, check_state_dict, loadable, save_json, save_safetensors
from .loading import CHECKPOINT_NAMES, SPLIT_NAMES, resolve_model
from .pipeline import parse_dtype


def convert_model(model: str | None, out_dir: str, *, config=None, dit: str | None = None,
                  autoencoder: str | None = None, ema: bool | None = None, split: bool = False,
                  dtype=None, int8: bool = False, allow_partial: bool = False,
                  arc_post_trained: bool | None = None, overwrite: bool = False) -> dict:
    """Write a model in the unwrapped inference layout: ``model_config.json`` + ``model.safetensors``, or
    with ``split`` ``dit.safetensors`` (model.model.* + conditioner.*) + ``autoencoder.safetensors`` (plain
    encoder.*/decoder.* keys). Reads every layout ``load_pipeline`` reads (EMA chosen as there; training
    modules and optimiser state dropped), checks it strictly against the config, optionally casts float
    tensors to ``dtype`` and stores the DiT's block linears as int8 (``int8``). ``out_dir`` must be empty or
    new unless ``overwrite`` (then its old model files are replaced, atomically as a set: the new model is
    written completely beside it first; other files in it are kept). Returns {'files': [...], 'notes':
    [...], 'arc_post_trained': bool}."""
    ours = set(CHECKPOINT_NAMES) | set(SPLIT_NAMES.values()) | {"model_config.json"}
    present = []
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise NotADirectoryError(errno.ENOTDIR, "the output must be a folder", out_dir)
        present = sorted(f for f in os.listdir(out_dir) if f in ours)
        if present and not overwrite:
            raise FileExistsError(f"{out_dir} already holds {', '.join(present)} (choose an empty folder or "
                                  f"overwrite)")
    resolved = resolve_model(model, config=config, dit=dit, autoencoder=autoencoder, ema=ema,
                             arc_post_trained=arc_post_trained)
    config, sd = resolved.config, resolved.state_dict
    notes = list(resolved.notes)
    dit_m, ae_m, cond_m = build_models(config, meta=True)
    dit_sd = {k[len(PREFIXES["dit"]):]: v for k, v in sd.items() if k.startswith(PREFIXES["dit"])}
    apply_int8_layout(dit_m, dit_sd)
    report = check_state_dict({"dit": dit_m, "autoencoder": ae_m, "conditioner": cond_m}, sd)
    if report.problems and not allow_partial:
        raise CheckpointError("checkpoint does not match the config: " + " | ".join(report.problems))
    for p in report.problems:
        warnings.warn(p, RuntimeWarning, stacklevel=2)
    # Only the keys the model uses are written: unknown keys never reach an inference checkpoint.
    keep = {PREFIXES[c] + k for c, part in report.parts.items() for k in part}
    own = {PREFIXES[c] + k: t for c, m in (("dit", dit_m), ("autoencoder", ae_m), ("conditioner", cond_m))
           for k, t in m.state_dict().items()}
    sd = {k: v for k, v in sd.items() if k in keep and k in own and loadable(v, own[k])}
    cast = parse_dtype(dtype)
    if cast is not None:
        sd = {k: (v.to(cast) if v.is_floating_point() and not k.endswith(".weight_scale") else v)
              for k, v in sd.items()}
    if int8:
        sd, n = quantize_dit_state_dict(dit_m, sd)
        notes.append(f"int8: {n} DiT block linear layers stored as int8 weights + per-channel fp32 scales")
        config.setdefault("arc_fast", {})["dit_int8"] = True
    meta = {"format": "pt", "arc_fast": json.dumps({"arc_post_trained": resolved.arc_post_trained,
                                                    "int8": bool(int8), "converted_from": resolved.sources})}
    if split:
        dit_part = {k: v for k, v in sd.items() if k.startswith((PREFIXES["dit"], PREFIXES["conditioner"]))}
        ae_part = {k[len(PREFIXES["autoencoder"]):]: v for k, v in sd.items() if k.startswith(PREFIXES["autoencoder"])}
        parts = {SPLIT_NAMES["dit"]: dit_part, SPLIT_NAMES["autoencoder"]: ae_part}
    else:
        parts = {"model.safetensors": sd}
    # The new model is written whole into a folder beside out_dir, then moved in; the old model's files go
    # only after that (files.install_folder), so a failure part-way (a full disk) leaves out_dir as it was.
    staged = staging_dir(out_dir)
    try:
        for name, part in parts.items():
            save_safetensors(part, os.path.join(staged, name), meta)
        save_json(config, os.path.join(staged, "model_config.json"))
        install_folder(staged, out_dir, present)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    files = [os.path.join(out_dir, name) for name in (*parts, "model_config.json")]
    return {"files": files, "notes": notes, "arc_post_trained": resolved.arc_post_trained}


@torch.inference_mode()
def compare_dit(reference: nn.Module, candidate: nn.Module, frames: int = 32, batch: int = 1, repeats: int = 3,
                seed: int = 0) -> dict:
    """One DiT forward of both models on the same seeded inputs (CPU, fp32): relative error of the
    candidate's output (||y - y_ref|| / ||y_ref||) and the best-of-``repeats`` seconds of each."""
    g = torch.Generator().manual_seed(seed)
    c = reference.io_channels
    x = torch.randn(batch, c, frames, generator=g)
    t = torch.rand(batch, generator=g)
    kw = {}
    if reference.cond_token_dim:
        kw["cross_attn_cond"] = torch.randn(batch, 8, reference.cond_token_dim, generator=g)
    if reference.global_cond_dim:
        kw["global_embed"] = torch.randn(batch, reference.global_cond_dim, generator=g)
    out = {}
    ys = {}
    for name, m in (("reference", reference), ("candidate", candidate)):
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            ys[name] = m(x, t, **kw).float()
            best = min(best, time.perf_counter() - t0)
        out[f"{name}_seconds"] = best
    ref = ys["reference"]
    out["relative_error"] = float((ys["candidate"] - ref).norm() / ref.norm().clamp_min(1e-30))
    return out
