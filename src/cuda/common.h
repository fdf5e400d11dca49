// Shared pieces of the CUDA backend: error checking that turns every failed
// CUDA / cuBLAS / cuFFT call into a one-line fastdemucs::Error, the element
// types of GEMM operands, and the execution context every op receives.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cufft.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace fastdemucs::cuda {

[[noreturn]] void fail_cuda(cudaError_t err, const char* expr, const char* file, int line);
[[noreturn]] void fail_cublas(cublasStatus_t status, const char* expr, const char* file, int line);
[[noreturn]] void fail_cufft(cufftResult status, const char* expr, const char* file, int line);

#define FD_CUDA(expr)                                                                      \
    do {                                                                                   \
        const cudaError_t fd_err_ = (expr);                                                \
        if (fd_err_ != cudaSuccess) ::fastdemucs::cuda::fail_cuda(fd_err_, #expr, __FILE__, __LINE__); \
    } while (0)
#define FD_CUBLAS(expr)                                                                    \
    do {                                                                                   \
        const cublasStatus_t fd_st_ = (expr);                                              \
        if (fd_st_ != CUBLAS_STATUS_SUCCESS) ::fastdemucs::cuda::fail_cublas(fd_st_, #expr, __FILE__, __LINE__); \
    } while (0)
#define FD_CUFFT(expr)                                                                     \
    do {                                                                                   \
        const cufftResult fd_st_ = (expr);                                                 \
        if (fd_st_ != CUFFT_SUCCESS) ::fastdemucs::cuda::fail_cufft(fd_st_, #expr, __FILE__, __LINE__); \
    } while (0)
// After every kernel launch: configuration errors surface here.
#define FD_LAUNCH_CHECK() FD_CUDA(cudaGetLastError())

// Element type of GEMM operands (weights and the activation copies fed to
// cuBLAS / attention). Everything else is float32.
enum class DType { F32, F16, BF16 };
size_t dtype_bytes(DType t);
const char* dtype_name(DType t);
// p + n elements of type t.
inline const void* offset(const void* p, int64_t n, DType t) {
    return static_cast<const char*>(p) + n * static_cast<int64_t>(dtype_bytes(t));
}
inline void* offset(void* p, int64_t n, DType t) { return static_cast<char*>(p) + n * static_cast<int64_t>(dtype_bytes(t)); }

enum class Act { None, Gelu, Relu };

// Where a [B, C, H, W] result is stored: a row of `ld` values of type `type`
// per (b, c) plane. The activations are float32 with ld = H * W; a GEMM
// operand is float16 / bfloat16 with its padded row stride (operand_ld in
// cuda/conv.h). A producer whose result a GEMM reads next writes that
// operand as well (the DConv's last pass), which saves a conversion pass
// reading the float32 result back (the same values, rounded once).
struct Planes {
    void* p = nullptr;
    DType type = DType::F32;
    int64_t ld = 0;
};

class Arena;
class CudnnAttention;
class Profiler;
struct GemmRecord;

// What every op needs. With `dry` set nothing is launched: ops only take
// their buffers from the arena, which then measures the forward's peak
// memory without touching the GPU.
struct Ctx {
    cudaStream_t stream = nullptr;
    cublasHandle_t blas = nullptr;
    DType gemm = DType::F32;
    Arena* arena = nullptr;
    bool dry = false;
    bool fused_attention = true;
    CudnnAttention* cudnn_attention = nullptr;  // float16 / bfloat16 attention through cuDNN first (cuda/cudnn_attention.h)
    bool tensor_core_attention = true;  // float16 / bfloat16 fused attention on mma.sync (else the SIMT kernel)
    bool pipelined_attention = true;    // float16: the cp.async / ldmatrix kernel (else version 1, as bfloat16)
    bool shifted_conv = false;          // stride-1 multi-tap convs as shifted GEMMs (else im2col + one GEMM)
    bool implicit_conv = false;         // float16 / bfloat16 convs as implicit GEMMs (cuda/implicit_conv.h)
    bool conv_glu = true;               // float16 / bfloat16 rewrites + GLU as one implicit GEMM (cuda/conv_glu.h)
    bool conv_glu_wgmma = false;        // conv_glu's convolution on wgmma (compute capability 9.0: conv_glu_wgmma.h)
    bool conv1x1_glu_wgmma = false;     // the encoders' 1x1 rewrites + GLU from the DConv's operand copy, the same
    bool thin_dconv = true;             // DConv layers with hidden <= 32 in three fused passes (cuda/dconv.h)
    bool dconv_rows = true;             // whole DConvs with the row in shared memory where it fits (dconv_rows)
    bool tensor_core_dconv = true;      // float16 / bfloat16: the thin DConv's convolutions on mma.sync (cuda/dconv.h)
    // ... with the in-convolution's hidden tiles and the apply pass's channels split among several
    // warps of 32 positions at hidden > 16 (cuda/dconv.cu).
    bool dconv_split_warps = true;
    bool decoder_writes_spectrum = true;  // the last frequency decoder straight into the iSTFT's input (no z)
    // The frequency decoders' transposed convs written there (and into the next rewrite's packed input) by
    // tensor-core kernels of their own, no columns (cuda/freq_transposed.h).
    bool freq_transposed_mma = true;
    bool bias_epilogue = true;  // float16 / bfloat16 linear layers' biases in cuBLASLt's epilogue (gemm.h)
    // The encoders' im2col convolutions with the bias carried by the GEMM (conv.cpp: conv2d_biased).
    bool biased_conv = true;
    // The time branch's first convolution in float16 / bfloat16 straight from its input (cuda/direct_conv.h).
    bool direct_conv = true;
    // The second frequency encoder's convolution as an implicit GEMM on mma.sync (cuda/freq_encoder_conv.h).
    bool freq_encoder_mma = false;
    // im2col of the 3x3 convolutions nine column rows a thread (kernels.cu: im2col_3x3_kernel).
    bool im2col_3x3 = true;
    // The frequency embedding added by the first encoder's GLU pass (not a pass of its own).
    bool fuse_freq_embedding = true;
    bool gelu_epilogue = true;  // ... and the feed-forward's GELU too, in its tanh form (gemm.h: linear_bias_as)
    bool pack_from_columns = true;  // a frequency decoder's columns straight into the next rewrite's packed input
    bool pack_time_columns = true;  // ... and a time decoder's (conv_glu.h: pack_columns_w)
    // float16 / bfloat16: GEMM results that only a memory-bound pass reads (the
    // transposed convolutions' columns, the rewrite convolutions before their
    // GLU) stored in the operand type (else float32).
    bool narrow_gemm_out = true;
    Profiler* prof = nullptr;  // FASTDEMUCS_PROFILE (eager forwards only)
    GemmRecord* gemm_record = nullptr;  // dry runs: the products met, for prime_gemms (cuda/gemm.h)
};

// Environment switches ("1", "true", "yes", "on" are true).
bool env_flag(const char* name);
std::string env_string(const char* name);

// Free / total device memory in bytes of the current device.
void device_memory(size_t* free_bytes, size_t* total_bytes);
inline double mib(size_t bytes) { return double(bytes) / (1024.0 * 1024.0); }

// RAII device allocation; a failure throws "out of GPU memory: need X MiB for WHAT, Y MiB free".
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    DeviceBuffer(size_t bytes, const std::string& what);
    ~DeviceBuffer();
    DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr, o.bytes_ = 0; }
    DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;

    void* get() const { return ptr_; }
    template <typename T>
    T* as() const { return static_cast<T*>(ptr_); }
    size_t bytes() const { return bytes_; }
    void reset();

private:
    void* ptr_ = nullptr;
    size_t bytes_ = 0;
};

// Synchronous host -> device copy into a fresh buffer.
DeviceBuffer upload(const void* host, size_t bytes, const std::string& what);

}  // namespace fastdemucs::cuda
