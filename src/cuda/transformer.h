// The cross-domain transformer (CrossTransformerEncoder) on the GPU. Tokens
// are token-major [B * tokens, C] float32 with the batch folded into the
// rows, so every linear layer is one GEMM over all chunks; the attention
// runs per item and head (cuda/attention).
#pragma once

#include <cstdint>

#include "cuda/common.h"
#include "cuda/weights.h"
#include "model/model.h"

namespace fastdemucs::cuda {

class Branch;

class CrossTransformer {
public:
    // Fr x T1 frequency-branch positions, T2 time steps (fixed by the segment).
    CrossTransformer(const HTDemucsModel& model, const DeviceWeights& weights, int64_t Fr, int64_t T1, int64_t T2);

    bool matches(int64_t Fr, int64_t T1, int64_t T2) const { return Fr == Fr_ && T1 == T1_ && T2 == T2_; }
    // x [B, C, Fr, T1] and xt [B, C, T2], replaced in place by the outputs;
    // the time tokens' layers on `time`'s stream where it splits off.
    void run(const Ctx& ctx, Branch& time, int64_t B, float* x, float* xt) const;

private:
    struct Work;
    Work alloc_work(const Ctx& ctx, int64_t rows, int64_t rows_kv) const;
    void layer(const Ctx& ctx, const Work& w, const TransformerLayerPlan& plan, float* x, int64_t B, int64_t n,
               const float* kv, int64_t m) const;

    const HTDemucsModel& model_;
    const DeviceWeights& weights_;
    int64_t Fr_, T1_, T2_, C_, hidden_;
    DeviceBuffer pos2d_, pos1d_;  // token-major [Fr * T1, C] and [T2, C]
};

}  // namespace fastdemucs::cuda
