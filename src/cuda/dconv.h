// One residual layer of a DConv with a thin hidden layer, in three passes
// over the activation instead of ~12:
//   x [B, C, R, W] += scale * GLU(GroupNorm(1, 2C)(W_out GELU(GroupNorm(1, hidden)(conv3(x)))))
// (every frequency row r on its own, as the official DConv sees [B * R, C, W]).
//
// Why: with hidden = C / 8 (6 or 12 channels in the outer layers) the two
// convolutions are thin GEMMs that the tensor cores cannot help, and the
// general path stored y [B, 2C, R, W] (twice x) only to read it back for
// its statistics and again for the GLU: at the outermost layers ~1.9 ms of
// a 52 ms float16 forward of 8 chunks per residual layer, 16 of them
// (hidden 6 and 12), and the same again in bytes at hidden 24.
// Here y is never stored: it is hidden multiply-adds per value, so it is
// recomputed from the normalised hidden activation h, which is 1/8 of x.
//   1. dconv_in:  h = conv3(x) (CUDA cores, float32) and h's statistics per row
//   2. dconv_out_stats: y's statistics per row from h alone (the sums of y
//      and y^2 over channels are a linear and a quadratic form of h)
//   3. dconv_out_apply: y recomputed once more, normalised, GLU, LayerScale, x +=
// All arithmetic is float32 (statistics in double), except the two
// convolutions in float16 / bfloat16 mode (ctx.gemm), which run on the
// tensor cores with float16 operands and float32 accumulation
// (ctx.tensor_core_dconv; the apply pass where C is a multiple of 8),
// saturated to float16's range. The outer layers (hidden 6) are
// memory-bound; on CUDA cores the hidden-24 kernels are bound by their
// arithmetic (several positions per thread and the apply pass's channels
// split among blocks were tried: no gain, NOTES.md).
#pragma once

#include <cstdint>
#include <vector>

#include "cuda/common.h"

namespace fastdemucs::cuda {

struct DConvLayerWeights {
    int channels = 0, hidden = 0, dilation = 1;  // kernel 3, padding = dilation
    const float* in_table = nullptr;              // dconv_in_table of the [hidden, channels, 3] weights
    const float* in_bias = nullptr;               // [hidden]
    const float* in_norm_weight = nullptr;        // GroupNorm(1, hidden) affine
    const float* in_norm_bias = nullptr;
    const float* out_weight = nullptr;  // [2 * channels, hidden] (1x1)
    const float* out_bias = nullptr;    // [2 * channels]
    const float* out_norm_weight = nullptr;  // GroupNorm(1, 2 * channels) affine
    const float* out_norm_bias = nullptr;
    const float* scale = nullptr;  // LayerScale [channels]
    const double* out_gram = nullptr;  // dconv_out_gram of out_weight / out_bias, on the device
    const uint32_t* out_fragments = nullptr;  // dconv_out_fragments of out_weight (the tensor-core apply; optional)
    const uint32_t* in_fragments = nullptr;   // dconv_in_fragments of the in-weights (the tensor-core in-conv; optional)
};

// The out-convolution's statistics form, computed once per model on the
// host: with W' = [out_weight | out_bias] ([channels2, hidden + 1]),
// G = W'^T W' ((hidden + 1)^2, row-major) followed by W''s column sums
// (hidden + 1), in double.
std::vector<double> dconv_out_gram(const float* weight, const float* bias, int hidden, int channels2);

// The in-convolution's weights [hidden, channels, 3] as the kernel reads
// them: [channels * 3][hidden padded to the kernel's size], zero-padded,
// built once per model on the host (a straight copy into shared memory).
std::vector<float> dconv_in_table(const float* weight, int hidden, int channels);

// The out-convolution's weights [channels2, hidden] as the tensor-core
// apply pass reads its B fragments: float16 pairs, [channels2 / 8][k-steps
// of 16 (hidden zero-padded)][32 lanes][2], lane (g, t) of tile n, k-step s
// holding W[8n + g][16s + 2t, +1] and W[8n + g][16s + 2t + 8, +9]. Empty when
// channels2 is not a multiple of 16 or hidden > 32 (the CUDA-core apply).
std::vector<uint32_t> dconv_out_fragments(const float* weight, int hidden, int channels2);

// The in-convolution's weights [hidden, channels, 3] as the tensor-core
// in-convolution reads its B fragments: float16 pairs, [hidden / 8 tiles]
// [channels / 16 chunks][tap][32 lanes][2] (zero-padded), lane (g, t) of
// hidden tile n, chunk m, tap j holding W[8n + g][16m + 2t, +1][j] and
// W[8n + g][16m + 2t + 8, +9][j]. Empty for hidden > 32.
std::vector<uint32_t> dconv_in_fragments(const float* weight, int hidden, int channels);

// Whether, in this context, dconv_layer_thin runs both convolutions of such
// a layer on the tensor cores (float16 / bfloat16, tables present).
bool dconv_tensor_cores_take(const Ctx& ctx, int channels, int hidden, int dilation);

// Whether dconv_layer_thin takes this layer (hidden small enough for its
// per-position registers, weights within its shared memory).
bool dconv_layer_thin_fits(int channels, int hidden);

// x [B, C, R, W] (float32, in place) through one residual layer. `copy`
// (or null; float16 / bfloat16 planes of copy->ld >= R * W values): the
// result written there as well, as the GEMM operand of the layer that reads
// the DConv's output (by the tensor-core apply pass itself, else converted).
void dconv_layer_thin(const Ctx& ctx, const DConvLayerWeights& w, float* x, int64_t B, int64_t R, int64_t W,
                      const Planes* copy = nullptr);

// Every residual layer of a DConv in one kernel, a block per row (b, r)
// holding the row x[b, :, r, :] ([C, W], float32) in shared memory from its
// load to its store: 2 passes over x for the whole DConv instead of ~3.5
// per layer. The statistics are per row (GroupNorm over [channels, W]), so a
// row is self-contained. Fits the frequency branch's outer layers (C = 48 /
// 96, W = 336 frames: 63 / 126 KiB a row); the time branch's rows (the
// whole track segment) and the deeper layers take dconv_layer_thin.
constexpr int kDConvRowsMaxLayers = 4;
constexpr int kDConvRowsMaxW = 512;  // a position per thread
bool dconv_rows_fit(int channels, int hidden, int64_t W, int layers);
void dconv_rows(const Ctx& ctx, const DConvLayerWeights* layers, int count, float* x, int64_t B, int64_t R, int64_t W);

// The same with both convolutions on the tensor cores (float16 / bfloat16
// modes, as dconv_layer_thin's tensor-core passes: float16 operands, float32
// accumulation, the residual stream in float32): x read once and written
// once for the whole DConv (~10 bytes a value against ~28 for two layers of
// three passes). `copy` as for dconv_layer_thin. Fits when the context runs
// the DConv on the tensor cores, every layer has both fragment tables, one
// hidden size <= 16, dilation <= 8, C a multiple of 8, W <= kDConvRowsMaxW
// and the row twice (float32, float16) within a block's shared memory:
// the frequency branch's outer DConvs (C = 48 / 96: 109 / 217 KiB).
bool dconv_rows_tc_fit(const Ctx& ctx, const DConvLayerWeights* layers, int count, int64_t W);
void dconv_rows_tc(const Ctx& ctx, const DConvLayerWeights* layers, int count, float* x, int64_t B, int64_t R,
                   int64_t W, const Planes* copy = nullptr);

}  // namespace fastdemucs::cuda
