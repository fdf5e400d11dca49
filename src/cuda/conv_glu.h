// The rewrite convolutions with their GLU as one implicit GEMM on the tensor
// cores (float16 / bfloat16 operands, float32 accumulation; on compute
// capability 9.0 through wgmma, cuda/conv_glu_wgmma.h, elsewhere mma.sync):
//     out [B, C, H, W] = GLU(conv(x + skip) + bias)   (GLU over channels)
// for the stride-1, "same"-padded 1x3 (time decoders) and 3x3 (frequency
// decoders) rewrites of up to 96 channels, cout = 2C (the outer decoders:
// past that the layers are bound by the tensor cores and im2col + cuBLAS's
// wgmma kernels beat this kernel's mma.sync, see conv_glu.cu).
//
// Why: im2col + cuBLAS + GLU wrote the 3x3 rewrites' column matrix (9x the
// input, ~2.2 GB per forward of 8 chunks in float16), read it back, wrote the
// conv's 2C channels and read them again for the GLU, after a pass of its own
// for the decoder's skip connection. Here x + skip is packed once to
// channels-last in the operand type (one pass), and each thread block loads
// a tile of it with its halo once per 16 input channels and multiplies it
// for every tap from shared memory; its 96 rows are 48 GLU outputs and their
// 48 gates, so the GLU (and the bias) run on the accumulators and only the C
// output channels are written, in float32, in the activations' layout.
// The conv's result is not rounded to the operand type before the GLU (the
// im2col path rounds it): at least as close to float64.
#pragma once

#include <cstdint>

#include "cuda/common.h"
#include "cuda/conv.h"

namespace fastdemucs::cuda {

// Whether conv_glu takes this rewrite: float16 / bfloat16 with ctx.conv_glu
// (sm_80 on), stride 1 and no dilation, a 1x3 or 3x3 kernel with "same"
// padding, cin a multiple of 16 and at most 96, cout = 2 cin, the
// tap-major weights (w.taps) present.
bool conv_glu_takes(const Ctx& ctx, const ConvWeight& w, const ConvGeom& g);
// Its channel condition alone: which rewrite weights need the tap-major copy.
bool conv_glu_channels_fit(int64_t cin);

// out [B, C, H, W] = GLU(conv(x + skip) + w.bias) for x [B, C, H, W] and
// skip (null, or x's shape); out must not overlap x or skip.
void conv_glu(const Ctx& ctx, const DTensor& x, const float* skip, const ConvWeight& w, const DTensor& out);

// The packed input of conv_glu for x [B, C, H, W] (P = H * W): x + skip as
// [B, P, C] in ctx.gemm's type, its size in bytes.
size_t conv_glu_packed_bytes(const Ctx& ctx, int64_t B, int64_t C, int64_t P);
// conv_glu over an input already packed (xp, by pack_columns); x gives
// the shape only (x.p unused).
void conv_glu_packed(const Ctx& ctx, const void* xp, const DTensor& x, const ConvWeight& w, const DTensor& out);

// The previous frequency decoder's output written straight as that packed
// input: xp [b0 + i] = pack(act(window [h0, h0 + Hc) of the transposed
// conv's overlap-add of cols + bias) + skip) for the nb items of a slice,
// cols [nb, C * kh, ld] (kernel kh x 1, stride sh x 1; rows of W
// positions), skip [B, C, Hc, W]; the same floats as col2im + conv_glu's
// pack, without x's float32 round trip (the frequency decoders' 3x3
// rewrites: their packs took 0.31 ms and the col2im before them 0.22 ms of
// a forward of 8 chunks).
bool pack_columns_fits(const Ctx& ctx, int64_t C, int64_t W);
void pack_columns(const Ctx& ctx, const void* cols, DType ct, int64_t ld, const float* bias, Act act, int64_t b0,
                  int64_t nb, int64_t C, int64_t H, int64_t W, int kh, int sh, int64_t h0, int64_t Hc,
                  const float* skip, void* xp);

// The same from a time decoder's columns (kernel [1, 8], stride 4 along W;
// H = 1): cols [nb, C * 8, ld] (rows of W input columns), the window [w0, w0
// + Wc) of the uncropped output, skip [B, C, Wc]: the same floats as
// col2im + conv_glu's pack (the time decoders' 1x3 rewrites: the col2im and
// the pack took ~0.23 + 0.17 ms of a forward of 8 chunks).
bool pack_columns_w_fits(const Ctx& ctx, int64_t C);
void pack_columns_w(const Ctx& ctx, const void* cols, DType ct, int64_t ld, const float* bias, Act act, int64_t b0,
                    int64_t nb, int64_t C, int64_t W, int64_t w0, int64_t Wc, const float* skip, void* xp);

}  // namespace fastdemucs::cuda
