"""A procedural text-audio dataset: seeded stereo 44.1 kHz clips with captions made from their parameters.

Families (``FAMILIES``) and the caption each one gets:

* ``tone``: sine / square / sawtooth at a fixed pitch, optionally modulated:
  "a low sine tone at 220 Hz", "a high square tone at 660 Hz with fast tremolo";
* ``chord``: a three-note major/minor triad of soft sawtooths: "a minor chord on C";
* ``sweep``: an exponential sine glide: "a rising sine sweep", "a falling sine sweep";
* ``noise``: a white/pink noise burst, short or long: "a short burst of white noise";
* ``hit``: a single drum-like hit: "a kick drum hit", "a snare drum hit";
* ``rhythm``: a pattern at a tempo: "a fast hi-hat pattern at 160 bpm" (eighth notes),
  "a slow kick drum beat at 90 bpm" (quarter notes).

Every clip is a pure function of ``(seed, index, split)`` (``make_clip``), so a dataset is reproducible
from its seed with no files. ``HELDOUT`` lists caption combinations that the ``train`` split never
contains (``split="heldout"`` draws only those): they measure whether a model composes attributes it saw
separately. Clips are ``duration`` seconds of sound (1.0 s to the window) followed by silence up to the
window, like a real dataset padded to the model's ``sample_size``; ``seconds_total`` is the duration.

``describe(caption)`` parses a caption back into the measurable targets used by ``arc_fast.eval``
(fundamental frequency, onset rate, family).
"""
from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

SAMPLE_RATE = 44100
#: Default clip window: 65536 samples (1.486 s) = 32 latent frames at hop 2048.
WINDOW = 65536
MIN_SECONDS = 1.0

FAMILIES = ("tone", "chord", "sweep", "noise", "hit", "rhythm")
#: Family mix of a training set (probabilities): tones dominate (the pitch-adherence target).
FAMILY_WEIGHTS = (0.40, 0.12, 0.10, 0.12, 0.12, 0.14)

PITCHES = (110, 165, 220, 330, 440, 660, 880)
WAVES = ("sine", "square", "sawtooth")
MODULATIONS = (None, "slow tremolo", "fast tremolo", "vibrato")
MOD_WEIGHTS = (0.55, 0.15, 0.15, 0.15)
CHORD_ROOTS = {"A": 220.0, "C": 261.63, "E": 164.81}
QUALITIES = {"major": (0, 4, 7), "minor": (0, 3, 7)}
TEMPOS = {"slow": 90, "medium": 120, "fast": 160}
RHYTHMS = {"hi-hat pattern": 2, "kick drum beat": 1}  # onsets per beat

#: Caption combinations never drawn in the ``train`` split (the ``heldout`` split draws only these).
HELDOUT = (
    {"family": "tone", "wave": "square", "pitch": 330},
    {"family": "tone", "wave": "sawtooth", "pitch": 110},
    {"family": "chord", "quality": "minor", "root": "E"},
    {"family": "rhythm", "pattern": "kick drum beat", "tempo": "fast"},
)

SPLITS = ("train", "heldout", "test")


def register(pitch: float) -> str:
    """'low' (<= 220 Hz), 'mid' (<= 440 Hz) or 'high'."""
    return "low" if pitch <= 220 else ("mid" if pitch <= 440 else "high")


def is_heldout(params: dict) -> bool:
    """Whether ``params`` matches one of the ``HELDOUT`` combinations."""
    return any(all(params.get(k) == v for k, v in h.items()) for h in HELDOUT)


def caption(params: dict) -> str:
    """The caption of a parameter dict (see the module docstring for the templates)."""
    fam = params["family"]
    if fam == "tone":
        text = f"a {register(params['pitch'])} {params['wave']} tone at {params['pitch']} Hz"
        return text + (f" with {params['mod']}" if params.get("mod") else "")
    if fam == "chord":
        return f"a {params['quality']} chord on {params['root']}"
    if fam == "sweep":
        return f"a {params['direction']} sine sweep"
    if fam == "noise":
        return f"a {params['length']} burst of {params['color']} noise"
    if fam == "hit":
        return f"a {params['drum']} drum hit"
    if fam == "rhythm":
        return f"a {params['tempo']} {params['pattern']} at {TEMPOS[params['tempo']]} bpm"
    raise ValueError(f"unknown family {fam!r}; expected one of {FAMILIES}")


def _choice(rng: np.random.Generator, seq, p=None):
    return seq[int(rng.choice(len(seq), p=p))]


def sample_params(rng: np.random.Generator, family: str | None = None) -> dict:
    """Draw one clip's parameters (family by ``FAMILY_WEIGHTS`` unless given)."""
    fam = family or _choice(rng, FAMILIES, p=FAMILY_WEIGHTS)
    if fam == "tone":
        p = {"wave": _choice(rng, WAVES), "pitch": _choice(rng, PITCHES), "mod": _choice(rng, MODULATIONS, MOD_WEIGHTS)}
    elif fam == "chord":
        p = {"quality": _choice(rng, tuple(QUALITIES)), "root": _choice(rng, tuple(CHORD_ROOTS))}
    elif fam == "sweep":
        p = {"direction": _choice(rng, ("rising", "falling"))}
    elif fam == "noise":
        p = {"color": _choice(rng, ("white", "pink")), "length": _choice(rng, ("short", "long"))}
    elif fam == "hit":
        p = {"drum": _choice(rng, ("kick", "snare"))}
    elif fam == "rhythm":
        p = {"pattern": _choice(rng, tuple(RHYTHMS)), "tempo": _choice(rng, tuple(TEMPOS))}
    else:
        raise ValueError(f"unknown family {fam!r}; expected one of {FAMILIES}")
    return {"family": fam, **p}


# ------------------------------------------------------------------------------------------- rendering

_TABLE = 8192


def _wavetable(wave: str, f0: float) -> np.ndarray:
    """One period (``_TABLE`` points) of a band-limited sine/square/sawtooth whose harmonics stay < 16 kHz."""
    ph = np.arange(_TABLE) / _TABLE * 2 * np.pi
    if wave == "sine":
        return np.sin(ph)
    out = np.zeros(_TABLE)
    for n in range(1, max(1, int(16000 // f0)) + 1):
        if wave == "square" and n % 2 == 0:
            continue
        out += np.sin(n * ph) / n
    # Normalise so the three waveforms have comparable peak level.
    return out / (np.pi / 4 if wave == "square" else np.pi / 2)


def _additive(wave: str, f0: float, t: np.ndarray, phase0: float, fm: np.ndarray | None = None) -> np.ndarray:
    """Band-limited sine/square/sawtooth at f0 (Hz) over times t (s); fm: optional relative frequency deviation."""
    if wave not in WAVES:
        raise ValueError(f"unknown wave {wave!r}; expected one of {WAVES}")
    cycles = f0 * (t + (np.cumsum(fm) / SAMPLE_RATE if fm is not None else 0.0)) + phase0 / (2 * np.pi)
    pos = (cycles % 1.0) * _TABLE
    i0 = pos.astype(np.int64)
    frac = pos - i0
    table = _wavetable(wave, f0)
    return table[i0 % _TABLE] * (1 - frac) + table[(i0 + 1) % _TABLE] * frac


def _envelope(n: int, attack: float, release: float) -> np.ndarray:
    env = np.ones(n)
    a, r = max(1, int(attack * SAMPLE_RATE)), max(1, int(release * SAMPLE_RATE))
    env[:a] = np.linspace(0, 1, a)
    env[-r:] *= np.linspace(1, 0, r)
    return env


def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.shape[0], dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / np.sqrt(f), n)
    return x / (np.abs(x).max() + 1e-9)


def _hit(drum: str, rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    if drum == "kick":
        f = 50 + 110 * np.exp(-t / 0.04)
        x = np.sin(2 * np.pi * np.cumsum(f) / SAMPLE_RATE) * np.exp(-t / 0.18)
    elif drum == "snare":
        noise = rng.standard_normal(n) * np.exp(-t / 0.07)
        body = np.sin(2 * np.pi * 190 * t) * np.exp(-t / 0.05)
        x = 0.6 * noise / 2.5 + 0.5 * body
    elif drum == "hihat":
        noise = rng.standard_normal(n)
        noise = np.diff(noise, prepend=0.0)  # tilt towards the highs
        x = noise * np.exp(-t / 0.02) / 3.0
    else:
        raise ValueError(drum)
    return x


def render(params: dict, rng: np.random.Generator, duration: float, window: int = WINDOW) -> np.ndarray:
    """Render ``params`` as stereo float32 (2, window): ``duration`` seconds of sound, then silence."""
    n = min(window, int(round(duration * SAMPLE_RATE)))
    t = np.arange(n) / SAMPLE_RATE
    fam = params["family"]
    if fam == "tone":
        fm, am = None, np.ones(n)
        mod = params.get("mod")
        if mod == "vibrato":
            fm = 0.02 * np.sin(2 * np.pi * 5.5 * t)
        elif mod == "slow tremolo":
            am = 1 - 0.45 * (1 + np.sin(2 * np.pi * 3.0 * t))
        elif mod == "fast tremolo":
            am = 1 - 0.45 * (1 + np.sin(2 * np.pi * 12.0 * t))
        # Oscillators are retriggered (phase 0 at the onset, as a synth voice does): with a random start phase
        # a tone's hop-32 latent averages to zero over the data, and a text-conditioned denoiser gets almost no
        # first-order signal about pitch (it then ignores the prompt). The draw is kept so that the rest of
        # the random stream (duration, level, pan) is unchanged.
        rng.uniform(0, 2 * np.pi)
        x = _additive(params["wave"], float(params["pitch"]), t, 0.0, fm) * am
        x = x * _envelope(n, 0.01, 0.05)
    elif fam == "chord":
        root = CHORD_ROOTS[params["root"]]
        x = sum(_additive("sawtooth", root * 2 ** (s / 12), t, 0.0 * rng.uniform(0, 2 * np.pi))
                for s in QUALITIES[params["quality"]]) / 2.2
        x = x * _envelope(n, 0.03, 0.15)
    elif fam == "sweep":
        lo, hi = 200.0, 1600.0
        f0, f1 = (lo, hi) if params["direction"] == "rising" else (hi, lo)
        f = f0 * (f1 / f0) ** (t / t[-1])
        x = np.sin(2 * np.pi * np.cumsum(f) / SAMPLE_RATE) * _envelope(n, 0.01, 0.05)
    elif fam == "noise":
        m = int((rng.uniform(0.15, 0.3) if params["length"] == "short" else rng.uniform(0.8, 1.0)) * SAMPLE_RATE)
        m = min(m, n)
        burst = _pink(rng, m) if params["color"] == "pink" else rng.uniform(-1, 1, m)
        x = np.zeros(n)
        x[:m] = burst * _envelope(m, 0.005, 0.03) * 0.8
    elif fam == "hit":
        x = _hit(params["drum"], rng, n)
    elif fam == "rhythm":
        drum = "hihat" if params["pattern"] == "hi-hat pattern" else "kick"
        period = 60.0 / TEMPOS[params["tempo"]] / RHYTHMS[params["pattern"]]
        x = np.zeros(n)
        hit_len = int(min(period, 0.25) * SAMPLE_RATE)
        for k in range(int(duration / period) + 1):
            s = int(round(k * period * SAMPLE_RATE))
            if s >= n:
                break
            h = _hit(drum, rng, min(hit_len, n - s)) * rng.uniform(0.8, 1.0)
            x[s:s + h.shape[0]] += h
    else:
        raise ValueError(f"unknown family {fam!r}; expected one of {FAMILIES}")
    x = x / (np.abs(x).max() + 1e-9) * rng.uniform(0.35, 0.6)
    pan = rng.uniform(-0.25, 0.25)
    out = np.zeros((2, window), dtype=np.float32)
    out[0, :n] = x * math.cos((pan + 1) * math.pi / 4) * math.sqrt(2)
    out[1, :n] = x * math.sin((pan + 1) * math.pi / 4) * math.sqrt(2)
    return out


# --------------------------------------------------------------------------------------------- clips

@dataclasses.dataclass
class Clip:
    """One example: audio float32 (2, window), caption, parameters, seconds of sound (the rest is silence)."""
    audio: np.ndarray
    caption: str
    params: dict
    seconds: float


_SPLIT_SALT = {"train": 0, "heldout": 1, "test": 2}


def make_clip(seed: int, index: int, split: str = "train", window: int = WINDOW,
              family: str | None = None, params: dict | None = None) -> Clip:
    """Clip number ``index`` of the dataset ``(seed, split)``; a pure function of its arguments.

    split: ``train`` (never a ``HELDOUT`` combination), ``heldout`` (only those), ``test`` (the train
    distribution with a different random stream). ``family``/``params`` force what is drawn.
    """
    if split not in _SPLIT_SALT:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if window < MIN_SECONDS * SAMPLE_RATE:
        raise ValueError(f"window must hold at least {MIN_SECONDS} s ({int(MIN_SECONDS * SAMPLE_RATE)} samples), "
                         f"got {window}")
    rng = np.random.default_rng([int(seed), int(index), _SPLIT_SALT[split]])
    if params is None:
        if split == "heldout":
            params = dict(HELDOUT[int(rng.integers(len(HELDOUT)))])
            params = {**sample_params(rng, params["family"]), **params}
            if params["family"] == "tone":
                params["mod"] = None
        else:
            while True:
                params = sample_params(rng, family)
                if not is_heldout(params):
                    break
    max_sec = window / SAMPLE_RATE
    duration = round(float(rng.uniform(MIN_SECONDS, max_sec)), 2)
    duration = min(duration, max_sec)
    audio = render(params, rng, duration, window)
    return Clip(audio=audio, caption=caption(params), params=params, seconds=duration)


class SyntheticDataset:
    """``n`` clips of ``(seed, split)`` as a map-style dataset: item i -> {"audio" float32 tensor (2, window),
    "prompt", "seconds_total", "params"}. Works with ``torch.utils.data.DataLoader`` (see ``collate``)."""

    def __init__(self, n: int, seed: int = 0, split: str = "train", window: int = WINDOW,
                 family: str | None = None):
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n, self.seed, self.split, self.window, self.family = int(n), int(seed), split, int(window), family

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        import torch
        if not 0 <= i < self.n:
            raise IndexError(i)
        c = make_clip(self.seed, i, self.split, self.window, self.family)
        return {"audio": torch.from_numpy(c.audio), "prompt": c.caption, "seconds_total": c.seconds,
                "params": c.params}

    @staticmethod
    def collate(items: list[dict]) -> dict:
        import torch
        return {"audio": torch.stack([it["audio"] for it in items]), "prompts": [it["prompt"] for it in items],
                "seconds_total": [it["seconds_total"] for it in items], "params": [it["params"] for it in items]}


# ------------------------------------------------------------------------------------ caption targets

_HZ = re.compile(r"(\d+(?:\.\d+)?)\s*hz")
_BPM = re.compile(r"(\d+(?:\.\d+)?)\s*bpm")


def describe(text: str) -> dict:
    """Measurable targets of a caption (any text): {"family", "f0" (Hz or None), "onset_rate" (per s or None)}.

    f0 comes from "<number> Hz" (tones) or the chord root; the onset rate from "<number> bpm" with eighth
    notes for hi-hats and quarter notes otherwise. Unknown wording gives family None.
    """
    s = text.lower()
    fam = None
    if "tone" in s:
        fam = "tone"
    elif "chord" in s:
        fam = "chord"
    elif "sweep" in s:
        fam = "sweep"
    elif "noise" in s:
        fam = "noise"
    elif "bpm" in s or "pattern" in s or "beat" in s:
        fam = "rhythm"
    elif "hit" in s:
        fam = "hit"
    f0 = None
    m = _HZ.search(s)
    if m:
        f0 = float(m.group(1))
    elif fam == "chord":
        for name, freq in CHORD_ROOTS.items():
            if re.search(rf"\bon {name.lower()}\b", s):
                f0 = freq
    rate = None
    m = _BPM.search(s)
    if m:
        rate = float(m.group(1)) / 60.0 * (2 if "hi-hat" in s else 1)
    return {"family": fam, "f0": f0, "onset_rate": rate}


#: Prompts used by the evaluation: seen tones at several registers, chords, a rhythm, and held-out combinations.
EVAL_PROMPTS = (
    "a low sine tone at 220 Hz",
    "a low sine tone at 110 Hz",
    "a mid sawtooth tone at 440 Hz",
    "a high square tone at 880 Hz",
    "a mid sine tone at 330 Hz with vibrato",
    "a major chord on A",
    "a fast hi-hat pattern at 160 bpm",
    "a slow kick drum beat at 90 bpm",
    "a short burst of white noise",
    "a kick drum hit",
)
HELDOUT_PROMPTS = ("a mid square tone at 330 Hz", "a low sawtooth tone at 110 Hz")


def enumerate_params() -> list[dict]:
    """Every parameter combination of every family (modulation included for tones), train and held-out."""
    out: list[dict] = []
    for w in WAVES:
        for f in PITCHES:
            for m in MODULATIONS:
                out.append({"family": "tone", "wave": w, "pitch": f, "mod": m})
    for q in QUALITIES:
        for r in CHORD_ROOTS:
            out.append({"family": "chord", "quality": q, "root": r})
    out += [{"family": "sweep", "direction": d} for d in ("rising", "falling")]
    out += [{"family": "noise", "color": c, "length": ln} for c in ("white", "pink") for ln in ("short", "long")]
    out += [{"family": "hit", "drum": d} for d in ("kick", "snare")]
    out += [{"family": "rhythm", "pattern": p, "tempo": t} for p in RHYTHMS for t in TEMPOS]
    return out


def params_for_caption(text: str) -> dict | None:
    """The parameters whose caption is exactly ``text`` (None when no synthetic clip has that caption)."""
    global _BY_CAPTION
    if _BY_CAPTION is None:
        _BY_CAPTION = {caption(p): p for p in enumerate_params()}
    p = _BY_CAPTION.get(text.strip())
    return dict(p) if p is not None else None


_BY_CAPTION: dict | None = None
