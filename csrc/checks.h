// Argument checks of the torch ops arc_fast_C::snake_conv1d / snake_conv_transpose1d (csrc/bindings.cpp).
//
// Torch-only (no CUDA header), so that the same checks also build into a CPU test extension
// (csrc/tests/checks_cpu.cpp, loaded by tests/test_csrc.py): every rejected argument is exercised in CI without a GPU.
// Each check throws c10::Error (RuntimeError in Python) naming the argument; the `require_cuda` flag is the only
// difference between the two builds. Shapes are passed as owned std::vectors, never as initializer-list views.
#ifndef ARC_FAST_CHECKS_H
#define ARC_FAST_CHECKS_H

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <climits>
#include <cstdint>
#include <optional>
#include <vector>

#include "snake_math.h"  // the output-length rule the kernels use

namespace arc_checks {

// The ops' schemas, shared by the extension and the CPU test extension.
inline constexpr const char* kConv1dSchema =
    "snake_conv1d(Tensor x, Tensor? alpha, Tensor? beta, Tensor weight, Tensor? bias=None, int dilation=1, "
    "Tensor? residual=None, bool apply_snake=True) -> Tensor";
inline constexpr const char* kConvTranspose1dSchema =
    "snake_conv_transpose1d(Tensor x, Tensor? alpha, Tensor? beta, Tensor weight, Tensor? bias, int stride, "
    "bool apply_snake=True) -> Tensor";

inline void check_x(const at::Tensor& x, bool require_cuda) {
  TORCH_CHECK(!require_cuda || x.is_cuda(), "arc_fast_C: x must be a CUDA tensor, got device ", x.device());
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16,
              "arc_fast_C: x must be float32, float16 or bfloat16, got ", st);
  TORCH_CHECK(x.dim() == 3, "arc_fast_C: x must have shape (B, Cin, T), got ", x.sizes());
  TORCH_CHECK(x.is_contiguous(), "arc_fast_C: x must be contiguous, got strides ", x.strides());
  TORCH_CHECK(x.size(0) <= 65535 && x.size(1) <= INT_MAX, "arc_fast_C: x has too many batch items or channels: ",
              x.sizes());
}

// `name` must live on x's device, have x's dtype, the given shape, and be contiguous.
inline void check_like_x(const at::Tensor& t, const char* name, const at::Tensor& x,
                         const std::vector<int64_t>& shape) {
  TORCH_CHECK(t.device() == x.device(), "arc_fast_C: ", name, " must be on ", x.device(), " (like x), got ",
              t.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "arc_fast_C: ", name, " must have dtype ", x.scalar_type(),
              " (like x), got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), "arc_fast_C: ", name, " must have shape ", at::IntArrayRef(shape),
              ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "arc_fast_C: ", name, " must be contiguous, got strides ", t.strides());
}

inline void check_snake_params(const std::optional<at::Tensor>& alpha, const std::optional<at::Tensor>& beta,
                               const at::Tensor& x, bool apply_snake) {
  if (!apply_snake) return;
  TORCH_CHECK(alpha.has_value(), "arc_fast_C: alpha is required when apply_snake is true");
  TORCH_CHECK(beta.has_value(), "arc_fast_C: beta is required when apply_snake is true");
  check_like_x(*alpha, "alpha", x, {x.size(1)});
  check_like_x(*beta, "beta", x, {x.size(1)});
}

// snake_conv1d: returns the output shape (B, Cout, T).
inline std::vector<int64_t> check_conv1d(const at::Tensor& x, const std::optional<at::Tensor>& alpha,
                                         const std::optional<at::Tensor>& beta, const at::Tensor& weight,
                                         const std::optional<at::Tensor>& bias, int64_t dilation,
                                         const std::optional<at::Tensor>& residual, bool apply_snake,
                                         bool require_cuda) {
  check_x(x, require_cuda);
  const int64_t B = x.size(0), Cin = x.size(1), T = x.size(2);
  TORCH_CHECK(weight.dim() == 3, "arc_fast_C: weight must have shape (Cout, ", Cin, ", K), got ", weight.sizes());
  const int64_t Cout = weight.size(0), K = weight.size(2);
  check_like_x(weight, "weight", x, {Cout, Cin, K});
  TORCH_CHECK(K % 2 == 1, "arc_fast_C: weight: kernel size must be odd for 'same' padding, got K=", K);
  TORCH_CHECK(Cout <= INT_MAX && K <= INT_MAX, "arc_fast_C: weight is too large: ", weight.sizes());
  TORCH_CHECK(dilation >= 1 && dilation <= INT_MAX, "arc_fast_C: dilation must be a positive int, got ", dilation);
  check_snake_params(alpha, beta, x, apply_snake);
  if (bias.has_value()) check_like_x(*bias, "bias", x, {Cout});
  if (residual.has_value()) check_like_x(*residual, "residual", x, {B, Cout, T});
  return {B, Cout, T};
}

// snake_conv_transpose1d (padding ceil(stride / 2)): returns the output shape (B, Cout, T_out).
inline std::vector<int64_t> check_conv_transpose1d(const at::Tensor& x, const std::optional<at::Tensor>& alpha,
                                                   const std::optional<at::Tensor>& beta, const at::Tensor& weight,
                                                   const std::optional<at::Tensor>& bias, int64_t stride,
                                                   bool apply_snake, bool require_cuda) {
  check_x(x, require_cuda);
  const int64_t B = x.size(0), Cin = x.size(1), T = x.size(2);
  TORCH_CHECK(T >= 1, "arc_fast_C: x must have at least one time step, got ", x.sizes());
  TORCH_CHECK(weight.dim() == 3, "arc_fast_C: weight must have shape (", Cin, ", Cout, K), got ", weight.sizes());
  const int64_t Cout = weight.size(1), K = weight.size(2);
  check_like_x(weight, "weight", x, {Cin, Cout, K});
  TORCH_CHECK(Cout <= INT_MAX && K <= INT_MAX, "arc_fast_C: weight is too large: ", weight.sizes());
  TORCH_CHECK(stride >= 1 && stride <= INT_MAX, "arc_fast_C: stride must be a positive int, got ", stride);
  const int64_t T_out = arc_snake::convT_out_length(T, (int)stride, (int)K, arc_snake::convT_padding((int)stride));
  TORCH_CHECK(T_out >= 1, "arc_fast_C: weight: kernel size ", K, " with stride ", stride, " gives an empty output");
  check_snake_params(alpha, beta, x, apply_snake);
  if (bias.has_value()) check_like_x(*bias, "bias", x, {Cout});
  return {B, Cout, T_out};
}

}  // namespace arc_checks

#endif  // ARC_FAST_CHECKS_H
