// The HTDemucs module tree, derived once from the config: every encoder and
// decoder layer of both branches with its shapes, the transformer, and the
// weight manifest (every state tensor's name and shape). Backends walk this
// plan; they never re-derive shapes from kwargs.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "checkpoint/checkpoint.h"
#include "model/config.h"

namespace fastdemucs {

struct DConvPlan {
    bool present = false;
    int channels = 0;
    int hidden = 0;                  // int(channels / compress)
    std::vector<int> dilations;      // one per residual layer; kernel 3, padding = dilation
};

// HEncLayer: conv -> (+inject) -> norm1 -> GELU -> DConv -> rewrite -> norm2 -> GLU.
struct EncoderLayerPlan {
    std::string prefix;   // "encoder.0." or "tencoder.0."
    bool freq = true;     // convolves over frequency ([K,1] kernels) vs time
    int chin = 0, chout = 0;
    int kernel = 8, stride = 4, pad = 2;
    bool empty = false;   // only the conv (time layer that feeds the merge)
    bool norm = false;    // GroupNorm(norm_groups) after conv and rewrite
    int norm_groups = 4;
    int rewrite_kernel = 0;  // 0 = no rewrite; 1 + 2 * context_enc (square for freq)
    DConvPlan dconv;
};

// HDecLayer: (+skip) -> rewrite -> norm1 -> GLU -> DConv -> conv_tr -> norm2 -> trim -> GELU (unless last).
struct DecoderLayerPlan {
    std::string prefix;   // "decoder.0." or "tdecoder.0."
    bool freq = true;
    int chin = 0, chout = 0;
    int kernel = 8, stride = 4, pad = 2;
    bool empty = false;
    bool last = false;
    bool norm = false;
    int norm_groups = 4;
    int rewrite_kernel = 0;  // 1 + 2 * context (square for freq)
    DConvPlan dconv;
};

struct TransformerLayerPlan {
    std::string prefix;   // "crosstransformer.layers.0." / "crosstransformer.layers_t.0."
    bool cross = false;   // cross-attention (norm1 on q, norm2 on kv, norm3 before FF)
};

struct ModelPlan {
    std::vector<EncoderLayerPlan> encoder, tencoder;   // in forward order
    std::vector<DecoderLayerPlan> decoder, tdecoder;   // in forward order (deepest first)
    int freq_emb_rows = 0;       // 0 = no frequency embedding
    int freq_emb_dim = 0;
    int transformer_in_channels = 0;  // channels * growth^(depth-1)
    int transformer_dim = 0;          // bottom_channels or the above
    int transformer_hidden = 0;
    bool bottom = false;              // channel up/down-samplers exist
    std::vector<TransformerLayerPlan> layers, layers_t;
};

struct WeightSpec {
    std::string name;
    std::vector<int64_t> shape;
};

ModelPlan make_plan(const HTDemucsConfig& config);
std::vector<WeightSpec> weight_manifest(const HTDemucsConfig& config, const ModelPlan& plan);

// Checks `state` against the manifest: every tensor present with its shape,
// nothing extra. Throws Error "<where>: ..." naming the first mismatch.
void check_state(const std::map<std::string, HostTensor>& state, const std::vector<WeightSpec>& manifest,
                 const std::string& where);

std::string shape_string(const std::vector<int64_t>& shape);

}  // namespace fastdemucs
