// The DConv's residual layers with a frequency row at a time in cache (CPU,
// float32). The layer-by-layer path streams [B, C, R, W] tensors through
// memory ~10 times a layer (conv, norm, GELU, conv, norm, GLU, residual),
// each pass memory-bound; GroupNorm here is per row, so a row (C x W floats,
// 64-128 KB for the frequency branch's outer layers) is self-contained: it
// goes through every layer in thread-local buffers and back once.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/tensor.h"

namespace fastdemucs::cpu {

// One residual layer: conv3 (dilated) -> GroupNorm(1) -> GELU -> 1x1 conv to
// 2C -> GroupNorm(1) -> GLU -> LayerScale, added to x.
struct DConvLayerWeights {
    int dilation = 1;
    const float* in_weight = nullptr;   // [hidden, C, 3]
    const float* in_bias = nullptr;     // [hidden]
    const float* in_norm_weight = nullptr, *in_norm_bias = nullptr;  // [hidden]
    const float* out_weight = nullptr;  // [2C, hidden]
    const float* out_bias = nullptr;    // [2C]
    const float* out_norm_weight = nullptr, *out_norm_bias = nullptr;  // [2C]
    const float* scale = nullptr;       // [C]
};

// x [B, C, R, W] (in place) through the layers one after the other, each
// op over the whole tensor (cpu/ops.h): the time branch's long rows, and the
// reference the row-at-a-time path is tested against.
void dconv_layer_by_layer(Tensor& x, int hidden, const std::vector<DConvLayerWeights>& layers);

// Whether x [B, C, R, W] goes a row at a time: rows enough for every OpenMP
// thread and small enough for a core's cache (the frequency branch; the time
// branch's one long row per chunk keeps the layer-by-layer path).
bool dconv_rows_fit(const Tensor& x, int hidden);

// x [B, C, R, W] (in place) through the layers, every row (b, r) on its own.
void dconv_rows(Tensor& x, int hidden, const std::vector<DConvLayerWeights>& layers);

}  // namespace fastdemucs::cpu
