#include "cuda/gemm.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "cuda/arena.h"
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

// The descriptors of one cuBLASLt product, destroyed with it.
struct LtProduct {
    const CublasLtApi& api;
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    explicit LtProduct(const CublasLtApi& lt) : api(lt) {}
    LtProduct(const LtProduct&) = delete;
    LtProduct& operator=(const LtProduct&) = delete;
    ~LtProduct() {
        if (d) api.cublasLtMatrixLayoutDestroy(d);
        if (b) api.cublasLtMatrixLayoutDestroy(b);
        if (a) api.cublasLtMatrixLayoutDestroy(a);
        if (desc) api.cublasLtMatmulDescDestroy(desc);
    }
    // The product's descriptor: float32 compute, op(A) = A^T or A, B as it is, `epilogue`.
    bool make_desc(cublasOperation_t trans_a, cublasLtEpilogue_t epilogue) {
        const cublasOperation_t none = CUBLAS_OP_N;
        return api.cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS &&
               api.cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof trans_a) ==
                   CUBLAS_STATUS_SUCCESS &&
               api.cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &none, sizeof none) ==
                   CUBLAS_STATUS_SUCCESS &&
               api.cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue) ==
                   CUBLAS_STATUS_SUCCESS;
    }
    // Column-major, as cuBLASLt sees row-major y [rows, out] = x [rows, in] W^T:
    // D [out, rows] = op(A) op(B) with A = W ([in, out], transposed) and B = x ([in, rows]).
    bool make(DType t, int64_t rows, int64_t in, int64_t out, const void* bias, cublasLtEpilogue_t epilogue) {
        const cudaDataType_t dt = cuda_type(t);
        return make_desc(CUBLAS_OP_T, epilogue) &&
               api.cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias) ==
                   CUBLAS_STATUS_SUCCESS &&
               api.cublasLtMatrixLayoutCreate(&a, dt, uint64_t(in), uint64_t(out), in) == CUBLAS_STATUS_SUCCESS &&
               api.cublasLtMatrixLayoutCreate(&b, dt, uint64_t(in), uint64_t(rows), in) == CUBLAS_STATUS_SUCCESS &&
               api.cublasLtMatrixLayoutCreate(&d, dt, uint64_t(out), uint64_t(rows), out) == CUBLAS_STATUS_SUCCESS;
    }
    // Column-major, as cuBLASLt sees row-major y[i] [m, n] = A [m, k] B[i] [k, n]
    // (gemm_act_lt): D[i] [n, m] (float32, ldd, items stride_d apart) =
    // B[i] ([n, k], ldb, stride_b) A ([k, m], lda, shared), no transposes.
    bool make_batched(DType t, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t stride_b,
                      int64_t ldd, int64_t stride_d, int64_t batch, cublasLtEpilogue_t epilogue) {
        const cudaDataType_t dt = cuda_type(t);
        auto layout = [&](cublasLtMatrixLayout_t* l, cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld,
                          int64_t stride) {
            const int32_t count = int32_t(batch);
            return api.cublasLtMatrixLayoutCreate(l, type, uint64_t(rows), uint64_t(cols), ld) ==
                       CUBLAS_STATUS_SUCCESS &&
                   api.cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count,
                                                        sizeof count) == CUBLAS_STATUS_SUCCESS &&
                   api.cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                                        sizeof stride) == CUBLAS_STATUS_SUCCESS;
        };
        return batch <= std::numeric_limits<int32_t>::max() && make_desc(CUBLAS_OP_N, epilogue) &&
               layout(&a, dt, n, k, ldb, stride_b) && layout(&b, dt, k, m, lda, 0) &&
               layout(&d, CUDA_R_32F, n, m, ldd, stride_d);
    }
};

// The process's cuBLASLt state: a handle per device (made on first use
// there) and the algorithm chosen per device, type, shape, epilogue and
// operand alignment (the heuristic costs host time; kept, absent where
// cuBLASLt has none). api is null where cuBLASLt cannot be loaded.
struct LtState {
    const CublasLtApi* api = nullptr;
    std::mutex mutex;
    std::map<int, cublasLtHandle_t> handles;  // null: cublasLtCreate failed on that device
    // Keyed by what the heuristic saw: device, types, shapes, strides, epilogue, operand alignments.
    std::map<std::vector<int64_t>, std::optional<cublasLtMatmulAlgo_t>> algos;

    // The current device's handle (null where there is none).
    cublasLtHandle_t handle(int device) {
        std::lock_guard<std::mutex> lock(mutex);
        auto it = handles.find(device);
        if (it == handles.end()) {
            cublasLtHandle_t h = nullptr;
            if (api->cublasLtCreate(&h) != CUBLAS_STATUS_SUCCESS) h = nullptr;
            it = handles.emplace(device, h).first;
        }
        return it->second;
    }
};

LtState& lt_state() {
    static LtState* state = [] {
        auto* s = new LtState;  // never destroyed: used until the process ends
        try {
            s->api = &blas_lt_api();
        } catch (const Error&) {
            s->api = nullptr;
        }
        return s;
    }();
    return *state;
}

// The largest power of two up to 256 that divides the address (cuBLASLt's
// heuristic otherwise assumes 256-byte aligned operands).
uint32_t alignment_of(const void* p) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    uint32_t align = 256;
    while (align > 1 && a % align != 0) align /= 2;
    return align;
}

// cuBLASLt's algorithm for `product` (operands a, b and output d at these
// addresses: their alignments join the key), chosen by its heuristic once
// per key and kept; nullopt where it has none. No workspace: these products
// are large enough without split-K.
std::optional<cublasLtMatmulAlgo_t> lt_algo(LtState& lt, cublasLtHandle_t handle, const LtProduct& product,
                                            std::vector<int64_t> key, const void* a, const void* b, const void* d) {
    const uint32_t align_a = alignment_of(a), align_b = alignment_of(b), align_d = alignment_of(d);
    key.push_back(int64_t(align_a) | int64_t(align_b) << 9 | int64_t(align_d) << 18);
    std::lock_guard<std::mutex> lock(lt.mutex);
    auto it = lt.algos.find(key);
    if (it != lt.algos.end()) return it->second;
    std::optional<cublasLtMatmulAlgo_t> chosen;
    cublasLtMatmulPreference_t pref = nullptr;
    const uint64_t no_workspace = 0;
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    auto prefer = [&](cublasLtMatmulPreferenceAttributes_t what, const void* value, size_t size) {
        return lt.api->cublasLtMatmulPreferenceSetAttribute(pref, what, value, size) == CUBLAS_STATUS_SUCCESS;
    };
    if (lt.api->cublasLtMatmulPreferenceCreate(&pref) == CUBLAS_STATUS_SUCCESS &&
        prefer(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &no_workspace, sizeof no_workspace) &&
        prefer(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof align_a) &&
        prefer(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof align_b) &&
        prefer(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d, sizeof align_d) &&
        prefer(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d, sizeof align_d) &&
        lt.api->cublasLtMatmulAlgoGetHeuristic(handle, product.desc, product.a, product.b, product.d, product.d, pref,
                                               1, &result, &found) == CUBLAS_STATUS_SUCCESS &&
        found > 0)
        chosen = result.algo;
    if (pref) lt.api->cublasLtMatmulPreferenceDestroy(pref);
    lt.algos.emplace(std::move(key), chosen);
    return chosen;
}

// The current device and its cuBLASLt handle; null where cuBLASLt is missing.
cublasLtHandle_t lt_handle(LtState& lt, int* device) {
    if (!lt.api) return nullptr;
    FD_CUDA(cudaGetDevice(device));
    return lt.handle(*device);
}

// D = A B (alpha 1, beta 0) for a product made on `handle`, with the
// heuristic's algorithm for `key` (a, b, d: cuBLASLt's A, B and D, whose
// alignments join the key). False, doing nothing, where there is none; in
// dry mode only the answer.
bool lt_matmul(const Ctx& ctx, LtState& lt, cublasLtHandle_t handle, const LtProduct& product,
               std::vector<int64_t> key, const void* a, const void* b, void* d) {
    // Dry runs see the real runs' offsets into the arena: the same alignments, the same answer.
    const std::optional<cublasLtMatmulAlgo_t> algo = lt_algo(lt, handle, product, std::move(key), a, b, d);
    if (!algo) return false;
    if (ctx.dry) return true;
    ProfileSpan span(ctx, ProfKind::Gemm);
    const float alpha = 1.0f, beta = 0.0f;
    FD_CUBLAS(lt.api->cublasLtMatmul(handle, product.desc, &alpha, a, product.a, b, product.b, &beta, d, product.d, d,
                                     product.d, &*algo, nullptr, 0, ctx.stream));
    return true;
}

// In a dry run with a record (Ctx::gemm_record): keeps `run`, the product
// writing to `out`, for prime_gemms.
void record(const Ctx& ctx, const void* out, std::function<void(const Ctx&, const GemmRecord::PointerMap&)> run) {
    if (ctx.dry && ctx.gemm_record) ctx.gemm_record->products.push_back({out, std::move(run)});
}

}  // namespace

void release_gemm_handles() {
    LtState& lt = lt_state();
    if (!lt.api) return;
    std::lock_guard<std::mutex> lock(lt.mutex);
    for (const auto& [device, handle] : lt.handles)
        if (handle && cudaSetDevice(device) == cudaSuccess) lt.api->cublasLtDestroy(handle);
    lt.handles.clear();
    cudaGetLastError();
}

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
    if (m == 0 || n == 0 || batch == 0) return;
    if (ctx.dry) {
        record(ctx, c, [=](const Ctx& run, const GemmRecord::PointerMap& map) {
            gemm_as(run, ab, trans_a, trans_b, m, n, k, alpha, {map(a.ptr), a.ld, a.stride}, {map(b.ptr), b.ld, b.stride},
                    beta, const_cast<void*>(map(c)), c_type, ldc, stride_c, batch);
        });
        return;
    }
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

bool linear_bias_as(const Ctx& ctx, const void* x, int64_t rows, int64_t in, const void* w, int64_t out,
                    const void* bias, void* y, DType yt, Act act) {
    if (ctx.gemm == DType::F32 || yt != ctx.gemm || !ctx.narrow_gemm_out || !ctx.bias_epilogue || rows <= 0 ||
        in <= 0 || out <= 0 || act == Act::Relu || (act == Act::Gelu && !ctx.gelu_epilogue))
        return false;
    LtState& lt = lt_state();
    int device = 0;
    const cublasLtHandle_t handle = lt_handle(lt, &device);
    if (!handle) return false;
    LtProduct product(*lt.api);
    const cublasLtEpilogue_t epilogue = act == Act::Gelu ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_BIAS;
    const bool done =
        product.make(yt, rows, in, out, bias, epilogue) &&
        lt_matmul(ctx, lt, handle, product, {device, int64_t(yt), rows, in, out, int64_t(epilogue), 0}, w, x, y);
    if (done)
        record(ctx, y, [=](const Ctx& run, const GemmRecord::PointerMap& map) {
            linear_bias_as(run, map(x), rows, in, map(w), out, map(bias), const_cast<void*>(map(y)), yt, act);
        });
    return done;
}

bool gemm_act_lt(const Ctx& ctx, int64_t m, int64_t n, int64_t k, const GemmOperand& a, const GemmOperand& b,
                 float* y, int64_t ldy, int64_t stride_y, int64_t batch, Act act) {
    if (ctx.gemm == DType::F32 || act != Act::Gelu || !ctx.gelu_epilogue || m <= 0 || n <= 0 || k <= 0 ||
        batch <= 0 || a.ld < k || b.ld < n || ldy < n)
        return false;
    LtState& lt = lt_state();
    int device = 0;
    const cublasLtHandle_t handle = lt_handle(lt, &device);
    if (!handle) return false;
    LtProduct product(*lt.api);
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_GELU;
    // The input (b) is cuBLASLt's A here, the weight (a) its B (make_batched).
    const bool done =
        product.make_batched(ctx.gemm, m, n, k, a.ld, b.ld, b.stride, ldy, stride_y, batch, epilogue) &&
        lt_matmul(ctx, lt, handle, product,
                  {device, int64_t(ctx.gemm), m, n, k, int64_t(epilogue), 1, a.ld, b.ld, b.stride, ldy, stride_y, batch},
                  b.ptr, a.ptr, y);
    if (done)
        record(ctx, y, [=](const Ctx& run, const GemmRecord::PointerMap& map) {
            gemm_act_lt(run, m, n, k, {map(a.ptr), a.ld, a.stride}, {map(b.ptr), b.ld, b.stride},
                        static_cast<float*>(const_cast<void*>(map(y))), ldy, stride_y, batch, act);
        });
    return done;
}

GemmLeftovers::~GemmLeftovers() { release(); }

GemmLeftovers::GemmLeftovers(GemmLeftovers&& o) noexcept
    : handles_(std::move(o.handles_)), streams_(std::move(o.streams_)), memory_(std::move(o.memory_)) {}

GemmLeftovers& GemmLeftovers::operator=(GemmLeftovers&& o) noexcept {
    if (this != &o) {
        release();
        handles_ = std::move(o.handles_);
        streams_ = std::move(o.streams_);
        memory_ = std::move(o.memory_);
    }
    return *this;
}

void GemmLeftovers::add(cublasHandle_t handle, cudaStream_t stream, void* memory) {
    try {
        // Room first, so that a failed push leaks nothing the vectors already hold.
        handles_.reserve(handles_.size() + 1);
        streams_.reserve(streams_.size() + 1);
        memory_.reserve(memory_.size() + 1);
    } catch (const std::bad_alloc&) {
        // Destroyed now instead (the caller's capture risk is smaller than a leak's).
        if (handle) {
            try {
                blas_api().cublasDestroy(handle);
            } catch (const Error&) {
            }
        }
        if (stream) cudaStreamDestroy(stream);
        if (memory) cudaFree(memory);
        cudaGetLastError();
        return;
    }
    if (handle) handles_.push_back(handle);
    if (stream) streams_.push_back(stream);
    if (memory) memory_.push_back(memory);
}

void GemmLeftovers::take(GemmLeftovers&& o) {
    for (cublasHandle_t h : o.handles_) add(h, nullptr, nullptr);
    for (cudaStream_t st : o.streams_) add(nullptr, st, nullptr);
    for (void* m : o.memory_) add(nullptr, nullptr, m);
    o.handles_.clear();
    o.streams_.clear();
    o.memory_.clear();
}

void GemmLeftovers::release() noexcept {
    if (!handles_.empty()) {
        try {
            const CublasApi& api = blas_api();
            for (cublasHandle_t h : handles_) api.cublasDestroy(h);
        } catch (const Error&) {
        }
    }
    for (cudaStream_t st : streams_) cudaStreamDestroy(st);
    for (void* m : memory_) cudaFree(m);
    handles_.clear();
    streams_.clear();
    memory_.clear();
    cudaGetLastError();
}

namespace {

// One small product with C of type c_type on a handle, stream and buffers of
// its own (the library's first use of that kind of product), which go to
// `kept`; never throws.
void first_product(const CublasApi& api, DType operand, DType c_type, GemmLeftovers& kept) {
    constexpr int n = 64;
    cublasHandle_t handle = nullptr;
    cudaStream_t stream = nullptr;
    void* buffer = nullptr;  // A, B and C one after the other
    const size_t bytes = n * n * sizeof(float);
    const bool made = api.cublasCreate(&handle) == CUBLAS_STATUS_SUCCESS &&
                      cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess &&
                      api.cublasSetStream(handle, stream) == CUBLAS_STATUS_SUCCESS &&
                      cudaMalloc(&buffer, 3 * bytes) == cudaSuccess;
    if (made) {
        char* b = static_cast<char*>(buffer);
        const float alpha = 1.0f, beta = 0.0f;
        const cudaDataType_t t = cuda_type(operand);
        api.cublasGemmStridedBatchedEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &alpha, b, t, n, 0, b + bytes, t, n,
                                       0, &beta, b + 2 * bytes, cuda_type(c_type), n, 0, 1, CUBLAS_COMPUTE_32F,
                                       CUBLAS_GEMM_DEFAULT);
        cudaStreamSynchronize(stream);
        if (trace_detailed())
            trace_point(c_type == DType::F32 ? "cuBLAS's first float32-output product (start-up thread)"
                                             : "cuBLAS's first narrow-output product (start-up thread)");
    }
    kept.add(handle, stream, buffer);
    cudaGetLastError();
}

}  // namespace

GemmLeftovers warm_up_gemm_library(DType operand) {
    GemmLeftovers kept;
    const CublasApi* api = nullptr;
    try {
        api = &blas_api();
    } catch (const Error&) {
        return kept;  // reported by the backend's own first use
    }
    // Each kind's first product costs ~45-120 ms; on two threads they overlap in part.
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess) {
        cudaGetLastError();
        return kept;
    }
    GemmLeftovers narrow_kept;
    std::thread narrow;
    if (operand != DType::F32) {
        try {
            narrow = std::thread([api, operand, device, &narrow_kept] {
                if (cudaSetDevice(device) == cudaSuccess) first_product(*api, operand, operand, narrow_kept);
                cudaGetLastError();
            });
        } catch (const std::system_error&) {
        }
    }
    first_product(*api, operand, DType::F32, kept);
    if (narrow.joinable())
        narrow.join();
    else if (operand != DType::F32)
        first_product(*api, operand, operand, kept);
    kept.take(std::move(narrow_kept));
    return kept;
}

GemmLeftovers prime_gemms(const GemmRecord& record, const Ctx& base, int device, void* arena, size_t arena_bytes,
                          size_t workspace_bytes, int threads) {
    GemmLeftovers kept;
    const char* dry = Arena::dry_base();
    // A dry arena's address: in its range and not a real allocation (a weight that happened to be there).
    auto fake = [dry, arena_bytes](const void* p) {
        const char* c = static_cast<const char*>(p);
        if (c < dry || c >= dry + arena_bytes) return false;
        cudaPointerAttributes attributes{};
        const cudaError_t err = cudaPointerGetAttributes(&attributes, p);
        cudaGetLastError();
        return err != cudaSuccess || attributes.type == cudaMemoryTypeUnregistered;
    };
    std::vector<const GemmRecord::Product*> todo;
    try {
        for (const auto& product : record.products)
            if (fake(product.out)) todo.push_back(&product);
    } catch (const std::bad_alloc&) {
        return kept;
    }
    threads = std::min({threads, 16, int(todo.size())});
    if (todo.empty() || threads < 1 || !base.blas) return kept;
    const GemmRecord::PointerMap map = [&](const void* p) -> const void* {
        return fake(p) ? static_cast<char*>(arena) + (static_cast<const char*>(p) - dry) : p;
    };
    const CublasApi* api = nullptr;
    cublasMath_t math = CUBLAS_DEFAULT_MATH;
    try {
        api = &blas_api();
    } catch (const Error&) {
        return kept;
    }
    if (api->cublasGetMathMode(base.blas, &math) != CUBLAS_STATUS_SUCCESS) return kept;
    std::vector<GemmLeftovers> made;  // each thread's, destroyed by the caller's holder
    std::vector<std::thread> pool;
    std::vector<int> not_started;  // their shares run here after this thread's own
    try {
        made.resize(static_cast<size_t>(threads));
        pool.reserve(static_cast<size_t>(threads));
        not_started.reserve(static_cast<size_t>(threads));
    } catch (const std::bad_alloc&) {
        return kept;
    }
    auto worker = [&](int index) {
        cublasHandle_t handle = nullptr;
        cudaStream_t stream = nullptr;
        void* workspace = nullptr;
        if (cudaSetDevice(device) == cudaSuccess && api->cublasCreate(&handle) == CUBLAS_STATUS_SUCCESS &&
            cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess &&
            api->cublasSetStream(handle, stream) == CUBLAS_STATUS_SUCCESS &&
            api->cublasSetMathMode(handle, math) == CUBLAS_STATUS_SUCCESS &&
            cudaMalloc(&workspace, workspace_bytes) == cudaSuccess &&
            api->cublasSetWorkspace(handle, workspace, workspace_bytes) == CUBLAS_STATUS_SUCCESS) {
            Ctx ctx = base;
            ctx.stream = stream;
            ctx.blas = handle;
            ctx.dry = false;
            ctx.arena = nullptr;
            ctx.prof = nullptr;
            ctx.gemm_record = nullptr;
            try {
                for (size_t i = size_t(index); i < todo.size(); i += size_t(threads)) todo[i]->run(ctx, map);
            } catch (const std::exception&) {
                // The capture runs this product again and reports what fails.
            }
            cudaStreamSynchronize(stream);
        }
        made[size_t(index)].add(handle, stream, workspace);
        cudaGetLastError();
    };
    for (int i = 1; i < threads; i++) {
        try {
            pool.emplace_back(worker, i);
        } catch (...) {
            not_started.push_back(i);  // (reserved: cannot throw)
        }
    }
    worker(0);
    for (int i : not_started) worker(i);
    for (auto& t : pool) t.join();
    for (auto& m : made) kept.take(std::move(m));
    return kept;
}

void linear(const Ctx& ctx, const void* x, int64_t rows, int64_t in, const void* w, int64_t out, float* y) {
    linear_as(ctx, x, rows, in, w, out, y, DType::F32);
}

void linear_as(const Ctx& ctx, const void* x, int64_t rows, int64_t in, const void* w, int64_t out, void* y,
               DType yt) {
    gemm_as(ctx, ctx.gemm, false, true, rows, out, in, 1.0f, {x, in, 0}, {w, in, 0}, 0.0f, y, yt, out, 0, 1);
}

}  // namespace fastdemucs::cuda
