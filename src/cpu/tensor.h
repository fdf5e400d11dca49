// A dense float32 tensor on the host, C order. The CPU backend's only
// activation type; shapes are spelled out in comments at each use.
//
// Storage comes from a process-wide pool of freed blocks: a forward pass
// allocates the same sizes chunk after chunk, and reusing blocks avoids both
// re-zeroing and the page faults of fresh large allocations (about 10% of a
// forward on two cores before the pool).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace fastdemucs::cpu {

// Uninitialised float storage of a fixed size, returned to the pool when dropped.
class Storage {
public:
    Storage() = default;
    explicit Storage(int64_t n);
    Storage(const Storage& other);
    Storage& operator=(const Storage& other);
    Storage(Storage&& other) noexcept : ptr_(other.ptr_), size_(other.size_) { other.ptr_ = nullptr, other.size_ = 0; }
    Storage& operator=(Storage&& other) noexcept;
    ~Storage() { release(); }

    float& operator[](int64_t i) { return ptr_[i]; }
    const float& operator[](int64_t i) const { return ptr_[i]; }
    float* data() { return ptr_; }
    const float* data() const { return ptr_; }
    int64_t size() const { return size_; }

private:
    void release();
    float* ptr_ = nullptr;
    int64_t size_ = 0;
};

// Drops every pooled block (memory goes back to the system).
void release_pooled_storage();

struct Tensor {
    std::vector<int64_t> shape;
    Storage data;

    Tensor() = default;
    // Zero-filled.
    explicit Tensor(std::vector<int64_t> s);
    // Contents undefined: for outputs that are written in full.
    static Tensor uninitialized(std::vector<int64_t> s);

    static int64_t count(const std::vector<int64_t>& s) {
        int64_t n = 1;
        for (auto d : s) n *= d;
        return n;
    }
    int64_t numel() const { return data.size(); }
    int64_t dim(int i) const { return shape[i < 0 ? shape.size() + i : i]; }
    int rank() const { return static_cast<int>(shape.size()); }
    float* ptr() { return data.data(); }
    const float* ptr() const { return data.data(); }
    // Same data, another shape of the same element count.
    Tensor reshaped(std::vector<int64_t> s) && {
        Tensor t;
        t.shape = std::move(s);
        t.data = std::move(data);
        return t;
    }
};

}  // namespace fastdemucs::cpu
