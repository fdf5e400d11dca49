// CPU kernels for the HTDemucs layers, float32, OpenBLAS for the GEMMs and
// OpenMP for the element-wise passes. Every convolution in the model is seen
// as 2-D on [B, C, H, W]: the frequency branch is [B, C, F, T] and the time
// branch [B, C, 1, T].
#pragma once

#include <cstdint>

#include "cpu/tensor.h"

namespace fastdemucs::cpu {

// C[M, N] = alpha * op(A) op(B) + beta * C, row-major.
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

struct Conv2dParams {
    int kh = 1, kw = 1;       // kernel
    int sh = 1, sw = 1;       // stride
    int ph = 0, pw = 0;       // zero padding, both sides
    int dh = 1, dw = 1;       // dilation
};

// x [B, Cin, H, W], weight [Cout, Cin, kh, kw], bias [Cout] -> [B, Cout, Ho, Wo].
Tensor conv2d(const Tensor& x, const float* weight, const float* bias, int cout, const Conv2dParams& p);

// x [B, Cin, H, W], weight [Cin, Cout, kh, kw] (PyTorch's transposed layout),
// bias [Cout] -> [B, Cout, (H-1)*sh + kh, (W-1)*sw + kw]; no padding removed.
Tensor conv_transpose2d(const Tensor& x, const float* weight, const float* bias, int cout, int kh, int kw, int sh,
                        int sw);

// GroupNorm over x [B, C, ...]: each (b, group) normalised over its channels
// and all positions. With per_row, x is [B, C, R, W] and each (b, group, r)
// is normalised separately: the DConv of the frequency branch runs on every
// frequency row as its own sequence.
void group_norm(Tensor& x, int groups, const float* weight, const float* bias, bool per_row = false,
                float eps = 1e-5f);
// One group's normalisation: `channels` rows of W values, row c at first + c *
// channel_stride, normalised together (mean, then centred variance, in
// double) with per-channel weight / bias. What group_norm does per group.
void normalize_channels(float* first, int64_t channels, int64_t channel_stride, int64_t W, const float* weight,
                        const float* bias, float eps = 1e-5f);
// LayerNorm over the last dim of x [N, C].
void layer_norm(const float* x, float* y, int64_t rows, int64_t channels, const float* weight, const float* bias,
                float eps = 1e-5f);

void gelu(Tensor& x);
void gelu(float* x, int64_t n);
// GLU over dim 1 of x [B, 2C, ...] -> [B, C, ...]: a * sigmoid(b).
Tensor glu(const Tensor& x);
// x [B, C, ...] += scale[c] * y[B, C, ...]
void add_scaled_channels(Tensor& x, const Tensor& y, const float* scale);
// x += y
void add_inplace(Tensor& x, const Tensor& y);

// Crops dim `axis` to [start, start + length).
Tensor crop(const Tensor& x, int axis, int64_t start, int64_t length);
// Zero-pads the last dim on the right to `length`.
Tensor pad_right(const Tensor& x, int64_t length);

// Sets OpenBLAS and OpenMP thread counts (0 = all cores).
void set_threads(int threads);

}  // namespace fastdemucs::cpu
