"""Quality of every CPU precision setting against fp32: the DiT output, the decoder output and the final audio.

    python -m bench.cpu_quality [--frames 256] [--out bench/results/cpu_quality]

Two models: SAO Small's size with seeded random weights (``models.randomize_``: every weight non-zero, so every
layer's rounding shows; random weights amplify rounding more than trained ones do) at ``--frames`` latent frames
(256 = the full 12 s window), and the bundled trained model (4 prompts, seeds 0-3). Each setting is a
``load_pipeline(folder, dtype=..., autoencoder_dtype=...)`` of the same saved model, run through the pipeline as
users run it; the reference is the same call in fp32. Settings: fp32 (the reference itself, a second load: 0
error or the run is not deterministic), bf16, bf16 DiT + fp32 decoder, fp32 DiT + bf16 decoder, int8 DiT (torchao)
+ fp32 decoder, int8 DiT + bf16 decoder, and the stable-audio-tools-equivalent eager reference modules in bf16
(``fast=False``: the public code's own bf16 error, the yardstick of ``arc_fast.cpu.MIN_AUDIO_SNR_DB``).

Errors: relative (||out - ref|| / ||ref||) and SNR in dB (10 log10(sum ref^2 / sum (out - ref)^2)); the DiT
row is one DiT call on the same (x, t, conditioning), the decoder row one decode of the same latents, the audio
row a whole generation with the same seed. Writes ``<out>.json`` and ``<out>.md`` and prints the table.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import sys
import tempfile
import time
import warnings

import torch

SETTINGS = [  # name, load_pipeline kwargs
    ("fp32", dict(dtype="fp32", autoencoder_dtype="fp32")),
    ("bf16", dict(dtype="bf16", autoencoder_dtype="bf16")),
    ("bf16 DiT + fp32 decoder", dict(dtype="bf16", autoencoder_dtype="fp32")),
    ("fp32 DiT + bf16 decoder", dict(dtype="fp32", autoencoder_dtype="bf16")),
    ("int8 DiT + fp32 decoder", dict(dtype="int8", autoencoder_dtype="fp32")),
    ("int8 DiT + bf16 decoder", dict(dtype="int8", autoencoder_dtype="bf16")),
    ("reference modules bf16 (public code's bf16)", dict(dtype="bf16", autoencoder_dtype="bf16", fast=False)),
]
PROMPTS = ["a low sine tone at 220 Hz", "fast hi-hat pattern", "white noise", "a major chord on a piano"]


def errors(out: torch.Tensor, ref: torch.Tensor) -> dict:
    """{"rel": ||out - ref|| / ||ref||, "snr_db": ``bench.common.snr_db``} in float64."""
    from bench.common import snr_db
    rel = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    return {"rel": rel, "snr_db": snr_db(out, ref)}


def _stage_errors(pipe, ref_pipe, frames: int, seed: int = 0) -> dict:
    """DiT (one call) and decoder (one decode) errors of ``pipe`` against ``ref_pipe`` on the same inputs."""
    from arc_fast.ops import use_backend
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, ref_pipe.latent_channels, frames, generator=g)
    t = torch.tensor([0.7])
    z = torch.randn(1, ref_pipe.latent_channels, frames, generator=g)
    out = {}
    with torch.inference_mode(), use_backend("eager"):
        cond = ref_pipe.condition([PROMPTS[0]], frames * ref_pipe.hop / ref_pipe.sample_rate)
        want = ref_pipe.dit(x, t, **cond).float()
        got = pipe.dit(x.to(pipe.dtype), t.to(pipe.dtype),
                       **{k: v.to(pipe.dtype) if v.is_floating_point() else v for k, v in cond.items()}).float()
        out["dit"] = errors(got, want)
        out["decoder"] = errors(pipe.decode(z), ref_pipe.decode(z))
    return out


def _audio_errors(pipe, refs: dict, seconds) -> list:
    from arc_fast.ops import use_backend
    res = []
    with use_backend("eager"):
        for i, (prompt, ref) in enumerate(refs.items()):
            audio, _ = pipe(prompt, seed=i, seconds=seconds, progress=False)
            res.append(errors(audio, ref) | {"prompt": prompt})
    return res


def measure(folder: str, frames: int, prompts: list, seconds=None, log=print) -> list:
    """Rows {setting, dit, decoder, audio (per prompt)} for every setting that can run here."""
    from arc_fast.cpu import torchao_available
    from arc_fast.loading import load_pipeline
    from arc_fast.ops import use_backend
    ref = load_pipeline(folder, device="cpu", dtype="fp32", autoencoder_dtype="fp32")
    with use_backend("eager"):
        refs = {p: ref(p, seed=i, seconds=seconds, progress=False)[0] for i, p in enumerate(prompts)}
    rows = []
    for name, kw in SETTINGS:
        if kw["dtype"] == "int8" and torchao_available() is not None:
            rows.append({"setting": name, "skipped": torchao_available()})
            continue
        t0 = time.perf_counter()
        pipe = load_pipeline(folder, device="cpu", **kw)
        row = {"setting": name, **_stage_errors(pipe, ref, frames), "audio": _audio_errors(pipe, refs, seconds)}
        row["audio_snr_db_min"] = min(a["snr_db"] for a in row["audio"])
        rows.append(row)
        log(f"[quality] {name}: audio SNR min {row['audio_snr_db_min']:.1f} dB ({time.perf_counter() - t0:.0f} s)")
        del pipe
    return rows


def _seeded_sao_folder(frames: int, workdir: str) -> str:
    from arc_fast.pipeline import Pipeline
    from bench import configs, models
    cfg = copy.deepcopy(configs.sao_config())
    hop = int(cfg["model"]["pretransform"]["config"].get("downsampling_ratio", configs.HOP))
    cfg["sample_size"] = frames * hop
    dit, ae, cond = models.seeded_models(cfg)
    folder = os.path.join(workdir, "sao")
    Pipeline(cfg, dit, ae, cond).save(folder)
    return folder


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.1f}"


def markdown(result: dict) -> str:
    lines = [f"CPU: {result['cpu']} | torch {result['torch']} | {result['date']} | commit {result['commit']}", ""]
    for model in result["models"]:
        lines += [f"**{model['name']}** ({model['what']})", "",
                  "| setting | DiT rel err | DiT SNR dB | decoder rel err | decoder SNR dB | audio SNR dB per prompt "
                  "| audio SNR min |", "|---|---|---|---|---|---|---|"]
        for r in model["rows"]:
            if "skipped" in r:
                lines.append(f"| {r['setting']} | skipped: {r['skipped']} | | | | | |")
                continue
            per = ", ".join(_fmt(a["snr_db"]) for a in r["audio"])
            lines.append(f"| {r['setting']} | {r['dit']['rel']:.2e} | {_fmt(r['dit']['snr_db'])} | "
                         f"{r['decoder']['rel']:.2e} | {_fmt(r['decoder']['snr_db'])} | {per} | "
                         f"{_fmt(r['audio_snr_db_min'])} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=256, help="SAO-size latent frames (256 = 12 s)")
    ap.add_argument("--out", default="bench/results/cpu_quality", help="output path without extension")
    ap.add_argument("--skip-sao", action="store_true", help="only the bundled model (fast)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    from arc_fast.cpu import cpu_features
    from bench.common import git_commit
    result = {"cpu": cpu_features().summary(), "torch": torch.__version__, "python": platform.python_version(),
              "date": time.strftime("%Y-%m-%d"), "commit": git_commit()["commit"][:12], "models": []}
    with tempfile.TemporaryDirectory(prefix="arc-fast-quality-") as work:
        from arc_fast.loading import DEFAULT_MODEL_DIR
        result["models"].append({"name": "bundled trained model", "what": "4 prompts, seeds 0-3, its own window",
                                 "rows": measure(DEFAULT_MODEL_DIR, 32, PROMPTS)})
        if not args.skip_sao:
            folder = _seeded_sao_folder(args.frames, work)
            result["models"].append({"name": "SAO Small size, seeded random weights",
                                     "what": f"{args.frames} latent frames, 1 prompt, seed 0",
                                     "rows": measure(folder, args.frames, PROMPTS[:1])})
    md = markdown(result)
    print(md)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(md + "\n")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
