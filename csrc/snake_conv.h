// Host launchers of the fused SnakeBeta + convolution kernels (defined in csrc/snake_conv.cu).
//
// Plain C declarations on raw device pointers, free of CUDA and torch headers, so that the torch binding
// (csrc/bindings.cpp, arc_fast._C) and the standalone pybind11 module of CMakeLists.txt (arc_fast_csrc) share
// them. All tensors are contiguous and of one dtype; arithmetic is fp32.
//
//   snake_conv1d:           x (B, Cin, T), alpha/beta (Cin) log-scale (ignored unless apply_snake),
//                           weight (Cout, Cin, K) with K odd, bias (Cout) or NULL, residual (B, Cout, T) or NULL
//                           -> y (B, Cout, T) = conv1d(snake(x), weight, bias, padding=dilation*(K-1)/2,
//                              dilation) + residual
//   snake_conv_transpose1d: x (B, Cin, T), alpha/beta (Cin) (ignored unless apply_snake), weight (Cin, Cout, K),
//                           bias (Cout) or NULL
//                           -> y (B, Cout, Tout), Tout = (T-1)*stride - 2*ceil(stride/2) + K (T*stride for
//                              K = 2*stride and even strides) = conv_transpose1d(snake(x), weight, bias,
//                              stride, padding=ceil(stride/2))
//
// Return value: 0 on success, a negative ARC_SNAKE_E* code for a rejected argument, else the CUDA runtime
// error code of the launch. arc_snake_error_string() describes any of them.
#ifndef ARC_FAST_SNAKE_CONV_H
#define ARC_FAST_SNAKE_CONV_H

#ifdef __cplusplus
extern "C" {
#endif

enum arc_snake_dtype { ARC_SNAKE_F32 = 0, ARC_SNAKE_F16 = 1, ARC_SNAKE_BF16 = 2 };

enum arc_snake_status {
  ARC_SNAKE_OK = 0,
  ARC_SNAKE_EDTYPE = -1,   // dtype is not an arc_snake_dtype
  ARC_SNAKE_ESHAPE = -2,   // a size is <= 0, K is even (conv1d), or the output would be empty
  ARC_SNAKE_ESMEM = -3,    // one input channel's tile does not fit the shared-memory budget (K * dilation)
  ARC_SNAKE_EGRID = -4,    // batch or channel count exceeds the grid limits (65535 blocks in y and z)
};

int arc_snake_conv1d_launch(int dtype, const void* x, const void* alpha, const void* beta, const void* weight,
                            const void* bias, const void* residual, void* y, int B, int Cin, int Cout,
                            long long T, int K, int dilation, int apply_snake, void* stream);

int arc_snake_conv_transpose1d_launch(int dtype, const void* x, const void* alpha, const void* beta,
                                      const void* weight, const void* bias, void* y, int B, int Cin, int Cout,
                                      long long T, int K, int stride, int apply_snake, void* stream);

const char* arc_snake_error_string(int status);

#ifdef __cplusplus
}
#endif

#endif  // ARC_FAST_SNAKE_CONV_H
