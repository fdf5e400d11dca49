// Device-side helpers shared by the .cu files: typed loads/stores, the
// activations, grid sizing and the DType dispatch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "cuda/common.h"

namespace fastdemucs::cuda {

constexpr int kThreads = 256;

// The multiprocessors of the device current at the first call (128 where
// none answers), asked once.
inline int64_t multiprocessors() {
    static const int64_t sms = [] {
        int device = 0, n = 0;
        if (cudaGetDevice(&device) != cudaSuccess ||
            cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || n <= 0) {
            cudaGetLastError();
            n = 128;
        }
        return int64_t(n);
    }();
    return sms;
}

// Blocks to launch for grid-stride loops: 16 per multiprocessor (a few
// waves of resident blocks). One block per 256 values instead made the
// block scheduler the limit of every element-wise kernel: ~250 G values/s
// on an H100 whatever the kernel did, a quarter of its memory bandwidth.
inline int64_t max_blocks() { return multiprocessors() * 16; }

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

// Blocks for a grid-stride loop over n elements.
inline unsigned grid_for(int64_t n, int threads = kThreads) {
    const int64_t blocks = (n + threads - 1) / threads;
    return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(blocks, max_blocks())));
}

// Grid for a loop over rows (grid y) x columns (grid x, kThreads a block).
inline dim3 grid_2d(int64_t rows, int64_t cols) {
    const int64_t gx = std::max<int64_t>(1, std::min<int64_t>((cols + kThreads - 1) / kThreads, max_blocks()));
    const int64_t gy = std::max<int64_t>(1, std::min<int64_t>({rows, std::max<int64_t>(1, max_blocks() / gx), 65535}));
    return dim3(unsigned(gx), unsigned(gy));
}

#define FD_GRID_STRIDE(i, n) \
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
    return v;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
    return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// Eight consecutive values at a 16-byte-aligned p (two loads in float32):
// 2-byte scalar loads leave a memory-bound kernel bound by its load
// instructions instead, at about a third of the bandwidth.
constexpr int kVec = 8;
__device__ __forceinline__ void load8(const float* p, float (&v)[kVec]) {
    const float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
template <typename T>
__device__ __forceinline__ void load8(const T* p, float (&v)[kVec]) {  // __half or __nv_bfloat16
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < kVec; i++) v[i] = to_float(e[i]);
}
__device__ __forceinline__ void store8(float* p, const float (&v)[kVec]) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
    *reinterpret_cast<float4*>(p + 4) = make_float4(v[4], v[5], v[6], v[7]);
}
template <typename T>
__device__ __forceinline__ void store8(T* p, const float (&v)[kVec]) {
    uint4 raw;
    T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int i = 0; i < kVec; i++) e[i] = from_float<T>(v[i]);
    *reinterpret_cast<uint4*>(p) = raw;
}
// Four values at an 8-byte-aligned p, converted to T (__half or __nv_bfloat16).
template <typename T>
__device__ __forceinline__ void store4(T* p, float4 v) {
    uint2 raw;
    T* e = reinterpret_cast<T*>(&raw);
    e[0] = from_float<T>(v.x), e[1] = from_float<T>(v.y), e[2] = from_float<T>(v.z), e[3] = from_float<T>(v.w);
    *reinterpret_cast<uint2*>(p) = raw;
}
// Whether p is 16-byte aligned (vector loads / stores above).
inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// GELU with the exact erf, as nn.GELU() / F.gelu default.
__device__ __forceinline__ float gelu_exact(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

// GLU's a * sigmoid(g) with the hardware exp2 and reciprocal (a few ulp,
// far below the 80 dB contract): the full-precision expf and division were
// most of the instructions of the DConv's memory-bound apply pass, which
// they made issue-bound. For g -> -inf the quotient goes to 0 (a / inf).
__device__ __forceinline__ float glu_value(float a, float g) { return __fdividef(a, 1.0f + __expf(-g)); }

__device__ __forceinline__ float activate(float x, Act act) {
    if (act == Act::Gelu) return gelu_exact(x);
    if (act == Act::Relu) return fmaxf(x, 0.0f);
    return x;
}

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
__device__ __forceinline__ double block_sum(double v, double* shared32) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();  // shared32 may still be read from a previous call
    if (lane == 0) shared32[warp] = v;
    __syncthreads();
    double t = lane < warps ? shared32[lane] : 0.0;
    return warp_sum(t);
}

__device__ __forceinline__ float block_max(float v, float* shared32) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) shared32[warp] = v;
    __syncthreads();
    float t = lane < warps ? shared32[lane] : -INFINITY;
    return warp_max(t);
}

// D += A B on the tensor cores, mma.sync.m16n8k16 with float32 accumulation
// (operands float16 or bfloat16; fragment layouts as in the PTX ISA: lane
// (g = lane / 4, t = lane % 4) holds A rows g and g + 8, columns 2t, 2t + 1,
// 2t + 8, 2t + 9 in a[0..3] = {(g, 2t..), (g + 8, 2t..), (g, 2t + 8..),
// (g + 8, 2t + 8..)}; B column g, rows 2t.. in b0 and 2t + 8.. in b1; D rows
// g and g + 8, columns 2t, 2t + 1 in d[0..1] and d[2..3]).
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma_m16n8k16<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma_m16n8k16<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                      uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Bit-level views of 16-bit values (no type punning through pointers); on
// the host too, where the fragment tables are built.
__host__ __device__ __forceinline__ uint16_t bits16(__half v) { return __half_as_ushort(v); }
__host__ __device__ __forceinline__ uint16_t bits16(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }
// Two 16-bit values in one register, lo in the low half (the lower column / row of a fragment).
__host__ __device__ __forceinline__ uint32_t pack16(uint16_t lo, uint16_t hi) {
    return uint32_t(lo) | (uint32_t(hi) << 16);
}

__host__ __device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
    return pack16(bits16(__float2half_rn(lo)), bits16(__float2half_rn(hi)));
}

// Asynchronous global -> shared copies (sm_80 and later): 4 or 16 bytes,
// zero-filled when !valid (src is then not read but must be a valid address).
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
    const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int Pending>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending));
}

// ldmatrix: 8x8 tiles of 16-bit values from shared memory into mma.sync
// fragments; each of the tiles' rows is a 16-byte-aligned address given by
// lanes 8 * tile + row (.trans: the tiles transposed).
__device__ __forceinline__ void ldmatrix_x2(uint32_t& r0, uint32_t& r1, const void* row) {
    const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r0), "=r"(r1) : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3, const void* row) {
    const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3,
                                                  const void* row) {
    const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(a));
}

// Runs BODY with T bound to the C++ type of dtype.
#define FD_DISPATCH(dtype, T, ...)              \
    switch (dtype) {                            \
        case ::fastdemucs::cuda::DType::F32: {  \
            using T = float;                    \
            __VA_ARGS__;                        \
            break;                              \
        }                                       \
        case ::fastdemucs::cuda::DType::F16: {  \
            using T = __half;                   \
            __VA_ARGS__;                        \
            break;                              \
        }                                       \
        case ::fastdemucs::cuda::DType::BF16: { \
            using T = __nv_bfloat16;            \
            __VA_ARGS__;                        \
            break;                              \
        }                                       \
    }

}  // namespace fastdemucs::cuda

// Element-wise kernels index with I = uint32_t when every index fits (every
// per-batch activation does): a 64-bit division by a runtime value is a
// long software sequence, a 32-bit one a few instructions.
#define FD_INDEX_DISPATCH(n, I, ...)               \
    if ((n) < (int64_t(1) << 31)) {                \
        using I = uint32_t;                        \
        __VA_ARGS__;                               \
    } else {                                       \
        using I = int64_t;                         \
        __VA_ARGS__;                               \
    }

// Division by a value fixed at launch. Element-wise kernels turn flat
// indices into coordinates with several divisions per value; a 32-bit
// division by a runtime value is ~20 instructions, a multiply-high by a
// precomputed magic number (Granlund & Montgomery) two. Divisor<uint32_t>
// holds the magic (exact for every n < 2^32: the add is done in 64 bits),
// Divisor<int64_t> divides plainly (tensors past 2^31 values, rare).
template <typename I>
struct Divisor;

template <>
struct Divisor<uint32_t> {
    uint32_t d = 1, magic = 0, shift = 0;
    Divisor() = default;
    explicit Divisor(int64_t divisor) : d(uint32_t(divisor > 0 ? divisor : 1)) {
        while (shift < 32 && (uint64_t(1) << shift) < d) shift++;
        magic = uint32_t(((uint64_t(1) << 32) * ((uint64_t(1) << shift) - d)) / d + 1);
    }
    __device__ __forceinline__ uint32_t div(uint32_t n) const {
        return uint32_t((uint64_t(__umulhi(n, magic)) + n) >> shift);
    }
    __device__ __forceinline__ uint32_t mod(uint32_t n) const { return n - div(n) * d; }
    __host__ __device__ __forceinline__ uint32_t value() const { return d; }
};

template <>
struct Divisor<int64_t> {
    int64_t d = 1;
    Divisor() = default;
    explicit Divisor(int64_t divisor) : d(divisor > 0 ? divisor : 1) {}
    __device__ __forceinline__ int64_t div(int64_t n) const { return n / d; }
    __device__ __forceinline__ int64_t mod(int64_t n) const { return n % d; }
    __host__ __device__ __forceinline__ int64_t value() const { return d; }
};

// A grid-stride loop over [0, total) that loads U elements (load(i)) before
// it stores any of them (store(i, value)): U independent loads in flight
// per thread. With one load in flight per thread, every memory-bound kernel
// here topped out near 1 TB/s on an H100 (Little's law: ~270 K resident
// threads x 4 bytes / ~1 us latency).
template <int U, typename I, typename Load, typename Store>
__device__ __forceinline__ void grid_stride_batched(I total, Load load, Store store) {
    const I stride = I(gridDim.x) * I(blockDim.x);
    for (I base = I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x); base < total; base += I(U) * stride) {
        decltype(load(base)) v[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const I i = base + I(u) * stride;
            if (i < total) v[u] = load(i);
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const I i = base + I(u) * stride;
            if (i < total) store(i, v[u]);
        }
    }
}
constexpr int kUnroll = 4;

#define FD_GRID_STRIDE_I(I, i, n) \
    for (I i = I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x); i < I(n); i += I(gridDim.x) * I(blockDim.x))
