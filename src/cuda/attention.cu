#include "cuda/attention.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "cuda/arena.h"
#include "cuda/device_utils.cuh"
#include "cuda/gemm.h"
#include "cuda/kernels.h"
#include "error.h"

namespace fastdemucs::cuda {
namespace {

constexpr int kQueryRows = 64;  // threads per block, one query row each
constexpr int kKeyTile = 64;    // keys staged in shared memory at a time
constexpr int kKeyChunk = 32;   // keys scored in registers between softmax rescales

// Flash-style attention, float32 arithmetic. Grid (query blocks, heads, B).
// Each thread keeps its query row, its output accumulator and the running
// max / sum of its softmax in registers; the block stages a tile of K and V
// (float32) in shared memory, read by every thread at the same address
// (broadcast), so each key costs 2 * DH FMAs per thread for DH / 2 loads.
template <typename T, int DH>
__global__ void __launch_bounds__(kQueryRows) fused_attention_kernel(const T* __restrict__ q, int64_t ldq,
                                                                     const T* __restrict__ k,
                                                                     const T* __restrict__ v, int64_t ldkv,
                                                                     T* __restrict__ out, int64_t ldo, int N, int M,
                                                                     float scale) {
    static_assert(DH % 4 == 0, "head size must be a multiple of 4");
    __shared__ __align__(16) float ks[kKeyTile][DH];
    __shared__ __align__(16) float vs[kKeyTile][DH];

    const int64_t b = blockIdx.z;
    const int h = blockIdx.y;
    const int row = blockIdx.x * kQueryRows + threadIdx.x;
    const bool active = row < N;

    float qr[DH];
    {
        const T* qp = q + (b * N + (active ? row : 0)) * ldq + int64_t(h) * DH;
#pragma unroll
        for (int d = 0; d < DH; d++) qr[d] = active ? to_float(qp[d]) : 0.0f;
    }
    float acc[DH];
#pragma unroll
    for (int d = 0; d < DH; d++) acc[d] = 0.0f;
    float row_max = -INFINITY, row_sum = 0.0f;

    const T* kb = k + b * M * ldkv + int64_t(h) * DH;
    const T* vb = v + b * M * ldkv + int64_t(h) * DH;
    for (int k0 = 0; k0 < M; k0 += kKeyTile) {
        const int kn = min(kKeyTile, M - k0);
        __syncthreads();  // the previous tile is consumed
        for (int e = threadIdx.x; e < kKeyTile * DH; e += kQueryRows) {
            const int j = e / DH, d = e % DH;
            float kv = 0.0f, vv = 0.0f;
            if (j < kn) {
                kv = to_float(kb[int64_t(k0 + j) * ldkv + d]);
                vv = to_float(vb[int64_t(k0 + j) * ldkv + d]);
            }
            ks[j][d] = kv;
            vs[j][d] = vv;
        }
        __syncthreads();

        for (int c0 = 0; c0 < kn; c0 += kKeyChunk) {
            float s[kKeyChunk];
#pragma unroll
            for (int j = 0; j < kKeyChunk; j++) s[j] = 0.0f;
#pragma unroll
            for (int d = 0; d < DH; d += 4) {
#pragma unroll
                for (int j = 0; j < kKeyChunk; j++) {
                    const float4 kk = *reinterpret_cast<const float4*>(&ks[c0 + j][d]);
                    s[j] = fmaf(qr[d], kk.x, s[j]);
                    s[j] = fmaf(qr[d + 1], kk.y, s[j]);
                    s[j] = fmaf(qr[d + 2], kk.z, s[j]);
                    s[j] = fmaf(qr[d + 3], kk.w, s[j]);
                }
            }
            float chunk_max = -INFINITY;
#pragma unroll
            for (int j = 0; j < kKeyChunk; j++) {
                s[j] = c0 + j < kn ? s[j] * scale : -INFINITY;
                chunk_max = fmaxf(chunk_max, s[j]);
            }
            // chunk_max is finite: key c0 < kn is valid.
            const float new_max = fmaxf(row_max, chunk_max);
            const float correction = expf(row_max - new_max);  // 0 on the first chunk
            row_sum *= correction;
#pragma unroll
            for (int d = 0; d < DH; d++) acc[d] *= correction;
#pragma unroll
            for (int j = 0; j < kKeyChunk; j++) {
                s[j] = expf(s[j] - new_max);  // masked keys: exp(-inf) = 0
                row_sum += s[j];
            }
            row_max = new_max;
#pragma unroll
            for (int j = 0; j < kKeyChunk; j++) {
#pragma unroll
                for (int d = 0; d < DH; d += 4) {
                    const float4 vv = *reinterpret_cast<const float4*>(&vs[c0 + j][d]);
                    acc[d] = fmaf(s[j], vv.x, acc[d]);
                    acc[d + 1] = fmaf(s[j], vv.y, acc[d + 1]);
                    acc[d + 2] = fmaf(s[j], vv.z, acc[d + 2]);
                    acc[d + 3] = fmaf(s[j], vv.w, acc[d + 3]);
                }
            }
        }
    }
    if (active) {
        const float inv = 1.0f / row_sum;
        T* op = out + (b * N + row) * ldo + int64_t(h) * DH;
#pragma unroll
        for (int d = 0; d < DH; d++) op[d] = from_float<T>(acc[d] * inv);
    }
}

template <int DH>
void launch_fused(const Ctx& ctx, const AttentionArgs& a, float scale) {
    const dim3 grid(unsigned((a.N + kQueryRows - 1) / kQueryRows), unsigned(a.heads), unsigned(a.B));
    FD_DISPATCH(ctx.gemm, T,
                fused_attention_kernel<T, DH><<<grid, kQueryRows, 0, ctx.stream>>>(
                    static_cast<const T*>(a.q), a.ldq, static_cast<const T*>(a.k), static_cast<const T*>(a.v), a.ldkv,
                    static_cast<T*>(a.out), a.ldo, int(a.N), int(a.M), scale));
    FD_LAUNCH_CHECK();
}

// Score buffer bound for the cuBLAS path (float32 values).
constexpr int64_t kScoreBudget = int64_t(16) << 20;

void attention_cublas(const Ctx& ctx, const AttentionArgs& a, float scale) {
    ArenaScope scope(*ctx.arena);
    const DType dt = ctx.gemm;
    const int64_t dh = a.dh, H = a.heads, C = H * dh;
    const int64_t block = std::max<int64_t>(1, std::min<int64_t>(a.N, kScoreBudget / (H * a.M)));
    float* scores = ctx.arena->alloc<float>(H * block * a.M);
    // Probabilities in the operand type (aliases the scores in float32).
    void* probs = dt == DType::F32 ? static_cast<void*>(scores)
                                   : ctx.arena->alloc_bytes(size_t(H * block * a.M) * dtype_bytes(dt));
    // The PV product is float32: straight into out in float32, else via a buffer.
    float* o32 = dt == DType::F32 ? nullptr : ctx.arena->alloc<float>(block * C);
    for (int64_t b = 0; b < a.B; b++) {
        const void* kb = offset(a.k, b * a.M * a.ldkv, dt);
        const void* vb = offset(a.v, b * a.M * a.ldkv, dt);
        for (int64_t r0 = 0; r0 < a.N; r0 += block) {
            const int64_t rows = std::min(block, a.N - r0);
            const void* qb = offset(a.q, (b * a.N + r0) * a.ldq, dt);
            // scores[h] [rows, M] = scale * Q_h K_h^T
            gemm(ctx, dt, false, true, rows, a.M, dh, scale, {qb, a.ldq, dh}, {kb, a.ldkv, dh}, 0.0f, scores, a.M,
                 rows * a.M, H);
            softmax_rows(ctx, scores, probs, dt, H * rows, a.M);
            // out rows [rows, C], head h at columns h * dh: P_h V_h
            if (dt == DType::F32) {
                float* ob = static_cast<float*>(a.out) + (b * a.N + r0) * a.ldo;
                gemm(ctx, dt, false, false, rows, dh, a.M, 1.0f, {probs, a.M, rows * a.M}, {vb, a.ldkv, dh}, 0.0f, ob,
                     a.ldo, dh, H);
            } else {
                gemm(ctx, dt, false, false, rows, dh, a.M, 1.0f, {probs, a.M, rows * a.M}, {vb, a.ldkv, dh}, 0.0f,
                     o32, C, dh, H);
                if (a.ldo != C) throw Error("internal error: attention output must be dense");
                convert(ctx, o32, offset(a.out, (b * a.N + r0) * a.ldo, dt), dt, rows * C);
            }
        }
    }
}

}  // namespace

bool fused_attention_supported(int dh) { return dh == 16 || dh == 32 || dh == 48 || dh == 64; }

void attention(const Ctx& ctx, const AttentionArgs& a) {
    if (a.dh * a.heads > a.ldq || a.dh * a.heads > a.ldkv || a.dh * a.heads > a.ldo || a.N <= 0 || a.M <= 0)
        throw Error("internal error: attention arguments");
    const float scale = float(1.0 / std::sqrt(double(a.dh)));
    if (!(ctx.fused_attention && fused_attention_supported(a.dh))) {
        attention_cublas(ctx, a, scale);
        return;
    }
    if (ctx.dry) return;
    if (a.B > 65535 || a.heads > 65535 || a.N > int64_t(0x7fffffff) || a.M > int64_t(0x7fffffff))
        throw Error("attention: too many batch items, heads or tokens");
    switch (a.dh) {
        case 16: launch_fused<16>(ctx, a, scale); break;
        case 32: launch_fused<32>(ctx, a, scale); break;
        case 48: launch_fused<48>(ctx, a, scale); break;
        case 64: launch_fused<64>(ctx, a, scale); break;
        default: throw Error("internal error: fused attention head size");
    }
}

}  // namespace fastdemucs::cuda
