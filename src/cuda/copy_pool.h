// Host memcpy on several threads that live as long as the pool: on the H200
// machine (16 cores) one thread copies ~6 GB/s, 12 threads 45-65 GB/s
// (bench/host_copy_rate), and starting threads for each 8 MB piece cost as
// much as the copies themselves. Used by the track's upload staging and
// download ring; one copy at a time per pool. The copies use non-temporal
// stores (no read of the destination's lines first, nothing evicted from the
// caches; FASTDEMUCS_STREAMING_COPY=0: memcpy).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace fastdemucs::cuda {

class CopyPool {
public:
    // `threads` copy each call, the caller's included; threads that cannot
    // be started leave their shares to the others.
    explicit CopyPool(int threads);
    ~CopyPool();
    CopyPool(const CopyPool&) = delete;
    CopyPool& operator=(const CopyPool&) = delete;

    // dst[0, bytes) = src[0, bytes), in 16 KiB-aligned shares; returns when all are done.
    void copy(void* dst, const void* src, size_t bytes);

private:
    void stop();
    void copy_share(size_t i) const;
    void serve(size_t i);

    std::vector<std::thread> helpers_;
    std::mutex mutex_;
    std::condition_variable start_, finished_;
    uint64_t generation_ = 0;
    size_t pending_ = 0;
    bool quit_ = false;
    char* dst_ = nullptr;
    const char* src_ = nullptr;
    size_t bytes_ = 0, share_ = 0;
};

}  // namespace fastdemucs::cuda
