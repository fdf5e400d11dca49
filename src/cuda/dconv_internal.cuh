// What the DConv's kernel files share (cuda/dconv.cu: the three passes and
// the float32 row-resident kernel; cuda/dconv_rows_tc.cu: the row-resident
// kernel on the tensor cores): the norm's arithmetic, float16 saturation,
// the shared-memory opt-in. Internal to those files.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>

#include "cuda/common.h"
#include "cuda/dconv.h"

namespace fastdemucs::cuda::dconv_detail {

constexpr float kNormEps = 1e-5f;  // the DConv's GroupNorms (PyTorch's default)

// Static plus dynamic shared memory a block may opt in to on the current
// device (less on some GPUs: sm_75 64 KB); sm_90's 227 KB when no device
// answers (CPU-only builds and tests ask only whether a shape fits).
inline size_t optin_smem() {
    int device = 0, optin = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
        cudaGetLastError();
        return 227 * 1024;
    }
    return size_t(optin);
}

// Launch configuration of a kernel with `bytes` of dynamic shared memory
// (set on every launch: the attribute belongs to the context, which
// release_gpus() may have replaced; always, since static and dynamic
// memory together must stay under the 48 KB default without it).
template <typename Kernel>
void allow_shared(Kernel kernel, size_t bytes) {
    FD_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

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

// A DConv's layers, passed to a row-resident kernel by value.
struct RowLayers {
    DConvLayerWeights layer[kDConvRowsMaxLayers];
    int count;
};

}  // namespace fastdemucs::cuda::dconv_detail
