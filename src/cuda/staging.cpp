#include "cuda/staging.h"

#include <algorithm>
#include <cstring>
#include <system_error>
#include <thread>
#include <vector>

#include "cuda/common.h"

namespace fastdemucs::cuda {

UploadStaging::UploadStaging(size_t piece_floats, int threads)
    : piece_(std::max<size_t>(piece_floats, 1024)), threads_(std::max(threads, 1)) {}

UploadStaging::~UploadStaging() {
    for (cudaEvent_t e : done_) {
        if (e) {
            cudaEventSynchronize(e);
            cudaEventDestroy(e);
        }
    }
    if (host_) cudaFreeHost(host_);
    cudaGetLastError();
}

namespace {

// dst[0, n) = src[0, n) on up to `threads` threads (the calling one included),
// in 16 KiB-aligned shares. A share whose thread cannot be started is copied
// by the calling thread.
void parallel_copy(float* dst, const float* src, size_t n, int threads) {
    constexpr size_t kAlign = 4096;  // floats
    const size_t share = std::max(kAlign, (n / size_t(threads) + kAlign - 1) / kAlign * kAlign);
    auto copy = [=](size_t at) { std::memcpy(dst + at, src + at, std::min(share, n - at) * sizeof(float)); };
    struct Pool {
        std::vector<std::thread> threads;
        ~Pool() {
            for (std::thread& t : threads) t.join();
        }
    } pool;
    for (size_t at = share; at < n; at += share) {
        try {
            pool.threads.emplace_back(copy, at);
        } catch (const std::system_error&) {
            copy(at);
        }
    }
    copy(0);
}

}  // namespace

void UploadStaging::upload(float* dst, size_t dpitch, const float* src, size_t spitch, size_t width, size_t rows,
                           cudaStream_t stream) {
    for (cudaEvent_t& e : done_)
        if (!e) FD_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    if (!host_) FD_CUDA(cudaHostAlloc(reinterpret_cast<void**>(&host_), 2 * piece_ * sizeof(float), cudaHostAllocDefault));
    int half = 0;
    for (size_t r = 0; r < rows; r++) {
        for (size_t at = 0; at < width; at += piece_) {
            const size_t n = std::min(piece_, width - at);
            float* stage = host_ + size_t(half) * piece_;
            FD_CUDA(cudaEventSynchronize(done_[half]));  // the half's previous copy has left
            parallel_copy(stage, src + r * spitch + at, n, threads_);
            FD_CUDA(cudaMemcpyAsync(dst + r * dpitch + at, stage, n * sizeof(float), cudaMemcpyHostToDevice, stream));
            FD_CUDA(cudaEventRecord(done_[half], stream));
            half ^= 1;
        }
    }
}

}  // namespace fastdemucs::cuda
