// The cross-domain transformer (CrossTransformerEncoder) on the CPU.
#pragma once

#include "cpu/tensor.h"
#include "model/model.h"

namespace fastdemucs::cpu {

// x [B, C, Fr, T1] (frequency branch) and xt [B, C, T2] (time branch), both
// replaced by the transformer's outputs in the same layouts.
void cross_transformer(const HTDemucsModel& model, Tensor& x, Tensor& xt);

}  // namespace fastdemucs::cpu
