// Torch binding of the fused SnakeBeta + convolution kernels: the extension module arc_fast._C.
//
// Importing arc_fast._C registers, through TORCH_LIBRARY, the ops
//   torch.ops.arc_fast_C.snake_conv1d(x, alpha, beta, weight, bias=None, dilation=1, residual=None,
//                                     apply_snake=True) -> Tensor
//   torch.ops.arc_fast_C.snake_conv_transpose1d(x, alpha, beta, weight, bias, stride, apply_snake=True) -> Tensor
// with CUDA kernels only (their fakes live in arc_fast/_cuda.py). The kernels launch on torch's current CUDA
// stream, so the ops compose with streams and CUDA graphs. Semantics: csrc/snake_conv.h.
//
// Everything torch-specific lives here and in csrc/checks.h (the argument checks, also built into a CPU test
// extension): csrc/snake_conv.cu stays plain CUDA C++ for NVRTC and CMake.
#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <optional>
#include <vector>

#include "checks.h"
#include "snake_conv.h"

namespace {

int dtype_code(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat:
      return ARC_SNAKE_F32;
    case at::kHalf:
      return ARC_SNAKE_F16;
    default:  // arc_checks::check_x admitted only the three
      return ARC_SNAKE_BF16;
  }
}

const void* ptr_or_null(const std::optional<at::Tensor>& t) { return t.has_value() ? t->data_ptr() : nullptr; }

void check_status(int status, const char* op) {
  TORCH_CHECK(status == 0, "arc_fast_C::", op, ": ", arc_snake_error_string(status));
}

at::Tensor snake_conv1d(const at::Tensor& x, const std::optional<at::Tensor>& alpha,
                        const std::optional<at::Tensor>& beta, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, int64_t dilation,
                        const std::optional<at::Tensor>& residual, bool apply_snake) {
  const std::vector<int64_t> out_shape =
      arc_checks::check_conv1d(x, alpha, beta, weight, bias, dilation, residual, apply_snake, /*require_cuda=*/true);
  at::Tensor y = at::empty(out_shape, x.options());
  if (y.numel() == 0) return y;
  const int64_t B = x.size(0), Cin = x.size(1), T = x.size(2), Cout = weight.size(0), K = weight.size(2);
  const c10::cuda::CUDAGuard guard(x.device());
  const int status = arc_snake_conv1d_launch(
      dtype_code(x), x.data_ptr(), apply_snake ? alpha->data_ptr() : nullptr,
      apply_snake ? beta->data_ptr() : nullptr, weight.data_ptr(), ptr_or_null(bias), ptr_or_null(residual),
      y.data_ptr(), (int)B, (int)Cin, (int)Cout, (long long)T, (int)K, (int)dilation, apply_snake ? 1 : 0,
      c10::cuda::getCurrentCUDAStream(x.device().index()).stream());
  check_status(status, "snake_conv1d");
  return y;
}

at::Tensor snake_conv_transpose1d(const at::Tensor& x, const std::optional<at::Tensor>& alpha,
                                  const std::optional<at::Tensor>& beta, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias, int64_t stride, bool apply_snake) {
  const std::vector<int64_t> out_shape =
      arc_checks::check_conv_transpose1d(x, alpha, beta, weight, bias, stride, apply_snake, /*require_cuda=*/true);
  at::Tensor y = at::empty(out_shape, x.options());
  if (y.numel() == 0) return y;
  const int64_t B = x.size(0), Cin = x.size(1), T = x.size(2), Cout = weight.size(1), K = weight.size(2);
  const c10::cuda::CUDAGuard guard(x.device());
  const int status = arc_snake_conv_transpose1d_launch(
      dtype_code(x), x.data_ptr(), apply_snake ? alpha->data_ptr() : nullptr,
      apply_snake ? beta->data_ptr() : nullptr, weight.data_ptr(), ptr_or_null(bias), y.data_ptr(), (int)B,
      (int)Cin, (int)Cout, (long long)T, (int)K, (int)stride, apply_snake ? 1 : 0,
      c10::cuda::getCurrentCUDAStream(x.device().index()).stream());
  check_status(status, "snake_conv_transpose1d");
  return y;
}

}  // namespace

TORCH_LIBRARY(arc_fast_C, m) {
  // The fakes (shape functions for torch.compile / FakeTensor) are registered by this Python module.
  m.set_python_module("arc_fast._cuda");
  m.def(arc_checks::kConv1dSchema);
  m.def(arc_checks::kConvTranspose1dSchema);
}

TORCH_LIBRARY_IMPL(arc_fast_C, CUDA, m) {
  m.impl("snake_conv1d", &snake_conv1d);
  m.impl("snake_conv_transpose1d", &snake_conv_transpose1d);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "arc-fast CUDA kernels; importing registers torch.ops.arc_fast_C.snake_conv1d / snake_conv_transpose1d";
}
