// Multi-head attention core: out = softmax(q k^T / sqrt(dh)) v for every
// batch item and head, heads interleaved along the channels as
// nn.MultiheadAttention splits them. q, k, v and out are in the context's
// operand type; scores, softmax and accumulation are float32.
//
// Three implementations, same function (and, with FASTDEMUCS_ATTENTION=cudnn,
// cuDNN's fused attention before them: cuda/cudnn_attention.h):
//   - fused, tensor cores (default in float16 / bfloat16): FlashAttention-2
//     style on mma.sync m16n8k16, 64 query rows per block, K/V tiles of 64
//     keys in shared memory, online softmax on the float32 accumulator
//     fragments, P rounded to float16 for P V. Head sizes 16, 32, 48, 64.
//   - fused, SIMT (float32, or FASTDEMUCS_ATTENTION=simt): one query row per
//     thread in float32 arithmetic, K/V tiles in shared memory. Same head sizes.
//     Neither fused kernel materialises the scores.
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
