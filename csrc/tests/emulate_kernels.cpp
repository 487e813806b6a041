// Runs the real kernels of csrc/snake_conv.cu on the CPU (cuda_emulation.h), for tests/test_csrc.py:
//   emulate_kernels conv1d DTYPE B Cin Cout T K dilation has_bias has_residual apply_snake IN OUT
//   emulate_kernels convT  DTYPE B Cin Cout T K stride   has_bias apply_snake IN OUT
// DTYPE is f32 | f16 | bf16. IN holds x, alpha, beta, weight, [bias], [residual] back to back as raw
// elements of DTYPE (torch's layouts); OUT receives y. Prints the launch plan "grid_x grid_y ci_tile smem".
#include "cuda_emulation.h"
// The kernels themselves (device code only: the host launchers need nvcc).
#include "../snake_conv.cu"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

std::vector<unsigned char> read_file(const char* path) {
  std::vector<unsigned char> buf;
  FILE* f = std::fopen(path, "rb");
  if (!f) return buf;
  unsigned char tmp[1 << 16];
  size_t n;
  while ((n = std::fread(tmp, 1, sizeof tmp, f)) > 0) buf.insert(buf.end(), tmp, tmp + n);
  std::fclose(f);
  return buf;
}

template <typename T>
int run(bool transposed, int B, int Cin, int Cout, long long T_len, int K, int ds, bool has_bias, bool has_res,
        int apply_snake, const char* in_path, const char* out_path) {
  std::vector<unsigned char> in = read_file(in_path);
  // Each tensor in its own heap block, so that AddressSanitizer (the test builds with it when available)
  // reports any read past a tensor's end.
  size_t offset = 0;
  auto take = [&](size_t n) {
    std::vector<T> t(n);
    if (offset + n * sizeof(T) <= in.size()) std::memcpy(t.data(), in.data() + offset, n * sizeof(T));
    offset += n * sizeof(T);
    return t;
  };
  const std::vector<T> xv = take((size_t)B * Cin * T_len), av = take(Cin), bv = take(Cin),
                       wv = take((size_t)Cout * Cin * K), biasv = take(has_bias ? Cout : 0),
                       resv = take(has_res ? (size_t)B * Cout * T_len : 0);
  if (offset != in.size()) {
    std::fprintf(stderr, "input size mismatch: %zu bytes, expected %zu\n", in.size(), offset);
    return 3;
  }
  const T *x = xv.data(), *alpha = av.data(), *beta = bv.data(), *weight = wv.data();
  const T* bias = has_bias ? biasv.data() : nullptr;
  const T* residual = has_res ? resv.data() : nullptr;
  const long long T_out = transposed ? arc_snake::convT_out_length(T_len, ds, K, arc_snake::convT_padding(ds)) : T_len;
  const int xw = transposed ? arc_snake::convT_x_width(K, ds) : arc_snake::conv1d_x_width(K, ds);
  const int ci_tile = arc_snake::pick_ci_tile(Cin, K, xw);
  const int smem = arc_snake::smem_bytes(ci_tile, K, xw);
  const unsigned gx = (unsigned)((T_out + ARC_SC_T_TILE - 1) / ARC_SC_T_TILE);
  const unsigned gy = (unsigned)((Cout + ARC_SC_COUT_TILE - 1) / ARC_SC_COUT_TILE);
  std::vector<T> y((size_t)B * Cout * T_out);
  if (transposed)
    emu_launch(gx, gy, B, ARC_SC_THREADS, smem, [&] {
      arc_snake::snake_conv_transpose1d_body<T>(x, alpha, beta, weight, bias, y.data(), Cin, Cout, T_len, T_out, K,
                                                ds, ci_tile, apply_snake);
    });
  else
    emu_launch(gx, gy, B, ARC_SC_THREADS, smem, [&] {
      arc_snake::snake_conv1d_body<T>(x, alpha, beta, weight, bias, residual, y.data(), Cin, Cout, T_len, K, ds,
                                      ci_tile, apply_snake);
    });
  FILE* f = std::fopen(out_path, "wb");
  if (!f) return 4;
  std::fwrite(y.data(), sizeof(T), y.size(), f);
  std::fclose(f);
  std::printf("%u %u %d %d\n", gx, gy, ci_tile, smem);
  return 0;
}

template <typename T>
int dispatch(int argc, char** argv) {
  const bool transposed = !std::strcmp(argv[1], "convT");
  const int B = std::atoi(argv[3]), Cin = std::atoi(argv[4]), Cout = std::atoi(argv[5]);
  const long long T_len = std::atoll(argv[6]);
  const int K = std::atoi(argv[7]), ds = std::atoi(argv[8]);
  const bool has_bias = std::atoi(argv[9]) != 0;
  if (transposed) {
    if (argc != 13) return 2;
    return run<T>(true, B, Cin, Cout, T_len, K, ds, has_bias, false, std::atoi(argv[10]), argv[11], argv[12]);
  }
  if (argc != 14) return 2;
  return run<T>(false, B, Cin, Cout, T_len, K, ds, has_bias, std::atoi(argv[10]) != 0, std::atoi(argv[11]),
                argv[12], argv[13]);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  if (!std::strcmp(argv[2], "f32")) return dispatch<float>(argc, argv);
  if (!std::strcmp(argv[2], "f16")) return dispatch<arc_snake::half_t>(argc, argv);
  if (!std::strcmp(argv[2], "bf16")) return dispatch<arc_snake::bf16_t>(argc, argv);
  return 2;
}
