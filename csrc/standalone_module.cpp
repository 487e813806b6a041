// pybind11 module `arc_fast_csrc` of CMakeLists.txt: the kernels of csrc/snake_conv.cu without torch, on raw
// device pointers (e.g. a CuPy array's .data.ptr, a torch tensor's .data_ptr()). CI builds it for sm_80 and
// sm_90a as the compile check of csrc/; C++/Python users without torch can call it directly.
//
//   arc_fast_csrc.snake_conv1d(dtype, x, alpha, beta, weight, bias, residual, y, B, Cin, Cout, T, K,
//                              dilation=1, apply_snake=True, stream=0)
//   arc_fast_csrc.snake_conv_transpose1d(dtype, x, alpha, beta, weight, bias, y, B, Cin, Cout, T, K, stride,
//                                        apply_snake=True, stream=0)
//   arc_fast_csrc.conv_transpose1d_out_length(T, stride, K) -> int
//   arc_fast_csrc.tile_config() -> dict
// dtype is "float32" | "float16" | "bfloat16"; pointers are ints (0 for an absent bias/residual); shapes and
// semantics as in csrc/snake_conv.h. Errors raise RuntimeError.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "snake_conv.h"
#include "snake_math.h"

namespace py = pybind11;

namespace {

int dtype_code(const std::string& dtype) {
  if (dtype == "float32") return ARC_SNAKE_F32;
  if (dtype == "float16") return ARC_SNAKE_F16;
  if (dtype == "bfloat16") return ARC_SNAKE_BF16;
  throw std::invalid_argument("dtype: expected 'float32', 'float16' or 'bfloat16', got '" + dtype + "'");
}

const void* cptr(std::uintptr_t p) { return reinterpret_cast<const void*>(p); }

void check(int status, const char* op) {
  if (status != 0) throw std::runtime_error(std::string(op) + ": " + arc_snake_error_string(status));
}

}  // namespace

PYBIND11_MODULE(arc_fast_csrc, m) {
  m.doc() = "arc-fast fused SnakeBeta + conv1d / conv_transpose1d CUDA kernels on raw device pointers";
  m.def(
      "snake_conv1d",
      [](const std::string& dtype, std::uintptr_t x, std::uintptr_t alpha, std::uintptr_t beta,
         std::uintptr_t weight, std::uintptr_t bias, std::uintptr_t residual, std::uintptr_t y, int B, int Cin,
         int Cout, long long T, int K, int dilation, bool apply_snake, std::uintptr_t stream) {
        check(arc_snake_conv1d_launch(dtype_code(dtype), cptr(x), cptr(alpha), cptr(beta), cptr(weight), cptr(bias),
                                      cptr(residual), reinterpret_cast<void*>(y), B, Cin, Cout, T, K, dilation,
                                      apply_snake ? 1 : 0, reinterpret_cast<void*>(stream)),
              "snake_conv1d");
      },
      py::arg("dtype"), py::arg("x"), py::arg("alpha"), py::arg("beta"), py::arg("weight"), py::arg("bias"),
      py::arg("residual"), py::arg("y"), py::arg("B"), py::arg("Cin"), py::arg("Cout"), py::arg("T"), py::arg("K"),
      py::arg("dilation") = 1, py::arg("apply_snake") = true, py::arg("stream") = 0,
      "y (B, Cout, T) = conv1d(snake(x), weight (Cout, Cin, K), bias, 'same', dilation) + residual");
  m.def(
      "snake_conv_transpose1d",
      [](const std::string& dtype, std::uintptr_t x, std::uintptr_t alpha, std::uintptr_t beta,
         std::uintptr_t weight, std::uintptr_t bias, std::uintptr_t y, int B, int Cin, int Cout, long long T, int K,
         int stride, bool apply_snake, std::uintptr_t stream) {
        check(arc_snake_conv_transpose1d_launch(dtype_code(dtype), cptr(x), cptr(alpha), cptr(beta), cptr(weight),
                                                cptr(bias), reinterpret_cast<void*>(y), B, Cin, Cout, T, K, stride,
                                                apply_snake ? 1 : 0, reinterpret_cast<void*>(stream)),
              "snake_conv_transpose1d");
      },
      py::arg("dtype"), py::arg("x"), py::arg("alpha"), py::arg("beta"), py::arg("weight"), py::arg("bias"),
      py::arg("y"), py::arg("B"), py::arg("Cin"), py::arg("Cout"), py::arg("T"), py::arg("K"), py::arg("stride"),
      py::arg("apply_snake") = true, py::arg("stream") = 0,
      "y (B, Cout, conv_transpose1d_out_length(T, stride, K)) = conv_transpose1d(snake(x), weight (Cin, Cout, K), "
      "bias, stride, padding=ceil(stride/2))");
  m.def(
      "conv_transpose1d_out_length",
      [](long long T, int stride, int K) {
        return arc_snake::convT_out_length(T, stride, K, arc_snake::convT_padding(stride));
      },
      py::arg("T"), py::arg("stride"), py::arg("K"));
  m.def("tile_config", [] {
    py::dict d;
    d["THREADS"] = ARC_SC_THREADS;
    d["COUT_TILE"] = ARC_SC_COUT_TILE;
    d["T_TILE"] = ARC_SC_T_TILE;
    d["TM"] = ARC_SC_TM;
    d["TN"] = ARC_SC_TN;
    d["CI_TILE_MAX"] = ARC_SC_CI_TILE_MAX;
    d["SMEM_BUDGET"] = ARC_SC_SMEM_BUDGET;
    return d;
  });
}
