// Fused SnakeBeta + 1-D convolution kernels of the Oobleck decoder (SPEC.md 7.4; maths in snake_math.h).
//
//   arc_snake_conv1d_{f32,f16,bf16}:           y = conv1d(snake(x), w, bias, 'same', dilation) + residual
//   arc_snake_conv_transpose1d_{f32,f16,bf16}: y = conv_transpose1d(snake(x), w, bias, stride, ceil(stride/2))
//
// One source, three compilers: nvcc (arc_fast._C through setup.py, and CMakeLists.txt), NVRTC (CuPy RawModule
// in arc_fast/_cuda.py; only the __global__ part, no includes beyond snake_math.h), and g++ with the CPU
// emulation of csrc/tests/cuda_emulation.h (tests/test_csrc.py). Hence no torch or CUDA headers here, the
// kernels take raw pointers, and the `extern "C"` names are the interface.
//
// Tiling (both kernels): a block of ARC_SC_THREADS threads computes ARC_SC_COUT_TILE output channels x
// ARC_SC_T_TILE output positions of one batch item. For each chunk of ci_tile input channels it stages
//   * the weights of the chunk, as rows ci*K + k of ARC_SC_COUT_TILE channels (swizzled, fp32), and
//   * the input window the tile reads, with SnakeBeta applied once per loaded element (fp32, zero padding),
// then every thread accumulates its ARC_SC_TM x ARC_SC_TN outputs in fp32 registers. Bias and residual are
// added in the epilogue, so y is written once and x, residual read once per output-channel block.
#include "snake_math.h"

#ifndef ARC_SC_DYN_SMEM
// float4 element type so that the dynamic shared memory is 16-byte aligned for the float4 weight reads.
#define ARC_SC_DYN_SMEM(name)                  \
  extern __shared__ float4 arc_sc_smem_raw[]; \
  float* name = reinterpret_cast<float*>(arc_sc_smem_raw)
#endif

namespace arc_snake {

// Per-channel SnakeBeta factors of the chunk [ci0, ci0 + ci_tile) into s_ab[0..ci_tile) (a) and
// s_ab[ci_tile..2 ci_tile) (inv_b), so that exp and the division run once per channel, not per element.
template <typename T>
__device__ __forceinline__ void stage_snake_factors(const T* __restrict__ alpha, const T* __restrict__ beta,
                                                    float* s_ab, int ci0, int ci_tile, int Cin, int apply_snake) {
  for (int ci = threadIdx.x; ci < ci_tile; ci += ARC_SC_THREADS) {
    const int c = ci0 + ci;
    float a = 0.0f, inv_b = 0.0f;
    if (apply_snake && c < Cin) {
      a = snake_a(load_f32(alpha + c));
      inv_b = snake_inv_b(load_f32(beta + c));
    }
    s_ab[ci] = a;
    s_ab[ci_tile + ci] = inv_b;
  }
}

// Input window of the chunk: s_x[ci * x_width + j] = snake(x[c][start + j]), zero outside [0, T) and past Cin
// (zero padding is applied after SnakeBeta, as in the eager module; snake(0) = 0 anyway).
template <typename T>
__device__ __forceinline__ void stage_input(const T* __restrict__ xb, const float* s_ab, float* s_x, int ci0,
                                            int ci_tile, int Cin, long long T_in, long long start, int x_width,
                                            int apply_snake) {
  const int n = ci_tile * x_width;
  for (int idx = threadIdx.x; idx < n; idx += ARC_SC_THREADS) {
    const int ci = idx / x_width;
    const int j = idx - ci * x_width;
    const int c = ci0 + ci;
    const long long t = start + j;
    float v = 0.0f;
    if (c < Cin && t >= 0 && t < T_in) {
      v = load_f32(xb + (long long)c * T_in + t);
      if (apply_snake) v = snake_beta(v, s_ab[ci], s_ab[ci_tile + ci]);
    }
    s_x[idx] = v;
  }
}

__device__ __forceinline__ void fma4(float (&acc)[ARC_SC_TM], const float4& w, float xv) {
  acc[0] = fmaf(w.x, xv, acc[0]);
  acc[1] = fmaf(w.y, xv, acc[1]);
  acc[2] = fmaf(w.z, xv, acc[2]);
  acc[3] = fmaf(w.w, xv, acc[3]);
}

__device__ __forceinline__ float4 load_w4(const float* s_w, int row, int co_local) {
  return *reinterpret_cast<const float4*>(s_w + w_smem_index(row, co_local));
}

// Epilogue: y[b, co, t] = acc + bias[co] (+ residual[b, co, t]); positions past T_out and channels past Cout
// are dropped.
template <typename T>
__device__ __forceinline__ void store_tile(float (&acc)[ARC_SC_TN][ARC_SC_TM], const T* __restrict__ bias,
                                           const T* __restrict__ residual, T* __restrict__ y, int b, int Cout,
                                           long long T_out, int co_base, long long t_base) {
#pragma unroll
  for (int i = 0; i < ARC_SC_TM; ++i) {
    const int co = co_base + i;
    if (co >= Cout) continue;
    const float bv = bias != nullptr ? load_f32(bias + co) : 0.0f;
    const long long row = ((long long)b * Cout + co) * T_out;
#pragma unroll
    for (int j = 0; j < ARC_SC_TN; ++j) {
      const long long t = t_base + (long long)j * ARC_SC_TX;
      if (t >= T_out) continue;
      float v = acc[j][i] + bv;
      if (residual != nullptr) v += load_f32(residual + row + t);
      store_f32(y + row + t, v);
    }
  }
}

// ------------------------------------------------------------------------------------ 'same' conv1d
// Grid: (ceil(T / T_TILE), ceil(Cout / COUT_TILE), B). Shared memory: smem_bytes(ci_tile, K, x_width).
template <typename T>
__device__ __forceinline__ void snake_conv1d_body(
    const T* __restrict__ x,         // (B, Cin, T)
    const T* __restrict__ alpha,     // (Cin,) log-scale a; unused unless apply_snake
    const T* __restrict__ beta,      // (Cin,) log-scale b; unused unless apply_snake
    const T* __restrict__ weight,    // (Cout, Cin, K)
    const T* __restrict__ bias,      // (Cout,) or nullptr
    const T* __restrict__ residual,  // (B, Cout, T) or nullptr
    T* __restrict__ y,               // (B, Cout, T)
    int Cin, int Cout, long long T_len, int K, int dilation, int ci_tile, int apply_snake) {
  ARC_SC_DYN_SMEM(smem);
  const int x_width = conv1d_x_width(K, dilation);
  float* s_w = smem;                                   // [ci_tile * K][COUT_TILE], swizzled
  float* s_x = s_w + ci_tile * K * ARC_SC_COUT_TILE;   // [ci_tile][x_width]
  float* s_ab = s_x + ci_tile * x_width;               // [2][ci_tile]

  const int tx = threadIdx.x % ARC_SC_TX;
  const int ty = threadIdx.x / ARC_SC_TX;
  const long long t0 = (long long)blockIdx.x * ARC_SC_T_TILE;
  const int co0 = blockIdx.y * ARC_SC_COUT_TILE;
  const int b = blockIdx.z;
  const int pad = same_conv_padding(K, dilation);
  const T* xb = x + (long long)b * Cin * T_len;

  float acc[ARC_SC_TN][ARC_SC_TM];
#pragma unroll
  for (int j = 0; j < ARC_SC_TN; ++j)
#pragma unroll
    for (int i = 0; i < ARC_SC_TM; ++i) acc[j][i] = 0.0f;

  const int rows = ci_tile * K;
  // Weight staging: a warp loads 4 channels x 8 consecutive (ci, k) rows; rows are contiguous in global
  // memory per channel, and the swizzle spreads the warp's 32 stores over 32 banks.
  const int row_groups = (rows + 7) / 8;
  const int n_w = row_groups * (ARC_SC_COUT_TILE / 4) * 32;

  for (int ci0 = 0; ci0 < Cin; ci0 += ci_tile) {
    for (int idx = threadIdx.x; idx < n_w; idx += ARC_SC_THREADS) {
      const int lane = idx & 31;
      const int g = idx >> 5;
      const int co = (g % (ARC_SC_COUT_TILE / 4)) * 4 + (lane & 3);
      const int row = (g / (ARC_SC_COUT_TILE / 4)) * 8 + (lane >> 2);
      if (row < rows) {
        const int ci = row / K;
        float v = 0.0f;
        if (co0 + co < Cout && ci0 + ci < Cin)
          v = load_f32(weight + ((long long)(co0 + co) * Cin + ci0) * K + row);
        s_w[w_smem_index(row, co)] = v;
      }
    }
    stage_snake_factors(alpha, beta, s_ab, ci0, ci_tile, Cin, apply_snake);
    __syncthreads();
    stage_input(xb, s_ab, s_x, ci0, ci_tile, Cin, T_len, t0 - pad, x_width, apply_snake);
    __syncthreads();

    for (int ci = 0; ci < ci_tile; ++ci) {
      const float* xr = s_x + ci * x_width + tx;
      for (int k = 0; k < K; ++k) {
        const float4 w4 = load_w4(s_w, ci * K + k, ty * ARC_SC_TM);
        const float* xk = xr + k * dilation;
#pragma unroll
        for (int j = 0; j < ARC_SC_TN; ++j) fma4(acc[j], w4, xk[j * ARC_SC_TX]);
      }
    }
    __syncthreads();  // the next chunk overwrites the staged tiles
  }
  store_tile(acc, bias, residual, y, b, Cout, T_len, co0 + ty * ARC_SC_TM, t0 + tx);
}

// --------------------------------------------------------------------- polyphase transposed conv1d
// Grid: (ceil(T_out / T_TILE), ceil(Cout / COUT_TILE), B). Output o reads inputs m - j through taps r + j s
// (convT_phase); the tile's window starts at the smallest base minus (num_taps - 1).
template <typename T>
__device__ __forceinline__ void snake_conv_transpose1d_body(
    const T* __restrict__ x,       // (B, Cin, T_in)
    const T* __restrict__ alpha,   // (Cin,) log-scale a; unused unless apply_snake
    const T* __restrict__ beta,    // (Cin,) log-scale b; unused unless apply_snake
    const T* __restrict__ weight,  // (Cin, Cout, K)
    const T* __restrict__ bias,    // (Cout,) or nullptr
    T* __restrict__ y,             // (B, Cout, T_out)
    int Cin, int Cout, long long T_in, long long T_out, int K, int stride, int ci_tile, int apply_snake) {
  ARC_SC_DYN_SMEM(smem);
  const int x_width = convT_x_width(K, stride);
  float* s_w = smem;                                   // [ci_tile * K][COUT_TILE], swizzled
  float* s_x = s_w + ci_tile * K * ARC_SC_COUT_TILE;   // [ci_tile][x_width]
  float* s_ab = s_x + ci_tile * x_width;               // [2][ci_tile]

  const int tx = threadIdx.x % ARC_SC_TX;
  const int ty = threadIdx.x / ARC_SC_TX;
  const long long o0 = (long long)blockIdx.x * ARC_SC_T_TILE;
  const int co0 = blockIdx.y * ARC_SC_COUT_TILE;
  const int b = blockIdx.z;
  const int pad = convT_padding(stride);
  const int n_taps = convT_num_taps(K, stride);
  const T* xb = x + (long long)b * Cin * T_in;

  int first_phase;
  long long first_base;
  convT_phase(o0, stride, pad, &first_phase, &first_base);
  const long long start = convT_input_index(first_base, n_taps - 1);

  // Phase and window position of each owned output; independent of the channel chunk.
  int phase[ARC_SC_TN];
  int xloc[ARC_SC_TN];
#pragma unroll
  for (int j = 0; j < ARC_SC_TN; ++j) {
    long long base;
    convT_phase(o0 + tx + (long long)j * ARC_SC_TX, stride, pad, &phase[j], &base);
    xloc[j] = (int)(base - start);
  }
  // Strides dividing TX (2, 4, 8, 16) give every owned output the same phase: one weight read per tap.
  const bool uniform_phase = (ARC_SC_TX % stride) == 0;

  float acc[ARC_SC_TN][ARC_SC_TM];
#pragma unroll
  for (int j = 0; j < ARC_SC_TN; ++j)
#pragma unroll
    for (int i = 0; i < ARC_SC_TM; ++i) acc[j][i] = 0.0f;

  const int per_ci = ARC_SC_COUT_TILE * K;  // (co, k) of one input channel: contiguous in global memory

  for (int ci0 = 0; ci0 < Cin; ci0 += ci_tile) {
    const int n_w = ci_tile * per_ci;
    for (int idx = threadIdx.x; idx < n_w; idx += ARC_SC_THREADS) {
      const int ci = idx / per_ci;
      const int rem = idx - ci * per_ci;
      const int co = rem / K;
      const int k = rem - co * K;
      float v = 0.0f;
      if (ci0 + ci < Cin && co0 + co < Cout)
        v = load_f32(weight + ((long long)(ci0 + ci) * Cout + co0 + co) * K + k);
      s_w[w_smem_index(ci * K + k, co)] = v;
    }
    stage_snake_factors(alpha, beta, s_ab, ci0, ci_tile, Cin, apply_snake);
    __syncthreads();
    stage_input(xb, s_ab, s_x, ci0, ci_tile, Cin, T_in, start, x_width, apply_snake);
    __syncthreads();

    if (uniform_phase) {
      for (int ci = 0; ci < ci_tile; ++ci) {
        const float* xr = s_x + ci * x_width;
        for (int tap = 0; tap < n_taps; ++tap) {
          const int k = convT_tap(phase[0], tap, stride);
          if (k >= K) break;
          const float4 w4 = load_w4(s_w, ci * K + k, ty * ARC_SC_TM);
#pragma unroll
          for (int j = 0; j < ARC_SC_TN; ++j) fma4(acc[j], w4, xr[xloc[j] - tap]);
        }
      }
    } else {
      for (int ci = 0; ci < ci_tile; ++ci) {
        const float* xr = s_x + ci * x_width;
#pragma unroll
        for (int j = 0; j < ARC_SC_TN; ++j) {
          for (int tap = 0; tap < n_taps; ++tap) {
            const int k = convT_tap(phase[j], tap, stride);
            if (k >= K) break;
            fma4(acc[j], load_w4(s_w, ci * K + k, ty * ARC_SC_TM), xr[xloc[j] - tap]);
          }
        }
      }
    }
    __syncthreads();
  }
  store_tile(acc, bias, static_cast<const T*>(nullptr), y, b, Cout, T_out, co0 + ty * ARC_SC_TM, o0 + tx);
}

}  // namespace arc_snake

// ------------------------------------------------------------------------------ extern "C" entry points
// Unmangled names, one per dtype: CuPy's RawModule.get_function and the host launchers below use them.
#define ARC_SC_DEFINE_KERNELS(SUFFIX, TYPE)                                                                  \
  extern "C" __global__ void __launch_bounds__(ARC_SC_THREADS) arc_snake_conv1d_##SUFFIX(                  \
      const TYPE* x, const TYPE* alpha, const TYPE* beta, const TYPE* weight, const TYPE* bias,             \
      const TYPE* residual, TYPE* y, int Cin, int Cout, long long T_len, int K, int dilation, int ci_tile,  \
      int apply_snake) {                                                                                    \
    arc_snake::snake_conv1d_body<TYPE>(x, alpha, beta, weight, bias, residual, y, Cin, Cout, T_len, K,      \
                                       dilation, ci_tile, apply_snake);                                     \
  }                                                                                                         \
  extern "C" __global__ void __launch_bounds__(ARC_SC_THREADS) arc_snake_conv_transpose1d_##SUFFIX(        \
      const TYPE* x, const TYPE* alpha, const TYPE* beta, const TYPE* weight, const TYPE* bias, TYPE* y,    \
      int Cin, int Cout, long long T_in, long long T_out, int K, int stride, int ci_tile, int apply_snake) { \
    arc_snake::snake_conv_transpose1d_body<TYPE>(x, alpha, beta, weight, bias, y, Cin, Cout, T_in, T_out,  \
                                                 K, stride, ci_tile, apply_snake);                          \
  }

ARC_SC_DEFINE_KERNELS(f32, float)
ARC_SC_DEFINE_KERNELS(f16, arc_snake::half_t)
ARC_SC_DEFINE_KERNELS(bf16, arc_snake::bf16_t)

// ------------------------------------------------------------------------------------ host launchers
#if defined(__CUDACC__) && !defined(__CUDACC_RTC__)
#include "snake_conv.h"

namespace {

// Validates sizes and computes the launch configuration shared by both ops.
int plan_launch(int B, int Cin, int Cout, long long T_out, int K, int x_width, dim3* grid, int* ci_tile,
                int* smem) {
  if (B <= 0 || Cin <= 0 || Cout <= 0 || T_out <= 0 || K <= 0) return ARC_SNAKE_ESHAPE;
  const long long blocks_t = (T_out + ARC_SC_T_TILE - 1) / ARC_SC_T_TILE;
  const int blocks_co = (Cout + ARC_SC_COUT_TILE - 1) / ARC_SC_COUT_TILE;
  if (blocks_t > 0x7fffffffLL || blocks_co > 65535 || B > 65535) return ARC_SNAKE_EGRID;
  *ci_tile = arc_snake::pick_ci_tile(Cin, K, x_width);
  if (*ci_tile < 1) return ARC_SNAKE_ESMEM;
  *smem = arc_snake::smem_bytes(*ci_tile, K, x_width);
  *grid = dim3((unsigned)blocks_t, (unsigned)blocks_co, (unsigned)B);
  return ARC_SNAKE_OK;
}

}  // namespace

extern "C" int arc_snake_conv1d_launch(int dtype, const void* x, const void* alpha, const void* beta,
                                       const void* weight, const void* bias, const void* residual, void* y, int B,
                                       int Cin, int Cout, long long T, int K, int dilation, int apply_snake,
                                       void* stream) {
  if (K % 2 == 0 || dilation <= 0) return ARC_SNAKE_ESHAPE;
  dim3 grid;
  int ci_tile = 0, smem = 0;
  const int status = plan_launch(B, Cin, Cout, T, K, arc_snake::conv1d_x_width(K, dilation), &grid, &ci_tile, &smem);
  if (status != ARC_SNAKE_OK) return status;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  using arc_snake::bf16_t;
  using arc_snake::half_t;
  switch (dtype) {
    case ARC_SNAKE_F32:
      arc_snake_conv1d_f32<<<grid, ARC_SC_THREADS, smem, s>>>(
          (const float*)x, (const float*)alpha, (const float*)beta, (const float*)weight, (const float*)bias,
          (const float*)residual, (float*)y, Cin, Cout, T, K, dilation, ci_tile, apply_snake);
      break;
    case ARC_SNAKE_F16:
      arc_snake_conv1d_f16<<<grid, ARC_SC_THREADS, smem, s>>>(
          (const half_t*)x, (const half_t*)alpha, (const half_t*)beta, (const half_t*)weight,
          (const half_t*)bias, (const half_t*)residual, (half_t*)y, Cin, Cout, T, K, dilation, ci_tile,
          apply_snake);
      break;
    case ARC_SNAKE_BF16:
      arc_snake_conv1d_bf16<<<grid, ARC_SC_THREADS, smem, s>>>(
          (const bf16_t*)x, (const bf16_t*)alpha, (const bf16_t*)beta, (const bf16_t*)weight,
          (const bf16_t*)bias, (const bf16_t*)residual, (bf16_t*)y, Cin, Cout, T, K, dilation, ci_tile,
          apply_snake);
      break;
    default:
      return ARC_SNAKE_EDTYPE;
  }
  return (int)cudaGetLastError();
}

extern "C" int arc_snake_conv_transpose1d_launch(int dtype, const void* x, const void* alpha, const void* beta,
                                                 const void* weight, const void* bias, void* y, int B, int Cin,
                                                 int Cout, long long T, int K, int stride, int apply_snake,
                                                 void* stream) {
  if (stride <= 0 || T <= 0) return ARC_SNAKE_ESHAPE;
  const long long T_out = arc_snake::convT_out_length(T, stride, K, arc_snake::convT_padding(stride));
  dim3 grid;
  int ci_tile = 0, smem = 0;
  const int status = plan_launch(B, Cin, Cout, T_out, K, arc_snake::convT_x_width(K, stride), &grid, &ci_tile, &smem);
  if (status != ARC_SNAKE_OK) return status;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  using arc_snake::bf16_t;
  using arc_snake::half_t;
  switch (dtype) {
    case ARC_SNAKE_F32:
      arc_snake_conv_transpose1d_f32<<<grid, ARC_SC_THREADS, smem, s>>>(
          (const float*)x, (const float*)alpha, (const float*)beta, (const float*)weight, (const float*)bias,
          (float*)y, Cin, Cout, T, T_out, K, stride, ci_tile, apply_snake);
      break;
    case ARC_SNAKE_F16:
      arc_snake_conv_transpose1d_f16<<<grid, ARC_SC_THREADS, smem, s>>>(
          (const half_t*)x, (const half_t*)alpha, (const half_t*)beta, (const half_t*)weight,
          (const half_t*)bias, (half_t*)y, Cin, Cout, T, T_out, K, stride, ci_tile, apply_snake);
      break;
    case ARC_SNAKE_BF16:
      arc_snake_conv_transpose1d_bf16<<<grid, ARC_SC_THREADS, smem, s>>>(
          (const bf16_t*)x, (const bf16_t*)alpha, (const bf16_t*)beta, (const bf16_t*)weight,
          (const bf16_t*)bias, (bf16_t*)y, Cin, Cout, T, T_out, K, stride, ci_tile, apply_snake);
      break;
    default:
      return ARC_SNAKE_EDTYPE;
  }
  return (int)cudaGetLastError();
}

extern "C" const char* arc_snake_error_string(int status) {
  switch (status) {
    case ARC_SNAKE_OK:
      return "no error";
    case ARC_SNAKE_EDTYPE:
      return "unsupported dtype code (expected 0 = float32, 1 = float16, 2 = bfloat16)";
    case ARC_SNAKE_ESHAPE:
      return "invalid sizes: every size must be positive, K odd for conv1d, and the output non-empty";
    case ARC_SNAKE_ESMEM:
      return "the kernel window of one input channel (K and dilation) exceeds the shared-memory budget";
    case ARC_SNAKE_EGRID:
      return "batch or output-channel blocks exceed the CUDA grid limit of 65535";
    default:
      return status > 0 ? cudaGetErrorString(static_cast<cudaError_t>(status)) : "unknown arc_snake status";
  }
}
#endif  // host launchers
