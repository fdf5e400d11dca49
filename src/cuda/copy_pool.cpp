#include "cuda/copy_pool.h"

#include <emmintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <system_error>

#include "cuda/common.h"

namespace fastdemucs::cuda {
namespace {

// memcpy with non-temporal stores: the destination's lines are written to
// memory without being read first (a plain copy of data larger than the
// caches moves 3 bytes for every 2: the read-for-ownership of each
// destination line), and what is copied does not evict the caches. Both
// ends here are large and read next by someone else (a DMA, the caller).
void copy_streaming(char* dst, const char* src, size_t n) {
    const size_t head = std::min(n, size_t((16 - reinterpret_cast<uintptr_t>(dst) % 16) % 16));
    std::memcpy(dst, src, head);
    dst += head, src += head, n -= head;
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 16));
        const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 32));
        const __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 48));
        _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), a);
        _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 16), b);
        _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 32), c);
        _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 48), d);
    }
    std::memcpy(dst + i, src + i, n - i);
    _mm_sfence();  // the streamed stores are visible before the copy is reported done
}

}  // namespace

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
    static const bool streaming = env_string("FASTDEMUCS_STREAMING_COPY") != "0";
    if (at >= bytes_) return;
    if (streaming)
        copy_streaming(dst_ + at, src_ + at, std::min(share_, bytes_ - at));
    else
        std::memcpy(dst_ + at, src_ + at, std::min(share_, bytes_ - at));
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
