"""A small classifier of the synthetic dataset's parameters: its predictions measure prompt adherence and
its penultimate features are the embedding for the Fréchet distance and the diversity score.

Input: the log-mel spectrogram (64 bands, n_fft 2048, hop 512) of the mono mix. Network: three 1-D
convolutions over time, mean+max pooling, a 32-dim embedding, one linear head per attribute (``HEADS``).
Attributes that do not apply to a family (e.g. pitch for a noise burst) get the class "none".
"""
from __future__ import annotations

import math
import os
import pickle
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.synthetic import (CHORD_ROOTS, FAMILIES, MODULATIONS, PITCHES, QUALITIES, RHYTHMS, SAMPLE_RATE, TEMPOS,
                              WAVES, make_clip)
from ..loader import weights_only_reason

#: attribute -> class names ("none" first where the attribute can be absent).
HEADS: dict[str, list[str]] = {
    "family": list(FAMILIES),
    "pitch": ["none"] + [str(p) for p in PITCHES],
    "wave": ["none"] + list(WAVES),
    "mod": ["none"] + [m for m in MODULATIONS if m],
    "chord": ["none"] + [f"{q} {r}" for q in QUALITIES for r in CHORD_ROOTS],
    "rhythm": ["none"] + [f"{p} {t}" for p in RHYTHMS for t in TEMPOS],
    "other": ["none", "rising", "falling", "white short", "white long", "pink short", "pink long", "kick", "snare"],
}


def labels(params: dict) -> dict[str, int]:
    """Class index per head for a parameter dict."""
    fam = params["family"]
    lab = {k: 0 for k in HEADS}
    lab["family"] = HEADS["family"].index(fam)
    if fam == "tone":
        lab["pitch"] = HEADS["pitch"].index(str(params["pitch"]))
        lab["wave"] = HEADS["wave"].index(params["wave"])
        lab["mod"] = HEADS["mod"].index(params["mod"]) if params.get("mod") else 0
    elif fam == "chord":
        lab["chord"] = HEADS["chord"].index(f"{params['quality']} {params['root']}")
    elif fam == "rhythm":
        lab["rhythm"] = HEADS["rhythm"].index(f"{params['pattern']} {params['tempo']}")
    elif fam == "sweep":
        lab["other"] = HEADS["other"].index(params["direction"])
    elif fam == "noise":
        lab["other"] = HEADS["other"].index(f"{params['color']} {params['length']}")
    elif fam == "hit":
        lab["other"] = HEADS["other"].index(params["drum"])
    return lab


_MEL_CACHE: dict = {}


def _mel_fb(n_fft: int, n_mels: int, sr: int) -> torch.Tensor:
    key = (n_fft, n_mels, sr)
    if key not in _MEL_CACHE:
        def hz2mel(f):
            return 2595 * np.log10(1 + f / 700)
        mels = np.linspace(hz2mel(40.0), hz2mel(16000.0), n_mels + 2)
        hz = 700 * (10 ** (mels / 2595) - 1)
        freqs = np.fft.rfftfreq(n_fft, 1 / sr)
        fb = np.zeros((n_mels, len(freqs)))
        for m in range(n_mels):
            lo, c, hi = hz[m], hz[m + 1], hz[m + 2]
            fb[m] = np.clip(np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)), 0, None)
        _MEL_CACHE[key] = torch.tensor(fb, dtype=torch.float32)
    return _MEL_CACHE[key]


def log_mel(audio: torch.Tensor, sample_rate: int = SAMPLE_RATE, n_mels: int = 64, n_fft: int = 2048,
            hop: int = 512) -> torch.Tensor:
    """audio (B, C, N) or (B, N) float -> log-mel (B, n_mels, frames) of the mono mix."""
    a = torch.as_tensor(audio, dtype=torch.float32)
    if a.dim() == 3:
        a = a.mean(1)
    win = torch.hann_window(n_fft)
    mag = torch.stft(a, n_fft, hop_length=hop, window=win, return_complex=True).abs()
    return torch.log(_mel_fb(n_fft, n_mels, sample_rate) @ mag + 1e-4)


class ParamClassifier(nn.Module):
    """log-mel (B, 64, T) -> (embedding (B, 32), {head: logits (B, classes)})."""

    def __init__(self, n_mels: int = 64, width: int = 96, embed_dim: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(n_mels, width, 5, padding=2), nn.GELU(),
            nn.Conv1d(width, width, 5, stride=2, padding=2), nn.GELU(),
            nn.Conv1d(width, width, 5, stride=2, padding=2), nn.GELU())
        self.embed = nn.Linear(2 * width, embed_dim)
        self.heads = nn.ModuleDict({k: nn.Linear(embed_dim, len(v)) for k, v in HEADS.items()})
        self.register_buffer("mu", torch.zeros(n_mels, 1))
        self.register_buffer("sd", torch.ones(n_mels, 1))

    def forward(self, mel: torch.Tensor):
        h = self.net((mel - self.mu) / self.sd)
        e = self.embed(torch.cat([h.mean(-1), h.amax(-1)], dim=1))
        return e, {k: head(F.gelu(e)) for k, head in self.heads.items()}

    @torch.no_grad()
    def embed_audio(self, audio: torch.Tensor, batch: int = 64) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """audio (B, C, N) -> (embeddings (B, 32), {head: predicted class index (B,)})."""
        self.eval()
        embs, preds = [], {k: [] for k in HEADS}
        for i in range(0, audio.shape[0], batch):
            e, logits = self(log_mel(audio[i:i + batch]))
            embs.append(e)
            for k, v in logits.items():
                preds[k].append(v.argmax(-1))
        return torch.cat(embs).numpy(), {k: torch.cat(v).numpy() for k, v in preds.items()}


def train_classifier(n: int = 2000, steps: int = 600, batch: int = 64, seed: int = 1234, lr: float = 2e-3,
                     out_path: str | None = None, log: bool = True) -> tuple[ParamClassifier, dict]:
    """Train on ``n`` clips of the synthetic ``test`` split (all families, seed ``seed``: not the generator's
    training clips); returns (model, {"accuracy": {head: held-out accuracy}, ...}). Saves to ``out_path``."""
    t0 = time.time()
    torch.manual_seed(seed)
    n_val = max(8, n // 10)
    mels, labs = [], {k: [] for k in HEADS}
    for i0 in range(0, n + n_val, 64):
        clips = [make_clip(seed, i, "test") for i in range(i0, min(n + n_val, i0 + 64))]
        mels.append(log_mel(torch.from_numpy(np.stack([c.audio for c in clips]))))
        for c in clips:
            for k, v in labels(c.params).items():
                labs[k].append(v)
    mel = torch.cat(mels)
    y = {k: torch.tensor(v) for k, v in labs.items()}
    model = ParamClassifier(n_mels=mel.shape[1])
    model.mu.copy_(mel[:n].mean((0, 2))[:, None])
    model.sd.copy_(mel[:n].std((0, 2))[:, None] + 1e-3)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    g = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, n, (batch,), generator=g)
        # Random gain and a small time shift: generated clips differ from the data in level and timing.
        m = mel[idx] + torch.randn(batch, 1, 1, generator=g) * 0.5
        shift = int(torch.randint(0, 4, (1,), generator=g))
        m = torch.roll(m, shift, dims=-1)
        _, logits = model(m)
        loss = sum(F.cross_entropy(logits[k], y[k][idx]) for k in HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log and (step + 1) % 100 == 0:
            print(f"classifier step {step + 1}: loss {float(loss.detach()):.4f}", flush=True)
    model.eval()
    with torch.no_grad():
        _, logits = model(mel[n:])
    acc = {k: float((logits[k].argmax(-1) == y[k][n:]).float().mean()) for k in HEADS}
    info = {"train_clips": n, "val_clips": n_val, "steps": steps, "seed": seed, "accuracy": acc,
            "seconds": round(time.time() - t0, 1)}
    if out_path:
        save_classifier(model, info, out_path)
    return model, info


def save_classifier(model: ParamClassifier, info: dict, path: str) -> None:
    """Write ``{"state_dict", "info"}`` atomically (beside, fsync, rename): tensors and plain values only, so
    ``load_classifier`` reads it with ``torch.load(weights_only=True)``."""
    from ..files import write_atomic
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomic(path, lambda f: torch.save({"state_dict": model.state_dict(), "info": info}, f))


def load_classifier(path: str) -> tuple[ParamClassifier, dict]:
    """(model in eval mode, its training info) from a file written by ``train_classifier``.

    Read with ``torch.load(weights_only=True)``: a file holding anything but tensors and plain values is
    refused and nothing from it runs. Every mismatch (key, shape, dtype, NaN/Inf) is one ValueError naming
    the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"classifier not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"refused classifier {path}: it holds pickled objects other than tensors "
                         f"({weights_only_reason(exc)}); nothing from the file was run") from exc
    except Exception as exc:  # noqa: BLE001 - any decoding failure is one line naming the file
        raise ValueError(f"cannot read classifier {path}: {exc.__class__.__name__}: "
                         f"{weights_only_reason(exc)}") from exc
    if not isinstance(blob, dict) or not isinstance(blob.get("state_dict"), dict):
        raise ValueError(f"{path} is not an arc_fast classifier (a dict with a 'state_dict'; arc-fast eval trains one)")
    model = ParamClassifier()
    live, sd = model.state_dict(), blob["state_dict"]
    missing = [k for k in live if k not in sd]
    unexpected = [k for k in sd if k not in live]
    if missing or unexpected:
        raise ValueError(f"classifier {path} does not match ParamClassifier: missing {missing[:4]}, unexpected "
                         f"{unexpected[:4]}")
    for k, ref in live.items():
        v = sd[k]
        if not isinstance(v, torch.Tensor) or v.shape != ref.shape or v.dtype != ref.dtype:
            got = f"{tuple(v.shape)} {v.dtype}" if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"classifier {path}: {k}: file {got}, model {tuple(ref.shape)} {ref.dtype}")
        if not torch.isfinite(v).all():
            raise ValueError(f"classifier {path}: {k} holds NaN/Inf values")
    model.load_state_dict(sd)
    info = blob.get("info", {})
    return model.eval(), info if isinstance(info, dict) else {}
