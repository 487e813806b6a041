"""kernels._common.launch: which kernel and which block sizes a launch uses in each environment (interpreter,
GPU autotuned, GPU pinned with ARC_FAST_AUTOTUNE=0), checked with recording stand-ins for Triton kernels."""
import torch
import triton

from arc_fast.kernels import _common


class _Recorder:
    """Stands in for a @triton.jit kernel: kernel[grid](*args, **kw) records (grid, args, kw)."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kw: self.calls.append((grid, args, kw))


class _Tuned(_Recorder):
    """Stands in for a triton.autotune wrapper: has .configs and is indexed with the grid *function*."""

    def __init__(self, configs):
        super().__init__()
        self.configs = configs


def _setup(monkeypatch, interpreter: bool, autotune: str | None):
    monkeypatch.setattr(_common, "interpreter_active", lambda: interpreter)
    if autotune is None:
        monkeypatch.delenv("ARC_FAST_AUTOTUNE", raising=False)
    else:
        monkeypatch.setenv("ARC_FAST_AUTOTUNE", autotune)
    kernel = _Recorder()
    tuned = _Tuned([triton.Config({"BLOCK": 64}, num_warps=8, num_stages=3),
                    triton.Config({"BLOCK": 32}, num_warps=4, num_stages=2)])
    return kernel, tuned


def grid(meta):
    return (triton.cdiv(100, meta["BLOCK"]),)


ARGS = (torch.zeros(3), 100)


def test_interpreter_uses_the_fixed_blocks(monkeypatch):
    kernel, tuned = _setup(monkeypatch, True, None)
    _common.launch(kernel, tuned, grid, ARGS, {"BLOCK": 16}, fixed_warps=2, FLAG=True)
    assert tuned.calls == [] and len(kernel.calls) == 1
    g, args, kw = kernel.calls[0]
    assert g == (7,) and args == ARGS and kw == {"BLOCK": 16, "FLAG": True, "num_warps": 2}


def test_gpu_default_goes_through_the_autotuner(monkeypatch):
    kernel, tuned = _setup(monkeypatch, False, None)
    _common.launch(kernel, tuned, grid, ARGS, {"BLOCK": 16}, FLAG=True)
    assert kernel.calls == [] and len(tuned.calls) == 1
    g, args, kw = tuned.calls[0]
    assert g is grid and kw == {"FLAG": True}     # the autotuner supplies blocks and warps itself


def test_autotune_off_pins_the_first_config_untimed(monkeypatch):
    kernel, tuned = _setup(monkeypatch, False, "0")
    assert not _common.autotune_enabled()
    _common.launch(kernel, tuned, grid, ARGS, {"BLOCK": 16}, FLAG=True)
    assert tuned.calls == [] and len(kernel.calls) == 1
    g, args, kw = kernel.calls[0]
    assert g == (2,) and kw == {"BLOCK": 64, "FLAG": True, "num_warps": 8, "num_stages": 3}
    monkeypatch.setenv("ARC_FAST_AUTOTUNE", "1")
    assert _common.autotune_enabled()
