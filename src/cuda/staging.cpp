#include "cuda/staging.h"

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include "cuda/common.h"

namespace fastdemucs::cuda {

// dst[0, n) = src[0, n) split into 16 KiB-aligned shares, share i on
// thread i (0: the caller's). Threads that cannot be started leave their
// shares to the others.
struct UploadStaging::Pool {
    explicit Pool(int threads) {
        try {
            for (int i = 1; i < threads; i++) {
                try {
                    helpers.emplace_back([this, i] { serve(i); });
                } catch (const std::system_error&) {
                    break;
                }
            }
        } catch (...) {  // (bad_alloc) the started threads stop before the pool unwinds
            stop();
            throw;
        }
    }
    ~Pool() { stop(); }
    Pool(const Pool&) = delete;
    Pool& operator=(const Pool&) = delete;

    void copy(float* to, const float* from, size_t count) {
        constexpr size_t kAlign = 4096;  // floats
        const size_t workers = helpers.size() + 1;
        {
            std::lock_guard<std::mutex> lock(mutex);
            dst = to, src = from, n = count;
            share = std::max(kAlign, (count / workers + kAlign - 1) / kAlign * kAlign);
            pending = helpers.size();
            generation++;
        }
        start.notify_all();
        copy_share(0);
        std::unique_lock<std::mutex> lock(mutex);
        finished.wait(lock, [&] { return pending == 0; });
    }

private:
    void stop() {
        {
            std::lock_guard<std::mutex> lock(mutex);
            quit = true;
        }
        start.notify_all();
        for (std::thread& t : helpers) t.join();
        helpers.clear();
    }
    void copy_share(size_t i) const {
        const size_t at = i * share;
        if (at < n) std::memcpy(dst + at, src + at, std::min(share, n - at) * sizeof(float));
    }
    void serve(size_t i) {
        uint64_t seen = 0;
        for (;;) {
            {
                std::unique_lock<std::mutex> lock(mutex);
                start.wait(lock, [&] { return quit || generation != seen; });
                if (quit) return;
                seen = generation;
            }
            copy_share(i);  // the job's fields were set under the mutex, before `generation` moved
            std::lock_guard<std::mutex> lock(mutex);
            if (--pending == 0) finished.notify_one();
        }
    }

    std::vector<std::thread> helpers;
    std::mutex mutex;
    std::condition_variable start, finished;
    uint64_t generation = 0;
    size_t pending = 0;
    bool quit = false;
    float* dst = nullptr;
    const float* src = nullptr;
    size_t n = 0, share = 0;
};

UploadStaging::UploadStaging(size_t piece_floats, int threads)
    : piece_(std::max<size_t>(piece_floats, 1024)), pool_(std::make_unique<Pool>(std::max(threads, 1))) {}

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
            pool_->copy(stage, src + r * spitch + at, n);
            FD_CUDA(cudaMemcpyAsync(dst + r * dpitch + at, stage, n * sizeof(float), cudaMemcpyHostToDevice, stream));
            FD_CUDA(cudaEventRecord(done_[half], stream));
            half ^= 1;
        }
    }
}

}  // namespace fastdemucs::cuda
