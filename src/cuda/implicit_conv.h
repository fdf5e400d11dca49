// Implicit-GEMM convolution on tensor cores, for float16 / bfloat16
// operands: out[b] [cout, Ho * Wo] = W [cout, cin * kh * kw] x cols[b], where
// the column matrix (im2col's) is never stored: each thread block gathers
// its [32, 128] tile of it straight from the float32 activation, rounds it
// to the operand type in shared memory and multiplies it on the tensor
// cores (WMMA 16x16x16, float32 accumulation); bias and activation are
// applied on the way out, rows written at their exact length.
//
// Why: im2col wrote cin * kh * kw values per output position (9x the input
// for the decoders' 3x3 rewrites, 3x for the DConv) and the GEMM read them
// back; with the float32 -> operand conversion and the crops of padded rows
// that was ~15 ms of a 54 ms float16 forward of 8 chunks on an H100.
// Status: exact (tests/test_kernels_cuda.cpp); with a 3-stage cp.async
// pipeline, 2 blocks per SM and a decoded row table per convolution it is
// at parity with im2col + cuBLAS (bench/README.md has its four versions), so
// it stays opt-in (FASTDEMUCS_IMPLICIT_CONV=1) until mma.sync / ldmatrix
// fragments take it past them.
#pragma once

#include <cstdint>

#include "cuda/common.h"
#include "cuda/kernels.h"

namespace fastdemucs::cuda {

// x [B, cin, H, W] (float32; positions outside [0, H) x [0, W) read zero:
// a logical width beyond W is a zero extension), weight [cout, cin * kh *
// kw] in `dt` (F16 or BF16), bias [cout] (may be null) ->
// out [B, cout, Ho, Wo] = act(conv + bias), float32. g holds the kernel size.
// Needs a device of compute capability 8.0 or later.
void implicit_conv2d(const Ctx& ctx, DType dt, const float* x, int64_t B, int64_t cin, int64_t H, int64_t W,
                     const void* weight, const float* bias, int64_t cout, const ConvGeom& g, int64_t Ho, int64_t Wo,
                     float* out, Act act);

}  // namespace fastdemucs::cuda
