// Minimal CPU emulation of the CUDA features used by csrc/snake_conv.cu, so that the real kernel code runs
// under g++ in the CPU test suite (tests/test_csrc.py): every CUDA thread of a block is a std::thread,
// __syncthreads() is a std::barrier, dynamic shared memory is a per-block heap buffer filled with NaN (a read
// of a word the kernel never staged poisons the output and fails the test).
//
// Include this before csrc/snake_conv.cu. Only for tests: blocks run one after another.
#ifndef ARC_FAST_CUDA_EMULATION_H
#define ARC_FAST_CUDA_EMULATION_H

#include <math.h>

#include <barrier>
#include <cstddef>
#include <limits>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct emu_uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct alignas(16) float4 {
  float x, y, z, w;
};

inline thread_local emu_uint3 threadIdx;
inline thread_local emu_uint3 blockIdx;
inline thread_local float* emu_smem = nullptr;
inline thread_local std::barrier<>* emu_barrier = nullptr;

#define __syncthreads() emu_barrier->arrive_and_wait()
#define ARC_SC_DYN_SMEM(name) float* name = emu_smem

// Runs kernel() as a grid of (gx, gy, gz) blocks of `threads` threads with `smem_bytes` of shared memory.
template <class Kernel>
void emu_launch(unsigned gx, unsigned gy, unsigned gz, unsigned threads, std::size_t smem_bytes, Kernel kernel) {
  std::vector<float> smem(smem_bytes / sizeof(float), std::numeric_limits<float>::quiet_NaN());
  for (unsigned bz = 0; bz < gz; ++bz)
    for (unsigned by = 0; by < gy; ++by)
      for (unsigned bx = 0; bx < gx; ++bx) {
        std::fill(smem.begin(), smem.end(), std::numeric_limits<float>::quiet_NaN());
        std::barrier<> bar(threads);
        std::vector<std::thread> pool;
        pool.reserve(threads);
        for (unsigned t = 0; t < threads; ++t)
          pool.emplace_back([&, t] {
            threadIdx = emu_uint3{t, 0, 0};
            blockIdx = emu_uint3{bx, by, bz};
            emu_smem = smem.data();
            emu_barrier = &bar;
            kernel();
          });
        for (auto& th : pool) th.join();
      }
}

#endif  // ARC_FAST_CUDA_EMULATION_H
