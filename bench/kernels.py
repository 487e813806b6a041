"""Suite ``kernels``: each fused op (and its backward) against eager PyTorch, torch.compile and the peers.

Ops and shapes come from SAO Small (``bench.configs``): the DiT trunk's attention (self with QK-LayerNorm and
partial RoPE, cross to the 65 conditioning tokens), RoPE, adaLN LayerNorm, the gated residual and SwiGLU at
the clip's token count; the decoder's fused SnakeBeta + convolutions at the clip's per-stage lengths.

Providers (``setup``): ``eager`` (the oracle in ``arc_fast.reference.functional``, run in the input dtype),
``compile`` (``torch.compile`` of the same function), ``sdpa`` (attention: LayerNorm + RoPE + PyTorch SDPA),
``flash_attn`` and ``liger`` when installed, and arc-fast's ``triton``, ``cuda`` (decoder ops, when
``arc_fast._cuda`` is available) and ``arc_fast-eager`` (the CPU fast path of ``arc_fast.ops``). Every
provider's output (and, for bwd modes, every gradient) is checked against the fp32 oracle before timing.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import configs
from .common import (NOT_A_FIGURE, CheckError, Context, Row, Skip, check_close, dtype_name, exact_fp32, failed, skipped)

SUITE = "kernels"
BASELINES = ("eager",)


@dataclass
class Provider:
    name: str
    fn: Optional[Callable[[dict], object]]
    ours: bool = False
    reason: Optional[str] = None          # skip reason (fn is None)
    modes: Optional[tuple] = None          # restrict modes
    notes: str = ""


@dataclass
class Case:
    op: str
    label: str
    make: Callable[[torch.dtype, str, int], dict]     # (dtype, device, seed) -> inputs
    ref: Callable[[dict], object]
    grad_names: tuple
    modes: tuple
    work: Callable[[str, torch.dtype], tuple]          # mode, dtype -> (amount, metric)
    providers: Callable[[Context, "Case", torch.dtype], list] = None
    notes: str = ""
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ helpers
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(shape, g, device, dtype, scale=1.0, mean=0.0):
    return (torch.randn(shape, generator=g) * scale + mean).to(device=device, dtype=dtype)


KEEP_DTYPE = ("freqs",)   # fp32 angle tables stay fp32 in every dtype (the ops' contract)


def cast(x: dict, dtype: torch.dtype, grad_names=()) -> dict:
    """Fresh leaves in ``dtype`` (fp32 tables such as ``freqs`` and integer/bool tensors are kept as they are)."""
    out = {}
    for n, t in x.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and n not in KEEP_DTYPE:
            out[n] = t.detach().to(dtype).requires_grad_(n in grad_names)
        else:
            out[n] = t
    return out


def _as_list(out) -> list:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _liger(module: str):
    if importlib.util.find_spec("liger_kernel") is None:
        return None
    try:
        return importlib.import_module(f"liger_kernel.ops.{module}")
    except Exception:  # noqa: BLE001 - an incompatible install counts as absent
        return None



def _triton_status(ctx: Context) -> Optional[str]:
    """None when Triton providers may run and be timed here, else the skip reason."""
    from arc_fast.ops._dispatch import interpreter_active, triton_import_error
    err = triton_import_error()
    if err:
        return err
    if ctx.device == "cpu":
        if not interpreter_active():
            return "triton on CPU needs the interpreter (TRITON_INTERPRET=1); not a performance path"
        if not ctx.quick:
            return "TRITON_INTERPRET=1 emulates kernels in Python: only --quick smoke runs time it"
    return None


def _compile(ctx: Context, fn: Callable, what: str) -> Provider:
    if not ctx.compile:
        reason = "torch.compile skipped in --quick (compile time)" if ctx.quick else "torch.compile disabled (--no-compile)"
        return Provider("compile", None, reason=reason)
    import torch._dynamo as dynamo
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo.config, name):
            setattr(dynamo.config, name, max(getattr(dynamo.config, name), 64))
    try:
        # The bwd mode replays one backward (retain_graph=True), which buffer donation forbids.
        import torch._functorch.config as functorch_config
        if hasattr(functorch_config, "donated_buffer"):
            functorch_config.donated_buffer = False
    except ImportError:
        pass
    return Provider("compile", torch.compile(fn, dynamic=False), notes=f"torch.compile({what}), no buffer donation")


# ------------------------------------------------------------------------------------------------ DiT ops
def _attn_cases(ctx: Context, cfg: dict, frames: int, batches) -> list:
    from arc_fast.ops import attention as attn_ops
    from arc_fast.reference import functional as ref

    d = configs.dit_dims(cfg)
    L = configs.dit_tokens(frames, cfg)
    H, D, R, S = d.heads, d.head_dim, d.rot_dim, d.cond_tokens
    cases = []
    for B in batches:
        for kind in ("self", "cross"):
            lk = L if kind == "self" else S

            def make(dtype, device, seed, B=B, lk=lk, kind=kind):
                g = _gen(seed)
                x = {"q": _randn((B, H, L, D), g, device, dtype), "k": _randn((B, H, lk, D), g, device, dtype),
                     "v": _randn((B, H, lk, D), g, device, dtype),
                     "q_norm_weight": _randn((D,), g, device, dtype, 0.1, 1.0),
                     "q_norm_bias": _randn((D,), g, device, dtype, 0.1),
                     "k_norm_weight": _randn((D,), g, device, dtype, 0.1, 1.0),
                     "k_norm_bias": _randn((D,), g, device, dtype, 0.1)}
                if kind == "self":
                    inv = 1.0 / (10000 ** (torch.arange(0, R, 2, dtype=torch.float32) / R))
                    x["freqs"] = ref.rope_freqs(L, inv.to(device))
                return x

            def call_ref(x):
                return ref.qk_norm_rope_attention(x["q"], x["k"], x["v"], x["q_norm_weight"], x["q_norm_bias"],
                                                  x["k_norm_weight"], x["k_norm_bias"], freqs=x.get("freqs"),
                                                  norm_eps=1e-6)

            def via_ops(backend):
                def f(x):
                    return attn_ops.attention(x["q"], x["k"], x["v"], q_norm_weight=x["q_norm_weight"],
                                              q_norm_bias=x["q_norm_bias"], k_norm_weight=x["k_norm_weight"],
                                              k_norm_bias=x["k_norm_bias"], norm_eps=1e-6, freqs=x.get("freqs"),
                                              backend=backend)
                return f

            def providers(ctx, case, dtype, via_ops=via_ops, call_ref=call_ref):
                ps = [Provider("eager", call_ref, notes="reference: LN + RoPE + einsum softmax (fp32 softmax)"),
                      Provider("sdpa", via_ops("sdpa"), notes="LN + RoPE + F.scaled_dot_product_attention"),
                      _compile(ctx, via_ops("sdpa"), "LN + RoPE + SDPA")]
                if importlib.util.find_spec("flash_attn") is None:
                    ps.append(Provider("flash_attn", None, reason="flash-attn not installed"))
                elif ctx.device != "cuda" or dtype == torch.float32:
                    ps.append(Provider("flash_attn", None, reason="flash-attn needs CUDA fp16/bf16"))
                else:
                    ps.append(Provider("flash_attn", via_ops("flash_attn"), notes="LN + RoPE + flash_attn_func"))
                reason = _triton_status(ctx)
                ps.append(Provider("triton", None if reason else via_ops("triton"), ours=True, reason=reason,
                                   notes="fused LN + RoPE prologue + flash fwd/bwd"))
                return ps

            def work(mode, dtype, B=B, lk=lk):
                f = 4.0 * B * H * L * lk * D
                return {"fwd": f, "bwd": 2.5 * f, "fwd+bwd": 3.5 * f}[mode], "TFLOP/s"

            label = f"B{B} H{H} Lq{L} Lk{lk} D{D}" + (f" rot{R}" if kind == "self" else "")
            cases.append(Case(f"attention_{kind}", label, make, call_ref,
                              ("q", "k", "v", "q_norm_weight", "q_norm_bias", "k_norm_weight", "k_norm_bias"),
                              ("fwd", "bwd", "fwd+bwd"), work, providers,
                              notes="QK-LayerNorm" + (" + partial RoPE" if kind == "self" else " (no mask, as SAO)")))
    return cases


def _rope_case(ctx, cfg, frames, B) -> Case:
    from arc_fast.ops import rope as rope_ops
    from arc_fast.reference import functional as ref

    d = configs.dit_dims(cfg)
    L = configs.dit_tokens(frames, cfg)
    H, D, R = d.heads, d.head_dim, d.rot_dim

    def make(dtype, device, seed):
        g = _gen(seed)
        inv = 1.0 / (10000 ** (torch.arange(0, R, 2, dtype=torch.float32) / R))
        return {"q": _randn((B, H, L, D), g, device, dtype), "k": _randn((B, H, L, D), g, device, dtype),
                "freqs": ref.rope_freqs(L, inv.to(device))}

    def call_ref(x):
        return ref.apply_rotary(x["q"], x["freqs"]), ref.apply_rotary(x["k"], x["freqs"])

    def via(backend):
        return lambda x: rope_ops.rope(x["q"], x["k"], x["freqs"], backend=backend)

    def providers(ctx, case, dtype):
        ps = [Provider("eager", call_ref, notes="reference apply_rotary on q and k"),
              _compile(ctx, call_ref, "reference")]
        if ctx.device == "cpu":
            ps.append(Provider("arc_fast-eager", via("eager"), ours=True, notes="one output buffer, shared cos/sin"))
        ps.append(Provider("liger", None, reason="Liger-Kernel not installed" if _liger("rope") is None else
                           "Liger's RoPE rotates the whole head dim; SAO rotates the first 64 of 128 channels"))
        reason = _triton_status(ctx)
        ps.append(Provider("triton", None if reason else via("triton"), ours=True, reason=reason,
                           notes="q and k in one launch"))
        return ps

    def work(mode, dtype):
        b = 4.0 * B * H * L * D * torch.empty((), dtype=dtype).element_size()
        return {"fwd": b, "bwd": b, "fwd+bwd": 2 * b}[mode], "GB/s"

    return Case("rope", f"B{B} H{H} L{L} D{D} rot{R}", make, call_ref, ("q", "k"), ("fwd", "bwd", "fwd+bwd"), work,
                providers)


def _adaln_cases(ctx, cfg, frames, B) -> list:
    from arc_fast.ops import adaln as adaln_ops
    from arc_fast.reference import functional as ref

    d = configs.dit_dims(cfg)
    L, D = configs.dit_tokens(frames, cfg), d.dim

    def make_ln(dtype, device, seed):
        g = _gen(seed)
        return {"x": _randn((B, L, D), g, device, dtype, 2.0, 0.5), "gamma": _randn((D,), g, device, dtype, 0.1, 1.0),
                "scale": _randn((B, D), g, device, dtype, 0.3), "shift": _randn((B, D), g, device, dtype, 0.3)}

    def ref_ln(x):
        return ref.adaln_modulate(x["x"], x["gamma"], x["scale"], x["shift"], eps=1e-5)

    def ln_via(backend):
        return lambda x: adaln_ops.adaln_layer_norm(x["x"], x["gamma"], x["scale"], x["shift"], eps=1e-5, backend=backend)

    def liger_ln(x):
        mod = _liger("layer_norm")
        y = mod.LigerLayerNormFunction.apply(x["x"], x["gamma"], torch.zeros_like(x["gamma"]), 1e-5)
        return torch.addcmul(x["shift"][:, None], y, 1 + x["scale"][:, None])

    def ln_providers(ctx, case, dtype):
        ps = [Provider("eager", ref_ln, notes="F.layer_norm + modulate"), _compile(ctx, ref_ln, "reference")]
        if ctx.device == "cpu":
            ps.append(Provider("arc_fast-eager", ln_via("eager"), ours=True, notes="F.layer_norm + addcmul"))
        if _liger("layer_norm") is None:
            ps.append(Provider("liger", None, reason="Liger-Kernel not installed"))
        elif ctx.device != "cuda":
            ps.append(Provider("liger", None, reason="Liger-Kernel needs CUDA"))
        else:
            ps.append(Provider("liger", liger_ln, notes="LigerLayerNorm (zero bias) + eager modulation"))
        reason = _triton_status(ctx)
        ps.append(Provider("triton", None if reason else ln_via("triton"), ours=True, reason=reason))
        return ps

    def ln_work(mode, dtype):
        b = B * L * D * torch.empty((), dtype=dtype).element_size()
        return {"fwd": 2 * b, "bwd": 3 * b, "fwd+bwd": 5 * b}[mode], "GB/s"

    def make_gr(dtype, device, seed):
        g = _gen(seed)
        return {"x": _randn((B, L, D), g, device, dtype), "y": _randn((B, L, D), g, device, dtype),
                "gate": _randn((B, D), g, device, dtype)}

    def ref_gr(x):
        return ref.gated_residual(x["x"], x["y"], x["gate"], True)

    def gr_via(backend):
        return lambda x: adaln_ops.gated_residual(x["x"], x["y"], x["gate"], True, backend=backend)

    def gr_providers(ctx, case, dtype):
        ps = [Provider("eager", ref_gr, notes="x + sigmoid(1 - gate) * y"), _compile(ctx, ref_gr, "reference")]
        if ctx.device == "cpu":
            ps.append(Provider("arc_fast-eager", gr_via("eager"), ours=True, notes="addcmul"))
        reason = _triton_status(ctx)
        ps.append(Provider("triton", None if reason else gr_via("triton"), ours=True, reason=reason))
        return ps

    def gr_work(mode, dtype):
        b = B * L * D * torch.empty((), dtype=dtype).element_size()
        return {"fwd": 3 * b, "bwd": 4 * b, "fwd+bwd": 7 * b}[mode], "GB/s"

    label = f"B{B} L{L} D{D}"
    return [Case("adaln_layer_norm", label, make_ln, ref_ln, ("x", "gamma", "scale", "shift"),
                 ("fwd", "bwd", "fwd+bwd"), ln_work, ln_providers, notes="LN(x)*gamma*(1+scale)+shift"),
            Case("gated_residual", label, make_gr, ref_gr, ("x", "y", "gate"), ("fwd", "bwd", "fwd+bwd"), gr_work,
                 gr_providers)]


def _swiglu_case(ctx, cfg, frames, B) -> Case:
    from arc_fast.ops import swiglu as swiglu_ops
    from arc_fast.reference import functional as ref

    d = configs.dit_dims(cfg)
    L, Fi = configs.dit_tokens(frames, cfg), d.ff_inner

    def make(dtype, device, seed):
        return {"h": _randn((B, L, 2 * Fi), _gen(seed), device, dtype, 2.0)}

    def call_ref(x):
        return ref.swiglu(x["h"])

    def via(backend):
        return lambda x: swiglu_ops.swiglu(x["h"], backend=backend)

    def liger(x):
        mod = _liger("swiglu")
        value, gate = x["h"].chunk(2, dim=-1)
        return mod.LigerSiLUMulFunction.apply(gate.contiguous(), value.contiguous())

    def providers(ctx, case, dtype):
        ps = [Provider("eager", call_ref, notes="value * silu(gate)"), _compile(ctx, call_ref, "reference")]
        if ctx.device == "cpu":
            ps.append(Provider("arc_fast-eager", via("eager"), ours=True, notes="in-place product without autograd"))
        if _liger("swiglu") is None:
            ps.append(Provider("liger", None, reason="Liger-Kernel not installed"))
        elif ctx.device != "cuda":
            ps.append(Provider("liger", None, reason="Liger-Kernel needs CUDA"))
        else:
            ps.append(Provider("liger", liger, notes="LigerSiLUMulFunction on contiguous halves (copies included)"))
        reason = _triton_status(ctx)
        ps.append(Provider("triton", None if reason else via("triton"), ours=True, reason=reason))
        return ps

    def work(mode, dtype):
        b = B * L * Fi * torch.empty((), dtype=dtype).element_size()
        return {"fwd": 3 * b, "bwd": 5 * b, "fwd+bwd": 8 * b}[mode], "GB/s"

    return Case("swiglu", f"B{B} L{L} 2F{2 * Fi}", make, call_ref, ("h",), ("fwd", "bwd", "fwd+bwd"), work, providers)


# ------------------------------------------------------------------------------------------------ decoder ops
def _k_major_conv(w: torch.Tensor) -> torch.Tensor:
    # The decoder's Triton weight layout (models/decoder.py): (Cout, Cin, K) view of a (K, Cout, Cin) buffer.
    return w.permute(2, 0, 1).contiguous().permute(1, 2, 0)


def _k_major_tconv(w: torch.Tensor) -> torch.Tensor:
    return w.permute(2, 1, 0).contiguous().permute(2, 1, 0)


def _conv_case(ctx, c: configs.ConvCase, B: int) -> Case:
    from arc_fast.ops import snake_conv as sc
    from arc_fast.reference import functional as ref

    def make(dtype, device, seed):
        g = _gen(seed)
        if c.kind == "up":
            w = _randn((c.cin, c.cout, c.K), g, device, dtype, 1.0 / math.sqrt(c.cin * c.K))
        else:
            w = _randn((c.cout, c.cin, c.K), g, device, dtype, 1.0 / math.sqrt(c.cin * c.K))
        x = {"x": _randn((B, c.cin, c.T), g, device, dtype), "alpha": _randn((c.cin,), g, device, dtype, 0.3),
             "beta": _randn((c.cin,), g, device, dtype, 0.3), "weight": w,
             "bias": _randn((c.cout,), g, device, dtype, 0.1)}
        if c.residual:
            x["residual"] = _randn((B, c.cout, c.T), g, device, dtype)
        return x

    def call_ref(x):
        s = ref.snake_beta(x["x"], x["alpha"], x["beta"])
        if c.kind == "up":
            return F.conv_transpose1d(s, x["weight"], x["bias"], stride=c.stride, padding=(c.stride + 1) // 2)
        y = F.conv1d(s, x["weight"], x["bias"], padding=c.dilation * (c.K - 1) // 2, dilation=c.dilation)
        return y + x["residual"] if c.residual else y

    def via(backend, layout=None):
        # Weight preparation happens once per weight, outside the timed call, as FastOobleckDecoder's cached
        # plan does: the k-major relayout (Triton) and the polyphase packing (eager, no-grad calls).
        cache: dict = {}

        def prepared(x):
            w, b = x["weight"], x["bias"]
            key = (w.data_ptr(), w._version, w.dtype, torch.is_grad_enabled())
            if key not in cache:
                cache.clear()
                with torch.no_grad():
                    if layout == "k_major":
                        cache[key] = (_k_major_tconv(w) if c.kind == "up" else _k_major_conv(w), None)
                    elif backend == "eager" and c.kind == "up" and not torch.is_grad_enabled():
                        cache[key] = (w, sc.pack_polyphase(w, b, c.stride))
                    else:
                        cache[key] = (w, None)
            return cache[key]

        def f(x):
            w, packed = prepared(x)
            if layout == "k_major" and torch.is_grad_enabled() and x["weight"].requires_grad:
                w = x["weight"]   # keep the autograd link to the leaf (the relayout is a detached copy)
            if c.kind == "up":
                return sc.snake_conv_transpose1d(x["x"], x["alpha"], x["beta"], w, x["bias"], c.stride, backend=backend,
                                                 packed=packed)
            return sc.snake_conv1d(x["x"], x["alpha"], x["beta"], w, x["bias"], c.dilation, x.get("residual"),
                                   backend=backend)
        return f

    def providers(ctx, case, dtype):
        conv = "F.conv_transpose1d" if c.kind == "up" else "F.conv1d"
        ps = [Provider("eager", call_ref, notes=f"reference snake_beta + {conv}"),
              _compile(ctx, call_ref, "reference")]
        if ctx.device == "cpu":
            ps.append(Provider("arc_fast-eager", via("eager"), ours=True,
                               notes="in-place SnakeBeta" + (" + polyphase conv1d" if c.kind == "up" else "")))
        reason = _triton_status(ctx)
        layout = "k_major" if ctx.device == "cuda" else None
        ps.append(Provider("triton", None if reason else via("triton", layout), ours=True, reason=reason,
                           notes="fused SnakeBeta + conv" + (" (k-major weights, as the decoder)" if layout else "")))
        if ctx.device != "cuda":
            ps.append(Provider("cuda", None, ours=True, reason="CUDA ext needs a CUDA device"))
        else:
            try:
                from arc_fast import _cuda
                why = None if _cuda.available() else (_cuda.unavailable_reason() or "arc_fast._cuda unavailable")
            except Exception as exc:  # noqa: BLE001
                why = f"arc_fast._cuda import failed: {exc}"
            ps.append(Provider("cuda", None if why else via("cuda"), ours=True,
                               reason=why and f"CUDA ext unavailable: {why}",
                               notes="csrc fused SnakeBeta + conv"))
        return ps

    def work(mode, dtype):
        tout = c.T * c.stride if c.kind == "up" else c.T
        tin_taps = c.T * c.K if c.kind == "up" else tout * c.K
        return 2.0 * B * c.cin * c.cout * tin_taps, "TFLOP/s"

    return Case(f"snake_{'conv_transpose1d' if c.kind == 'up' else 'conv1d'}", f"{c.name} {c.label(B)}", make,
                call_ref, (), ("fwd",), work, providers, notes="decoder inference (forward only)")


# ------------------------------------------------------------------------------------------------ runner
def build_cases(ctx: Context) -> list:
    quick = ctx.quick
    cfg = configs.tiny_config() if quick else configs.sao_config()
    frames = configs.frames_for(ctx.device, quick)
    # The DiT ops are cheap enough at SAO Small's full 12 s token count on the CPU too.
    dit_frames = configs.QUICK_FRAMES * 4 if quick else configs.FULL_FRAMES
    batches = (1,) if ctx.device == "cpu" or quick else (1, 8)
    dec = configs.decoder_config(cfg)
    cases = []
    for i, B in enumerate(batches):
        dit = _attn_cases(ctx, cfg, dit_frames, (B,))
        dit.append(_rope_case(ctx, cfg, dit_frames, B))
        dit += _adaln_cases(ctx, cfg, dit_frames, B)
        dit.append(_swiglu_case(ctx, cfg, dit_frames, B))
        if i > 0:
            for c in dit:   # torch.compile once per op (first batch size): compile time is the GPU run's bottleneck
                c.extra["no_compile"] = f"torch.compile measured at B{batches[0]} only (compile time)"
        cases += dit
        if i == 0:          # the decoder's convolutions right after the B=1 DiT ops (the budget may end the run)
            cases += [_conv_case(ctx, c, 1) for c in configs.conv_cases(dec, frames)]
    return cases


def _grads(outs: list, leaves: list, dys: list) -> list:
    return list(torch.autograd.grad(outs, leaves, dys, allow_unused=True))


def _check(case: Case, prov: Provider, x: dict, dtype, ref_outs, ref_low, ref_g32, ref_glow, dys, want_bwd: bool,
           check_no_grad: bool):
    """Max error of the provider's outputs (and gradients) against the fp32 oracle; raises CheckError.

    The forward is checked with autograd on (the path the bwd modes time) and, when the fwd mode is timed,
    under no_grad too: some eager paths switch to in-place code without autograd."""
    err = 0.0
    # The magnitude of the whole computation: the fp32 rounding floor of every tensor of the case scales with it.
    fs = max([t.abs().max().item() for t in list(ref_outs) + list(ref_g32 or []) if t is not None and t.numel()] + [1.0])
    if check_no_grad:
        with torch.no_grad():
            outs = _as_list(prov.fn(cast(x, dtype)))
        for i, (o, r) in enumerate(zip(outs, ref_outs)):
            err = max(err, check_close(f"{case.op}/{prov.name} out{i} (no_grad)", o, r,
                                       ref_low[i] if ref_low else None, dtype, floor_scale=fs))
        if not want_bwd:
            return err
    xin = cast(x, dtype, case.grad_names if want_bwd else ())
    with torch.set_grad_enabled(want_bwd):
        outs = _as_list(prov.fn(xin))
    for i, (o, r) in enumerate(zip(outs, ref_outs)):
        err = max(err, check_close(f"{case.op}/{prov.name} out{i}", o, r, ref_low[i] if ref_low else None, dtype,
                                   floor_scale=fs))
    if want_bwd:
        leaves = [xin[n] for n in case.grad_names]
        gs = _grads(outs, leaves, [d.to(o.dtype) for d, o in zip(dys, outs)])
        for n, gv, g32, glow in zip(case.grad_names, gs, ref_g32, ref_glow or [None] * len(ref_g32)):
            if gv is None:
                raise CheckError(f"{case.op}/{prov.name}: no gradient for {n}")
            err = max(err, check_close(f"{case.op}/{prov.name} d{n}", gv, g32, glow, dtype, floor_scale=fs))
    return err


def run_case(ctx: Context, case: Case, dtype: torch.dtype, which: str = "all") -> list:
    """Rows of one case in one dtype: every provider checked, then timed in each mode.

    ``which``: "all", "no_compile" (every provider but torch.compile) or "compile" (torch.compile only)."""
    rows = []
    dn = dtype_name(dtype)
    dev = ctx.device
    x = case.make(dtype, dev, 0)
    want_bwd_any = any(m != "fwd" for m in case.modes)
    # Oracle in fp32 (exact: no TF32), and the eager op in the low precision for the rounding baseline.
    x32 = cast(x, torch.float32, case.grad_names if want_bwd_any else ())
    with exact_fp32(), torch.set_grad_enabled(want_bwd_any):
        ref_outs = _as_list(case.ref(x32))
    g = _gen(1)
    dys = [torch.randn(o.shape, generator=g).to(dev) for o in ref_outs] if want_bwd_any else []
    ref_g32 = ref_glow = ref_low = None
    if want_bwd_any:
        with exact_fp32():
            ref_g32 = _grads(ref_outs, [x32[n] for n in case.grad_names], dys)
    if dtype != torch.float32:
        xl = cast(x, dtype, case.grad_names if want_bwd_any else ())
        with torch.set_grad_enabled(want_bwd_any):
            ref_low = _as_list(case.ref(xl))
        if want_bwd_any:
            ref_glow = _grads(ref_low, [xl[n] for n in case.grad_names], [d.to(dtype) for d in dys])
    ref_outs = [r.detach() for r in ref_outs]

    for prov in case.providers(ctx, case, dtype):
        if which != "all" and (prov.name == "compile") != (which == "compile"):
            continue
        if prov.name == "compile" and prov.fn is not None and case.extra.get("no_compile"):
            prov = Provider("compile", None, reason=case.extra["no_compile"])
        modes = [m for m in case.modes if prov.modes is None or m in prov.modes]
        notes = "; ".join(s for s in (case.notes, prov.notes) if s)
        mk = lambda m, reason, f=skipped: f(SUITE, case.op, case.label, dn, prov.name, m, reason, prov.ours)  # noqa: E731
        if prov.fn is None:
            rows += [mk(m, prov.reason or "unavailable") for m in modes]
            continue
        if ctx.out_of_time():
            rows += [mk(m, "time budget exhausted") for m in modes]
            continue
        want_bwd = any(m != "fwd" for m in modes)
        try:
            err = _check(case, prov, x, dtype, ref_outs, ref_low, ref_g32, ref_glow, dys, want_bwd, "fwd" in modes)
        except Skip as exc:
            rows += [mk(m, str(exc)) for m in modes]
            continue
        except CheckError as exc:
            rows += [mk(m, f"check failed, not timed: {exc}", failed) for m in modes]
            continue
        except Exception as exc:  # noqa: BLE001 - a provider error is a row, not a crash of the suite
            rows += [mk(m, f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", failed) for m in modes]
            continue
        for mode in modes:
            if ctx.out_of_time():
                rows.append(mk(mode, "time budget exhausted"))
                continue
            row = Row(SUITE, case.op, case.label, dn, prov.name, mode, ours=prov.ours, max_err=err, notes=notes)
            if dev == "cpu" and prov.name == "triton":
                row.notes = "; ".join(s for s in (notes, "Triton interpreter: emulation, " + NOT_A_FIGURE) if s)
            try:
                rows.append(_time_mode(ctx, case, prov, x, dtype, mode, dys, row))
            except Exception as exc:  # noqa: BLE001
                rows.append(mk(mode, f"error while timing: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                               failed))
    return rows


def _time_mode(ctx: Context, case: Case, prov: Provider, x: dict, dtype, mode: str, dys: list, row: Row) -> Row:
    xin = cast(x, dtype, case.grad_names if mode != "fwd" else ())
    leaves = [xin[n] for n in case.grad_names]
    if mode == "fwd":
        def fn():
            with torch.no_grad():
                return prov.fn(xin)
        with ctx.peak_memory() as pm:
            t = ctx.time(fn)
    else:
        dyl = [d.to(dtype) for d in dys]
        if mode == "bwd":
            outs = _as_list(prov.fn(xin))

            def fn():
                torch.autograd.backward(outs, dyl, retain_graph=True)
        else:
            def fn():
                torch.autograd.backward(_as_list(prov.fn(xin)), dyl)
        with ctx.peak_memory() as pm:
            t = ctx.time(fn, grad_to_none=leaves)
    amount, metric = case.work(mode, dtype)
    return ctx.fill(row, t, amount, metric, pm)


def run(ctx: Context) -> list:
    """All kernel rows for ``ctx.dtypes`` (GPU default bf16; CPU default fp32).

    torch.compile rows are measured in a second pass, after every other provider of every case: compilation
    dominates the run time, and under a time budget it is the part to lose."""
    cases = [c for c in build_cases(ctx) if not ctx.options.get("ops")
             or any(c.op.startswith(o) for o in ctx.options["ops"])]
    per: dict = {}
    done = ctx.collect()
    for which in ("no_compile", "compile"):
        for i, case in enumerate(cases):
            for dtype in ctx.dtypes:
                tag = " (compile)" if which == "compile" else ""
                ctx.log(f"[kernels] {case.op} {case.label} {dtype_name(dtype)}{tag}")
                new = run_case(ctx, case, dtype, which)
                per.setdefault((i, dtype_name(dtype)), []).extend(new)
                done.extend(new)
    order = {"eager": 0, "compile": 1}
    rows = []   # grouped by case and dtype, eager and compile first
    for key in sorted(per, key=lambda k: (k[0], k[1])):
        rows += sorted(per[key], key=lambda r: order.get(r.provider, 2))   # stable: providers keep their order
    return rows
