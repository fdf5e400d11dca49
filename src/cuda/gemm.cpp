#include "cuda/gemm.h"

#include <atomic>
#include <chrono>
#include <limits>
#include <string>

#include "cuda/libraries.h"
#include "cuda/profile.h"
#include "engine/trace.h"
#include "error.h"

namespace fastdemucs::cuda {
namespace {

cudaDataType_t cuda_type(DType t) {
    switch (t) {
        case DType::F32: return CUDA_R_32F;
        case DType::F16: return CUDA_R_16F;
        case DType::BF16: return CUDA_R_16BF;
    }
    return CUDA_R_32F;
}

int as_int(int64_t v, const char* what) {
    if (v < 0 || v > std::numeric_limits<int>::max())
        throw Error(std::string("GEMM dimension out of range for cuBLAS: ") + what + " = " + std::to_string(v));
    return static_cast<int>(v);
}

std::atomic<int64_t> g_gemm_host_ns{0};

}  // namespace

double gemm_host_seconds() { return 1e-9 * double(g_gemm_host_ns.load()); }

void gemm(const Ctx& ctx, DType ab, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
          const GemmOperand& a, const GemmOperand& b, float beta, float* c, int64_t ldc, int64_t stride_c,
          int64_t batch) {
    gemm_as(ctx, ab, trans_a, trans_b, m, n, k, alpha, a, b, beta, c, DType::F32, ldc, stride_c, batch);
}

void gemm_as(const Ctx& ctx, DType ab, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
             const GemmOperand& a, const GemmOperand& b, float beta, void* c, DType c_type, int64_t ldc,
             int64_t stride_c, int64_t batch) {
    if (c_type != DType::F32 && c_type != ab) throw Error("internal error: GEMM output type");
    // Row-major sanity: the leading dimensions must cover a row.
    if (a.ld < (trans_a ? m : k) || b.ld < (trans_b ? k : n) || ldc < n)
        throw Error("internal error: GEMM leading dimension too small");
    if (ctx.dry || m == 0 || n == 0 || batch == 0) return;
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
    const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cudaDataType_t t = cuda_type(ab);
    if (k == 0) throw Error("internal error: GEMM with k = 0");
    ProfileSpan span(ctx, ProfKind::Gemm);
    const bool timed = trace_detailed();
    const auto start = timed ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point();
    FD_CUBLAS(blas_api().cublasGemmStridedBatchedEx(ctx.blas, op_b, op_a, as_int(n, "n"), as_int(m, "m"), as_int(k, "k"), &alpha,
                                         b.ptr, t, as_int(b.ld, "ldb"), b.stride, a.ptr, t, as_int(a.ld, "lda"),
                                         a.stride, &beta, c, cuda_type(c_type), as_int(ldc, "ldc"), stride_c,
                                         as_int(batch, "batch"), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (timed)
        g_gemm_host_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start)
                              .count();
}

void warm_up_gemm_library(DType operand) {
    const CublasApi* api = nullptr;
    try {
        api = &blas_api();
    } catch (const Error&) {
        return;  // reported by the backend's own first use
    }
    constexpr int n = 64;
    cublasHandle_t handle = nullptr;
    cudaStream_t stream = nullptr;
    void* buffers[3] = {nullptr, nullptr, nullptr};
    if (api->cublasCreate(&handle) == CUBLAS_STATUS_SUCCESS &&
        cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess &&
        api->cublasSetStream(handle, stream) == CUBLAS_STATUS_SUCCESS) {
        bool allocated = true;
        for (void*& b : buffers) allocated = allocated && cudaMalloc(&b, n * n * sizeof(float)) == cudaSuccess;
        if (allocated) {
            const float alpha = 1.0f, beta = 0.0f;
            const cudaDataType_t t = cuda_type(operand);
            for (const DType c_type : {DType::F32, operand})
                api->cublasGemmStridedBatchedEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &alpha, buffers[0], t, n,
                                                0, buffers[1], t, n, 0, &beta, buffers[2], cuda_type(c_type), n, 0, 1,
                                                CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
            cudaStreamSynchronize(stream);
        }
    }
    for (void* b : buffers)
        if (b) cudaFree(b);
    if (handle) api->cublasDestroy(handle);
    if (stream) cudaStreamDestroy(stream);
    cudaGetLastError();
}

void linear(const Ctx& ctx, const void* x, int64_t rows, int64_t in, const void* w, int64_t out, float* y) {
    linear_as(ctx, x, rows, in, w, out, y, DType::F32);
}

void linear_as(const Ctx& ctx, const void* x, int64_t rows, int64_t in, const void* w, int64_t out, void* y,
               DType yt) {
    gemm_as(ctx, ctx.gemm, false, true, rows, out, in, 1.0f, {x, in, 0}, {w, in, 0}, 0.0f, y, yt, out, 0, 1);
}

}  // namespace fastdemucs::cuda
