// CPU test extension of the torch ops' argument checks (csrc/checks.h), built and loaded by tests/test_csrc.py with
// torch.utils.cpp_extension: the ops torch.ops.arc_fast_checks.snake_conv1d / snake_conv_transpose1d take the
// schemas of arc_fast_C's ops, run the same checks on CPU tensors, and return an empty tensor of the output shape.
#include <torch/extension.h>

#include "checks.h"

namespace {

at::Tensor snake_conv1d(const at::Tensor& x, const std::optional<at::Tensor>& alpha,
                        const std::optional<at::Tensor>& beta, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, int64_t dilation,
                        const std::optional<at::Tensor>& residual, bool apply_snake) {
  return at::empty(arc_checks::check_conv1d(x, alpha, beta, weight, bias, dilation, residual, apply_snake,
                                            /*require_cuda=*/false),
                   x.options());
}

at::Tensor snake_conv_transpose1d(const at::Tensor& x, const std::optional<at::Tensor>& alpha,
                                  const std::optional<at::Tensor>& beta, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias, int64_t stride, bool apply_snake) {
  return at::empty(arc_checks::check_conv_transpose1d(x, alpha, beta, weight, bias, stride, apply_snake,
                                                      /*require_cuda=*/false),
                   x.options());
}

}  // namespace

TORCH_LIBRARY(arc_fast_checks, m) {
  m.def(arc_checks::kConv1dSchema);
  m.def(arc_checks::kConvTranspose1dSchema);
}

TORCH_LIBRARY_IMPL(arc_fast_checks, CPU, m) {
  m.impl("snake_conv1d", &snake_conv1d);
  m.impl("snake_conv_transpose1d", &snake_conv_transpose1d);
}
