// Multi-head attention core: out = softmax(q k^T / sqrt(dh)) v for every
// batch item and head, heads interleaved along the channels as
// nn.MultiheadAttention splits them. q, k, v and out are in the context's
// operand type; scores, softmax and accumulation are float32.
//
// Two implementations, same function:
//   - fused (default): one kernel, online softmax, one query row per thread,
//     K/V tiles in shared memory; never materialises the scores. Head sizes
//     16, 32, 48, 64.
//   - cuBLAS (FASTDEMUCS_ATTENTION=cublas, or other head sizes): per batch
//     item and block of query rows, strided-batched GEMMs over the heads
//     into a bounded score buffer, a softmax kernel, a second GEMM.
#pragma once

#include <cstdint>

#include "cuda/common.h"

namespace fastdemucs::cuda {

struct AttentionArgs {
    const void* q = nullptr;  // item b, token n, head h: q[(b * N + n) * ldq + h * dh + d]
    int64_t ldq = 0;
    const void* k = nullptr;  // k[(b * M + m) * ldkv + h * dh + d], v likewise
    const void* v = nullptr;
    int64_t ldkv = 0;
    void* out = nullptr;      // out[(b * N + n) * ldo + h * dh + d]
    int64_t ldo = 0;
    int64_t B = 0, N = 0, M = 0;
    int heads = 1, dh = 0;
};

void attention(const Ctx& ctx, const AttentionArgs& args);
// Whether the fused kernel handles this head size.
bool fused_attention_supported(int dh);

}  // namespace fastdemucs::cuda
