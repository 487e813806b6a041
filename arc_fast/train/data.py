"""Training data for ARC: pre-encoded latents + prompts, stored as a folder of safetensors shards.

Shard format (one ``*.safetensors`` file per shard):
* tensor ``"latents"``: float (N, C, T), C = the model's latent channels (64 for SAO), T frames;
* prompts: safetensors metadata ``"prompts"`` = a JSON list of N strings, and optionally ``"seconds_total"``
  = a JSON list of N numbers (default: T * hop / sample_rate when the dataset knows them, else 0);
  or, instead of metadata, a sidecar ``<shard>.jsonl`` with N lines ``{"prompt": ..., "seconds_total": ...}``.

``LatentDataset`` checks every shard when it is opened (header only: the latents are read lazily per item)
and raises ``ShardError`` naming the file for a missing key, wrong rank or channel count, a prompt count
that differs from N, a ``seconds_total`` that is not a finite number >= 0, or non-finite latents.
``build_latent_dataset`` writes such shards from an audio folder and a captions file with the pipeline's
autoencoder.

``ResumableBatchSampler`` gives each process its slice of a seeded per-epoch shuffle (through
``torch.utils.data.DistributedSampler``) and can start at any batch, so a resumed run reads the same batches
an uninterrupted run would have.
"""
from __future__ import annotations

import csv
import json
import math
import os
import typing as tp

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from ..audio import read_audio

SIDE_SUFFIX = ".jsonl"


class ShardError(ValueError):
    """A latent shard that cannot be used (the message names the file and the problem)."""


def _read_header(path: str):
    from safetensors import safe_open
    try:
        with safe_open(path, framework="pt") as f:
            keys = list(f.keys())
            meta = f.metadata() or {}
            shape = tuple(f.get_slice("latents").get_shape()) if "latents" in keys else None
            dtype = f.get_slice("latents").get_dtype() if "latents" in keys else None
    except ShardError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoding failure is one clear error naming the file
        raise ShardError(f"{path}: not a readable safetensors file ({exc.__class__.__name__}: {exc})") from exc
    return keys, meta, shape, dtype


def _check_seconds(value, where: str) -> None:
    # JSON parses NaN and Infinity; the conditioner would turn them into a non-finite loss steps later.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ShardError(f"{where} must be a finite number of seconds >= 0, got {value!r}")


def _read_records(path: str, meta: dict, n: int) -> list[dict]:
    side = os.path.splitext(path)[0] + SIDE_SUFFIX
    if "prompts" in meta:
        try:
            prompts = json.loads(meta["prompts"])
            seconds = json.loads(meta["seconds_total"]) if "seconds_total" in meta else None
        except json.JSONDecodeError as exc:
            raise ShardError(f"{path}: metadata 'prompts'/'seconds_total' is not valid JSON ({exc})") from exc
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise ShardError(f"{path}: metadata 'prompts' must be a JSON list of strings")
        if seconds is not None and (not isinstance(seconds, list) or len(seconds) != len(prompts)):
            raise ShardError(f"{path}: metadata 'seconds_total' must be a JSON list of {len(prompts)} numbers")
        for i, sec in enumerate(seconds or []):
            _check_seconds(sec, f"{path}: metadata 'seconds_total'[{i}]")
        records = [{"prompt": p, "seconds_total": None if seconds is None else float(s)}
                   for p, s in zip(prompts, seconds or [None] * len(prompts))]
    elif os.path.isfile(side):
        records = []
        with open(side) as f:
            for ln, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ShardError(f"{side}: line {ln} is not valid JSON ({exc})") from exc
                if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
                    raise ShardError(f"{side}: line {ln} needs a string 'prompt'")
                sec = rec.get("seconds_total")
                if sec is not None:
                    _check_seconds(sec, f"{side}: line {ln} 'seconds_total'")
                records.append({"prompt": rec["prompt"], "seconds_total": None if sec is None else float(sec)})
    else:
        raise ShardError(f"{path}: no prompts (neither a 'prompts' metadata entry nor a sidecar {side})")
    if len(records) != n:
        raise ShardError(f"{path}: {len(records)} prompts for {n} latents (one prompt per latent is required)")
    return records


class LatentDataset(Dataset):
    """Latents + prompts from a folder of shards (sorted by file name; sub-folders are not searched).

    latent_channels: the model's latent channel count (checked per shard when given).
    crop_frames: if set, every item is a crop of this many frames (random per epoch, reproducible from
    ``seed``); shards with fewer frames are an error. Without it, every shard must have the same T.
    default_seconds: seconds_total for items whose shard gives none.

    Items (``dataset[i]`` or ``dataset[(i, epoch)]``): {"latents": fp32 (C, T), "prompt": str,
    "seconds_total": float}. ``collate`` stacks a list of items into a batch.
    """

    def __init__(self, folder: str, latent_channels: int | None = None, crop_frames: int | None = None,
                 default_seconds: float | None = None, seed: int = 0):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"latent dataset folder not found: {folder}")
        self.folder = folder
        self.files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".safetensors"))
        if not self.files:
            raise ShardError(f"{folder}: no *.safetensors shards (build them with build_latent_dataset)")
        self.crop_frames, self.seed, self.default_seconds = crop_frames, int(seed), default_seconds
        self.index: list[tuple[int, int]] = []  # (shard, row) per item
        self.records: list[dict] = []
        self.shapes: list[tuple[int, int, int]] = []
        for si, path in enumerate(self.files):
            keys, meta, shape, dtype = _read_header(path)
            if shape is None:
                raise ShardError(f"{path}: no 'latents' tensor (found {keys or 'no tensors'})")
            if len(shape) != 3:
                raise ShardError(f"{path}: 'latents' must be (N, C, T), got shape {shape}")
            if dtype not in ("F32", "F16", "BF16", "F64"):
                raise ShardError(f"{path}: 'latents' must be floating point, got {dtype}")
            if latent_channels is not None and shape[1] != latent_channels:
                raise ShardError(f"{path}: latents have {shape[1]} channels, the model expects {latent_channels}")
            if shape[0] == 0:
                raise ShardError(f"{path}: empty shard (0 latents)")
            if crop_frames is not None and shape[2] < crop_frames:
                raise ShardError(f"{path}: latents have {shape[2]} frames, fewer than crop_frames={crop_frames}")
            self.records.extend(_read_records(path, meta, shape[0]))
            self.index.extend((si, r) for r in range(shape[0]))
            self.shapes.append(shape)
        lengths = {s[2] for s in self.shapes}
        if crop_frames is None and len(lengths) > 1:
            raise ShardError(f"{folder}: shards have different lengths {sorted(lengths)}; set crop_frames to train "
                             f"on fixed-length crops")
        self.frames = crop_frames if crop_frames is not None else lengths.pop()
        self.channels = self.shapes[0][1]
        self._handles: dict[int, tp.Any] = {}

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = {}  # open files do not cross process boundaries (DataLoader workers)
        return state

    def _handle(self, si: int):
        h = self._handles.get(si)
        if h is None:
            from safetensors import safe_open
            h = self._handles[si] = safe_open(self.files[si], framework="pt")
        return h

    def __getitem__(self, key) -> dict:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        si, row = self.index[i]
        lat = self._handle(si).get_slice("latents")[row].float()  # (C, T)
        if not torch.isfinite(lat).all():
            raise ShardError(f"{self.files[si]}: latents row {row} has NaN/Inf values")
        if self.crop_frames is not None and lat.shape[-1] > self.crop_frames:
            # Seeded by (seed, epoch, item): the crop does not depend on worker count or resume point.
            rng = np.random.default_rng([self.seed, int(epoch), int(i)])
            start = int(rng.integers(0, lat.shape[-1] - self.crop_frames + 1))
            lat = lat[:, start:start + self.crop_frames]
        rec = self.records[i]
        sec = rec["seconds_total"] if rec["seconds_total"] is not None else self.default_seconds
        return {"latents": lat.contiguous(), "prompt": rec["prompt"], "seconds_total": float(sec or 0.0)}


def collate(items: list[dict]) -> dict:
    """Stack items: {"latents": (B, C, T) fp32, "prompts": [str] * B, "seconds_total": [float] * B}."""
    return {"latents": torch.stack([it["latents"] for it in items]), "prompts": [it["prompt"] for it in items],
            "seconds_total": [it["seconds_total"] for it in items]}


class ResumableBatchSampler(Sampler):
    """Batches of (index, epoch) pairs for one process, endlessly, starting at batch ``start_batch``.

    Epoch e uses ``DistributedSampler(shuffle, seed)`` with ``set_epoch(e)``, so every process reads a
    disjoint slice of the same permutation; batches never straddle an epoch (the last partial batch is
    dropped). ``batches_per_epoch`` = len(slice) // batch_size.
    """

    def __init__(self, dataset_len: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, start_batch: int = 0):
        self.n, self.batch_size, self.rank, self.world = dataset_len, batch_size, rank, world_size
        self.seed, self.shuffle, self.start_batch = seed, shuffle, start_batch
        per_rank = math.ceil(dataset_len / world_size) if dataset_len >= world_size else 0
        self.batches_per_epoch = per_rank // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"dataset of {dataset_len} items is too small for batch_size {batch_size} x "
                             f"{world_size} process(es)")

    def __iter__(self):
        b = self.start_batch
        while True:
            epoch, offset = divmod(b, self.batches_per_epoch)
            ds = DistributedSampler(range(self.n), num_replicas=self.world, rank=self.rank, shuffle=self.shuffle,
                                    seed=self.seed, drop_last=False)
            ds.set_epoch(epoch)
            idx = list(ds)
            for j in range(offset, self.batches_per_epoch):
                yield [(i, epoch) for i in idx[j * self.batch_size:(j + 1) * self.batch_size]]
                b += 1

    def __len__(self) -> int:  # endless; DataLoader only needs this for progress estimates
        return 2 ** 62


# ----------------------------------------------------------------------------------------- building shards

AUDIO_EXTS = (".wav", ".flac", ".ogg", ".aiff", ".aif")


def read_captions(path: str) -> list[tuple[str, str]]:
    """(file, caption) pairs from a CSV with a header naming ``file`` and ``caption`` columns, or a JSONL with
    those keys per line (``path``/``prompt``/``text`` are accepted aliases)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"captions file not found: {path}")
    file_keys, cap_keys = ("file", "path", "filename"), ("caption", "prompt", "text")

    def pick(rec: dict, keys, what: str, where: str) -> str:
        for k in keys:
            if k in rec and rec[k] is not None:
                return str(rec[k])
        raise ValueError(f"{where}: no {what} column/key (expected one of {', '.join(keys)})")

    out = []
    if path.endswith(".jsonl"):
        with open(path) as f:
            for ln, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path}: line {ln} is not valid JSON ({exc})") from exc
                    where = f"{path}:{ln}"
                    out.append((pick(rec, file_keys, "file", where), pick(rec, cap_keys, "caption", where)))
    elif path.endswith(".csv"):
        with open(path, newline="") as f:
            for ln, rec in enumerate(csv.DictReader(f), 2):
                where = f"{path}:{ln}"
                out.append((pick(rec, file_keys, "file", where), pick(rec, cap_keys, "caption", where)))
    else:
        raise ValueError(f"captions file must be .csv or .jsonl, got {path}")
    if not out:
        raise ValueError(f"{path}: no captions")
    return out


def _write_shard(out_dir: str, index: int, latents: list[torch.Tensor], prompts: list[str], seconds: list[float],
                 files: list[str]) -> str:
    from safetensors.torch import save_file
    path = os.path.join(out_dir, f"shard-{index:05d}.safetensors")
    tmp = path + ".tmp"
    meta = {"prompts": json.dumps(prompts), "seconds_total": json.dumps(seconds), "files": json.dumps(files)}
    save_file({"latents": torch.stack(latents).contiguous()}, tmp, metadata=meta)
    os.replace(tmp, path)
    return path


@torch.no_grad()
def build_latent_dataset(pipeline, audio_folder: str, captions_file: str, out_dir: str, seconds: float | None = None,
                         shard_size: int = 256, batch_size: int = 8, resample: bool = False,
                         sample_latents: bool = False, device=None, progress: bool = False) -> list[str]:
    """Encode an audio folder into latent shards for ``LatentDataset``; returns the shard paths.

    pipeline: a loaded ``Pipeline`` (its ``autoencoder.encode`` and config's sample rate / hop are used).
    captions_file: CSV or JSONL of (file, caption); ``file`` is relative to ``audio_folder``.
    seconds: clip length (default: the model's window); clips are cropped from the start or zero-padded,
    and ``seconds_total`` records the real (unpadded) duration. Files must be at the model's sample rate
    unless ``resample=True`` (``arc_fast.audio.resample``). Channels follow ``arc_fast.audio.remix`` (mono is
    copied, to mono channels are averaged, else the first channels are kept or repeated).
    sample_latents: draw from the VAE posterior (default: its mean, deterministic).
    """
    sr, hop = pipeline.sample_rate, pipeline.hop
    channels = int(pipeline.config.get("audio_channels", 2))
    window = pipeline.sample_size if seconds is None else int(round(seconds * sr))
    window = max(hop, (window // hop) * hop)
    device = torch.device(device) if device is not None else pipeline.device
    pairs = read_captions(captions_file)
    os.makedirs(out_dir, exist_ok=True)
    enc = pipeline.autoencoder
    written, buf_lat, buf_p, buf_s, buf_f = [], [], [], [], []
    pending: list[tuple[torch.Tensor, str, float, str]] = []

    scale = float(getattr(pipeline, "latent_scale", 1.0))

    def flush_pending():
        if not pending:
            return
        audio = torch.stack([p[0] for p in pending]).to(device)
        # The DiT's latent space: the VAE output divided by the pretransform scale (what the sampler decodes).
        if not sample_latents and hasattr(pipeline, "encode"):
            lat = pipeline.encode(audio).float().cpu()
        else:
            lat = (enc.encode(audio, sample=sample_latents).float() / scale).cpu()
        for j, (_, cap, sec, fname) in enumerate(pending):
            buf_lat.append(lat[j])
            buf_p.append(cap)
            buf_s.append(sec)
            buf_f.append(fname)
        pending.clear()

    it = pairs
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(pairs, desc="encode")
    for fname, caption in it:
        path = fname if os.path.isabs(fname) else os.path.join(audio_folder, fname)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{captions_file}: audio file not found: {path}")
        audio = read_audio(path, sr, channels, resample)
        dur = min(audio.shape[-1], window) / sr
        audio = audio[:, :window]
        if audio.shape[-1] < window:
            audio = torch.nn.functional.pad(audio, (0, window - audio.shape[-1]))
        pending.append((audio, caption, round(dur, 4), fname))
        if len(pending) >= batch_size:
            flush_pending()
        while len(buf_lat) >= shard_size:
            written.append(_write_shard(out_dir, len(written), buf_lat[:shard_size], buf_p[:shard_size],
                                        buf_s[:shard_size], buf_f[:shard_size]))
            del buf_lat[:shard_size], buf_p[:shard_size], buf_s[:shard_size], buf_f[:shard_size]
    flush_pending()
    while buf_lat:
        written.append(_write_shard(out_dir, len(written), buf_lat[:shard_size], buf_p[:shard_size],
                                    buf_s[:shard_size], buf_f[:shard_size]))
        del buf_lat[:shard_size], buf_p[:shard_size], buf_s[:shard_size], buf_f[:shard_size]
    return written


def write_shard(path: str, latents: torch.Tensor, prompts: list[str], seconds_total: list[float] | None = None) -> str:
    """Write one shard (latents (N, C, T) + prompts in the metadata), atomically. Returns ``path``."""
    from safetensors.torch import save_file
    if latents.dim() != 3 or latents.shape[0] != len(prompts):
        raise ValueError(f"latents must be (N, C, T) with N = len(prompts) = {len(prompts)}, "
                         f"got {tuple(latents.shape)}")
    meta = {"prompts": json.dumps(list(prompts))}
    if seconds_total is not None:
        meta["seconds_total"] = json.dumps([float(s) for s in seconds_total])
    tmp = path + ".tmp"
    save_file({"latents": latents.detach().float().contiguous().cpu()}, tmp, metadata=meta)
    os.replace(tmp, path)
    return path
