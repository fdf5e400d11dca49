#include "cpu/tensor.h"

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>

namespace fastdemucs::cpu {
namespace {

// Freed blocks by exact size. Bounded: blocks beyond kMaxPooledBytes are freed.
struct Pool {
    std::mutex mutex;
    std::multimap<int64_t, float*> free_blocks;
    int64_t pooled_bytes = 0;
    static constexpr int64_t kMaxPooledBytes = int64_t(128) << 20;

    float* take(int64_t n) {
        {
            std::lock_guard<std::mutex> lock(mutex);
            auto it = free_blocks.find(n);
            if (it != free_blocks.end()) {
                float* p = it->second;
                free_blocks.erase(it);
                pooled_bytes -= n * int64_t(sizeof(float));
                return p;
            }
        }
        void* p = std::aligned_alloc(64, ((n * sizeof(float) + 63) / 64) * 64);
        if (!p) throw std::bad_alloc();
        return static_cast<float*>(p);
    }
    void give(float* p, int64_t n) {
        std::lock_guard<std::mutex> lock(mutex);
        if (pooled_bytes + n * int64_t(sizeof(float)) > kMaxPooledBytes) {
            std::free(p);
            return;
        }
        free_blocks.emplace(n, p);
        pooled_bytes += n * int64_t(sizeof(float));
    }
    void clear() {
        std::lock_guard<std::mutex> lock(mutex);
        for (auto& kv : free_blocks) std::free(kv.second);
        free_blocks.clear();
        pooled_bytes = 0;
    }
    ~Pool() { clear(); }
};

Pool& pool() {
    static Pool instance;
    return instance;
}

}  // namespace

Storage::Storage(int64_t n) : ptr_(n > 0 ? pool().take(n) : nullptr), size_(n) {}

Storage::Storage(const Storage& other) : Storage(other.size_) {
    if (size_) std::memcpy(ptr_, other.ptr_, size_ * sizeof(float));
}

Storage& Storage::operator=(const Storage& other) {
    if (this != &other) {
        Storage copy(other);
        *this = std::move(copy);
    }
    return *this;
}

Storage& Storage::operator=(Storage&& other) noexcept {
    if (this != &other) {
        release();
        ptr_ = other.ptr_, size_ = other.size_;
        other.ptr_ = nullptr, other.size_ = 0;
    }
    return *this;
}

void Storage::release() {
    if (ptr_) pool().give(ptr_, size_);
    ptr_ = nullptr, size_ = 0;
}

void release_pooled_storage() { pool().clear(); }

Tensor::Tensor(std::vector<int64_t> s) : shape(std::move(s)), data(count(shape)) {
    if (data.size()) std::memset(data.data(), 0, data.size() * sizeof(float));
}

Tensor Tensor::uninitialized(std::vector<int64_t> s) {
    Tensor t;
    t.data = Storage(count(s));
    t.shape = std::move(s);
    return t;
}

}  // namespace fastdemucs::cpu
