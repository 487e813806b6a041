"""Analytic audio measures and distribution metrics used by ``arc-fast eval``.

* ``estimate_f0``: fundamental frequency from the magnitude spectrum's peak (parabolic interpolation);
* ``cents``: pitch error in cents (100 = one semitone);
* ``onset_rate``: onsets per second from spectral-flux peaks;
* ``frechet_distance``: Fréchet distance between two Gaussian fits of embeddings;
* ``pairwise_diversity``: mean pairwise cosine distance of a set of embeddings.

All take numpy arrays or torch tensors; audio is (channels, samples) or (samples,) float.
"""
from __future__ import annotations

import math

import numpy as np


def _mono(audio) -> np.ndarray:
    a = audio.detach().cpu().numpy() if hasattr(audio, "detach") else np.asarray(audio)
    a = a.astype(np.float64)
    if a.ndim == 2:
        a = a.mean(0)
    if a.ndim != 1:
        raise ValueError(f"audio must be (channels, samples) or (samples,), got shape {np.shape(audio)}")
    return a


def estimate_f0(audio, sample_rate: int = 44100, fmin: float = 50.0, fmax: float = 2000.0) -> float:
    """Frequency (Hz) of the strongest spectral peak in [fmin, fmax] of the mono mix: Hann window, 4x
    zero-padding, parabolic interpolation on log magnitude. NaN for silence.

    For the synthetic tones (sine, square, sawtooth: harmonic amplitudes 1/n) the strongest peak is the
    fundamental, so this is their pitch.
    """
    x = _mono(audio)
    if not np.isfinite(x).all() or np.abs(x).max() < 1e-4:
        return float("nan")
    n = 1 << int(math.ceil(math.log2(max(len(x), 2)))) + 2
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n))
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    lo, hi = np.searchsorted(freqs, fmin), np.searchsorted(freqs, fmax)
    if hi - lo < 3:
        raise ValueError(f"[fmin, fmax] = [{fmin}, {fmax}] is too narrow for {len(x)} samples")
    k = lo + int(np.argmax(spec[lo:hi]))
    if 0 < k < len(spec) - 1:
        a, b, c = np.log(spec[k - 1:k + 2] + 1e-12)
        den = a - 2 * b + c
        shift = 0.5 * (a - c) / den if den != 0 else 0.0
        return float((k + shift) * sample_rate / n)
    return float(freqs[k])


def cents(estimate: float, target: float) -> float:
    """|1200 log2(estimate / target)|; inf for a non-positive or NaN estimate."""
    if not (estimate > 0) or not (target > 0):
        return float("inf")
    return abs(1200.0 * math.log2(estimate / target))


def onset_times(audio, sample_rate: int = 44100, hop: int = 256, n_fft: int = 1024, min_gap: float = 0.06,
                threshold: float = 0.3) -> np.ndarray:
    """Onset times (s) from half-wave-rectified spectral flux of the log-magnitude spectrogram: peaks above
    ``threshold`` x the maximum flux, at least ``min_gap`` s apart."""
    x = _mono(audio)
    if len(x) < n_fft or np.abs(x).max() < 1e-4:
        return np.zeros(0)
    frames = 1 + (len(x) - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    mag = np.abs(np.fft.rfft(x[idx] * np.hanning(n_fft), axis=1))
    logm = np.log(mag + 1e-3)
    flux = np.maximum(np.diff(logm, axis=0), 0).sum(1)
    flux = np.concatenate([[max(0.0, logm[0].sum() - np.log(1e-3) * logm.shape[1])], flux])
    if flux.max() <= 0:
        return np.zeros(0)
    thr = threshold * flux.max()
    gap = max(1, int(min_gap * sample_rate / hop))
    onsets: list[int] = []
    for i in range(len(flux)):
        lo, hi = max(0, i - 1), min(len(flux), i + 2)
        if flux[i] >= thr and flux[i] == flux[lo:hi].max():
            if not onsets or i - onsets[-1] >= gap:
                onsets.append(i)
    return np.array(onsets) * hop / sample_rate


def onset_rate(audio, sample_rate: int = 44100, seconds: float | None = None, **kw) -> float:
    """Onsets per second over ``seconds`` (default: the whole clip)."""
    x = _mono(audio)
    dur = seconds if seconds is not None else len(x) / sample_rate
    if seconds is not None:
        x = x[: int(seconds * sample_rate)]
    return float(len(onset_times(x, sample_rate, **kw)) / max(dur, 1e-6))


def frechet_distance(a, b) -> float:
    """Fréchet distance between Gaussians fitted to embeddings a (N, D) and b (M, D):
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"embeddings must be (N, D) and (M, D) with the same D, got {a.shape} and {b.shape}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("need at least 2 embeddings per set")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr((S1 S2)^(1/2)) = sum of sqrt(eigenvalues of S1^(1/2) S2 S1^(1/2)) (symmetric PSD: no complex sqrtm).
    w, v = np.linalg.eigh(s1)
    s1h = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    ev = np.linalg.eigvalsh(s1h @ s2 @ s1h)
    tr_covmean = np.sqrt(np.clip(ev, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def pairwise_diversity(emb) -> float:
    """Mean cosine distance (1 - cos) over all pairs of rows of emb (N, D), N >= 2."""
    e = np.asarray(emb, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) embeddings, got shape {e.shape}")
    e = e / (np.linalg.norm(e, axis=1, keepdims=True) + 1e-12)
    sim = e @ e.T
    iu = np.triu_indices(e.shape[0], 1)
    return float((1 - sim[iu]).mean())
