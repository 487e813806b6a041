"""Distributed ARC training on the CPU: a 2-process gloo run through torchrun (the real entry point) keeps the
ranks bitwise in sync and writes checkpoints/logs from rank 0 only; the sync check itself catches divergence."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from arc_fast.configs import get_config
from arc_fast.pipeline import build_pipeline
from arc_fast.train import write_shard

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _micro_pipeline():
    cfg = get_config("tiny")
    cfg["model"]["diffusion"]["config"].update(embed_dim=64, depth=2, num_heads=2, cond_token_dim=32, global_cond_dim=32)
    cfg["model"]["conditioning"]["cond_dim"] = 32
    cfg["model"]["conditioning"]["configs"][0]["config"].update(dim=32, max_length=8, num_heads=2)
    pipe = build_pipeline(cfg, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in pipe.dit.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)  # wake up the zero-initialised outputs
    return pipe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_process_gloo_run_stays_in_sync(tmp_path):
    pipe = _micro_pipeline()
    pipe.save(str(tmp_path / "model"))
    data = tmp_path / "data"
    data.mkdir()
    g = torch.Generator().manual_seed(0)
    write_shard(str(data / "s.safetensors"), torch.randn(8, 16, 8, generator=g), [f"prompt {i}" for i in range(8)])
    out = tmp_path / "run"
    cfg = dict(model=str(tmp_path / "model"), data=str(data), out_dir=str(out), dit_impl="fast", ops_backend="eager",
               batch_size=2, steps=4, head_channels=16, exit_layer_ix=1, gradient_checkpointing=False,
               progress=False, log_every=2, ckpt_every=2, keep_checkpoints=1, lr_g=1e-3, lr_d=1e-3, r1r2_gamma=1.0,
               tensorboard=False)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "-m", "arc_fast.train", "--config", str(tmp_path / "cfg.json")]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=240)
    assert res.returncode == 0, f"torchrun failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    # train() ends with a bitwise G/D/EMA digest comparison across ranks (RuntimeError -> exit code 2).
    assert res.stdout.count("done at step 4") == 1, res.stdout  # printed by rank 0 only
    lines = [json.loads(x) for x in open(out / "metrics.jsonl")]
    assert [m["step"] for m in lines] == [2, 4]  # one writer
    assert sorted(os.listdir(out / "checkpoints")) == ["last.pt", "step-00000004.pt"]
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert state["world_size"] == 2 and state["step"] == 4 and len(state["ranks"]) == 2
    # Different noise streams per rank (and disjoint data), yet identical weights: DDP averaged the gradients.
    assert not torch.equal(state["ranks"][0]["noise_gen"], state["ranks"][1]["noise_gen"])
    assert os.path.isfile(out / "export" / "model.safetensors")


def test_sync_check_detects_diverged_ranks(monkeypatch):
    """assert_in_sync compares every rank's weight digest; simulate the gather of a 2-rank run."""
    from arc_fast.train import distributed as D
    info = D.DistInfo(rank=0, world_size=2)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    same = D.state_digest(model)
    monkeypatch.setattr(D, "gather_objects", lambda info, obj: [obj, same])
    assert D.assert_in_sync(info, model, "probe") == same
    with torch.no_grad():
        model.bias[1] += 1e-7  # one ulp-scale change anywhere must show
    with pytest.raises(RuntimeError, match="probe: ranks diverged"):
        D.assert_in_sync(info, model, "probe")
    assert D.state_digest(torch.nn.Linear(4, 3)) != same  # digest covers values, not just shapes
