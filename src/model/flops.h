// Counts the floating-point operations of one HTDemucs forward (a multiply-add
// is 2), from the plan's shapes alone. Used by the benchmarks to report
// achieved FLOP/s on every backend.
#pragma once

#include <cstdint>

#include "model/model.h"

namespace fastdemucs {

struct FlopCount {
    double convolutions = 0;   // encoders, decoders, DConv, rewrites, up/down-samplers
    double projections = 0;    // transformer linear layers (q/k/v/out, feed-forward)
    double attention = 0;      // Q K^T and P V
    double spectral = 0;       // STFT and iSTFT (FFT estimate 5 n log2 n per real frame pair)
    double total() const { return convolutions + projections + attention + spectral; }
};

// One batch item of the model's training length.
FlopCount count_forward_flops(const HTDemucsConfig& config, const ModelPlan& plan);

}  // namespace fastdemucs
