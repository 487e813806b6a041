"""SnakeBeta fused into 1-D convolutions: the Oobleck decoder's residual units and upsampling blocks.

Two ops, forward in Triton (backward in eager PyTorch maths; the decoder is frozen during ARC):

1. ``snake_conv1d(x, alpha, beta, weight, bias, dilation, residual, apply_snake)``

       s = snake_beta(x) = x + sin^2(a x) / (b + 1e-9),  a = exp(alpha), b = exp(beta)   (per input channel)
       y[n, o, t] = bias[o] + sum_{c, k} weight[o, c, k] * s[n, c, t + k*d - P] + residual[n, o, t]
       P = d * (K - 1) // 2  ('same' padding, K odd), s[.., t] = 0 outside [0, T)

   An implicit GEMM: a program owns a (BLOCK_CO output channels) x (BLOCK_T times) tile of one batch
   element and loops over input-channel blocks and the K taps; each step loads the shifted x tile,
   applies SnakeBeta in fp32 registers and feeds ``tl.dot``. Zero padding commutes with SnakeBeta
   (snake(0) = 0), so masked loads with ``other=0`` pad the activated signal exactly. Bias and residual
   are added in the epilogue, so the activated input and the pre-residual output never reach memory.

2. ``snake_conv_transpose1d(x, alpha, beta, weight, bias, stride)``: weight (Cin, Cout, 2S), stride S,
   padding P = ceil(S/2), output padding 0:

       y[n, o, q - P] = bias[o] + sum_{c, i, k: i*S + k = q} weight[c, o, k] * s[n, c, i]

   Polyphase form. Write q = o_idx + P = m*S + r with phase r in [0, S) and m = q // S. A tap k = q - i*S
   must lie in [0, 2S), so (m - i)*S + r in [0, 2S) and i is m or m - 1:

       y[n, o, m*S + r - P] = sum_c weight[c, o, r] * s[n, c, m] + weight[c, o, r + S] * s[n, c, m - 1]

   Every output phase r is a 2-tap convolution of the input with taps (r, r+S) at input shifts (0, -1).
   The kernel stacks all S phases of BLOCK_CO output channels into the rows of one GEMM tile
   (row = r * BLOCK_CO + o_local), so each activated input tile is loaded and computed once for all phases:
   acc (S*BLOCK_CO, BLOCK_M) = W_r (rows, Cin) @ s[:, m] + W_{r+S} (rows, Cin) @ s[:, m-1]. Output
   length L = (T - 1)*S - 2P + 2S (= S*T for even S, as in every Oobleck block); m runs over
   [0, (L - 1 + P) // S], rows whose index m*S + r - P falls outside [0, L) are masked.

Shapes and dtypes:
    x (B, Cin, T): fp32/fp16/bf16, any strides. alpha, beta (Cin,) log-scale (ignored, may be None, when
    apply_snake=False). weight: (Cout, Cin, K) for the conv, (Cin, Cout, 2S) for the transposed conv,
    plain (weight norm folded by the caller), any strides. bias (Cout,) or None. residual (B, Cout, T) or
    None, any strides. Parameters may have any supported float dtype (cast on load).
    Output: a new contiguous (B, Cout, T) resp. (B, Cout, L) tensor in x's dtype.
    Accumulation and SnakeBeta in fp32; on the GPU fp16/bf16 inputs use native fp16/bf16 dots (the activated
    tile is rounded to x's dtype, as eager PyTorch does), fp32 inputs use TF32 when
    ``torch.backends.cudnn.allow_tf32`` is set (as eager conv does) and IEEE fp32 otherwise. Under the
    interpreter every dot gets fp32 operands (bf16 dots are wrong there).

Backward (``register_autograd``): eager PyTorch maths in fp32 via ``aten.convolution_backward`` plus the
SnakeBeta derivative  ds/dx = 1 + a sin(2ax)/(b+eps), ds/dalpha = x a sin(2ax)/(b+eps),
ds/dbeta = -sin^2(ax) b/(b+eps)^2; gradients in each input's dtype. Not fused (not on any hot path).

Limits: K odd, K <= MAX_KERNEL_SIZE; stride <= MAX_STRIDE. References: Lee et al., "BigVGAN" (SnakeBeta);
the Triton matmul tutorial (tiled ``tl.dot``).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._common import device_reasons, interpreter_active, launch, raise_if

# ---------------------------------------------------------------------------------------------------------
# Capabilities
# ---------------------------------------------------------------------------------------------------------
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_KERNEL_SIZE = 31
MAX_STRIDE = 16
MIN_CAPABILITY = (7, 0)
IS_DETERMINISTIC = True
SNAKE_EPS = 1e-9
# Convolution sums over Cin*K products with fp32 accumulation; the low-precision rule is 2x eager's error.
ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
RTOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


# ---------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------
@triton.jit
def _snake_tile(x_ptr, x_base, offs_c, t_in, mask, s_xc, s_xt, a, inv_b, APPLY_SNAKE: tl.constexpr):
    """Load x[c, t_in] (BLOCK_CI, BLOCK) as fp32 (0 where masked) and apply SnakeBeta per row."""
    ptrs = x_base + offs_c.to(tl.int64)[:, None] * s_xc + t_in.to(tl.int64)[None, :] * s_xt
    # Upcast right after loading: bf16 arithmetic is wrong under the interpreter and imprecise anyway.
    v = tl.load(x_ptr + ptrs, mask=mask, other=0.0).to(tl.float32)
    if APPLY_SNAKE:
        sn = tl.sin(v * a[:, None])
        v = v + sn * sn * inv_b[:, None]
    return v


@triton.jit
def _snake_params(alpha_ptr, beta_ptr, offs_c, mask_c, BLOCK_C: tl.constexpr, APPLY_SNAKE: tl.constexpr):
    """(a, 1 / (b + eps)) of SnakeBeta for channels offs_c, fp32; (1, 0) (the identity) without the snake."""
    a = tl.full((BLOCK_C,), 1.0, tl.float32)
    inv_b = tl.zeros((BLOCK_C,), dtype=tl.float32)
    if APPLY_SNAKE:
        a = tl.exp(tl.load(alpha_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32))
        inv_b = 1.0 / (tl.exp(tl.load(beta_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)) + 1e-9)
    return a, inv_b


@triton.jit
def _dot_acc(w, s, acc, x_ptr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """acc + w @ s: fp32 operands (IEEE or TF32) when DOT_FP32, else native dots in x's dtype."""
    if DOT_FP32:
        acc = tl.dot(w.to(tl.float32), s, acc, input_precision=PRECISION)
    else:
        acc = tl.dot(w.to(x_ptr.dtype.element_ty), s.to(x_ptr.dtype.element_ty), acc)
    return acc


@triton.jit
def _snake_conv1d_fwd_kernel(
    x_ptr,                 # input (B, Cin, T), strided
    alpha_ptr, beta_ptr,   # (Cin,) contiguous log-scale SnakeBeta params (unused if not APPLY_SNAKE)
    w_ptr,                 # weight (Cout, Cin, K), strided
    bias_ptr,              # (Cout,) contiguous (unused if not HAS_BIAS)
    res_ptr,               # residual (B, Cout, T), strided (unused if not HAS_RES)
    y_ptr,                 # output (B, Cout, T), contiguous
    Cin, Cout, T,          # sizes
    s_xb, s_xc, s_xt,      # x strides
    s_wo, s_wi, s_wk,      # weight strides
    s_rb, s_rc, s_rt,      # residual strides
    K: tl.constexpr,       # taps (odd)
    DIL: tl.constexpr,     # dilation
    APPLY_SNAKE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
    DOT_FP32: tl.constexpr,     # give tl.dot fp32 operands (interpreter, or fp32 I/O)
    PRECISION: tl.constexpr,    # input_precision of fp32 dots: "ieee" or "tf32"
    BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_T: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_co = tl.program_id(1)
    pid_b = tl.program_id(2)
    PAD: tl.constexpr = DIL * (K - 1) // 2
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    mask_co = offs_co < Cout
    x_base = pid_b.to(tl.int64) * s_xb
    acc = tl.zeros((BLOCK_CO, BLOCK_T), dtype=tl.float32)
    for ci0 in range(0, Cin, BLOCK_CI):
        offs_ci = ci0 + tl.arange(0, BLOCK_CI)
        mask_ci = offs_ci < Cin
        a, inv_b = _snake_params(alpha_ptr, beta_ptr, offs_ci, mask_ci, BLOCK_CI, APPLY_SNAKE)
        w_rows = offs_co.to(tl.int64)[:, None] * s_wo + offs_ci.to(tl.int64)[None, :] * s_wi
        w_mask = mask_co[:, None] & mask_ci[None, :]
        for k in tl.static_range(K):
            t_in = offs_t + (k * DIL - PAD)
            m = mask_ci[:, None] & ((t_in >= 0) & (t_in < T))[None, :]
            s = _snake_tile(x_ptr, x_base, offs_ci, t_in, m, s_xc, s_xt, a, inv_b, APPLY_SNAKE)
            w = tl.load(w_ptr + w_rows + k * s_wk, mask=w_mask, other=0.0)
            acc = _dot_acc(w, s, acc, x_ptr, DOT_FP32, PRECISION)
    mask_t = offs_t < T
    out_mask = mask_co[:, None] & mask_t[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_co, mask=mask_co, other=0.0).to(tl.float32)[:, None]
    if HAS_RES:
        r_ptrs = (res_ptr + pid_b.to(tl.int64) * s_rb + offs_co.to(tl.int64)[:, None] * s_rc
                  + offs_t.to(tl.int64)[None, :] * s_rt)
        acc += tl.load(r_ptrs, mask=out_mask, other=0.0).to(tl.float32)
    y_ptrs = (y_ptr + (pid_b.to(tl.int64) * Cout + offs_co.to(tl.int64)[:, None]) * T
              + offs_t.to(tl.int64)[None, :])
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _snake_conv_transpose1d_fwd_kernel(
    x_ptr,                 # input (B, Cin, T), strided
    alpha_ptr, beta_ptr,   # (Cin,) contiguous log-scale SnakeBeta params
    w_ptr,                 # weight (Cin, Cout, 2*S), strided
    bias_ptr,              # (Cout,) contiguous (unused if not HAS_BIAS)
    y_ptr,                 # output (B, Cout, L), contiguous
    Cin, Cout, T, L, M,    # sizes; M = number of polyphase frames m = (L - 1 + P) // S + 1
    s_xb, s_xc, s_xt,      # x strides
    s_wi, s_wo, s_wk,      # weight strides
    S: tl.constexpr,       # stride (upsampling factor)
    S_POW2: tl.constexpr,  # next_pow2(S): the phase rows of a tile
    P: tl.constexpr,       # padding ceil(S/2)
    APPLY_SNAKE: tl.constexpr, HAS_BIAS: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_co = tl.program_id(1)
    pid_b = tl.program_id(2)
    ROWS: tl.constexpr = S_POW2 * BLOCK_CO
    rows = tl.arange(0, ROWS)
    phase = rows // BLOCK_CO                          # r of each GEMM row
    offs_co = pid_co * BLOCK_CO + rows % BLOCK_CO     # output channel of each GEMM row
    mask_row = (phase < S) & (offs_co < Cout)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    x_base = pid_b.to(tl.int64) * s_xb
    acc = tl.zeros((ROWS, BLOCK_M), dtype=tl.float32)
    in0 = (offs_m >= 0) & (offs_m < T)                # tap r uses s[m]
    in1 = (offs_m >= 1) & (offs_m <= T)               # tap r + S uses s[m - 1]
    for ci0 in range(0, Cin, BLOCK_CI):
        offs_ci = ci0 + tl.arange(0, BLOCK_CI)
        mask_ci = offs_ci < Cin
        a, inv_b = _snake_params(alpha_ptr, beta_ptr, offs_ci, mask_ci, BLOCK_CI, APPLY_SNAKE)
        s0 = _snake_tile(x_ptr, x_base, offs_ci, offs_m, mask_ci[:, None] & in0[None, :], s_xc, s_xt,
                         a, inv_b, APPLY_SNAKE)
        s1 = _snake_tile(x_ptr, x_base, offs_ci, offs_m - 1, mask_ci[:, None] & in1[None, :], s_xc, s_xt,
                         a, inv_b, APPLY_SNAKE)
        w_off = (offs_ci.to(tl.int64)[None, :] * s_wi + offs_co.to(tl.int64)[:, None] * s_wo
                 + phase.to(tl.int64)[:, None] * s_wk)
        w_mask = mask_row[:, None] & mask_ci[None, :]
        w0 = tl.load(w_ptr + w_off, mask=w_mask, other=0.0)
        w1 = tl.load(w_ptr + w_off + S * s_wk, mask=w_mask, other=0.0)
        acc = _dot_acc(w0, s0, acc, x_ptr, DOT_FP32, PRECISION)
        acc = _dot_acc(w1, s1, acc, x_ptr, DOT_FP32, PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_co, mask=mask_row, other=0.0).to(tl.float32)[:, None]
    out_t = offs_m[None, :] * S + phase[:, None] - P   # output sample of each (row, m)
    out_mask = mask_row[:, None] & (offs_m < M)[None, :] & (out_t >= 0) & (out_t < L)
    y_ptrs = (y_ptr + (pid_b.to(tl.int64) * Cout + offs_co.to(tl.int64)[:, None]) * L + out_t.to(tl.int64))
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=out_mask)


# GPU configs (BLOCK_CO, BLOCK_CI, BLOCK_T, num_warps, num_stages). The tiles are GEMM tiles: output
# channels x times, reduced over input channels; a BLOCK_CO of 16 serves the 2-channel output conv.
_CONV_CONFIGS = [
    triton.Config({"BLOCK_CO": co, "BLOCK_CI": ci, "BLOCK_T": t}, num_warps=w, num_stages=st)
    for co, ci, t, w, st in ((128, 32, 128, 8, 3), (64, 32, 128, 4, 3), (128, 64, 64, 8, 3),
                             (64, 64, 64, 4, 3), (32, 32, 128, 4, 3), (16, 64, 128, 4, 3))
]
_snake_conv1d_fwd_tuned = triton.autotune(configs=_CONV_CONFIGS, key=["Cin", "Cout", "K", "DIL"])(
    _snake_conv1d_fwd_kernel)


@functools.lru_cache(maxsize=None)
def _transpose_tuned(s_pow2: int):
    # Rows of a tile = S_POW2 * BLOCK_CO: keep them at 64..256 whatever the stride.
    cfgs = []
    for rows, ci, m, w in ((128, 32, 64, 4), (256, 32, 64, 8), (256, 32, 32, 8), (128, 64, 32, 4), (64, 32, 128, 4)):
        co = max(16, rows // s_pow2)
        cfgs.append(triton.Config({"BLOCK_CO": co, "BLOCK_CI": ci, "BLOCK_M": m}, num_warps=w, num_stages=3))
    return triton.autotune(configs=cfgs, key=["Cin", "Cout", "S"])(_snake_conv_transpose1d_fwd_kernel)


# One fixed small config under the interpreter (16 is tl.dot's minimum tile side).
_INTERP_CONV = {"BLOCK_CO": 16, "BLOCK_CI": 16, "BLOCK_T": 32}
_INTERP_TRANSPOSE = {"BLOCK_CO": 16, "BLOCK_CI": 16, "BLOCK_M": 16}


# ---------------------------------------------------------------------------------------------------------
# Checks and shapes
# ---------------------------------------------------------------------------------------------------------
def conv1d_out_shape(x_shape, weight_shape) -> tuple[int, int, int]:
    """(B, Cout, T): 'same' output of ``snake_conv1d`` (shared by launcher and fake)."""
    return (int(x_shape[0]), int(weight_shape[0]), int(x_shape[2]))


def transpose_padding(stride: int) -> int:
    """Padding of the Oobleck upsampling conv: ceil(stride / 2)."""
    return (int(stride) + 1) // 2


def conv_transpose1d_out_shape(x_shape, weight_shape, stride: int) -> tuple[int, int, int]:
    """(B, Cout, L), L = (T - 1)*S - 2*ceil(S/2) + 2S (= S*T for even S); shared by launcher and fake."""
    S = int(stride)
    L = (int(x_shape[2]) - 1) * S - 2 * transpose_padding(S) + 2 * S
    return (int(x_shape[0]), int(weight_shape[1]), L)


def _common_reasons(x, tensors: dict) -> tuple[list[str], bool]:
    """The reasons shared by both ops (types, devices, dtypes, x's rank) and whether the op's own shape checks
    can run on top of them (x and every given parameter are tensors and x is 3-D)."""
    if not isinstance(x, torch.Tensor):
        return [f"x must be a torch.Tensor, got {type(x).__name__}"], False
    for name, t in tensors.items():
        if t is not None and not isinstance(t, torch.Tensor):
            return [f"{name} must be a torch.Tensor or None, got {type(t).__name__}"], False
    reasons = device_reasons(x, "x", MIN_CAPABILITY)
    if x.dtype not in SUPPORTED_DTYPES:
        reasons.append(f"x: dtype {x.dtype} not in {SUPPORTED_DTYPES}")
    if x.dim() != 3:
        reasons.append(f"x: expected 3 dims (B, Cin, T), got shape {tuple(x.shape)}")
    for name, t in tensors.items():
        if t is None:
            continue
        if t.device != x.device:
            reasons.append(f"{name}: device {t.device} differs from x's device {x.device}")
        if t.dtype not in SUPPORTED_DTYPES:
            reasons.append(f"{name}: dtype {t.dtype} not in {SUPPORTED_DTYPES}")
    return reasons, x.dim() == 3


def _snake_param_reasons(x, alpha, beta, apply_snake: bool) -> list[str]:
    if not apply_snake:
        return []
    reasons = []
    cin = x.shape[1]
    for name, t in (("alpha", alpha), ("beta", beta)):
        if t is None:
            reasons.append(f"{name}: required when apply_snake=True")
        elif tuple(t.shape) != (cin,):
            reasons.append(f"{name}: expected shape ({cin},) (x's channels), got {tuple(t.shape)}")
    return reasons


def conv1d_not_supported_reasons(x, alpha, beta, weight, bias=None, dilation=1, residual=None,
                                 apply_snake=True) -> list[str]:
    """Every reason why ``snake_conv1d`` cannot run on the Triton kernel (empty list: it can)."""
    reasons, checkable = _common_reasons(x, {"alpha": alpha, "beta": beta, "weight": weight, "bias": bias,
                                             "residual": residual})
    if not checkable:
        return reasons
    if not isinstance(weight, torch.Tensor) or weight.dim() != 3:
        reasons.append(f"weight: expected 3 dims (Cout, Cin, K), got "
                       f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else weight!r}")
        return reasons
    cout, cin_w, k = weight.shape
    if cin_w != x.shape[1]:
        reasons.append(f"weight: expected Cin={x.shape[1]} (x's channels) in dim 1, got shape {tuple(weight.shape)}")
    if k % 2 != 1 or k > MAX_KERNEL_SIZE:
        reasons.append(f"weight: kernel size must be odd and <= {MAX_KERNEL_SIZE} ('same' padding), got {k}")
    if not isinstance(dilation, int) or isinstance(dilation, bool) or dilation < 1:
        reasons.append(f"dilation: expected a positive int, got {dilation!r}")
    if bias is not None and tuple(bias.shape) != (cout,):
        reasons.append(f"bias: expected shape ({cout},), got {tuple(bias.shape)}")
    if residual is not None and tuple(residual.shape) != (x.shape[0], cout, x.shape[2]):
        reasons.append(f"residual: expected shape {(x.shape[0], cout, x.shape[2])}, got {tuple(residual.shape)}")
    reasons += _snake_param_reasons(x, alpha, beta, apply_snake)
    return reasons


def conv_transpose1d_not_supported_reasons(x, alpha, beta, weight, bias=None, stride=2,
                                           apply_snake=True) -> list[str]:
    """Every reason why ``snake_conv_transpose1d`` cannot run on the Triton kernel (empty list: it can)."""
    reasons, checkable = _common_reasons(x, {"alpha": alpha, "beta": beta, "weight": weight, "bias": bias})
    if not checkable:
        return reasons
    if not isinstance(stride, int) or isinstance(stride, bool) or not 1 <= stride <= MAX_STRIDE:
        reasons.append(f"stride: expected an int in [1, {MAX_STRIDE}], got {stride!r}")
        return reasons
    if not isinstance(weight, torch.Tensor) or weight.dim() != 3:
        reasons.append(f"weight: expected 3 dims (Cin, Cout, 2*stride), got "
                       f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else weight!r}")
        return reasons
    cin_w, cout, k = weight.shape
    if cin_w != x.shape[1]:
        reasons.append(f"weight: expected Cin={x.shape[1]} (x's channels) in dim 0, got shape {tuple(weight.shape)}")
    if k != 2 * stride:
        reasons.append(f"weight: kernel size must be 2*stride={2 * stride}, got {k}")
    if bias is not None and tuple(bias.shape) != (cout,):
        reasons.append(f"bias: expected shape ({cout},), got {tuple(bias.shape)}")
    if conv_transpose1d_out_shape(x.shape, weight.shape, stride)[2] < 1:
        reasons.append(f"x: length {x.shape[2]} gives an empty output for stride {stride}")
    reasons += _snake_param_reasons(x, alpha, beta, apply_snake)
    return reasons


def _dot_flags(x: torch.Tensor) -> dict:
    interp = interpreter_active()
    fp32 = interp or x.dtype == torch.float32
    tf32 = (not interp) and x.is_cuda and torch.backends.cudnn.allow_tf32
    return {"DOT_FP32": fp32, "PRECISION": "tf32" if tf32 else "ieee"}


def _param_args(x, alpha, beta, bias, apply_snake: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The contiguous alpha, beta and bias pointer arguments; x stands in for an unused one (a pointer argument
    still needs a tensor; the APPLY_SNAKE / HAS_BIAS flags keep it unread)."""
    def arg(t):
        return x if t is None else t.contiguous()
    return arg(alpha if apply_snake else None), arg(beta if apply_snake else None), arg(bias)


# ---------------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------------
def snake_conv1d_fwd(x, alpha, beta, weight, bias=None, dilation: int = 1, residual=None,
                     apply_snake: bool = True) -> torch.Tensor:
    """Checked launch of the fused SnakeBeta + conv1d (+ bias + residual). Shapes in the module docstring."""
    raise_if(conv1d_not_supported_reasons(x, alpha, beta, weight, bias, dilation, residual, apply_snake),
             "snake_conv1d")
    B, Cin, T = x.shape
    Cout, _, K = weight.shape
    y = torch.empty(conv1d_out_shape(x.shape, weight.shape), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    if Cin == 0:
        y.zero_()
        if bias is not None:
            y += bias.to(y.dtype)[None, :, None]
        if residual is not None:
            y += residual.to(y.dtype)
        return y
    res = residual if residual is not None else x
    alpha_arg, beta_arg, bias_arg = _param_args(x, alpha, beta, bias, apply_snake)
    args = (x, alpha_arg, beta_arg, weight, bias_arg, res, y, Cin, Cout, T, *x.stride(), *weight.stride(),
            *res.stride())
    meta = dict(K=K, DIL=int(dilation), APPLY_SNAKE=bool(apply_snake), HAS_BIAS=bias is not None,
                HAS_RES=residual is not None, **_dot_flags(x))
    launch(_snake_conv1d_fwd_kernel, _snake_conv1d_fwd_tuned,
           lambda m: (triton.cdiv(T, m["BLOCK_T"]), triton.cdiv(Cout, m["BLOCK_CO"]), B), args, _INTERP_CONV,
           fixed_warps=4, device=x.device, **meta)
    return y


def snake_conv_transpose1d_fwd(x, alpha, beta, weight, bias=None, stride: int = 2,
                               apply_snake: bool = True) -> torch.Tensor:
    """Checked launch of the fused SnakeBeta + polyphase transposed conv (+ bias). See the module docstring."""
    raise_if(conv_transpose1d_not_supported_reasons(x, alpha, beta, weight, bias, stride, apply_snake),
             "snake_conv_transpose1d")
    B, Cin, T = x.shape
    S = int(stride)
    P = transpose_padding(S)
    out_shape = conv_transpose1d_out_shape(x.shape, weight.shape, S)
    Cout, L = out_shape[1], out_shape[2]
    y = torch.empty(out_shape, dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    if Cin == 0:
        y.zero_()
        if bias is not None:
            y += bias.to(y.dtype)[None, :, None]
        return y
    M = (L - 1 + P) // S + 1
    alpha_arg, beta_arg, bias_arg = _param_args(x, alpha, beta, bias, apply_snake)
    args = (x, alpha_arg, beta_arg, weight, bias_arg, y, Cin, Cout, T, L, M, *x.stride(), *weight.stride())
    meta = dict(S=S, S_POW2=triton.next_power_of_2(S), P=P, APPLY_SNAKE=bool(apply_snake),
                HAS_BIAS=bias is not None, **_dot_flags(x))
    launch(_snake_conv_transpose1d_fwd_kernel, _transpose_tuned(triton.next_power_of_2(S)),
           lambda m: (triton.cdiv(M, m["BLOCK_M"]), triton.cdiv(Cout, m["BLOCK_CO"]), B), args, _INTERP_TRANSPOSE,
           fixed_warps=4, device=x.device, **meta)
    return y


# ---------------------------------------------------------------------------------------------------------
# Backward (eager maths, fp32)
# ---------------------------------------------------------------------------------------------------------
def _snake_and_grads(x32, alpha, beta):
    """s = snake(x) and the pieces of its derivatives, all fp32 (B, C, T) / (1, C, 1)."""
    a = alpha.float().exp()[None, :, None]
    b = beta.float().exp()[None, :, None]
    inv = 1.0 / (b + SNAKE_EPS)
    sin = torch.sin(a * x32)
    sin2x = torch.sin(2.0 * a * x32)
    s = x32 + sin * sin * inv
    return s, a, b, inv, sin, sin2x


def _snake_backward(ds, x32, alpha, beta, a, b, inv, sin, sin2x, needs):
    dx = dalpha = dbeta = None
    if needs[0]:
        dx = ds * (1.0 + a * sin2x * inv)
    if needs[1]:
        dalpha = (ds * x32 * a * sin2x * inv).sum(dim=(0, 2))
    if needs[2]:
        dbeta = (ds * sin * sin).sum(dim=(0, 2)) * (-b / (b + SNAKE_EPS) ** 2).reshape(-1)
    return dx, dalpha, dbeta


def _conv_backward(dy32, s, w32, *, stride, padding, dilation, transposed, need_input, need_weight):
    di, dw, _ = torch.ops.aten.convolution_backward(
        dy32, s, w32, None, [stride], [padding], [dilation], transposed, [0], 1,
        [need_input, need_weight, False])
    return di, dw


def _grads(ctx, dy, *, stride, padding, dilation, transposed):
    x, alpha, beta, weight, bias = ctx.saved_tensors
    need_x, need_a, need_b, need_w, need_bias = (ctx.needs_input_grad[i] for i in range(5))
    dy32 = dy.float()
    x32 = x.float()
    snake_needs = (need_x, need_a and ctx.apply_snake, need_b and ctx.apply_snake)
    if ctx.apply_snake:
        s, a, b, inv, sin, sin2x = _snake_and_grads(x32, alpha, beta)
    else:
        s = x32
    ds, dw = _conv_backward(dy32, s, weight.float(), stride=stride, padding=padding, dilation=dilation,
                            transposed=transposed, need_input=any(snake_needs), need_weight=need_w)
    dx = dalpha = dbeta = None
    if ctx.apply_snake and any(snake_needs):
        dx, dalpha, dbeta = _snake_backward(ds, x32, alpha, beta, a, b, inv, sin, sin2x, snake_needs)
    elif need_x:
        dx = ds
    dbias = dy32.sum(dim=(0, 2)) if (need_bias and bias is not None) else None
    cast = lambda g, ref: None if g is None else g.to(ref.dtype)  # noqa: E731
    return (cast(dx, x), cast(dalpha, alpha) if alpha is not None else None,
            cast(dbeta, beta) if beta is not None else None, cast(dw, weight),
            cast(dbias, bias) if bias is not None else None)


# ---------------------------------------------------------------------------------------------------------
# torch.library glue
# ---------------------------------------------------------------------------------------------------------
@torch.library.custom_op("arc_fast::snake_conv1d", mutates_args=())
def snake_conv1d_op(x: torch.Tensor, alpha: torch.Tensor | None, beta: torch.Tensor | None, weight: torch.Tensor,
                    bias: torch.Tensor | None, dilation: int, residual: torch.Tensor | None,
                    apply_snake: bool) -> torch.Tensor:
    return snake_conv1d_fwd(x, alpha, beta, weight, bias, dilation, residual, apply_snake)


@snake_conv1d_op.register_fake
def _(x, alpha, beta, weight, bias, dilation, residual, apply_snake):
    return x.new_empty(conv1d_out_shape(x.shape, weight.shape))


def _conv1d_setup_context(ctx, inputs, output):
    x, alpha, beta, weight, bias, dilation, residual, apply_snake = inputs
    ctx.save_for_backward(x, alpha, beta, weight, bias)
    ctx.dilation = dilation
    ctx.apply_snake = apply_snake
    ctx.has_residual = residual is not None
    ctx.residual_dtype = residual.dtype if residual is not None else None


def _conv1d_backward(ctx, dy):
    weight = ctx.saved_tensors[3]
    K = weight.shape[2]
    dx, dalpha, dbeta, dw, dbias = _grads(ctx, dy, stride=1, padding=ctx.dilation * (K - 1) // 2,
                                          dilation=ctx.dilation, transposed=False)
    dres = None
    if ctx.has_residual and ctx.needs_input_grad[6]:
        dres = dy.to(ctx.residual_dtype)
    return dx, dalpha, dbeta, dw, dbias, None, dres, None


snake_conv1d_op.register_autograd(_conv1d_backward, setup_context=_conv1d_setup_context)


@torch.library.custom_op("arc_fast::snake_conv_transpose1d", mutates_args=())
def snake_conv_transpose1d_op(x: torch.Tensor, alpha: torch.Tensor | None, beta: torch.Tensor | None,
                              weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
                              apply_snake: bool) -> torch.Tensor:
    return snake_conv_transpose1d_fwd(x, alpha, beta, weight, bias, stride, apply_snake)


@snake_conv_transpose1d_op.register_fake
def _(x, alpha, beta, weight, bias, stride, apply_snake):
    return x.new_empty(conv_transpose1d_out_shape(x.shape, weight.shape, stride))


def _transpose_setup_context(ctx, inputs, output):
    x, alpha, beta, weight, bias, stride, apply_snake = inputs
    ctx.save_for_backward(x, alpha, beta, weight, bias)
    ctx.stride = stride
    ctx.apply_snake = apply_snake


def _transpose_backward(ctx, dy):
    dx, dalpha, dbeta, dw, dbias = _grads(ctx, dy, stride=ctx.stride, padding=transpose_padding(ctx.stride),
                                          dilation=1, transposed=True)
    return dx, dalpha, dbeta, dw, dbias, None, None


snake_conv_transpose1d_op.register_autograd(_transpose_backward, setup_context=_transpose_setup_context)


# ---------------------------------------------------------------------------------------------------------
# Public functionals
# ---------------------------------------------------------------------------------------------------------
def snake_conv1d(x: torch.Tensor, alpha: torch.Tensor | None, beta: torch.Tensor | None, weight: torch.Tensor,
                 bias: torch.Tensor | None = None, dilation: int = 1, residual: torch.Tensor | None = None,
                 apply_snake: bool = True) -> torch.Tensor:
    """y = conv1d(snake_beta(x), weight, bias, padding=dilation*(K-1)//2, dilation=dilation) + residual.

    Args:
        x: (B, Cin, T) fp32/fp16/bf16, any strides.
        alpha, beta: (Cin,) log-scale SnakeBeta parameters (None allowed when ``apply_snake=False``).
        weight: (Cout, Cin, K), K odd ('same' output length), weight norm already folded.
        bias: (Cout,) or None. residual: (B, Cout, T) or None, added after the convolution.
        dilation: positive int. apply_snake: False skips the activation (a plain fused conv).

    Returns:
        A new contiguous (B, Cout, T) tensor in x's dtype; differentiable (eager-maths backward).

    Raises:
        TypeError (dtype or type problems) or ValueError listing every reason from
        ``conv1d_not_supported_reasons``; no silent fallback (``arc_fast.ops`` chooses backends).
    """
    raise_if(conv1d_not_supported_reasons(x, alpha, beta, weight, bias, dilation, residual, apply_snake),
             "snake_conv1d")
    return snake_conv1d_op(x, alpha if apply_snake else None, beta if apply_snake else None, weight, bias,
                           int(dilation), residual, bool(apply_snake))


def snake_conv_transpose1d(x: torch.Tensor, alpha: torch.Tensor | None, beta: torch.Tensor | None,
                           weight: torch.Tensor, bias: torch.Tensor | None = None, stride: int = 2,
                           apply_snake: bool = True) -> torch.Tensor:
    """y = conv_transpose1d(snake_beta(x), weight, bias, stride=stride, padding=ceil(stride/2)).

    Args:
        x: (B, Cin, T) fp32/fp16/bf16, any strides.
        alpha, beta: (Cin,) log-scale SnakeBeta parameters (None allowed when ``apply_snake=False``).
        weight: (Cin, Cout, 2*stride), weight norm already folded. bias: (Cout,) or None.
        stride: upsampling factor in [1, MAX_STRIDE].

    Returns:
        A new contiguous (B, Cout, L) tensor in x's dtype, L = (T-1)*stride - 2*ceil(stride/2) + 2*stride
        (exactly stride*T for even strides); differentiable (eager-maths backward).

    Raises:
        TypeError/ValueError listing every reason from ``conv_transpose1d_not_supported_reasons``.
    """
    raise_if(conv_transpose1d_not_supported_reasons(x, alpha, beta, weight, bias, stride, apply_snake),
             "snake_conv_transpose1d")
    return snake_conv_transpose1d_op(x, alpha if apply_snake else None, beta if apply_snake else None, weight, bias,
                                     int(stride), bool(apply_snake))


__all__ = [
    "snake_conv1d", "snake_conv_transpose1d", "snake_conv1d_fwd", "snake_conv_transpose1d_fwd",
    "conv1d_not_supported_reasons", "conv_transpose1d_not_supported_reasons", "conv1d_out_shape",
    "conv_transpose1d_out_shape", "transpose_padding", "SUPPORTED_DTYPES", "ATOL", "RTOL",
]
