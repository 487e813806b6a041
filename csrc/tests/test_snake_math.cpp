// CPU harness for the host/device math of csrc/snake_math.h, compiled by tests/test_csrc.py with g++
// (plain C++, no CUDA). Each mode prints what the Python test compares with torch:
//   snake                 stdin: lines "x alpha beta" as fp32 bit patterns (hex) -> snake_beta bits
//   f2h | f2bf            stdin: fp32 bit patterns -> fp16 / bf16 bit patterns (round to nearest even)
//   h2f | bf2f            stdin: fp16 / bf16 bit patterns -> fp32 bit patterns
//   conv T K d            every (t, k, i) with 0 <= i < T that the 'same' dilated conv1d reads
//   convT T s K           "Tout n", then every (o, k, i) that the polyphase transposed conv reads
//   config conv1d|convT Cin K d_or_s   x_width ci_tile smem_bytes
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "../snake_math.h"

using namespace arc_snake;

static int run_snake() {
  unsigned xb, ab, bb;
  while (std::scanf("%x %x %x", &xb, &ab, &bb) == 3) {
    const float out = snake_beta(bits_f32(xb), snake_a(bits_f32(ab)), snake_inv_b(bits_f32(bb)));
    std::printf("%08x\n", f32_bits(out));
  }
  return 0;
}

static int run_convert(const char* mode) {
  unsigned v;
  while (std::scanf("%x", &v) == 1) {
    if (!std::strcmp(mode, "f2h")) std::printf("%04x\n", f32_to_f16(bits_f32(v)));
    else if (!std::strcmp(mode, "f2bf")) std::printf("%04x\n", f32_to_bf16(bits_f32(v)));
    else if (!std::strcmp(mode, "h2f")) std::printf("%08x\n", f32_bits(f16_to_f32((unsigned short)v)));
    else std::printf("%08x\n", f32_bits(bf16_to_f32((unsigned short)v)));
  }
  return 0;
}

static int run_conv(long long T, int K, int d) {
  const int pad = same_conv_padding(K, d);
  for (long long t = 0; t < T; ++t)
    for (int k = 0; k < K; ++k) {
      const long long i = same_conv_input_index(t, k, d, pad);
      if (i >= 0 && i < T) std::printf("%lld %d %lld\n", t, k, i);
    }
  return 0;
}

static int run_convT(long long T, int s, int K) {
  const int pad = convT_padding(s);
  const long long T_out = convT_out_length(T, s, K, pad);
  const int n_taps = convT_num_taps(K, s);
  std::printf("Tout %lld\n", T_out);
  for (long long o = 0; o < T_out; ++o) {
    int phase;
    long long base;
    convT_phase(o, s, pad, &phase, &base);
    for (int j = 0; j < n_taps; ++j) {
      const int k = convT_tap(phase, j, s);
      const long long i = convT_input_index(base, j);
      if (k < K && i >= 0 && i < T) std::printf("%lld %d %lld\n", o, k, i);
    }
  }
  return 0;
}

static int run_config(const char* op, int Cin, int K, int ds) {
  const int xw = !std::strcmp(op, "conv1d") ? conv1d_x_width(K, ds) : convT_x_width(K, ds);
  const int ci = pick_ci_tile(Cin, K, xw);
  std::printf("%d %d %d\n", xw, ci, smem_bytes(ci, K, xw));
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  const char* mode = argv[1];
  if (!std::strcmp(mode, "snake")) return run_snake();
  if (!std::strcmp(mode, "f2h") || !std::strcmp(mode, "f2bf") || !std::strcmp(mode, "h2f") ||
      !std::strcmp(mode, "bf2f"))
    return run_convert(mode);
  if (!std::strcmp(mode, "conv") && argc == 5) return run_conv(std::atoll(argv[2]), std::atoi(argv[3]), std::atoi(argv[4]));
  if (!std::strcmp(mode, "convT") && argc == 5) return run_convT(std::atoll(argv[2]), std::atoi(argv[3]), std::atoi(argv[4]));
  if (!std::strcmp(mode, "config") && argc == 6)
    return run_config(argv[2], std::atoi(argv[3]), std::atoi(argv[4]), std::atoi(argv[5]));
  std::fprintf(stderr, "unknown mode or arguments\n");
  return 2;
}
