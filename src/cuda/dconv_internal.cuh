// What the DConv's kernel files share (cuda/dconv.cu: the three passes;
// cuda/dconv_rows.cu: the float32 row-resident kernel; cuda/dconv_rows_tc.cu:
// the row-resident kernel on the tensor cores): the norm's arithmetic, y's
// statistics form, float16 saturation, the folded GLU, the shared-memory
// opt-in, the row load. Internal to those files.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>

#include "cuda/common.h"
#include "cuda/dconv.h"
#include "cuda/device_utils.cuh"

namespace fastdemucs::cuda::dconv_detail {

constexpr float kNormEps = 1e-5f;  // the DConv's GroupNorms (PyTorch's default)
// The largest dilation the tensor-core in-convolutions take: both stage
// this many zero (or neighbouring) positions on each side of their rows.
constexpr int kInMaxDilation = 8;

// The row's GroupNorm {scale, shift} for channel c from the row's mean and
// inverse deviation (the arithmetic of group_norm_coef).
__device__ __forceinline__ float2 row_norm_coef(double mean, double inv, float weight, float bias, double offset) {
    return make_float2(float(inv * weight), float(bias - (mean - offset) * inv * weight));
}
// mean and 1 / sqrt(var + eps) of n values from their block sums.
__device__ __forceinline__ double2 row_moments(double n, double sum, double sq) {
    const double mean = sum / n;
    const double var = fmax(sq / n - mean * mean, 0.0);
    return make_double2(mean, 1.0 / sqrt(var + double(kNormEps)));
}

// A float16 operand saturated to float16's range: in bfloat16 mode the
// DConv's input may exceed it (inf would turn the row's statistics to NaN).
__device__ __forceinline__ __half half_sat(float v) { return __float2half_rn(fminf(fmaxf(v, -65504.0f), 65504.0f)); }

// Whether the DConv's convolutions may run on the tensor cores: float16 /
// bfloat16 mode with ctx.tensor_core_dconv (float32 stays exact on CUDA cores).
inline bool tensor_core_mode(const Ctx& ctx) { return ctx.gemm != DType::F32 && ctx.tensor_core_dconv; }

// Two floats as float16 pairs saturated to float16's range, lo in the low
// half: half_sat's clamp in one instruction (except that NaN stays NaN,
// where half_sat's fmaxf made it -65504).
__device__ __forceinline__ uint32_t half2_sat(float lo, float hi) {
    uint32_t r;
    asm("cvt.rn.satfinite.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
// 2^v and 1 / v on the SFU, without the range fix-ups of exp2f / __fdividef
// (flushed subnormals: the GLU's sigmoid is then 0 or 1 where it was within
// 1e-38 of them).
__device__ __forceinline__ float ex2_ftz(float v) {
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
    return r;
}
__device__ __forceinline__ float rcp_ftz(float v) {
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
    return r;
}

// LayerScale * a * sigmoid(g) = a' / (1 + 2^g') for y's GroupNorm {scale,
// shift} folded as a' = (a * scale + shift) * LayerScale and g' = (g * scale
// + shift) * -log2(e) (fold_glu_coef): four instructions a value where
// sc * glu_value took ten (its exp and division fix up ranges the float16
// modes never reach). The float16 / bfloat16 kernels' GLU; float32 keeps
// glu_value.
constexpr float kLog2e = 1.4426950408889634f;
__host__ __device__ __forceinline__ float2 fold_glu_coef(float2 k, bool is_a, float layer_scale) {
    const float f = is_a ? layer_scale : -kLog2e;
    return make_float2(k.x * f, k.y * f);
}
__device__ __forceinline__ float glu_folded(float a_folded, float g_folded) {
    return a_folded * rcp_ftz(1.0f + ex2_ftz(g_folded));
}

// The hidden size a kernel is compiled for: the next of 8, 12, 16, 24, 32
// (multiples of 4: weight rows stay 16-byte vectors; padding costs its share
// of the multiply-adds, 25% when hidden 12 and 24 ran as 16 and 32).
inline int max_hidden_for(int hidden) {
    for (int mh : {8, 12, 16, 24}) {
        if (hidden <= mh) return mh;
    }
    return 32;
}

// The out-convolution's statistics per position need no y: with
// W' = [W_out | bias] ([2C, hidden + 1]) and h' = [hn, 1],
//   sum_o y_o = s . h' (s: the column sums of W'),
//   sum_o y_o^2 = h'^T G h' (G = W'^T W'),
// in double: (hidden + 1)^2 / 2 multiply-adds per position instead of
// 2C * hidden (the direct form made the kernel compute-bound at ~75% of
// the SM's issue rate).
//
// y_moments adds one position's sum_o y_o and sum_o y_o^2 to sum and sq; g holds G
// ((hidden + 1)^2, row-major) then s (hidden + 1).
template <int MaxHidden>
__device__ __forceinline__ void y_moments(const float (&hn)[MaxHidden], int hidden, const double* g, double& sum,
                                          double& sq) {
    constexpr int N1 = MaxHidden + 1;
    const int n = hidden + 1;
    double hp[N1];
#pragma unroll
    for (int k = 0; k < N1; k++) hp[k] = k < hidden ? double(hn[k < MaxHidden ? k : 0]) : (k == hidden ? 1.0 : 0.0);
    const double* G = g;
    const double* s = g + n * n;
#pragma unroll
    for (int k = 0; k < N1; k++) {
        if (k < n) {
            sum += s[k] * hp[k];
            double row = 0.5 * G[k * n + k] * hp[k];
#pragma unroll
            for (int l = k + 1; l < N1; l++)
                if (l < n) row += G[k * n + l] * hp[l];
            sq += 2.0 * row * hp[k];
        }
    }
}

// The C channel rows of one frequency row of x (channel c at src + c *
// plane, W positions) into shared memory at dst + c * pitch, asynchronously
// (the caller commits and waits): a warp per channel row, 16-byte copies
// when vec (x on 16 bytes, W and pitch multiples of 4). Runtime divisions
// per value cost more than the copies.
__device__ __forceinline__ void load_row_async(float* dst, int pitch, const float* src, int64_t plane, int C, int W,
                                               bool vec) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int c = warp; c < C; c += warps) {
        if (vec)
            for (int q = lane; q < W / 4; q += 32) cp_async16(dst + c * pitch + 4 * q, src + c * plane + 4 * q, true);
        else
            for (int w = lane; w < W; w += 32) cp_async4(dst + c * pitch + w, src + c * plane + w, true);
    }
}

// Runs f with the operand copy's pointer as its element type (__half or
// __nv_bfloat16), or a null float pointer without a copy: the kernels'
// CopyT instances.
template <typename F>
void with_copy_type(const Planes* copy, F&& f) {
    if (!copy)
        f(static_cast<float*>(nullptr));
    else if (copy->type == DType::BF16)
        f(static_cast<__nv_bfloat16*>(copy->p));
    else
        f(static_cast<__half*>(copy->p));
}

// A DConv's layers, passed to a row-resident kernel by value.
struct RowLayers {
    DConvLayerWeights layer[kDConvRowsMaxLayers];
    int count;
};

}  // namespace fastdemucs::cuda::dconv_detail
