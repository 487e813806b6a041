"""The evaluation behind ``arc-fast eval``: generate clips for a set of prompts with several (model, sampler,
steps, CFG) settings and score them against real synthetic clips of the same prompts.

Per setting (a row of the table):
* adherence: pitch (median error in cents and the share within 50 cents, tone prompts), rhythm (median
  relative error of the onset rate, rhythm prompts), classifier accuracy (share of the prompt's attributes
  that the parameter classifier recognises, all prompts);
* quality: Fréchet distance between classifier embeddings of the generated clips and of real clips of
  the same prompts;
* diversity: mean pairwise cosine distance of the embeddings of one prompt's samples (averaged over
  prompts); the real clips' value is the reference (they differ only in phase, level, pan and length);
* time: seconds per clip (DiT and total, on this machine).
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import torch

from ..data.synthetic import SAMPLE_RATE, describe, make_clip, params_for_caption
from . import metrics as M
from .classifier import HEADS, labels

ANALYSIS_SECONDS = 1.0  # every training clip sounds for at least 1 s


@dataclasses.dataclass
class Setting:
    """One row: a label, a model folder and how to sample it."""
    label: str
    model: str
    sampler: str
    steps: int
    cfg_scale: float


def score(audio: torch.Tensor, prompts: list[str], classifier, sample_rate: int = SAMPLE_RATE) -> dict:
    """Per-clip measures for audio (B, C, N) with one prompt each: embeddings, predicted classes, f0, onset rate."""
    emb, preds = classifier.embed_audio(audio)
    out = {"emb": emb, "f0": [], "rate": [], "clf_acc": [], "pitch_cents": [], "rate_err": []}
    n = int(ANALYSIS_SECONDS * sample_rate)
    for i, p in enumerate(prompts):
        d = describe(p)
        params = params_for_caption(p)
        a = audio[i]
        f0 = M.estimate_f0(a[..., :n], sample_rate) if d["family"] == "tone" else float("nan")
        out["f0"].append(f0)
        out["pitch_cents"].append(M.cents(f0, d["f0"]) if d["family"] == "tone" and d["f0"] else float("nan"))
        if d["onset_rate"]:
            on = M.onset_times(a, sample_rate)
            rate = 1.0 / float(np.median(np.diff(on))) if len(on) >= 2 else 0.0
            out["rate"].append(rate)
            out["rate_err"].append(abs(rate - d["onset_rate"]) / d["onset_rate"])
        else:
            out["rate"].append(float("nan"))
            out["rate_err"].append(float("nan"))
        if params is not None:
            lab = labels(params)
            out["clf_acc"].append(float(np.mean([preds[k][i] == lab[k] for k in HEADS])))
        else:
            out["clf_acc"].append(float("nan"))
    return out


def _summarise(per_prompt: dict[str, dict], reference_emb: np.ndarray | None) -> dict:
    cents = np.array([c for d in per_prompt.values() for c in d["pitch_cents"] if not np.isnan(c)])
    rate_err = np.array([c for d in per_prompt.values() for c in d["rate_err"] if not np.isnan(c)])
    acc = np.array([c for d in per_prompt.values() for c in d["clf_acc"] if not np.isnan(c)])
    emb = np.concatenate([d["emb"] for d in per_prompt.values()])
    div = [M.pairwise_diversity(d["emb"]) for d in per_prompt.values() if d["emb"].shape[0] >= 2]
    row = {
        "pitch_cents_median": float(np.median(cents)) if cents.size else None,
        "pitch_within_50c": float((cents < 50).mean()) if cents.size else None,
        "rate_rel_err_median": float(np.median(rate_err)) if rate_err.size else None,
        "clf_accuracy": float(acc.mean()) if acc.size else None,
        "diversity": float(np.mean(div)) if div else None,
        "fd": M.frechet_distance(emb, reference_emb) if reference_emb is not None else None,
    }
    return row


def real_clips(prompts: list[str], n: int, seed: int) -> dict[str, torch.Tensor]:
    """n real synthetic clips (split ``test``) per prompt: prompt -> audio (n, 2, window)."""
    out = {}
    for j, p in enumerate(prompts):
        params = params_for_caption(p)
        if params is None:
            raise ValueError(f"prompt {p!r} is not a caption of the synthetic dataset (no reference clips)")
        out[p] = torch.from_numpy(np.stack([make_clip(seed + 7919 * j, i, "test", params=params).audio for i in range(n)]))
    return out


def evaluate(settings: list[Setting], prompts: list[str], classifier, samples: int = 8, seed: int = 0,
             reference_samples: int | None = None, device: str = "cpu", log=print) -> dict:
    """Generate ``samples`` clips per prompt per setting and score them. Returns
    {"rows": [{label, model, sampler, steps, cfg_scale, metrics..., sec_per_clip, dit_sec_per_clip}],
     "reference": {metrics of a second set of real clips}, "prompts", "samples", "seed"}."""
    import contextlib
    from ..ops import use_backend
    from ..pipeline import load_pipeline
    # On the CPU the eager ops are the fast path (a test session's TRITON_INTERPRET=1 would otherwise route
    # the fused modules through the Triton interpreter).
    def backend():
        return use_backend("eager") if torch.device(device).type == "cpu" else contextlib.nullcontext()
    reference_samples = reference_samples or samples
    real = real_clips(prompts, reference_samples, seed + 1)
    real_scores = {p: score(a, [p] * a.shape[0], classifier) for p, a in real.items()}
    real_emb = np.concatenate([d["emb"] for d in real_scores.values()])
    real2 = real_clips(prompts, samples, seed + 2)
    real2_scores = {p: score(a, [p] * a.shape[0], classifier) for p, a in real2.items()}
    reference = {"label": "real clips (reference)", **_summarise(real2_scores, real_emb)}
    rows = []
    cache: dict[str, object] = {}
    for s in settings:
        if s.model not in cache:
            cache[s.model] = load_pipeline(s.model, device=device)
        pipe = cache[s.model]
        per_prompt, secs, dit_secs = {}, [], []
        for j, p in enumerate(prompts):
            with backend():
                audio, sr = pipe(p, steps=s.steps, cfg_scale=s.cfg_scale, sampler=s.sampler, seed=seed + 1000 * j,
                                 batch_size=samples)
            t = pipe.last_timings
            secs.append(t.total / samples)
            dit_secs.append(sum(t.dit_steps) / samples)
            per_prompt[p] = score(audio, [p] * samples, classifier, sr)
        row = {"label": s.label, "model": s.model, "sampler": s.sampler, "steps": s.steps, "cfg_scale": s.cfg_scale,
               **_summarise(per_prompt, real_emb), "sec_per_clip": float(np.mean(secs)),
               "dit_sec_per_clip": float(np.mean(dit_secs)),
               "per_prompt": {p: {"pitch_cents": [float(c) for c in d["pitch_cents"]],
                                  "f0": [float(c) for c in d["f0"]], "clf_acc": d["clf_acc"],
                                  "rate": [float(r) for r in d["rate"]]} for p, d in per_prompt.items()}}
        rows.append(row)
        log(f"{s.label}: " + ", ".join(f"{k} {row[k]:.3f}" for k in ("pitch_within_50c", "pitch_cents_median",
                                                                       "clf_accuracy", "fd", "diversity", "sec_per_clip")
                                        if row.get(k) is not None))
    return {"rows": rows, "reference": reference, "prompts": list(prompts), "samples": samples, "seed": seed}


def _fmt(v, pct=False, digits=2):
    if v is None:
        return "-"
    return f"{100 * v:.0f}%" if pct else f"{v:.{digits}f}"


def markdown_table(result: dict) -> str:
    """The results as a markdown table (one row per setting plus the real-clip reference)."""
    head = ("| setting | steps | CFG | pitch within 50 c | pitch error (c, median) | onset-rate error | "
            "classifier acc. | FD (lower better) | diversity | s / clip (DiT) | s / clip (total) |")
    lines = [head, "|" + "---|" * 11]
    for r in result["rows"]:
        lines.append(f"| {r['label']} | {r['steps']} | {r['cfg_scale']:g} | {_fmt(r['pitch_within_50c'], True)} | "
                     f"{_fmt(r['pitch_cents_median'], digits=0)} | {_fmt(r['rate_rel_err_median'], True)} | "
                     f"{_fmt(r['clf_accuracy'], True)} | {_fmt(r['fd'])} | {_fmt(r['diversity'], digits=3)} | "
                     f"{_fmt(r['dit_sec_per_clip'], digits=3)} | {_fmt(r['sec_per_clip'], digits=3)} |")
    ref = result["reference"]
    lines.append(f"| {ref['label']} | - | - | {_fmt(ref['pitch_within_50c'], True)} | "
                 f"{_fmt(ref['pitch_cents_median'], digits=0)} | {_fmt(ref['rate_rel_err_median'], True)} | "
                 f"{_fmt(ref['clf_accuracy'], True)} | {_fmt(ref['fd'])} | {_fmt(ref['diversity'], digits=3)} | - | - |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> bool:
    """Bar charts of adherence, FD, diversity and time per setting to a PNG. False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = result["rows"]
    labels_ = [r["label"] for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    panels = [("pitch within 50 cents / classifier acc.", ["pitch_within_50c", "clf_accuracy"]),
              ("FD vs real (lower is better)", ["fd"]), ("diversity (real = dashed)", ["diversity"]),
              ("seconds per clip (CPU)", ["dit_sec_per_clip", "sec_per_clip"])]
    x = np.arange(len(rows))
    for ax, (title, keys) in zip(axes, panels):
        w = 0.8 / len(keys)
        for k_i, k in enumerate(keys):
            vals = [r[k] if r[k] is not None else 0 for r in rows]
            ax.bar(x + k_i * w - 0.4 + w / 2, vals, w, label=k)
            ref = result["reference"].get(k)
            if ref is not None and k in ("diversity", "fd", "pitch_within_50c", "clf_accuracy"):
                ax.axhline(ref, ls="--", lw=1, color=f"C{k_i}")
        ax.set_title(title, fontsize=10)
        ax.set_xticks(x)
        ax.set_xticklabels(labels_, rotation=35, ha="right", fontsize=8)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_results(result: dict, out_dir: str, command: str | None = None) -> dict:
    """Write results.json, results.md (table + command) and results.png under out_dir; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "results.json"), "md": os.path.join(out_dir, "results.md"),
             "png": os.path.join(out_dir, "results.png")}
    with open(paths["json"], "w") as f:
        json.dump({**result, "command": command}, f, indent=1)
    md = "# Tiny-model evaluation\n\n"
    if command:
        md += f"Regenerate with:\n\n```\n{command}\n```\n\n"
    md += (f"{len(result['prompts'])} prompts x {result['samples']} samples per setting, seed {result['seed']}. "
           "Columns: see docs/tiny_model.md.\n\n")
    md += markdown_table(result)
    with open(paths["md"], "w") as f:
        f.write(md)
    if not plot(result, paths["png"]):
        paths.pop("png")
    return paths
