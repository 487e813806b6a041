"""Distributed ARC training on the CPU: 2-process gloo runs through torchrun (the real entry point). DDP keeps the
ranks bitwise in sync and writes checkpoints/logs from rank 0 only; FSDP (fully_shard) reaches the same weights;
the sync check itself catches divergence."""
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
from arc_fast.train.trainer import read_checkpoint_file
from safetensors.torch import load_file

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


def _launch(tmp_path, name, **overrides):
    """Start ``torchrun --nproc-per-node 2 -m arc_fast.train`` on the CPU (gloo) for a config; returns (proc, out)."""
    out = tmp_path / name
    cfg = dict(model=str(tmp_path / "model"), data=str(tmp_path / "data"), out_dir=str(out), dit_impl="fast",
               ops_backend="eager", batch_size=2, steps=4, head_channels=16, exit_layer_ix=1,
               gradient_checkpointing=False, progress=False, log_every=2, ckpt_every=2, keep_checkpoints=1,
               lr_g=1e-3, lr_d=1e-3, r1r2_gamma=1.0, tensorboard=False, **overrides)
    (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "-m", "arc_fast.train", "--config", str(tmp_path / f"{name}.json")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path), env=env)
    return proc, out


def _finish(proc):
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{stdout[-3000:]}\n{stderr[-3000:]}"
    return stdout


def test_torchrun_two_process_gloo_ddp_and_fsdp(tmp_path):
    """The real entry point under torchrun, DDP and FSDP side by side (2 x 2 processes at once)."""
    pipe = _micro_pipeline()
    pipe.save(str(tmp_path / "model"))
    (tmp_path / "data").mkdir()
    g = torch.Generator().manual_seed(0)
    write_shard(str(tmp_path / "data" / "s.safetensors"), torch.randn(8, 16, 8, generator=g),
                [f"prompt {i}" for i in range(8)])
    ddp, ddp_out = _launch(tmp_path, "ddp")
    fsdp, fsdp_out = _launch(tmp_path, "fsdp", fsdp=True)
    stdout = _finish(ddp)
    assert stdout.count("done at step 4") == 1, stdout  # printed by rank 0 only
    lines = [json.loads(x) for x in open(ddp_out / "metrics.jsonl")]
    # DDP: train() ends with a bitwise G/D/EMA digest comparison across ranks.
    assert lines[-1] == {"step": 4, "ranks_in_sync": True}
    lines = lines[:-1]
    assert [m["step"] for m in lines] == [2, 4]  # one writer
    assert sorted(os.listdir(ddp_out / "checkpoints")) == ["last.pt", "step-00000004.pt"]
    state = read_checkpoint_file(str(ddp_out / "checkpoints" / "last.pt"))  # a pointer to step-00000004.pt
    assert state["world_size"] == 2 and state["step"] == 4 and len(state["ranks"]) == 2
    # Different noise streams per rank (and disjoint data), yet identical weights: DDP averaged the gradients.
    assert not torch.equal(state["ranks"][0]["noise_gen"], state["ranks"][1]["noise_gen"])
    assert all(m["grad_norm_g"] > 0 and m["grad_norm_d"] > 0 for m in lines)

    _finish(fsdp)
    assert sorted(os.listdir(fsdp_out / "checkpoints")) == ["last.pt.rank0", "last.pt.rank1",
                                                             "step-00000004.pt.rank0", "step-00000004.pt.rank1"]
    # Same seeds, data split and noise per rank: sharded training reaches the DDP weights (up to summation order).
    a = load_file(str(ddp_out / "export" / "model.safetensors"))
    b = load_file(str(fsdp_out / "export" / "model.safetensors"))
    init = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    moved = 0
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
        moved += int(not torch.equal(a[k], init[k]))
    assert moved > 10  # the EMA generator did train


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
