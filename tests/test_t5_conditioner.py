"""Where the T5 text encoder comes from (``reference.conditioners.resolve_t5_path``): the config's folder, a folder
name, the local Hugging Face cache by model name (no network), then ARC_FAST_T5_PATH. The cache is a temporary
folder in the hub's layout, reached through HF_HOME / HF_HUB_CACHE; the model saved there is a tiny random T5."""
from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from arc_fast.reference.conditioners import hf_cache_snapshot, resolve_t5_path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_entry(hub: str, repo_id: str) -> str:
    """An empty snapshot folder for repo_id in the hub cache layout at ``hub``, with refs/main pointing at it."""
    repo = os.path.join(hub, "models--" + repo_id.replace("/", "--"))
    snap = os.path.join(repo, "snapshots", COMMIT)
    os.makedirs(snap)
    os.makedirs(os.path.join(repo, "refs"))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(COMMIT)
    return snap


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A private hub cache through HF_HOME (HF_HUB_CACHE unset), and no ARC_FAST_T5_PATH."""
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("ARC_FAST_T5_PATH", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return str(tmp_path / "hf" / "hub")


def test_resolution_order(hub, tmp_path, monkeypatch):
    env_dir = tmp_path / "env_t5"
    env_dir.mkdir()
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache.*ARC_FAST_T5_PATH"):
        resolve_t5_path("t5-base")
    monkeypatch.setenv("ARC_FAST_T5_PATH", str(env_dir))
    assert resolve_t5_path("t5-base") == str(env_dir)                  # 4. the environment variable
    snap = cache_entry(hub, "t5-base")
    assert resolve_t5_path("t5-base") == str(env_dir)                  # a snapshot without config.json: incomplete
    with open(os.path.join(snap, "config.json"), "w") as f:
        json.dump({}, f)
    assert resolve_t5_path("t5-base") == snap                          # 3. the cache comes before the variable
    assert resolve_t5_path(str(env_dir)) == str(env_dir)               # 2. a folder as the name
    own = tmp_path / "own"
    own.mkdir()
    assert resolve_t5_path("t5-base", str(own)) == str(own)            # 1. the config's t5_path
    with pytest.raises(FileNotFoundError, match="t5_path"):
        resolve_t5_path("t5-base", str(tmp_path / "missing"))


def test_cache_lookup_honours_hf_hub_cache_and_org_names(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "unused"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hubcache"))
    snap = cache_entry(str(tmp_path / "hubcache"), "google/flan-t5-base")
    open(os.path.join(snap, "config.json"), "w").close()
    assert hf_cache_snapshot("google/flan-t5-base") == snap
    assert hf_cache_snapshot("t5-base") is None
    assert hf_cache_snapshot("/abs/path") is None and hf_cache_snapshot("a/b/c") is None


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def repo_kernels_hidden(monkeypatch):
    """Hide the repository's top-level ``kernels/`` folder (installed as ``arc_fast.kernels``) from ``import kernels``.

    With the tests run from the repository root, that folder shadows the PyPI package ``kernels`` that
    transformers >= 5 imports when it is installed (DESIGN.md: the name collides), and T5 loading fails
    before reaching arc-fast's code. Users outside the repository never see the folder."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path
                                      if os.path.abspath(p or os.curdir) != REPO])
    mod = sys.modules.get("kernels")
    if mod is not None and os.path.dirname(os.path.dirname(getattr(mod, "__file__", "") or "")) == REPO:
        monkeypatch.delitem(sys.modules, "kernels")


def test_t5_conditioner_loads_a_tiny_t5_by_name_from_the_cache(hub, repo_kernels_hidden):
    """The real loading code (transformers, local_files_only=True) on a tiny random T5 saved into the cache."""
    transformers = pytest.importorskip("transformers", reason="the T5 conditioner needs the [t5] extra")
    tokenizers = pytest.importorskip("tokenizers")
    from arc_fast.reference.conditioners import T5Conditioner

    snap = cache_entry(hub, "t5-base")
    cfg = transformers.T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2,
                                decoder_start_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    transformers.T5EncoderModel(cfg).save_pretrained(snap)
    words = ["<pad>", "</s>", "<unk>", "a", "dog", "barking", "rain"]
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                         unk_token="<unk>").save_pretrained(snap)
    cond = T5Conditioner(output_dim=8, t5_model_name="t5-base", max_length=6)
    assert cond.t5_source == snap
    emb, mask = cond(["a dog barking", "rain"])
    assert emb.shape == (2, 6, 8) and mask.tolist() == [[True] * 3 + [False] * 3, [True] + [False] * 5]
    assert torch.isfinite(emb).all() and emb[0, 3:].abs().max() == 0 and emb[0, :3].abs().max() > 0
