// What cuBLAS's first use costs in a fresh process, on the machine at hand:
// the command's start-up waits for it (src/cuda/gemm.h: warm_up_gemm_library,
// prime_gemms). Each mode is one process; run it several times.
//   cublas_first_use classic    the classic API: the first product with C in
//                               float32, then float16, then new shapes, then a repeat
//   cublas_first_use lt         the same through cuBLASLt, heuristic and product timed apart
//   cublas_first_use threads N  the two kinds' first products on two threads
//                               (N = 1: one after the other), then 16 new shapes on N threads
//   cublas_first_use save FILE  cuBLASLt's heuristics' algorithms for a few shapes, stored;
//   cublas_first_use load FILE  in a later process, those algorithms run without a heuristic
// Operands are uninitialised device memory (their values do not matter here).
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
const Clock::time_point process_start = Clock::now();

double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

// Prints the time since the last mark and since the start.
class Marks {
public:
    void operator()(const std::string& what) {
        std::printf("%8.1f ms (+%6.1f)  %s\n", ms_since(process_start), ms_since(last_), what.c_str());
        last_ = Clock::now();
    }

private:
    Clock::time_point last_ = process_start;
};

// C [m, n] = A^T B with A [k, m] and B [k, n] in float16 (column-major), C in `out`.
struct Shape {
    int m, n, k;
    cudaDataType_t out;
    std::string name() const {
        return std::to_string(m) + "x" + std::to_string(n) + "x" + std::to_string(k) +
               (out == CUDA_R_16F ? " C f16" : " C f32");
    }
};

constexpr size_t kOperandBytes = size_t(256) << 20;
void* operands[3];

// One cuBLASLt product: its descriptors, then the heuristic's algorithm (or
// `given`), then the product on `stream`. Returns the heuristic's and the
// whole call's host milliseconds.
std::pair<double, double> lt_product(cublasLtHandle_t lt, cudaStream_t stream, const Shape& s,
                                     cublasLtMatmulAlgo_t* algo, bool given) {
    const auto start = Clock::now();
    cublasLtMatmulDesc_t desc;
    cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    const cublasOperation_t transpose = CUBLAS_OP_T;
    cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof transpose);
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatrixLayoutCreate(&a, CUDA_R_16F, s.k, s.m, s.k);
    cublasLtMatrixLayoutCreate(&b, CUDA_R_16F, s.k, s.n, s.k);
    cublasLtMatrixLayoutCreate(&c, s.out, s.m, s.n, s.m);
    double heuristic = 0;
    if (!given) {
        cublasLtMatmulPreference_t pref;
        cublasLtMatmulPreferenceCreate(&pref);
        cublasLtMatmulHeuristicResult_t result{};
        int found = 0;
        cublasLtMatmulAlgoGetHeuristic(lt, desc, a, b, c, c, pref, 1, &result, &found);
        cublasLtMatmulPreferenceDestroy(pref);
        if (found < 1) {
            std::fprintf(stderr, "cublas_first_use: no cuBLASLt algorithm for %s\n", s.name().c_str());
            std::exit(1);
        }
        *algo = result.algo;
        heuristic = ms_since(start);
    }
    const float alpha = 1, beta = 0;
    cublasLtMatmul(lt, desc, &alpha, operands[0], a, operands[1], b, &beta, operands[2], c, operands[2], c, algo,
                   nullptr, 0, stream);
    cublasLtMatrixLayoutDestroy(a);
    cublasLtMatrixLayoutDestroy(b);
    cublasLtMatrixLayoutDestroy(c);
    cublasLtMatmulDescDestroy(desc);
    return {heuristic, ms_since(start)};
}

const std::vector<Shape> kShapes = {{64, 64, 64, CUDA_R_16F},       {64, 64, 64, CUDA_R_32F},
                                    {768, 4096, 384, CUDA_R_16F},   {768, 4096, 384, CUDA_R_32F},
                                    {1536, 8192, 384, CUDA_R_16F},  {384, 2048, 1536, CUDA_R_16F},
                                    {200, 30000, 96, CUDA_R_16F},   {200, 30000, 96, CUDA_R_16F}};

void classic(Marks& mark, cudaStream_t stream) {
    cublasHandle_t handle;
    cublasCreate(&handle);
    mark("cublasCreate");
    cublasSetStream(handle, stream);
    // C float32 first, as the backend's warm-up does.
    std::vector<Shape> shapes = kShapes;
    std::swap(shapes[0], shapes[1]);
    for (const Shape& s : shapes) {
        const float alpha = 1, beta = 0;
        cublasGemmStridedBatchedEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, s.m, s.n, s.k, &alpha, operands[0], CUDA_R_16F,
                                   s.k, 0, operands[1], CUDA_R_16F, s.k, 0, &beta, operands[2], s.out, s.m, 0, 1,
                                   CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        cudaStreamSynchronize(stream);
        mark("product " + s.name());
    }
}

void lt_modes(Marks& mark, cudaStream_t stream, const std::string& mode, const char* file) {
    cublasLtHandle_t lt;
    cublasLtCreate(&lt);
    mark("cublasLtCreate");
    std::vector<cublasLtMatmulAlgo_t> algos(kShapes.size());
    const bool load = mode == "load";
    if (load) {
        FILE* f = std::fopen(file, "rb");
        if (!f || std::fread(algos.data(), sizeof(cublasLtMatmulAlgo_t), algos.size(), f) != algos.size()) {
            std::fprintf(stderr, "cannot read %s\n", file);
            std::exit(1);
        }
        std::fclose(f);
    }
    for (size_t i = 0; i < kShapes.size(); i++) {
        const auto [heuristic, total] = lt_product(lt, stream, kShapes[i], &algos[i], load);
        cudaStreamSynchronize(stream);
        char line[160];
        std::snprintf(line, sizeof line, "%s: heuristic %.1f ms, call %.1f ms", kShapes[i].name().c_str(), heuristic,
                      total);
        mark(line);
    }
    if (mode == "save") {
        FILE* f = std::fopen(file, "wb");
        if (!f || std::fwrite(algos.data(), sizeof(cublasLtMatmulAlgo_t), algos.size(), f) != algos.size()) {
            std::fprintf(stderr, "cannot write %s\n", file);
            std::exit(1);
        }
        std::fclose(f);
    }
}

// The products of shapes[0, count) spread over `threads` threads (1: this one), each with its own handle and stream.
void on_threads(int threads, size_t count, const std::vector<Shape>& shapes) {
    auto worker = [&](int index) {
        cublasLtHandle_t lt;
        cublasLtCreate(&lt);
        cudaStream_t stream;
        cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
        for (size_t i = size_t(index); i < count; i += size_t(threads)) {
            cublasLtMatmulAlgo_t algo;
            lt_product(lt, stream, shapes[i], &algo, false);
        }
        cudaStreamSynchronize(stream);
        cudaStreamDestroy(stream);
        cublasLtDestroy(lt);
    };
    std::vector<std::thread> pool;
    for (int i = 1; i < threads; i++) pool.emplace_back(worker, i);
    worker(0);
    for (auto& t : pool) t.join();
}

void threads_mode(Marks& mark, int threads) {
    on_threads(threads > 1 ? 2 : 1, 2, {kShapes[0], kShapes[1]});
    mark("the first products of both kinds on " + std::string(threads > 1 ? "two threads" : "one thread"));
    std::vector<Shape> shapes;
    const int ks[] = {48, 96, 192, 384, 768, 1536, 64, 128};
    const int ns[] = {4096, 30000, 2048, 8192};
    for (int i = 0; i < 16; i++)
        shapes.push_back({192 * (1 + i % 4), ns[i % 4], ks[i % 8], i % 3 ? CUDA_R_16F : CUDA_R_32F});
    on_threads(threads, shapes.size(), shapes);
    mark("16 new shapes on " + std::to_string(threads) + " thread(s)");
    on_threads(1, shapes.size(), shapes);
    mark("the same 16 again on one thread");
}

}  // namespace

int main(int argc, char** argv) {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode != "classic" && mode != "lt" && mode != "threads" && mode != "save" && mode != "load") {
        std::fprintf(stderr, "usage: cublas_first_use classic | lt | threads N | save FILE | load FILE\n");
        return 2;
    }
    if ((mode == "threads" || mode == "save" || mode == "load") && argc < 3) {
        std::fprintf(stderr, "cublas_first_use %s: an argument is missing\n", mode.c_str());
        return 2;
    }
    Marks mark;
    if (cudaFree(nullptr) != cudaSuccess) {
        std::fprintf(stderr, "cublas_first_use: no CUDA device\n");
        return 1;
    }
    mark("CUDA context");
    for (void*& p : operands)
        if (cudaMalloc(&p, kOperandBytes) != cudaSuccess) {
            std::fprintf(stderr, "cublas_first_use: out of GPU memory\n");
            return 1;
        }
    cudaStream_t stream;
    cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
    mark("operands and stream");
    if (mode == "classic")
        classic(mark, stream);
    else if (mode == "threads")
        threads_mode(mark, std::max(1, std::atoi(argv[2])));
    else
        lt_modes(mark, stream, mode, argc > 2 ? argv[2] : nullptr);
    const cudaError_t err = cudaStreamSynchronize(stream);
    if (err != cudaSuccess) {
        std::fprintf(stderr, "cublas_first_use: %s\n", cudaGetErrorString(err));
        return 1;
    }
    return 0;
}
