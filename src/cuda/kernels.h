// Hand-written kernels of the CUDA backend: statistics and norms, the
// element-wise passes, layout changes and the convolution helpers (im2col,
// padding, crops, col2im). Each function launches on ctx.stream and does
// nothing in dry mode; temporaries come from ctx.arena. All activations are
// float32; `void*` outputs are in the given DType (GEMM operand copies).
#pragma once

#include <cstdint>

#include "cuda/common.h"

namespace fastdemucs::cuda {

// ---------------------------------------------------------------- statistics
// Segment s = (b * G + g) * R + r of x holds x[((b * C + g * cg + k) * R + r) * W + w]
// for k < cg = C / G, w < W: a GroupNorm group (R = 1, W = H * W), a group on
// one row (per-row GroupNorm of [B, C, R, W]), or a whole item (C = G = R = 1).
struct Segments {
    int64_t B = 1, C = 1, G = 1, R = 1, W = 1;
    int64_t count() const { return B * G * R; }
    int64_t size() const { return C / G * W; }
    int64_t numel() const { return B * C * R * W; }
};

enum class Spread { Variance, UnbiasedStd };

// Per segment: mean and the biased variance or the unbiased std, from sums
// and sums of squares in double over chunks, added in a fixed order; of
// x + offset[c] when a per-channel offset is given.
void segment_stats(const Ctx& ctx, const float* x, const Segments& seg, Spread spread, double* mean, double* out,
                   const float* offset = nullptr);

// A GroupNorm's affine map {scale, shift} per (item, channel, row)
// q = (b * C + c) * R + r, from its segments' partial (count, sum, sum of
// squares) triples in double, `splits` consecutive triples per segment
// (added in a fixed order: segment_stats' mean and variance), as kernels
// that produce their statistics on the way leave them (cuda/dconv.h); with
// an offset (the norm sees x + offset[c]) the shift absorbs it.
void group_norm_coef(const Ctx& ctx, const double* partial, int64_t splits, const Segments& seg, const float* weight,
                     const float* bias, const float* offset, float eps, float2* coef);

// The model's input normalisation x[b, i] = (x[b, i] - mean[b]) * inv[b]
// over n values per item, inv[b] = 1 / (1e-5 + std[b]) made once
// (inverse_std): applied by the first encoders' im2col as they read them
// (InputNorm), or in place where a path cannot (normalize_items).
struct InputNorm {
    const double* mean = nullptr;  // [B]
    const double* inv = nullptr;   // [B]
};
void inverse_std(const Ctx& ctx, const double* std, int64_t B, double* inv);
void normalize_items(const Ctx& ctx, float* x, int64_t B, int64_t n, const InputNorm& norm);

// GroupNorm of x + input_bias[c] (x described by seg; input_bias, optional,
// is the producing convolution's bias, folded in here instead of a pass of
// its own), affine per channel, then act; in place.
void group_norm(const Ctx& ctx, float* x, const Segments& seg, const float* weight, const float* bias, float eps,
                Act act, const float* input_bias = nullptr);
// GroupNorm(1, C) of token-major x [B, N, C] per item (the transformer's norm_out).
void group_norm_tokens(const Ctx& ctx, float* x, int64_t B, int64_t N, int64_t C, const float* weight,
                       const float* bias, float eps);
// LayerNorm of the rows of x [rows, C] into y (type dt; y may be x when dt is F32).
void layer_norm(const Ctx& ctx, const float* x, void* y, DType dt, int64_t rows, int64_t C, const float* weight,
                const float* bias, float eps);

// -------------------------------------------------------------- element-wise
void gelu(const Ctx& ctx, float* x, int64_t n);
// out[o, c, i] = act(in[o, c, i] + bias[c]) (bias may be null), written as dt;
// out may be in when dt is F32.
void bias_act(const Ctx& ctx, const float* in, void* out, DType dt, const float* bias, int64_t outer, int64_t C,
              int64_t inner, Act act);
// x [outer, C, inner] (type t) = act(x + bias[c]) in place (bias may be null).
void bias_act_inplace(const Ctx& ctx, void* x, DType t, const float* bias, int64_t outer, int64_t C, int64_t inner,
                      Act act);
void convert(const Ctx& ctx, const float* in, void* out, DType dt, int64_t n);
// out [taps][cout][cin] (type dt) = in [cout][cin][taps]: a convolution's
// weights tap-major (the shifted-GEMM and conv_glu layouts).
void conv_weight_taps(const Ctx& ctx, const float* in, void* out, DType dt, int64_t cout, int64_t cin, int64_t taps);
// out [rows, ld] (type dt) = in [rows, n] (ld >= n; columns past n left unset).
void convert_rows(const Ctx& ctx, const float* in, void* out, DType dt, int64_t rows, int64_t n, int64_t ld);
// The frequency embedding HTDemucs adds to its first encoder's output
// [B, C, F, T]: x[b, c, f, t] += k * (table[f, c] * s) (add_freq_embedding;
// glu() can add it in its own pass).
struct FreqEmbedding {
    const float* table = nullptr;  // [F, C]
    int64_t F = 0, T = 0;
    float k = 0.0f, s = 0.0f;
};
// y[b, c, i] = a * sigmoid(g), a = x[b, c, i] + bias[c], g = x[b, C + c, i] + bias[C + c]
// for y [B, C, inner] and x [B, 2C, ld] of type xt (rows of inner values,
// ld >= inner, 0 = inner; bias [2C], optional: the producing convolution's);
// then `emb` (optional; inner == F * T) added as add_freq_embedding adds it.
void glu(const Ctx& ctx, const void* x, DType xt, int64_t ld, float* y, int64_t B, int64_t C, int64_t inner,
         const float* bias = nullptr, const FreqEmbedding* emb = nullptr);
// The end of a DConv residual layer in one pass over y [B, 2C, R, W]:
// x [B, C, R, W] += scale[c] * GLU(GroupNorm(1, 2C)(y + input_bias)) with the
// norm's statistics per (item, row) (y itself is left as it is).
void group_norm_glu_residual(const Ctx& ctx, const float* y, float* x, int64_t B, int64_t C, int64_t R, int64_t W,
                             const float* weight, const float* bias, float eps, const float* input_bias,
                             const float* scale);
void add(const Ctx& ctx, float* x, const float* y, int64_t n);
// y[bc, h, w] += inject[bc, w] for every row h.
void add_rows(const Ctx& ctx, float* y, const float* inject, int64_t BC, int64_t H, int64_t W);
// x [B, C, F, T] += k * (s * table[f, c]).
void add_freq_embedding(const Ctx& ctx, float* x, int64_t B, int64_t C, const FreqEmbedding& emb);
// x [rows, C] += gamma[c] * (y + bias[c]) (gamma and bias may be null).
void residual(const Ctx& ctx, float* x, const float* y, const float* bias, const float* gamma, int64_t rows,
              int64_t C);
// residual(x, y, bias, gamma), then layer_norm(x -> out, dt, weight, norm_bias): one pass over x for
// rows of up to 1024 values, the two passes past that.
void residual_layer_norm(const Ctx& ctx, float* x, const float* y, const float* bias, const float* gamma, void* out,
                         DType dt, int64_t rows, int64_t C, const float* weight, const float* norm_bias, float eps);
// residual(x, y, bias, gamma) over x [B, N, C] token-major, then
// group_norm_tokens(x, weight, norm_bias): the norm's statistics taken as
// the residual writes x (one pass over x fewer; the transformer's norm_out).
void residual_group_norm_tokens(const Ctx& ctx, float* x, const float* y, const float* bias, const float* gamma,
                                int64_t B, int64_t N, int64_t C, const float* weight, const float* norm_bias,
                                float eps);
// x[b * n + i] += weight * table[i].
void add_broadcast(const Ctx& ctx, float* x, const float* table, float weight, int64_t B, int64_t n);
void copy(const Ctx& ctx, float* dst, const float* src, int64_t n);

// -------------------------------------------------------------------- layout
// x [B, C, Fr, T] -> tok [B, T * Fr, C] (token t * Fr + f), and back.
void to_tokens(const Ctx& ctx, const float* x, float* tok, int64_t B, int64_t C, int64_t Fr, int64_t T);
void from_tokens(const Ctx& ctx, const float* tok, float* x, int64_t B, int64_t C, int64_t Fr, int64_t T);
// Row softmax of s [rows, cols] into p (type dt; p may be s when dt is F32).
void softmax_rows(const Ctx& ctx, const float* s, void* p, DType dt, int64_t rows, int64_t cols);

// ------------------------------------------------------- convolution helpers
struct ConvGeom {
    int kh = 1, kw = 1;  // kernel
    int sh = 1, sw = 1;  // stride
    int ph = 0, pw = 0;  // zero padding both sides
    int dh = 1, dw = 1;  // dilation
};
// cols [B, item_rows, ld] (type dt, ld >= Ho * Wo, 0 = Ho * Wo; the columns
// past Ho * Wo are left unset or zeroed): its first K = Cin * kh * kw rows
// per item from x [B, Cin, H, W], the rest (item_rows > K: the rows that
// carry a convolution's bias through its GEMM, DeviceWeights::biased) ones;
// item_rows 0 = K. Input positions outside [0, H) x [0, W) read zero (so a
// logical width beyond W is a zero extension on the right). norm (or
// null): the inputs normalised per item as they are read (padding stays zero),
// the same floats as normalize_items before.
void im2col(const Ctx& ctx, const float* x, void* cols, DType dt, int64_t B, int64_t Cin, int64_t H, int64_t W,
            const ConvGeom& g, int64_t Ho, int64_t Wo, int64_t ld = 0, int64_t item_rows = 0,
            const InputNorm* norm = nullptr);
// base[item * pitch + r * ld + j] = value for r < rows, j < ld, item < items (type dt).
void fill_rows(const Ctx& ctx, void* base, DType dt, int64_t items, int64_t rows, int64_t ld, int64_t pitch,
               float value);
// out [BC, plane] (type dt): each plane is x's [H, W] zero-padded to
// [H + 2ph, Wp = W + 2pw] and followed by zeros up to `plane` values.
void pad_planes(const Ctx& ctx, const float* x, void* out, DType dt, int64_t BC, int64_t H, int64_t W, int ph, int pw,
                int64_t plane);
// out [B, C, H, W] = act(full [B, C, H, Wfull][..., :W] + bias[c]).
void crop_bias_act(const Ctx& ctx, const float* full, float* out, const float* bias, int64_t B, int64_t C, int64_t H,
                   int64_t Wfull, int64_t W, Act act);
// Transposed-convolution overlap-add: cols [B, C * kh * kw, ld] (type ct;
// ld >= H * W, 0 = H * W) -> the window [h0, h0 + Hc) x [w0, w0 + Wc) of the full output
// [B, C, (H - 1) * sh + kh, (W - 1) * sw + kw], plus bias[c], then act.
void col2im(const Ctx& ctx, const void* cols, DType ct, float* out, const float* bias, int64_t B, int64_t C, int64_t H,
            int64_t W, int kh, int kw, int sh, int sw, int64_t h0, int64_t Hc, int64_t w0, int64_t Wc, Act act,
            int64_t ld = 0);
// out [BC, Hc, Wc] = act(in [BC, Hin, Win][h0 : h0 + Hc, w0 : w0 + Wc]).
void crop_act(const Ctx& ctx, const float* in, float* out, int64_t BC, int64_t Hin, int64_t Win, int64_t h0,
              int64_t Hc, int64_t w0, int64_t Wc, Act act);

}  // namespace fastdemucs::cuda
