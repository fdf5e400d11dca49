// FASTDEMUCS_PROFILE=1: per-block timing of the forward with CUDA events
// (eager mode only: graphs are off while profiling). The walk marks the
// start of each top-level block (stft, encoder.i, tencoder.i, the
// transformer's layers, decoder.i, tdecoder.i, istft); cuBLAS calls, the
// attention core and cuFFT executions are bracketed by their own events, so
// the table also splits each block into GEMM / attention / FFT / other
// kernels. At the end of each forward the table goes to stderr. Timings of
// the bracketed calls include the event records (a few microseconds each).
#pragma once

#include <string>
#include <vector>

#include "cuda/common.h"

namespace fastdemucs::cuda {

enum class ProfKind { Gemm = 0, Attention = 1, Fft = 2 };

class Profiler {
public:
    Profiler() = default;
    ~Profiler();
    Profiler(const Profiler&) = delete;
    Profiler& operator=(const Profiler&) = delete;

    void begin_forward(cudaStream_t stream, int64_t batch);
    // A new top-level block starts here (the previous one ends).
    void block(cudaStream_t stream, const std::string& name);
    void span_begin(cudaStream_t stream, ProfKind kind);
    void span_end(cudaStream_t stream);
    // Waits for the stream, prints the table to stderr.
    void end_forward(cudaStream_t stream);

private:
    cudaEvent_t event();
    struct Mark {
        std::string name;
        cudaEvent_t at;
    };
    struct Span {
        size_t block;
        ProfKind kind;
        cudaEvent_t begin, end;
    };
    std::vector<cudaEvent_t> pool_;
    size_t used_ = 0;
    std::vector<Mark> blocks_;
    std::vector<Span> spans_;
    bool open_span_ = false;
    int depth_ = 0;
    int64_t batch_ = 0;
    cudaEvent_t start_ = nullptr;
};

// Brackets a library call / kernel in the context's profiler (if any).
class ProfileSpan {
public:
    ProfileSpan(const Ctx& ctx, ProfKind kind);
    ~ProfileSpan();
    ProfileSpan(const ProfileSpan&) = delete;
    ProfileSpan& operator=(const ProfileSpan&) = delete;

private:
    Profiler* prof_ = nullptr;
    cudaStream_t stream_ = nullptr;
};

// Marks the start of a top-level block (no-op without a profiler or in dry mode).
void profile_block(const Ctx& ctx, const std::string& name);

}  // namespace fastdemucs::cuda
