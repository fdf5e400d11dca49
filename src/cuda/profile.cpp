#include "cuda/profile.h"

#include <cstdio>
#include <map>

#include "engine/trace.h"

namespace fastdemucs::cuda {

Profiler::~Profiler() {
    for (auto e : pool_) cudaEventDestroy(e);
}

cudaEvent_t Profiler::event() {
    if (used_ == pool_.size()) {
        cudaEvent_t e = nullptr;
        FD_CUDA(cudaEventCreate(&e));
        pool_.push_back(e);
    }
    return pool_[used_++];
}

void Profiler::begin_forward(cudaStream_t stream, int64_t batch) {
    used_ = 0;
    blocks_.clear();
    spans_.clear();
    open_span_ = false;
    depth_ = 0;
    batch_ = batch;
    start_ = event();
    FD_CUDA(cudaEventRecord(start_, stream));
}

void Profiler::block(cudaStream_t stream, const std::string& name) {
    if (!start_) return;
    Mark m{name, event()};
    FD_CUDA(cudaEventRecord(m.at, stream));
    blocks_.push_back(m);
}

void Profiler::span_begin(cudaStream_t stream, ProfKind kind) {
    if (!start_ || depth_++ > 0) return;  // nested spans (GEMMs inside the attention) count for the outer one
    Span s{blocks_.empty() ? size_t(0) : blocks_.size() - 1, kind, event(), nullptr};
    FD_CUDA(cudaEventRecord(s.begin, stream));
    spans_.push_back(s);
    open_span_ = true;
}

void Profiler::span_end(cudaStream_t stream) {
    if (!start_ || depth_ == 0 || --depth_ > 0 || !open_span_) return;
    spans_.back().end = event();
    FD_CUDA(cudaEventRecord(spans_.back().end, stream));
    open_span_ = false;
}

void Profiler::end_forward(cudaStream_t stream) {
    if (!start_) return;
    cudaEvent_t stop = event();
    FD_CUDA(cudaEventRecord(stop, stream));
    FD_CUDA(cudaEventSynchronize(stop));
    auto ms = [](cudaEvent_t a, cudaEvent_t b) {
        float t = 0.0f;
        FD_CUDA(cudaEventElapsedTime(&t, a, b));
        return double(t);
    };
    struct Row {
        double total = 0, kind[3] = {0, 0, 0};
    };
    std::vector<Row> rows(blocks_.size());
    for (size_t i = 0; i < blocks_.size(); i++)
        rows[i].total = ms(blocks_[i].at, i + 1 < blocks_.size() ? blocks_[i + 1].at : stop);
    for (const Span& s : spans_)
        if (s.end && s.block < rows.size()) rows[s.block].kind[int(s.kind)] += ms(s.begin, s.end);
    const double whole = ms(start_, stop);
    // Blocks that repeat (a name seen twice) are summed under their first position.
    std::vector<std::string> order;
    std::map<std::string, Row> merged;
    for (size_t i = 0; i < blocks_.size(); i++) {
        if (!merged.count(blocks_[i].name)) order.push_back(blocks_[i].name);
        Row& r = merged[blocks_[i].name];
        r.total += rows[i].total;
        for (int k = 0; k < 3; k++) r.kind[k] += rows[i].kind[k];
    }
    Row sum;
    std::fprintf(stderr, "fastdemucs profile: forward of %lld chunk(s), %.3f ms (%.3f ms per chunk), eager\n",
                 (long long)batch_, whole, whole / double(batch_ > 0 ? batch_ : 1));
    std::fprintf(stderr, "  %-30s %9s %6s %9s %9s %9s %9s\n", "block", "ms", "%", "gemm", "attention", "fft", "other");
    for (const auto& name : order) {
        const Row& r = merged[name];
        const double other = r.total - r.kind[0] - r.kind[1] - r.kind[2];
        std::fprintf(stderr, "  %-30s %9.3f %6.1f %9.3f %9.3f %9.3f %9.3f\n", name.c_str(), r.total,
                     100.0 * r.total / whole, r.kind[0], r.kind[1], r.kind[2], other);
        sum.total += r.total;
        for (int k = 0; k < 3; k++) sum.kind[k] += r.kind[k];
    }
    const double other = sum.total - sum.kind[0] - sum.kind[1] - sum.kind[2];
    std::fprintf(stderr, "  %-30s %9.3f %6.1f %9.3f %9.3f %9.3f %9.3f\n", "total", sum.total, 100.0 * sum.total / whole,
                 sum.kind[0], sum.kind[1], sum.kind[2], other);
    if (sum.total > 0)
        std::fprintf(stderr, "  shares: gemm %.1f%%, attention %.1f%%, fft %.1f%%, other kernels %.1f%%\n",
                     100.0 * sum.kind[0] / sum.total, 100.0 * sum.kind[1] / sum.total,
                     100.0 * sum.kind[2] / sum.total, 100.0 * other / sum.total);
    start_ = nullptr;
}

ProfileSpan::ProfileSpan(const Ctx& ctx, ProfKind kind) {
    if (!ctx.prof || ctx.dry) return;
    prof_ = ctx.prof;
    stream_ = ctx.stream;
    prof_->span_begin(stream_, kind);
}

ProfileSpan::~ProfileSpan() {
    if (prof_) {
        try {
            prof_->span_end(stream_);
        } catch (...) {
        }
    }
}

void profile_block(const Ctx& ctx, const std::string& name) {
    if (!ctx.dry && trace_detailed()) trace_point(("cuda: block " + name).c_str());
    if (ctx.prof && !ctx.dry) ctx.prof->block(ctx.stream, name);
}

}  // namespace fastdemucs::cuda
