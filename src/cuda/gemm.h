// Row-major GEMM on cuBLAS: C = alpha * op(A) op(B) + beta * C, with A and B
// in the operand type (float32, or float16 / bfloat16 on tensor cores) and C
// float32 (or, with gemm_as, the operand type: a result that only a
// memory-bound pass reads, rounded once as the official autocast rounds
// every convolution's output), accumulated in float32 (CUBLAS_COMPUTE_32F:
// no TF32).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "cuda/common.h"

namespace fastdemucs::cuda {

struct GemmOperand {
    const void* ptr = nullptr;
    int64_t ld = 0;      // row stride (row-major)
    int64_t stride = 0;  // between batch items (0 = shared)
};

// op(A) is [m, k], op(B) is [k, n], C is [m, n] with row stride ldc; `batch`
// independent products with the given strides. Does nothing in dry mode.
void gemm(const Ctx& ctx, DType ab, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
          const GemmOperand& a, const GemmOperand& b, float beta, float* c, int64_t ldc, int64_t stride_c,
          int64_t batch = 1);

// The same with C of type c_type (F32, or ab itself).
void gemm_as(const Ctx& ctx, DType ab, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
             const GemmOperand& a, const GemmOperand& b, float beta, void* c, DType c_type, int64_t ldc,
             int64_t stride_c, int64_t batch = 1);

// y [rows, out] = x [rows, in] W^T, W [out, in] as nn.Linear stores it (no bias).
void linear(const Ctx& ctx, const void* x, int64_t rows, int64_t in, const void* w, int64_t out, float* y);
// The same with y of type yt (F32 or the operand type).
void linear_as(const Ctx& ctx, const void* x, int64_t rows, int64_t in, const void* w, int64_t out, void* y,
               DType yt);

// y [rows, out] (type yt: the operand type) = x [rows, in] W^T + bias in
// one cuBLASLt product with its bias epilogue (the bias added to the float32
// accumulator, y rounded once), for float16 / bfloat16 with
// ctx.narrow_gemm_out and ctx.bias_epilogue: the separate bias pass read and
// wrote y again (the transformer's q / k / v projections: 0.28 ms of a
// forward of 8 chunks).
// `bias` in yt (the operand-type image of the weights). act = Gelu (with
// ctx.gelu_epilogue) applies cuBLASLt's GELU in the same epilogue: its tanh
// form, which differs from the exact erf form that nn.GELU computes by at
// most ~5e-4 (near x = -2.7, where GELU is -0.009: a bias on small negative
// outputs, below a float16 step of the values the next product sums), so
// float16 / bfloat16 only; measured on the full6s fixtures: within 0.1 dB. Returns false, doing nothing, where that does not apply
// (float32, Relu, cuBLASLt missing or without an algorithm for the shape:
// the same answer in dry and real runs).
bool linear_bias_as(const Ctx& ctx, const void* x, int64_t rows, int64_t in, const void* w, int64_t out,
                    const void* bias, void* y, DType yt, Act act = Act::None);

// y[i] [m, n] (float32, row stride ldy, items stride_y apart) =
// GELU(A [m, k] B[i] [k, n]) for the `batch` items of b (A shared: a.stride
// is ignored) in one cuBLASLt product with the GELU in its epilogue (its tanh
// form, as linear_bias_as says): the convolutions whose bias the GEMM
// carries (conv.h). float16 / bfloat16 with ctx.gelu_epilogue, act = Gelu
// only. Returns false, doing nothing, where that does not apply or cuBLASLt
// has no algorithm (the same answer in dry and real runs). (cuBLASLt's bias
// epilogue runs along n here, the wrong way, and with row-major layouts,
// which would turn it, cuBLAS 13 declines every epilogue: NOT_SUPPORTED.)
bool gemm_act_lt(const Ctx& ctx, int64_t m, int64_t n, int64_t k, const GemmOperand& a, const GemmOperand& b,
                 float* y, int64_t ldy, int64_t stride_y, int64_t batch, Act act);

// The cuBLAS handles, streams and device memory a warm-up or a prime made,
// destroyed with this object. Why not at once: cublasDestroy synchronises
// the device, which breaks a graph capture running on another thread (cuDNN's
// warm plan loads capture one), so the caller lets them go once no such
// capture can be running. Never throws.
class GemmLeftovers {
public:
    GemmLeftovers() = default;
    ~GemmLeftovers();
    GemmLeftovers(GemmLeftovers&& o) noexcept;
    GemmLeftovers& operator=(GemmLeftovers&& o) noexcept;
    GemmLeftovers(const GemmLeftovers&) = delete;
    GemmLeftovers& operator=(const GemmLeftovers&) = delete;

    void add(cublasHandle_t handle, cudaStream_t stream, void* memory);  // null members are skipped
    void take(GemmLeftovers&& o);  // o's, destroyed with this one

private:
    void release() noexcept;
    std::vector<cublasHandle_t> handles_;
    std::vector<cudaStream_t> streams_;
    std::vector<void*> memory_;
};

// cuBLAS's first product of each kind in a process costs host time (H200,
// cuBLAS 13: ~85-120 ms for C in float16, ~45-60 ms for C in float32, in the
// heuristic or the product, whichever comes first: a stored algorithm does
// not skip it), and each new kernel ~2.5 ms more. This runs a small product
// of both kinds the backend uses (C float32 and C in the operand type), each
// on a thread, handle and stream of its own (together ~25 % shorter than one
// after the other), so that a start-up thread pays the first costs while the
// model is read. Needs the device's context current; never throws. Its
// handles, streams and buffers come back (GemmLeftovers says why).
GemmLeftovers warm_up_gemm_library(DType operand);

// The matrix products a dry forward met (Ctx::gemm_record), to run once
// before the forward is captured. cuBLAS loads each kernel the first time it
// runs (~2.5 ms of host time apiece on the H200, ~40 % faster on 4 threads
// than on one), and a capture pays those loads one after another on its
// thread with the GPU idle.
struct GemmRecord {
    // Addresses as the dry run saw them (its arena's fake ones, and real weights).
    using PointerMap = std::function<const void*(const void*)>;
    struct Product {
        const void* out = nullptr;  // where it writes (prime_gemms runs only those writing into the arena)
        std::function<void(const Ctx&, const PointerMap&)> run;
    };
    std::vector<Product> products;
};

// Runs each recorded product that writes into the dry arena once on device
// `device`, with the dry arena's addresses [Arena::dry_base(), +
// arena_bytes) moved to `arena` (which holds at least that much and nothing
// live: the products read and write garbage there; an address there that is
// a real allocation is left as it is), on `threads` threads (at most 16) with a
// cuBLAS handle, stream and workspace of `workspace_bytes` each (the sizes
// and math mode the capture's handle has, so that cuBLAS picks the same
// kernels), and waits for them. Never throws: what fails is left to the
// capture. The threads' handles, streams and workspaces come back.
GemmLeftovers prime_gemms(const GemmRecord& record, const Ctx& base, int device, void* arena, size_t arena_bytes,
                          size_t workspace_bytes, int threads);

// Destroys the process's cuBLASLt handles (one per device, made on first
// use): release_gpus() calls it before it resets the devices, whose contexts
// the handles were made in; the next product makes a new one. The algorithms
// chosen stay (they depend on shapes, not on a context).
void release_gemm_handles();

// With FASTDEMUCS_TRACE=2: host seconds spent inside cuBLAS calls so far
// (its heuristics run on the first call of each shape), for the start-up trace.
double gemm_host_seconds();

}  // namespace fastdemucs::cuda
