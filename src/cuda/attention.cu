#include "cuda/attention.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "cuda/arena.h"
#include "cuda/cudnn_attention.h"
#include "cuda/device_utils.cuh"
#include "cuda/gemm.h"
#include "cuda/kernels.h"
#include "cuda/profile.h"
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

// ------------------------------------------------------------------------------
// Tensor-core flash attention for float16 / bfloat16 operands (FlashAttention-2
// scheme on mma.sync.m16n8k16, fragment layouts as in the PTX ISA):
// a block of 4 warps takes 64 query rows (16 per warp, Q fragments kept in
// registers) and walks the keys in tiles of 64 staged in shared memory (K as
// stored, V transposed and in float16). S = Q K^T accumulates in float32;
// the online softmax (base-2, running max and sum per row) runs on the
// accumulator fragments; P is rounded to float16 and multiplied by V with
// float32 accumulation; one division by the row sum at the end. In bfloat16
// mode Q K^T runs in bfloat16 (the operands' own type) and P V in float16
// (V converted exactly, P keeps 11 bits instead of 8).

constexpr int kTcWarps = 4;
constexpr int kTcRows = 16 * kTcWarps;  // query rows per block
constexpr int kTcKeys = 64;             // keys per tile
constexpr int kTcVtStride = kTcKeys + 8;  // halves per transposed-V row (bank-conflict-free fragment loads)

// A V element as float16 (exact for float16; bfloat16 saturated to float16's range).
__device__ __forceinline__ uint16_t half_bits_sat(uint16_t b, __half) { return b; }
__device__ __forceinline__ uint16_t half_bits_sat(uint16_t b, __nv_bfloat16) {
    const float v = __bfloat162float(__ushort_as_bfloat16(b));
    return bits16(__float2half_rn(fminf(fmaxf(v, -65504.0f), 65504.0f)));
}

// Element x (0..7) of 8 packed 16-bit values.
__device__ __forceinline__ uint16_t lane16(const uint4& v, int x) {
    const uint32_t w = x < 2 ? v.x : x < 4 ? v.y : x < 6 ? v.z : v.w;
    return (x & 1) ? uint16_t(w >> 16) : uint16_t(w & 0xffffu);
}

// Shared by both tensor-core kernels (one warp: query rows row0 + g and
// row0 + g + 8 of its 16; this thread's keys j * 8 + tig * 2, + 1 of a tile).

// Q fragments of the warp's rows, all DH columns (zeros past N).
template <typename T, int DH>
__device__ __forceinline__ void load_q_fragments(const T* __restrict__ q, int64_t ldq, int64_t b, int h, int N,
                                                 int row0, int g, int tig, uint32_t (&qa)[DH / 16][4]) {
    const T* qb = q + b * int64_t(N) * ldq + int64_t(h) * DH;
    const int r0 = row0 + g, r1 = row0 + g + 8;
    auto pair = [&](int r, int c) -> uint32_t {
        if (r >= N) return 0u;
        const T* p = qb + int64_t(r) * ldq + c;
        return pack16(bits16(p[0]), bits16(p[1]));
    };
#pragma unroll
    for (int kk = 0; kk < DH / 16; kk++) {
        const int c = kk * 16 + tig * 2;
        qa[kk][0] = pair(r0, c);
        qa[kk][1] = pair(r1, c);
        qa[kk][2] = pair(r0, c + 8);
        qa[kk][3] = pair(r1, c + 8);
    }
}

// 2^x on the special-function unit, without exp2f's care for results below
// 2^-126 (flushed to zero here; P is rounded to float16, which keeps
// nothing below 2^-24 anyway).
__device__ __forceinline__ float exp2_ftz(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// One key tile (keys k0 ..) of the online softmax in base 2 on the S
// fragments (raw Q K^T): keys past M masked, the running maxima m (raw
// units), sums l and the output o rescaled, s turned into the tile's
// unnormalised probabilities. With 48-dim heads the kernels are bound by
// this per-score work on the CUDA cores and the SFU (against 96 tensor-core
// MACs per score), so it is kept short: keys are masked only on a tile that
// reaches past M (a uniform branch; 2688 and 1344 keys are whole tiles),
// the scale is folded into the exponent's FMA, and exp2 is the bare SFU
// instruction. (Masking every tile, scaling first and exp2f: 3.06 -> 2.62
// ms for the ten attentions of a forward of 8 chunks on the H200.)
template <int DH>
__device__ __forceinline__ void online_softmax(float (&s)[kTcKeys / 8][4], int k0, int M, float scale_log2, int tig,
                                               float& m0, float& m1, float& l0, float& l1, float (&o)[DH / 8][4]) {
    if (k0 + kTcKeys > M) {
#pragma unroll
        for (int j = 0; j < kTcKeys / 8; j++) {
            const int key = k0 + j * 8 + tig * 2;
            if (key >= M) s[j][0] = s[j][2] = -INFINITY;
            if (key + 1 >= M) s[j][1] = s[j][3] = -INFINITY;
        }
    }
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int j = 0; j < kTcKeys / 8; j++) {
        mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1]));
        mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]));
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    // Key k0 < M is valid, so the new maxima are finite; scale_log2 > 0.
    const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);
    const float c0 = exp2_ftz((m0 - n0) * scale_log2), c1 = exp2_ftz((m1 - n1) * scale_log2);  // 0 on the first tile
    m0 = n0, m1 = n1;
    const float b0 = n0 * scale_log2, b1 = n1 * scale_log2;
    l0 *= c0, l1 *= c1;
#pragma unroll
    for (int d = 0; d < DH / 8; d++) {
        o[d][0] *= c0, o[d][1] *= c0;
        o[d][2] *= c1, o[d][3] *= c1;
    }
#pragma unroll
    for (int j = 0; j < kTcKeys / 8; j++) {
        s[j][0] = exp2_ftz(fmaf(s[j][0], scale_log2, -b0));
        s[j][1] = exp2_ftz(fmaf(s[j][1], scale_log2, -b0));
        s[j][2] = exp2_ftz(fmaf(s[j][2], scale_log2, -b1));
        s[j][3] = exp2_ftz(fmaf(s[j][3], scale_log2, -b1));
        l0 += s[j][0] + s[j][1];
        l1 += s[j][2] + s[j][3];
    }
}

// The A fragment of P for keys t * 16 .. + 15, rounded to float16 (the S
// accumulator layout of two 8-key tiles is the A operand's).
__device__ __forceinline__ void p_fragment(const float (&s)[kTcKeys / 8][4], int t, uint32_t (&pa)[4]) {
    pa[0] = pack_half2(s[2 * t][0], s[2 * t][1]);
    pa[1] = pack_half2(s[2 * t][2], s[2 * t][3]);
    pa[2] = pack_half2(s[2 * t + 1][0], s[2 * t + 1][1]);
    pa[3] = pack_half2(s[2 * t + 1][2], s[2 * t + 1][3]);
}

// The warp's output rows: o divided by the row sums (whose parts the four
// threads of a group hold).
template <typename T, int DH>
__device__ __forceinline__ void store_output(T* __restrict__ out, int64_t ldo, int64_t b, int h, int N, int row0,
                                             int g, int tig, const float (&o)[DH / 8][4], float l0, float l1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float i0 = 1.0f / l0, i1 = 1.0f / l1;
    T* ob = out + b * int64_t(N) * ldo + int64_t(h) * DH;
    const int r0 = row0 + g, r1 = row0 + g + 8;
#pragma unroll
    for (int d = 0; d < DH / 8; d++) {
        const int c = d * 8 + tig * 2;
        if (r0 < N) {
            T* p = ob + int64_t(r0) * ldo + c;
            p[0] = from_float<T>(o[d][0] * i0);
            p[1] = from_float<T>(o[d][1] * i0);
        }
        if (r1 < N) {
            T* p = ob + int64_t(r1) * ldo + c;
            p[0] = from_float<T>(o[d][2] * i1);
            p[1] = from_float<T>(o[d][3] * i1);
        }
    }
}

template <typename T, int DH>
__global__ void __launch_bounds__(32 * kTcWarps) tc_attention_kernel(const T* __restrict__ q, int64_t ldq,
                                                                     const T* __restrict__ k,
                                                                     const T* __restrict__ v, int64_t ldkv,
                                                                     T* __restrict__ out, int64_t ldo, int N, int M,
                                                                     float scale_log2) {
    static_assert(DH % 16 == 0 && DH <= 128, "head size must be a multiple of 16");
    constexpr int kKsStride = DH + 8;  // 16-bit elements per staged K row
    constexpr int kChunks = DH / 8;    // 16-byte chunks per head row
    // Shared tiles as 32-bit words: K [key][DH + 8] in T, V transposed [dim][keys + 8] in float16.
    __shared__ __align__(16) uint32_t ks[kTcKeys * kKsStride / 2];
    __shared__ __align__(16) uint32_t vt[DH * kTcVtStride / 2];

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, tig = lane % 4;  // fragment row group, thread in group
    const int64_t b = blockIdx.z;
    const int h = blockIdx.y;
    const int row0 = blockIdx.x * kTcRows + warp * 16;

    uint32_t qa[DH / 16][4];
    load_q_fragments<T, DH>(q, ldq, b, h, N, row0, g, tig, qa);
    float o[DH / 8][4];
#pragma unroll
    for (int d = 0; d < DH / 8; d++) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;  // rows g and g + 8

    const T* kb = k + b * int64_t(M) * ldkv + int64_t(h) * DH;
    const T* vb = v + b * int64_t(M) * ldkv + int64_t(h) * DH;
    for (int k0 = 0; k0 < M; k0 += kTcKeys) {
        __syncthreads();  // the previous tile is consumed
        // K tile [key][DH] as stored; keys past M are zeros.
        for (int e = threadIdx.x; e < kTcKeys * kChunks; e += 32 * kTcWarps) {
            const int j = e / kChunks, c = e % kChunks;
            uint4 val = make_uint4(0u, 0u, 0u, 0u);
            if (k0 + j < M) val = *reinterpret_cast<const uint4*>(kb + int64_t(k0 + j) * ldkv + c * 8);
            *reinterpret_cast<uint4*>(ks + (j * kKsStride + c * 8) / 2) = val;
        }
        // V tile transposed into vt[dim][key] (float16), two keys per 32-bit store.
        for (int e = threadIdx.x; e < (kTcKeys / 2) * kChunks; e += 32 * kTcWarps) {
            const int pair = e % (kTcKeys / 2), c = e / (kTcKeys / 2);
            const int j = 2 * pair;
            uint4 va = make_uint4(0u, 0u, 0u, 0u), vb2 = make_uint4(0u, 0u, 0u, 0u);
            if (k0 + j < M) va = *reinterpret_cast<const uint4*>(vb + int64_t(k0 + j) * ldkv + c * 8);
            if (k0 + j + 1 < M) vb2 = *reinterpret_cast<const uint4*>(vb + int64_t(k0 + j + 1) * ldkv + c * 8);
#pragma unroll
            for (int x = 0; x < 8; x++)
                vt[((c * 8 + x) * kTcVtStride + j) / 2] =
                    pack16(half_bits_sat(lane16(va, x), T()), half_bits_sat(lane16(vb2, x), T()));
        }
        __syncthreads();

        // S = Q K^T for 64 keys: 8 tiles of 8 keys.
        float s[kTcKeys / 8][4];
#pragma unroll
        for (int j = 0; j < kTcKeys / 8; j++) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
            const uint32_t* kr = ks + ((j * 8 + g) * kKsStride + tig * 2) / 2;
#pragma unroll
            for (int kk = 0; kk < DH / 16; kk++) mma_m16n8k16<T>(s[j], qa[kk], kr[kk * 8], kr[kk * 8 + 4]);
        }
        online_softmax<DH>(s, k0, M, scale_log2, tig, m0, m1, l0, l1, o);
        // O += P V: 4 steps of 16 keys; P's accumulator layout is the A operand's.
#pragma unroll
        for (int t = 0; t < kTcKeys / 16; t++) {
            uint32_t pa[4];
            p_fragment(s, t, pa);
#pragma unroll
            for (int d = 0; d < DH / 8; d++) {
                const uint32_t* vr = vt + ((d * 8 + g) * kTcVtStride + t * 16 + tig * 2) / 2;
                mma_m16n8k16<__half>(o[d], pa, vr[0], vr[4]);
            }
        }
    }
    store_output<T, DH>(out, ldo, b, h, N, row0, g, tig, o, l0, l1);
}

// The float16 kernel, version 2: the same FlashAttention-2 scheme with
// K and V tiles double-buffered by cp.async (the next tile loads while this
// one is multiplied) and staged as stored, their fragments read with
// ldmatrix (V transposed by ldmatrix.trans instead of by scalar stores).
// Version 1 loaded each tile synchronously and transposed V element by
// element: 0.82 ms for a 2688-token self-attention of 8 chunks on an H100
// (~108 TFLOP/s).
// On sm_90, at most 96 registers (5 blocks of 4 warps per SM, the shared
// memory carve-out set for them at launch): the kernel is bound by each
// warp's MMA -> softmax -> MMA chain, so more warps per SM help; at 100
// registers 4 blocks fit. H200, the ten attentions of a forward of 8:
// 2.60 -> 2.55 ms (6 blocks at 80 registers spill: 2.65 ms). Earlier chips
// have less shared memory per SM (5 blocks do not fit): no bound there.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
constexpr int kTcF16BlocksPerSm = 1;
#else
constexpr int kTcF16BlocksPerSm = 5;
#endif

template <int DH>
__global__ void __launch_bounds__(32 * kTcWarps, kTcF16BlocksPerSm)
    tc_attention_f16_kernel(const __half* __restrict__ q, int64_t ldq, const __half* __restrict__ k,
                            const __half* __restrict__ v, int64_t ldkv, __half* __restrict__ out, int64_t ldo,
                            int N, int M, float scale_log2) {
    static_assert(DH % 16 == 0 && DH <= 128, "head size must be a multiple of 16");
    constexpr int kStride = DH + 8;  // halves per staged row: 16-byte rows, ldmatrix without bank conflicts
    constexpr int kChunks = DH / 8;  // 16-byte chunks per head row
    __shared__ __align__(128) __half ks[2][kTcKeys][kStride];
    __shared__ __align__(128) __half vs[2][kTcKeys][kStride];

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, tig = lane % 4;
    const int64_t b = blockIdx.z;
    const int h = blockIdx.y;
    const int row0 = blockIdx.x * kTcRows + warp * 16;

    uint32_t qa[DH / 16][4];
    load_q_fragments<__half, DH>(q, ldq, b, h, N, row0, g, tig, qa);
    float o[DH / 8][4];
#pragma unroll
    for (int d = 0; d < DH / 8; d++) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;

    const __half* kb = k + b * int64_t(M) * ldkv + int64_t(h) * DH;
    const __half* vb = v + b * int64_t(M) * ldkv + int64_t(h) * DH;
    const int tiles = (M + kTcKeys - 1) / kTcKeys;
    auto issue = [&](int tile, int buf) {  // keys past M are zero-filled
        const int k0 = tile * kTcKeys;
        for (int e = threadIdx.x; e < kTcKeys * kChunks; e += 32 * kTcWarps) {
            const int j = e / kChunks, c = e % kChunks;
            const bool valid = k0 + j < M;
            const int64_t at = int64_t(valid ? k0 + j : 0) * ldkv + c * 8;
            cp_async16(&ks[buf][j][c * 8], kb + at, valid);
            cp_async16(&vs[buf][j][c * 8], vb + at, valid);
        }
        cp_async_commit();
    };
    issue(0, 0);
    // ldmatrix row addresses: lane -> (tile lane / 8, row lane % 8).
    const int lrow = lane % 8, ltile = lane / 8;
    for (int tile = 0; tile < tiles; tile++) {
        const int buf = tile & 1, k0 = tile * kTcKeys;
        if (tile + 1 < tiles)
            issue(tile + 1, buf ^ 1);  // its buffer was released by the barrier ending the previous step
        else
            cp_async_commit();  // an empty group keeps the wait count uniform
        cp_async_wait<1>();
        __syncthreads();

        // S = Q K^T: B fragments of 8 keys x 16 dims, tiles (keys, dims lo) and (keys, dims hi).
        float s[kTcKeys / 8][4];
#pragma unroll
        for (int j = 0; j < kTcKeys / 8; j++) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < DH / 16; kk++) {
                uint32_t b0, b1;
                ldmatrix_x2(b0, b1, &ks[buf][j * 8 + lrow][kk * 16 + (ltile & 1) * 8]);
                mma_m16n8k16<__half>(s[j], qa[kk], b0, b1);
            }
        }
        online_softmax<DH>(s, k0, M, scale_log2, tig, m0, m1, l0, l1, o);
        // O += P V: B fragments of 16 keys x 8 dims from V [key][dim] transposed,
        // tiles (keys lo, dims d), (keys hi, dims d), (keys lo, d + 1), (keys hi, d + 1).
#pragma unroll
        for (int t = 0; t < kTcKeys / 16; t++) {
            uint32_t pa[4];
            p_fragment(s, t, pa);
#pragma unroll
            for (int d = 0; d < DH / 8; d += 2) {
                uint32_t b0, b1, b2, b3;
                ldmatrix_x4_trans(b0, b1, b2, b3, &vs[buf][t * 16 + (ltile & 1) * 8 + lrow][(d + (ltile >> 1)) * 8]);
                mma_m16n8k16<__half>(o[d], pa, b0, b1);
                mma_m16n8k16<__half>(o[d + 1], pa, b2, b3);
            }
        }
        __syncthreads();  // this buffer is consumed: the step after next may refill it
    }
    store_output<__half, DH>(out, ldo, b, h, N, row0, g, tig, o, l0, l1);
}

template <typename T, int DH>
void launch_tc(const Ctx& ctx, const AttentionArgs& a, float scale) {
    const dim3 grid(unsigned((a.N + kTcRows - 1) / kTcRows), unsigned(a.heads), unsigned(a.B));
    const float scale_log2 = float(double(scale) * 1.4426950408889634);
    tc_attention_kernel<T, DH><<<grid, 32 * kTcWarps, 0, ctx.stream>>>(
        static_cast<const T*>(a.q), a.ldq, static_cast<const T*>(a.k), static_cast<const T*>(a.v), a.ldkv,
        static_cast<T*>(a.out), a.ldo, int(a.N), int(a.M), scale_log2);
    FD_LAUNCH_CHECK();
}

template <int DH>
void launch_tc_typed(const Ctx& ctx, const AttentionArgs& a, float scale) {
    if (ctx.gemm == DType::F16 && ctx.pipelined_attention) {
        const dim3 grid(unsigned((a.N + kTcRows - 1) / kTcRows), unsigned(a.heads), unsigned(a.B));
        const float scale_log2 = float(double(scale) * 1.4426950408889634);
        // Set on every launch: the attribute belongs to the context (release_gpus() may have made a new one).
        FD_CUDA(cudaFuncSetAttribute(tc_attention_f16_kernel<DH>, cudaFuncAttributePreferredSharedMemoryCarveout,
                                     cudaSharedmemCarveoutMaxShared));
        tc_attention_f16_kernel<DH><<<grid, 32 * kTcWarps, 0, ctx.stream>>>(
            static_cast<const __half*>(a.q), a.ldq, static_cast<const __half*>(a.k), static_cast<const __half*>(a.v),
            a.ldkv, static_cast<__half*>(a.out), a.ldo, int(a.N), int(a.M), scale_log2);
        FD_LAUNCH_CHECK();
    } else if (ctx.gemm == DType::F16)
        launch_tc<__half, DH>(ctx, a, scale);
    else
        launch_tc<__nv_bfloat16, DH>(ctx, a, scale);
}

// The tensor-core kernel reads 16-byte rows: every row start must be 16-byte aligned.
bool tc_layout_ok(const AttentionArgs& a) {
    auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    return a.ldq % 8 == 0 && a.ldkv % 8 == 0 && a.ldo % 2 == 0 && aligned(a.q) && aligned(a.k) && aligned(a.v) &&
           reinterpret_cast<uintptr_t>(a.out) % 4 == 0;
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
    ProfileSpan span(ctx, ProfKind::Attention);
    if (ctx.cudnn_attention && ctx.cudnn_attention->run(ctx, a, scale)) return;
    if (!(ctx.fused_attention && fused_attention_supported(a.dh))) {
        attention_cublas(ctx, a, scale);
        return;
    }
    if (ctx.dry) return;
    if (a.B > 65535 || a.heads > 65535 || a.N > int64_t(0x7fffffff) || a.M > int64_t(0x7fffffff))
        throw Error("attention: too many batch items, heads or tokens");
    if (ctx.gemm != DType::F32 && ctx.tensor_core_attention && tc_layout_ok(a)) {
        switch (a.dh) {
            case 16: launch_tc_typed<16>(ctx, a, scale); return;
            case 32: launch_tc_typed<32>(ctx, a, scale); return;
            case 48: launch_tc_typed<48>(ctx, a, scale); return;
            case 64: launch_tc_typed<64>(ctx, a, scale); return;
            default: break;
        }
    }
    switch (a.dh) {
        case 16: launch_fused<16>(ctx, a, scale); break;
        case 32: launch_fused<32>(ctx, a, scale); break;
        case 48: launch_fused<48>(ctx, a, scale); break;
        case 64: launch_fused<64>(ctx, a, scale); break;
        default: throw Error("internal error: fused attention head size");
    }
}

}  // namespace fastdemucs::cuda
