// Shared host/device math of the fused SnakeBeta + convolution kernels (csrc/snake_conv.cu).
//
// Everything here is plain C++ that compiles three ways, with no include at all:
//   * nvcc (host and device sides of csrc/snake_conv.cu),
//   * NVRTC (CuPy RawModule: the runtime path of arc_fast/_cuda.py; NVRTC has no standard headers),
//   * g++ -x c++ on the CPU (tests/test_csrc.py builds csrc/tests/test_snake_math.cpp against this header).
//
// Maths (SPEC.md 7.4):
//   SnakeBeta      s(x) = x + sin(a x)^2 * inv_b,  a = exp(alpha), inv_b = 1 / (exp(beta) + 1e-9), per channel.
//   'same' conv    y[t] = sum_k w[k] s(x[t + k d - pad]),  pad = d (K - 1) / 2  (K odd).
//   transposed     y[o] = sum_{i,k : o = i s - p + k} w[k] s(x[i]),  p = ceil(s / 2), K = 2 s.
//                  Polyphase form: with q = o + p, the phase r = q mod s and the base m = q div s, the taps
//                  that reach o are k_j = r + j s (j = 0, 1, ..., while k_j < K) with inputs i_j = m - j.
//                  Output length (T - 1) s - 2 p + K, which is T s for every even stride.
#ifndef ARC_FAST_SNAKE_MATH_H
#define ARC_FAST_SNAKE_MATH_H

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define ARC_HD __host__ __device__ __forceinline__
#else
// Plain C++ (the CPU test harness): the CUDA qualifiers mean nothing there.
#define ARC_HD inline
#endif

#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
// sinf/expf/fmaf for plain C++; nvcc (through cuda_runtime.h) and NVRTC provide them without an include.
#include <math.h>
#endif

// Block tiling shared by the kernels, their launchers, the CPU emulation test and arc_fast/_cuda.py (which
// reads these #defines from this file, so that the CuPy path computes the same launch configuration).
#define ARC_SC_THREADS 256        // threads per block
#define ARC_SC_COUT_TILE 64       // output channels per block
#define ARC_SC_T_TILE 128         // output positions per block
#define ARC_SC_TM 4               // output channels per thread (contiguous: one float4 of staged weights)
#define ARC_SC_TN 8               // output positions per thread
#define ARC_SC_CI_TILE_MAX 16     // input channels staged in shared memory per step (upper bound)
#define ARC_SC_SMEM_BUDGET 49152  // bytes of dynamic shared memory a block may use without an opt-in

// Threads along time / along output channels. Thread (tx, ty) owns channels co0 + ty*TM + [0, TM) and
// positions t0 + tx + j*TX (j < TN): a half-warp reads 16 consecutive shared-memory words of the input
// window and one float4 of weights (broadcast), and stores 16 consecutive outputs.
#define ARC_SC_TX (ARC_SC_T_TILE / ARC_SC_TN)     // 16
#define ARC_SC_TY (ARC_SC_COUT_TILE / ARC_SC_TM)  // 16

namespace arc_snake {

// ---------------------------------------------------------------------------------------------- SnakeBeta
ARC_HD float snake_inv_b(float beta_log) { return 1.0f / (expf(beta_log) + 1e-9f); }
ARC_HD float snake_a(float alpha_log) { return expf(alpha_log); }
// Same operation order as arc_fast.reference.functional.snake_beta: x + (1 / (b + 1e-9)) * sin(x a)^2.
ARC_HD float snake_beta(float x, float a, float inv_b) {
  const float s = sinf(x * a);
  return x + inv_b * (s * s);
}

// ------------------------------------------------------------------------------ 'same' dilated conv1d
ARC_HD int same_conv_padding(int K, int dilation) { return dilation * (K - 1) / 2; }
// Input position read by output position t through tap k (may be outside [0, T): zero padding).
ARC_HD long long same_conv_input_index(long long t, int k, int dilation, int pad) {
  return t + (long long)k * dilation - pad;
}

// ------------------------------------------------------------------- polyphase transposed conv1d
ARC_HD int convT_padding(int stride) { return (stride + 1) / 2; }
ARC_HD long long convT_out_length(long long T, int stride, int K, int pad) {
  return (T - 1) * stride - 2LL * pad + K;
}
// Number of taps of the longest phase: ceil(K / stride) (2 for K = 2 s).
ARC_HD int convT_num_taps(int K, int stride) { return (K + stride - 1) / stride; }
// Output position o (>= 0) -> phase r (the first tap) and base input index m = (o + pad) div stride.
ARC_HD void convT_phase(long long o, int stride, int pad, int* phase, long long* base) {
  const long long q = o + pad;  // o >= 0 and pad >= 0, so C++ division is the floor here
  *phase = (int)(q % stride);
  *base = q / stride;
}
// Tap j of phase r: the kernel index (valid while < K) and the input index (valid while in [0, T)).
ARC_HD int convT_tap(int phase, int j, int stride) { return phase + j * stride; }
ARC_HD long long convT_input_index(long long base, int j) { return base - j; }

// ------------------------------------------------------------------------------- launch configuration
// Shared memory of one block, in floats: weights [ci_tile * K rows][COUT_TILE] first (16-byte aligned float4
// reads), then the snake'd input window [ci_tile][x_width], then the per-channel SnakeBeta factors a and
// inv_b [2][ci_tile]. x_width covers every input that any output of the tile reads.
ARC_HD int conv1d_x_width(int K, int dilation) { return ARC_SC_T_TILE + (K - 1) * dilation; }
ARC_HD int convT_x_width(int K, int stride) {
  // bases of the tile's outputs span at most (T_TILE - 1) / s + 2 values; taps reach num_taps - 1 further back.
  return (ARC_SC_T_TILE - 1) / stride + 2 + convT_num_taps(K, stride) - 1;
}
ARC_HD int smem_floats_per_ci(int K, int x_width) { return K * ARC_SC_COUT_TILE + x_width + 2; }
// Staged weight (row, output channel) -> shared-memory word. Rows are ci * K + k. The XOR swizzle moves
// whole groups of 4 channels (float4 reads stay contiguous) so that 8 consecutive rows x 4 channels, the
// pattern of a warp's coalesced weight load, hit 32 different banks.
ARC_HD int w_smem_index(int row, int co) { return row * ARC_SC_COUT_TILE + (co ^ ((row & 7) << 2)); }
// Input channels staged per step: as many as fit the budget, at most CI_TILE_MAX and at most Cin; 0 if even
// one does not fit (the launcher then refuses the shape).
ARC_HD int pick_ci_tile(int Cin, int K, int x_width) {
  int per_ci = smem_floats_per_ci(K, x_width) * 4;
  int ci = ARC_SC_SMEM_BUDGET / per_ci;
  if (ci > ARC_SC_CI_TILE_MAX) ci = ARC_SC_CI_TILE_MAX;
  if (ci > Cin) ci = Cin;
  return ci;
}
ARC_HD int smem_bytes(int ci_tile, int K, int x_width) { return ci_tile * smem_floats_per_ci(K, x_width) * 4; }

// ---------------------------------------------------------------------------- fp16 / bf16 conversions
// Bit-exact software conversions (round to nearest even) so that the kernels need neither cuda_fp16.h nor
// cuda_bf16.h (absent from NVRTC without extra include paths). The device side uses the cvt instruction for
// fp16; the host versions are the ones the CPU test checks against torch for every half value.
ARC_HD unsigned int f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  unsigned int u;
  __builtin_memcpy(&u, &f, 4);
  return u;
#endif
}
ARC_HD float bits_f32(unsigned int u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
#endif
}

ARC_HD float bf16_to_f32(unsigned short h) { return bits_f32((unsigned int)h << 16); }
ARC_HD unsigned short f32_to_bf16(float f) {
  const unsigned int u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);  // quiet NaN
  return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

ARC_HD float f16_to_f32_soft(unsigned short h) {
  const unsigned int sign = ((unsigned int)h & 0x8000u) << 16;
  const unsigned int e = ((unsigned int)h >> 10) & 0x1fu;
  const unsigned int m = (unsigned int)h & 0x3ffu;
  if (e == 0) {  // zero or subnormal: m * 2^-24 is exact in fp32
    const float v = (float)m * 5.9604644775390625e-8f;
    return bits_f32(f32_bits(v) | sign);
  }
  if (e == 31) return bits_f32(sign | 0x7f800000u | (m << 13));
  return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}
ARC_HD unsigned short f32_to_f16_soft(float f) {
  const unsigned int u = f32_bits(f);
  const unsigned int sign = (u >> 16) & 0x8000u;
  const unsigned int a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return (unsigned short)(sign | 0x7e00u);  // NaN
  if (a >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (a < 0x38800000u) {  // below 2^-14: fp16 subnormal (or zero), value / 2^-24 rounded to even
    if (a < 0x33000000u) return (unsigned short)sign;  // <= 2^-25 rounds to zero
    const unsigned int e = a >> 23;
    const unsigned int m = (a & 0x7fffffu) | 0x800000u;
    const unsigned int shift = 126u - e;  // 14..24
    unsigned int h = m >> shift;
    const unsigned int rem = m & ((1u << shift) - 1u);
    const unsigned int halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (h & 1u))) h++;
    return (unsigned short)(sign | h);
  }
  unsigned int h = (a - 0x38000000u) >> 13;  // rebias the exponent 127 -> 15, keep 10 mantissa bits
  const unsigned int rem = a & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;  // a carry into the exponent is still right
  return (unsigned short)(sign | h);
}

ARC_HD float f16_to_f32(unsigned short h) {
#if defined(__CUDA_ARCH__)
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
#else
  return f16_to_f32_soft(h);
#endif
}
ARC_HD unsigned short f32_to_f16(float f) {
#if defined(__CUDA_ARCH__)
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
#else
  return f32_to_f16_soft(f);
#endif
}

// Storage types of the kernels' I/O: fp32 as is; fp16 and bf16 as their 16-bit patterns (layout-compatible
// with __half / __nv_bfloat16 and torch.half / torch.bfloat16). Arithmetic is always fp32.
struct half_t { unsigned short bits; };
struct bf16_t { unsigned short bits; };

ARC_HD float load_f32(const float* p) { return *p; }
ARC_HD float load_f32(const half_t* p) { return f16_to_f32(p->bits); }
ARC_HD float load_f32(const bf16_t* p) { return bf16_to_f32(p->bits); }
ARC_HD void store_f32(float* p, float v) { *p = v; }
ARC_HD void store_f32(half_t* p, float v) { p->bits = f32_to_f16(v); }
ARC_HD void store_f32(bf16_t* p, float v) { p->bits = f32_to_bf16(v); }

}  // namespace arc_snake

#endif  // ARC_FAST_SNAKE_MATH_H
