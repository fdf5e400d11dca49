// Convolutions of the HTDemucs layers as cuBLAS GEMMs, batched over the
// chunks of a batch with strided-batched calls (the weights are shared:
// stride 0). Every convolution is seen as 2-D on [B, C, H, W]: [K, 1]
// kernels over frequency, [1, K] over time ([B, C, 1, T]).
//   - 1x1, no padding: one GEMM straight on the activations.
//   - everything else (strided encoder convs, DConv 1x3, rewrite 3x3): im2col
//     then one GEMM (K = cin * taps).
//   - with ctx.shifted_conv (FASTDEMUCS_SHIFTED_CONV=1), stride 1 with several
//     taps: the "shifted GEMM" trick, one GEMM per tap over a zero-padded
//     copy, accumulated with beta = 1, computed on the padded width and
//     cropped (no im2col buffer, but misaligned operands and one float32
//     output pass per tap: much slower on tensor cores).
//   - transposed: one GEMM into columns, then an overlap-add gather (col2im)
//     that also does the bias, the decoder's trim and the activation.
// GEMM operands are converted to the context's operand type on the fly (the
// padding / im2col kernels write it directly), their rows padded to 16 bytes
// in float16 / bfloat16; outputs are float32, except where only a
// memory-bound pass reads them (conv2d_glu, the transposed convolution's
// columns: the operand type, ctx.narrow_gemm_out).
// The outer decoders' rewrites with their GLU have a kernel of their own in
// float16 / bfloat16 (cuda/conv_glu.h), chosen by the backend.
// With ctx.implicit_conv (FASTDEMUCS_IMPLICIT_CONV=1), float16 / bfloat16
// convolutions are instead one implicit GEMM each (cuda/implicit_conv.h: no
// column buffer, no conversion or crop pass) — exact, but slower than
// im2col + cuBLAS so far (NOTES.md), hence off by default.
// The time branch's first convolution (cin 1 or 2, 8 taps along W, 48
// outputs) in float16 / bfloat16 runs on mma.sync straight from its input,
// from the weight's float32 copy (ConvWeight::w32, ctx.direct_conv:
// cuda/direct_conv.h).
// The second frequency encoder's convolution (8 taps along H, stride 4, 96
// outputs) in float16 / bfloat16 is an implicit GEMM on mma.sync straight
// from its input (ctx.freq_encoder_mma: cuda/freq_encoder_conv.h).
#pragma once

#include <cstdint>
#include <functional>

#include "cuda/common.h"
#include "cuda/kernels.h"

namespace fastdemucs::cuda {

// A float32 activation [b, c, h, w] on the device.
struct DTensor {
    float* p = nullptr;
    int64_t b = 0, c = 0, h = 0, w = 0;
    int64_t numel() const { return b * c * h * w; }
};

struct ConvWeight {
    const void* w = nullptr;     // operand type: conv [cout, cin * kh * kw]; transposed conv [cin, cout * kh * kw]
    const void* taps = nullptr;  // conv only, for the shifted path: [kh * kw][cout][cin]
    const float* bias = nullptr;
    // Or null: conv [cout, biased_columns(cin * kh * kw)] with the bias as a column (cuda/weights.h).
    const void* biased = nullptr;
    // Or null: conv [cout, cin * kh * kw] in float32, for direct_conv2d (cuda/direct_conv.h).
    const float* w32 = nullptr;
    int cout = 0, cin = 0, kh = 1, kw = 1;
};

// Output size of a convolution over an input [.., H, Wl] (Wl may exceed the
// stored width: zero extension on the right, as the time encoder's padding).
void conv_output_size(int64_t H, int64_t Wl, const ConvWeight& w, const ConvGeom& g, int64_t* Ho, int64_t* Wo);

// out = act(conv(x) + bias); g's kernel size is taken from the weight. out
// must have the shape conv_output_size gives. in_norm (or null): x is the
// model's input before its per-item normalisation, applied as im2col reads
// it (x unchanged) or, on paths without im2col, to x in place first.
void conv2d(const Ctx& ctx, const DTensor& x, int64_t Wl, const ConvWeight& w, ConvGeom g, const DTensor& out,
            Act act, const InputNorm* in_norm = nullptr);
// Whether conv2d carries the bias through the GEMM (w.biased, float16 /
// bfloat16, output rows of 16 bytes; conv.cpp: conv2d_biased), for tests.
bool conv2d_bias_in_gemm(const Ctx& ctx, const DTensor& x, int64_t Wl, const ConvWeight& w, ConvGeom g);

// out [B, C, Ho, Wo] = GLU over channels of conv(x) + bias (w has 2C outputs;
// stride-1 geometry over x's own width) with the convolution's result
// stored in the operand type between the GEMM and the GLU (half the bytes
// of that round trip). Returns false, doing nothing, where that does not
// apply (float32, the implicit and shifted paths, ctx.narrow_gemm_out off):
// the caller then runs conv2d and glu.
// x_operand (or null): a pointwise conv's input already as its GEMM operand
// (ctx.gemm, planes of operand_ld(ctx, x.h * x.w)); ignored by the im2col
// path and wherever conv2d_glu returns false.
// emb (or null): a frequency embedding the GLU's pass adds (glu()).
// conv2d_glu_takes: whether it applies in this context (it returns true).
bool conv2d_glu_takes(const Ctx& ctx, const ConvWeight& w, const ConvGeom& g);
bool conv2d_glu(const Ctx& ctx, const DTensor& x, const ConvWeight& w, ConvGeom g, const DTensor& out,
                const void* x_operand = nullptr, const FreqEmbedding* emb = nullptr);

// The row stride of a GEMM operand of n columns (x [B, C, H, W] as [B * C, ld]
// with n = H * W): n in float32, n rounded up to 8 values (16 bytes) in
// float16 / bfloat16, where cuBLAS's tensor-core kernels want aligned rows.
int64_t operand_ld(const Ctx& ctx, int64_t n);

// Takes a transposed convolution's columns instead of its overlap-add into
// `out`: called per slice of items [b0, b0 + nb) with cols [nb, cout * kh *
// kw, ld] of type ct (the iSTFT's input written from the last frequency
// decoder's columns: Spectral::spectrum_from_columns).
using ColumnSink = std::function<void(const void* cols, DType ct, int64_t ld, int64_t b0, int64_t nb)>;

// out = act(window [h0, h0 + out.h) x [w0, w0 + out.w) of conv_transpose(x) + bias).
// x_operand (or null): x already as the GEMM operand (ctx.gemm, rows of
// operand_ld(ctx, x.h * x.w)), x.p then unused. sink (or null): the columns
// go there instead (out.p then unused; act must be None).
void conv_transpose2d(const Ctx& ctx, const DTensor& x, const ConvWeight& w, int sh, int sw, int64_t h0, int64_t w0,
                      const DTensor& out, Act act, const void* x_operand = nullptr, const ColumnSink* sink = nullptr);

}  // namespace fastdemucs::cuda
