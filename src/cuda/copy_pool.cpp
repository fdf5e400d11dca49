#include "cuda/copy_pool.h"

#include <algorithm>
#include <cstring>
#include <system_error>

namespace fastdemucs::cuda {

CopyPool::CopyPool(int threads) {
    try {
        for (int i = 1; i < threads; i++) {
            try {
                helpers_.emplace_back([this, i] { serve(size_t(i)); });
            } catch (const std::system_error&) {
                break;
            }
        }
    } catch (...) {  // (bad_alloc) the started threads stop before the pool unwinds
        stop();
        throw;
    }
}

CopyPool::~CopyPool() { stop(); }

void CopyPool::stop() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        quit_ = true;
    }
    start_.notify_all();
    for (std::thread& t : helpers_) t.join();
    helpers_.clear();
}

void CopyPool::copy(void* dst, const void* src, size_t bytes) {
    constexpr size_t kAlign = 16384;
    const size_t workers = helpers_.size() + 1;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        dst_ = static_cast<char*>(dst), src_ = static_cast<const char*>(src), bytes_ = bytes;
        share_ = std::max(kAlign, (bytes / workers + kAlign - 1) / kAlign * kAlign);
        pending_ = helpers_.size();
        generation_++;
    }
    start_.notify_all();
    copy_share(0);
    std::unique_lock<std::mutex> lock(mutex_);
    finished_.wait(lock, [&] { return pending_ == 0; });
}

void CopyPool::copy_share(size_t i) const {
    const size_t at = i * share_;
    if (at < bytes_) std::memcpy(dst_ + at, src_ + at, std::min(share_, bytes_ - at));
}

void CopyPool::serve(size_t i) {
    uint64_t seen = 0;
    for (;;) {
        {
            std::unique_lock<std::mutex> lock(mutex_);
            start_.wait(lock, [&] { return quit_ || generation_ != seen; });
            if (quit_) return;
            seen = generation_;
        }
        copy_share(i);  // the job's fields were set under the mutex, before `generation_` moved
        std::lock_guard<std::mutex> lock(mutex_);
        if (--pending_ == 0) finished_.notify_one();
    }
}

}  // namespace fastdemucs::cuda
