// Torch binding of the fused SnakeBeta + convolution kernels: the extension module arc_fast._C.
//
// Importing arc_fast._C registers, through TORCH_LIBRARY, the ops
//   torch.ops.arc_fast_C.snake_conv1d(x, alpha, beta, weight, bias=None, dilation=1, residual=None,
//                                     apply_snake=True) -> Tensor
//   torch.ops.arc_fast_C.snake_conv_transpose1d(x, alpha, beta, weight, bias, stride, apply_snake=True) -> Tensor
// with CUDA kernels only (their fakes live in arc_fast/_cuda.py). The kernels launch on torch's current CUDA
// stream, so the ops compose with streams and CUDA graphs. Semantics: csrc/snake_conv.h.
//
// Everything torch-specific lives here: csrc/snake_conv.cu stays plain CUDA C++ for NVRTC and CMake.
#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <climits>
#include <optional>

#include "snake_conv.h"

namespace {

int dtype_code(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat:
      return ARC_SNAKE_F32;
    case at::kHalf:
      return ARC_SNAKE_F16;
    case at::kBFloat16:
      return ARC_SNAKE_BF16;
    default:
      TORCH_CHECK(false, "arc_fast_C: x must be float32, float16 or bfloat16, got ", x.scalar_type());
  }
  return -1;
}

void check_x(const at::Tensor& x) {
  TORCH_CHECK(x.is_cuda(), "arc_fast_C: x must be a CUDA tensor, got device ", x.device());
  dtype_code(x);
  TORCH_CHECK(x.dim() == 3, "arc_fast_C: x must have shape (B, Cin, T), got ", x.sizes());
  TORCH_CHECK(x.is_contiguous(), "arc_fast_C: x must be contiguous, got strides ", x.strides());
  TORCH_CHECK(x.size(0) <= 65535 && x.size(1) <= INT_MAX, "arc_fast_C: x has too many batch items or channels: ",
              x.sizes());
}

// `name` must live on x's device, have x's dtype, the given shape, and be contiguous.
void check_like_x(const at::Tensor& t, const char* name, const at::Tensor& x, at::IntArrayRef shape) {
  TORCH_CHECK(t.device() == x.device(), "arc_fast_C: ", name, " must be on ", x.device(), " (like x), got ",
              t.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "arc_fast_C: ", name, " must have dtype ", x.scalar_type(),
              " (like x), got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, "arc_fast_C: ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "arc_fast_C: ", name, " must be contiguous, got strides ", t.strides());
}

const void* ptr_or_null(const std::optional<at::Tensor>& t) { return t.has_value() ? t->data_ptr() : nullptr; }

void check_status(int status, const char* op) {
  TORCH_CHECK(status == 0, "arc_fast_C::", op, ": ", arc_snake_error_string(status));
}

at::Tensor snake_conv1d(const at::Tensor& x, const std::optional<at::Tensor>& alpha,
                        const std::optional<at::Tensor>& beta, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, int64_t dilation,
                        const std::optional<at::Tensor>& residual, bool apply_snake) {
  check_x(x);
  const int64_t B = x.size(0), Cin = x.size(1), T = x.size(2);
  TORCH_CHECK(weight.dim() == 3, "arc_fast_C: weight must have shape (Cout, ", Cin, ", K), got ", weight.sizes());
  const int64_t Cout = weight.size(0), K = weight.size(2);
  check_like_x(weight, "weight", x, {Cout, Cin, K});
  TORCH_CHECK(K % 2 == 1, "arc_fast_C: weight: kernel size must be odd for 'same' padding, got K=", K);
  TORCH_CHECK(Cout <= INT_MAX && K <= INT_MAX, "arc_fast_C: weight is too large: ", weight.sizes());
  TORCH_CHECK(dilation >= 1 && dilation <= INT_MAX, "arc_fast_C: dilation must be a positive int, got ", dilation);
  if (apply_snake) {
    TORCH_CHECK(alpha.has_value(), "arc_fast_C: alpha is required when apply_snake is true");
    TORCH_CHECK(beta.has_value(), "arc_fast_C: beta is required when apply_snake is true");
    check_like_x(*alpha, "alpha", x, {Cin});
    check_like_x(*beta, "beta", x, {Cin});
  }
  if (bias.has_value()) check_like_x(*bias, "bias", x, {Cout});
  if (residual.has_value()) check_like_x(*residual, "residual", x, {B, Cout, T});

  at::Tensor y = at::empty({B, Cout, T}, x.options());
  if (y.numel() == 0) return y;
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
  check_x(x);
  const int64_t B = x.size(0), Cin = x.size(1), T = x.size(2);
  TORCH_CHECK(T >= 1, "arc_fast_C: x must have at least one time step, got ", x.sizes());
  TORCH_CHECK(weight.dim() == 3, "arc_fast_C: weight must have shape (", Cin, ", Cout, K), got ", weight.sizes());
  const int64_t Cout = weight.size(1), K = weight.size(2);
  check_like_x(weight, "weight", x, {Cin, Cout, K});
  TORCH_CHECK(Cout <= INT_MAX && K <= INT_MAX, "arc_fast_C: weight is too large: ", weight.sizes());
  TORCH_CHECK(stride >= 1 && stride <= INT_MAX, "arc_fast_C: stride must be a positive int, got ", stride);
  const int64_t T_out = (T - 1) * stride - 2 * ((stride + 1) / 2) + K;
  TORCH_CHECK(T_out >= 1, "arc_fast_C: weight: kernel size ", K, " with stride ", stride, " gives an empty output");
  if (apply_snake) {
    TORCH_CHECK(alpha.has_value(), "arc_fast_C: alpha is required when apply_snake is true");
    TORCH_CHECK(beta.has_value(), "arc_fast_C: beta is required when apply_snake is true");
    check_like_x(*alpha, "alpha", x, {Cin});
    check_like_x(*beta, "beta", x, {Cin});
  }
  if (bias.has_value()) check_like_x(*bias, "bias", x, {Cout});

  at::Tensor y = at::empty({B, Cout, T_out}, x.options());
  if (y.numel() == 0) return y;
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
  m.def(
      "snake_conv1d(Tensor x, Tensor? alpha, Tensor? beta, Tensor weight, Tensor? bias=None, int dilation=1, "
      "Tensor? residual=None, bool apply_snake=True) -> Tensor");
  m.def(
      "snake_conv_transpose1d(Tensor x, Tensor? alpha, Tensor? beta, Tensor weight, Tensor? bias, int stride, "
      "bool apply_snake=True) -> Tensor");
}

TORCH_LIBRARY_IMPL(arc_fast_C, CUDA, m) {
  m.impl("snake_conv1d", &snake_conv1d);
  m.impl("snake_conv_transpose1d", &snake_conv_transpose1d);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "arc-fast CUDA kernels; importing registers torch.ops.arc_fast_C.snake_conv1d / snake_conv_transpose1d";
}
