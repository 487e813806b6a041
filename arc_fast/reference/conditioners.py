"""Conditioners in the Stable Audio layout: text (T5 from a local path or the local Hugging Face cache, or the
bundled hash encoder) and
numbers (``seconds_total``), assembled by ``MultiConditioner`` into the DiT's cross-attention tokens and
global embedding.

State-dict keys match Stable Audio's ``conditioner.conditioners.<id>.*``. The T5 weights are not part of
a Stable Audio checkpoint (the reference keeps the frozen T5 outside the module tree); the same here.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import typing as tp

import torch
from torch import nn


class Conditioner(nn.Module):
    """Base: ``proj_out`` is Linear(dim, output_dim) when the widths differ (or project_out), else Identity."""

    def __init__(self, dim: int, output_dim: int, project_out: bool = False):
        super().__init__()
        self.dim = dim
        self.output_dim = output_dim
        self.proj_out = nn.Linear(dim, output_dim) if (dim != output_dim or project_out) else nn.Identity()


class LearnedPositionalEmbedding(nn.Module):
    """x (N,) -> [x, sin(2 pi x w), cos(2 pi x w)] (N, dim + 1); key ``weights`` (dim/2,)."""

    def __init__(self, dim: int):
        super().__init__()
        if dim % 2:
            raise ValueError(f"dim must be even, got {dim}")
        self.weights = nn.Parameter(torch.randn(dim // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, None]
        freqs = x * self.weights[None] * 2 * math.pi
        return torch.cat([x, freqs.sin(), freqs.cos()], dim=-1)


class NumberEmbedder(nn.Module):
    """Number -> features: ``embedding.0`` learned Fourier features, ``embedding.1`` Linear(dim + 1, features)."""

    def __init__(self, features: int, dim: int = 256):
        super().__init__()
        self.features = features
        self.embedding = nn.Sequential(LearnedPositionalEmbedding(dim), nn.Linear(dim + 1, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        return self.embedding(x.reshape(-1)).view(*shape, self.features)


class NumberConditioner(Conditioner):
    """Floats clamped to [min_val, max_val], normalised to [0, 1], embedded: returns ((B, 1, D), mask (B, 1))."""

    def __init__(self, output_dim: int, min_val: float = 0, max_val: float = 1):
        super().__init__(output_dim, output_dim)
        if max_val <= min_val:
            raise ValueError(f"max_val ({max_val}) must exceed min_val ({min_val})")
        self.min_val, self.max_val = float(min_val), float(max_val)
        self.embedder = NumberEmbedder(features=output_dim)

    def forward(self, floats: tp.Sequence[float], device=None):
        try:
            vals = [float(v) for v in floats]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"number conditioner expects numbers, got {list(floats)!r}") from exc
        dtype = next(self.embedder.parameters()).dtype
        x = torch.tensor(vals, device=device).clamp(self.min_val, self.max_val)
        x = ((x - self.min_val) / (self.max_val - self.min_val)).to(dtype)
        emb = self.embedder(x).unsqueeze(1)
        return emb, torch.ones(emb.shape[0], 1, device=device)


_WORD = re.compile(r"[a-z]+|\d+(?:\.\d+)?|[^\sa-z\d]")


def tokenize_words(text: str) -> list[str]:
    """Lower-case words, numbers and punctuation marks of ``text``."""
    return _WORD.findall(text.lower())


def hash_token(token: str, vocab_size: int) -> int:
    """Stable (process-independent) bucket in [2, vocab_size) for a token; 0 is padding, 1 is reserved."""
    h = int.from_bytes(hashlib.blake2s(token.encode("utf-8"), digest_size=8).digest(), "little")
    return 2 + h % (vocab_size - 2)


class HashTextEncoder(Conditioner):
    """The bundled, download-free text encoder: hashed word embeddings + learned positions + a small
    pre-norm transformer encoder. texts (B strings) -> (tokens (B, max_length, output_dim), mask (B, max_length)).

    Padded positions are zeroed (as the T5 conditioner does), so the DiT sees the same kind of input.
    """

    def __init__(self, output_dim: int, dim: int = 128, vocab_size: int = 8192, max_length: int = 32,
                 num_layers: int = 2, num_heads: int = 4, project_out: bool = False):
        super().__init__(dim, output_dim, project_out=project_out)
        self.vocab_size, self.max_length = vocab_size, max_length
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.randn(max_length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, num_heads, dim_feedforward=4 * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(dim)

    def token_ids(self, texts: tp.Sequence[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (B, max_length) int64, mask (B, max_length) bool); words beyond max_length are truncated."""
        ids = torch.zeros(len(texts), self.max_length, dtype=torch.long)
        for i, text in enumerate(texts):
            toks = [hash_token(w, self.vocab_size) for w in tokenize_words(text)][: self.max_length]
            if toks:
                ids[i, : len(toks)] = torch.tensor(toks)
        return ids.to(device), (ids != 0).to(device)

    def forward(self, texts: tp.Sequence[str], device=None):
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not a single string")
        ids, mask = self.token_ids(texts, device)
        x = self.token_embed(ids) + self.pos_embed[None].to(device)
        # An all-padding row would make the encoder's softmax NaN: let such rows attend to position 0.
        key_pad = ~mask
        key_pad[:, 0] = False
        x = self.encoder(x, src_key_padding_mask=key_pad)
        x = self.proj_out(self.final_norm(x))
        return x * mask.unsqueeze(-1).to(x.dtype), mask


def hf_cache_snapshot(repo_id: str) -> str | None:
    """The local Hugging Face hub cache folder of model ``repo_id`` ("t5-base", "google/flan-t5-base"), or None.

    Reads the hub's cache layout (``<cache>/models--<org>--<name>/refs/main`` -> ``snapshots/<commit>/``) where
    the hub puts it: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``. No network, no
    import of huggingface_hub; a snapshot counts only if it holds a ``config.json``.
    """
    if not repo_id or repo_id.startswith(("/", ".")) or repo_id.count("/") > 1:
        return None
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface"), "hub")
    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    snapshots = os.path.join(repo, "snapshots")
    candidates = []
    try:
        with open(os.path.join(repo, "refs", "main")) as f:
            candidates.append(f.read().strip())
    except OSError:
        pass
    if os.path.isdir(snapshots):  # no refs/main (e.g. a copied cache): any complete snapshot, newest first
        candidates += sorted(os.listdir(snapshots), key=lambda c: -os.path.getmtime(os.path.join(snapshots, c)))
    for commit in candidates:
        folder = os.path.join(snapshots, commit)
        if commit and os.path.isfile(os.path.join(folder, "config.json")):
            return folder
    return None


def resolve_t5_path(t5_model_name: str, t5_path: str | None = None) -> str:
    """The local folder the T5 encoder is loaded from, first match wins (nothing is ever downloaded):

    1. ``t5_path`` (the config's), 2. ``t5_model_name`` when it is a folder, 3. the model of that name in the
    local Hugging Face cache (``hf_cache_snapshot``; what ``from_pretrained(name, local_files_only=True)``
    finds), 4. the ``ARC_FAST_T5_PATH`` environment variable. Raises FileNotFoundError naming every place.
    """
    if t5_path:
        if not os.path.isdir(t5_path):
            raise FileNotFoundError(f"t5_path {t5_path!r} is not a folder (give the folder of a saved T5 encoder)")
        return t5_path
    if os.path.isdir(t5_model_name):
        return t5_model_name
    cached = hf_cache_snapshot(t5_model_name)
    if cached:
        return cached
    env = os.environ.get("ARC_FAST_T5_PATH")
    if env:
        if not os.path.isdir(env):
            raise FileNotFoundError(f"ARC_FAST_T5_PATH={env!r} is not a folder (give the folder of a saved T5 encoder)")
        return env
    raise FileNotFoundError(
        f"T5 encoder {t5_model_name!r} not found: not a folder, not in the local Hugging Face cache, and "
        f"ARC_FAST_T5_PATH is not set; download it once (e.g. `huggingface-cli download {t5_model_name}`, or "
        f"save it to a folder and set ARC_FAST_T5_PATH or the config's 't5_path'): arc-fast never downloads at "
        f"run time")


class T5Conditioner(Conditioner):
    """Frozen T5 encoder loaded from local files only (``resolve_t5_path``: the config's ``t5_path``, a folder
    named by ``t5_model_name``, the local Hugging Face cache, then ``ARC_FAST_T5_PATH``; nothing is downloaded).

    texts -> (embeddings (B, max_length, output_dim) with padded rows zeroed, mask (B, max_length) bool).
    Needs the optional dependency ``transformers`` (pip install 'arc-fast[t5]').
    """

    T5_MODEL_DIMS = {"t5-small": 512, "t5-base": 768, "t5-large": 1024, "t5-3b": 1024, "t5-11b": 1024,
                     "google/flan-t5-small": 512, "google/flan-t5-base": 768, "google/flan-t5-large": 1024,
                     "google/flan-t5-xl": 2048, "google/flan-t5-xxl": 4096, "google/t5-v1_1-xl": 2048,
                     "google/t5-v1_1-xxl": 4096}

    def __init__(self, output_dim: int, t5_model_name: str = "t5-base", max_length: int = 128,
                 enable_grad: bool = False, project_out: bool = False, t5_path: str | None = None,
                 half: bool = True):
        try:
            from transformers import AutoTokenizer, T5EncoderModel
        except ImportError as exc:
            raise ImportError("the T5 text conditioner needs `transformers`: pip install 'arc-fast[t5]'") from exc
        path = resolve_t5_path(t5_model_name, t5_path)
        model = T5EncoderModel.from_pretrained(path, local_files_only=True)
        dim = model.config.d_model  # the loaded encoder's width (T5_MODEL_DIMS lists the same for known names)
        super().__init__(dim, output_dim, project_out=project_out)
        self.t5_source = path  # the folder it was loaded from (load notes, bug reports)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.max_length = max_length
        self.enable_grad = enable_grad
        model = model.train(enable_grad).requires_grad_(enable_grad)
        # Kept out of the module tree like the reference: its weights are not part of the checkpoint.
        self.__dict__["model"] = model
        self.half = half

    def forward(self, texts: tp.Sequence[str], device=None):
        device = torch.device(device or "cpu")
        dtype = torch.float16 if (self.half and device.type == "cuda") else torch.float32
        self.model.to(device=device, dtype=dtype)
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, padding="max_length",
                             return_tensors="pt")
        ids = enc["input_ids"].to(device)
        mask = enc["attention_mask"].to(device).bool()
        self.model.eval()
        with torch.set_grad_enabled(self.enable_grad):
            emb = self.model(input_ids=ids, attention_mask=mask)["last_hidden_state"]
        if not isinstance(self.proj_out, nn.Identity):
            emb = emb.to(next(self.proj_out.parameters()).dtype)
        emb = self.proj_out(emb.float() if isinstance(self.proj_out, nn.Identity) else emb)
        return emb * mask.unsqueeze(-1).to(emb.dtype), mask


CONDITIONER_TYPES = {"t5": T5Conditioner, "number": NumberConditioner, "hash_text": HashTextEncoder}


class MultiConditioner(nn.Module):
    """Runs each conditioner on its field of the metadata dicts: keys ``conditioners.<id>.*``."""

    def __init__(self, conditioners: dict[str, nn.Module], default_keys: dict[str, str] | None = None):
        super().__init__()
        self.conditioners = nn.ModuleDict(conditioners)
        self.default_keys = default_keys or {}

    def forward(self, metadata: tp.Sequence[dict], device=None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if not metadata:
            raise ValueError("conditioning needs at least one item (got an empty batch)")
        out = {}
        for key, cond in self.conditioners.items():
            field = key
            if field not in metadata[0]:
                field = self.default_keys.get(key, key)
                if field not in metadata[0]:
                    raise ValueError(f"conditioning input {key!r} missing from {sorted(metadata[0])}")
            values = [m[field] for m in metadata]
            if isinstance(values[0], (list, tuple)) and len(values[0]) == 1:
                values = [v[0] for v in values]
            out[key] = cond(values, device)
        return out


def conditioner_from_config(config: dict) -> MultiConditioner:
    """Build from a Stable Audio ``conditioning`` block: {"configs": [{"id", "type", "config"}], "cond_dim"}."""
    cond_dim = config.get("cond_dim")
    if cond_dim is None:
        raise ValueError("conditioning config needs 'cond_dim'")
    conds = {}
    for item in config.get("configs", []):
        kind = item.get("type")
        if kind not in CONDITIONER_TYPES:
            raise ValueError(f"conditioner type {kind!r} (id {item.get('id')!r}) is not supported; "
                             f"supported: {', '.join(CONDITIONER_TYPES)}")
        conds[item["id"]] = CONDITIONER_TYPES[kind](output_dim=cond_dim, **item.get("config", {}))
    return MultiConditioner(conds, default_keys=config.get("default_keys", {}))


def assemble_dit_inputs(cond: dict, cross_attn_ids: tp.Sequence[str], global_ids: tp.Sequence[str]) -> dict:
    """Stable Audio's conditioning assembly: cross-attention tokens concatenated along the sequence in id
    order (mask likewise), global conds concatenated along channels ((B, 1, D) tokens squeezed to (B, D))."""
    out = {}
    if cross_attn_ids:
        out["cross_attn_cond"] = torch.cat([cond[k][0] for k in cross_attn_ids], dim=1)
        out["cross_attn_cond_mask"] = torch.cat([cond[k][1].bool() for k in cross_attn_ids], dim=1)
    if global_ids:
        g = torch.cat([cond[k][0] for k in global_ids], dim=-1)
        out["global_embed"] = g.squeeze(1) if g.dim() == 3 else g
    return out
