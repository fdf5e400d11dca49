// The second frequency encoder's convolution (8 taps along H = frequency,
// stride 4, padding 2 (at most 4); 96 outputs, cin a multiple of 4) in float16 /
// bfloat16 as an implicit GEMM on mma.sync, straight from the float32
// activation [B, cin, H, W]: resident blocks keep all the weights in shared
// memory and walk tiles of 8 output rows x 16 positions (36 input rows a
// channel, ~1.1x the input's bytes through L2 where tiles of one row read
// 2x); each step copies 4 channels of a tile's input rows into a ring of
// three stages (cp.async, zero-filled outside the input), each thread then
// rounds the values it copied to the operand type for ldmatrix, the
// products accumulate in float32, and each tile leaves with the bias and the
// activation applied in float32.
//
// Why: im2col wrote cin * 8 operand values per output position (twice the
// input's bytes, in float16) and the GEMM read them back: 0.29 ms of a
// forward of 8 chunks on an H200 (three column slices); this kernel 0.19 ms.
// It takes only 96 outputs: with more, each block's share of the outputs
// reads the whole input again (or the weights leave one block an SM), and
// the first encoder (48 outputs) is dominated by its output's bytes; those
// stay on im2col + GEMM (freq_encoder_conv_takes has the figures).
// Numerics: operands rounded to the operand type as the GEMM path's,
// float32 accumulation; the bias in float32 and the exact GELU (the biased
// GEMM path rounded the bias to the operand type and used the tanh GELU).
#pragma once

#include <cstdint>

#include "cuda/common.h"
#include "cuda/kernels.h"

namespace fastdemucs::cuda {

// Whether freq_encoder_conv2d takes a convolution of cin -> cout channels,
// kernel kh x kw, geometry g, input [.., H, W] read over a logical width Wl,
// in operand type t: float16 / bfloat16, 8 taps along H, stride 4 along H
// only (padding at most 4), no padding along W, no dilation, cin a multiple
// of 4 (steps of 32 weight columns), cout 96, W a multiple of 4 (16-byte
// copies that never cross a row), the weights fitting in shared memory.
bool freq_encoder_conv_takes(DType t, int64_t cin, int64_t cout, int kh, int kw, const ConvGeom& g, int64_t W,
                             int64_t Wl);

// out [B, cout, Ho, W] = act(conv(x) + bias), x [B, cin, H, W] (rows
// outside it read zero). weight [cout, cin * 8] in ctx.gemm's type, bias
// [cout] float32 (or null). x, out and weight 16-byte aligned.
void freq_encoder_conv2d(const Ctx& ctx, const float* x, int64_t B, int64_t cin, int64_t H, int64_t W,
                         const void* weight, const float* bias, int64_t cout, const ConvGeom& g, int64_t Ho,
                         float* out, Act act);

}  // namespace fastdemucs::cuda
