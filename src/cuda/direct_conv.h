// The time encoder's first convolution (the mix's 1 or 2 channels x 8 taps
// along W, stride 4, 48 outputs) in float16 / bfloat16 straight from the
// float32 input: each warp keeps the weights as mma.sync A fragments and
// gathers its positions' K = cin * 8 inputs as B fragments from x itself
// (normalising them with the model input's statistics where asked, as
// im2col did); bias and activation on the float32 accumulators, the output
// tile through shared memory as whole rows. No column buffer, no GEMM, no
// bias pass.
//
// Why: with K <= 16 and 48 outputs the GEMM is all memory traffic: im2col +
// cuBLAS + the crop / GELU pass of the time encoder's odd rows wrote and
// read the columns and a padded float32 output (three launches, 0.19 ms of
// a forward of 8 chunks on an H200; this kernel 0.09 ms). Measured and not
// kept (NOTES.md, twenty-second session): the same along H for the
// frequency encoder's 4 x 8 (0.20 ms against im2col + cuBLAS's 0.18 ms),
// and either on the CUDA cores (weights from shared memory or the constant
// bank: 0.1 / 0.35 ms for the time / frequency encoders).
// Numerics as the GEMM path's: operands rounded to the operand type (as the
// official autocast's conv), float32 accumulation, the exact GELU.
#pragma once

#include <cstdint>

#include "cuda/common.h"
#include "cuda/kernels.h"

namespace fastdemucs::cuda {

// Whether direct_conv2d takes a convolution of cin channels with kernel
// kh x kw and geometry g in operand type t: float16 / bfloat16, 8 taps
// along W (kh 1), cin 1 or 2, 48 outputs, no dilation.
bool direct_conv_takes(DType t, int64_t cin, int64_t cout, int kh, int kw, const ConvGeom& g);

// out [B, cout, Ho, Wo] = act(conv(xn) + bias), xn = x [B, cin, H, W]
// (positions outside it read zero) or, with norm, x normalised per item
// ((x - mean) * inv in double, as im2col). weight [cout, cin * kh * kw]
// float32, bias [cout] float32 (or null), both on the device; operands in
// ctx.gemm. g holds the kernel size.
void direct_conv2d(const Ctx& ctx, const float* x, int64_t B, int64_t cin, int64_t H, int64_t W,
                   const float* weight, const float* bias, int64_t cout, const ConvGeom& g, int64_t Ho, int64_t Wo,
                   float* out, Act act, const InputNorm* norm);

}  // namespace fastdemucs::cuda
