"""Every GPU autotune config of every Triton kernel, run under the interpreter against the eager reference.

The GPU autotuner may pick any config of a kernel's list, and ``ARC_FAST_AUTOTUNE=0`` pins the first; the other
CPU tests run the interpreter's small fixed blocks. Here ``gpu_configs_under_interpreter(i)`` makes each kernel
launch with its i-th GPU config (modulo its list's length), so tile-size-dependent index and mask arithmetic is
checked on the CPU for every tile a GPU can run. Shapes cross several of the GPU tiles and end in ragged tails.
"""
from __future__ import annotations

import pytest
import torch

import test_adaln as adaln_t
import test_attention as attention_t
import test_rope as rope_t
import test_snake_conv as snake_conv_t
import test_swiglu as swiglu_t
from arc_fast.kernels import _common
from arc_fast.kernels import snake_conv as sc_kernels

pytestmark = pytest.mark.skipif(not _common.interpreter_active(),
                                reason="runs the GPU configs under TRITON_INTERPRET=1 (the GPU runs them natively)")
N_CONFIGS = max(len(sc_kernels._CONV_CONFIGS), 6)
CONFIGS = pytest.mark.parametrize("cfg", range(N_CONFIGS), ids=lambda i: f"config{i}")


@CONFIGS
def test_snake_conv(cfg):
    with _common.gpu_configs_under_interpreter(cfg):
        # Cin over two BLOCK_CI tiles, Cout over two BLOCK_CO tiles, T over two BLOCK_T tiles, all ragged.
        snake_conv_t.test_conv1d_matches_reference(1, 70, 140, 150, 7, 3, True, True, torch.float32)
        snake_conv_t.test_conv1d_matches_reference(1, 12, 2, 37, 7, 1, False, False, torch.float16)
        snake_conv_t.test_conv_transpose1d_matches_reference(1, 40, 36, 20, 8, torch.float32)
        snake_conv_t.test_conv_transpose1d_matches_reference(2, 12, 12, 37, 2, torch.float32)
        snake_conv_t.test_conv_transpose1d_matches_reference(1, 5, 6, 7, 3, torch.float16)


@CONFIGS
def test_attention(cfg):
    with _common.gpu_configs_under_interpreter(cfg):
        for B, H, Lq, Lk, D, opts in ((1, 2, 150, 150, 64, dict(q_norm=True, k_norm=True, rope=True, mask="row")),
                                      (2, 1, 70, 130, 32, dict(q_norm=True, k_norm=True, mask="random")),
                                      (1, 1, 5, 5, 128, dict(q_norm=True, k_norm=True, rope=True))):
            attention_t.test_fwd_bwd_matches_reference(B, H, Lq, Lk, D, opts, torch.float32)


@CONFIGS
def test_elementwise(cfg):
    with _common.gpu_configs_under_interpreter(cfg):
        swiglu_t.test_fwd_bwd_matches_reference((2, 33, 2 * 1100), torch.float32, "random")
        rope_t.test_fwd_bwd_matches_reference(1, 2, 70, 128, 64, torch.float32, "random")
        adaln_t.test_gated_residual_matches_reference(2, 37, 1100, torch.float32, "random")


def test_the_interpreter_really_runs_the_gpu_tiles(monkeypatch):
    """The hook is live: inside it, the kernel is launched with the GPU config's block sizes, not the fixed ones."""
    launched, handed = [], []
    real_launch = sc_kernels.launch

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            run = self.kernel[grid]

            def call(*args, **meta):
                launched.append({k: meta[k] for k in handed[-1] if k in meta})
                return run(*args, **meta)
            return call

    def spy(kernel, tuned, grid, args, fixed, **kw):
        handed.append(dict(fixed))
        return real_launch(Recorder(kernel), tuned, grid, args, fixed, **kw)

    monkeypatch.setattr(sc_kernels, "launch", spy)
    i = snake_conv_t.make_conv_inputs(1, 4, 4, 9, 3, seed=0)
    with _common.gpu_configs_under_interpreter(2):
        assert _common.interpreter_gpu_config() == 2
        sc_kernels.snake_conv1d(i["x"], i["alpha"], i["beta"], i["w"], i["bias"], 1, i["res"])
    assert _common.interpreter_gpu_config() is None
    want = _common.pick_config(sc_kernels._CONV_CONFIGS, 2).kwargs
    assert launched == [want] and handed[0] != want
