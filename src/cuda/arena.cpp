#include "cuda/arena.h"

#include <string>

#include "error.h"

namespace fastdemucs::cuda {

void Arena::bind(void* base, size_t capacity) {
    base_ = static_cast<char*>(base);
    capacity_ = capacity;
    top_ = peak_ = phase_peak_ = 0;
    dry_ = down_ = false;
}

void Arena::bind_down(void* end, size_t capacity) {
    bind(end, capacity);
    down_ = true;
}

void Arena::start_dry(char* base, bool down) {
    // A recognisable, aligned, never-dereferenced address space from `base` (up or down).
    base_ = base;
    capacity_ = 0;
    top_ = peak_ = phase_peak_ = 0;
    dry_ = true;
    down_ = down;
}

void* Arena::alloc_bytes(size_t bytes) {
    const size_t size = (bytes + kAlign - 1) / kAlign * kAlign;
    const size_t at = top_;
    if (!dry_ && at + size > capacity_)
        throw Error("internal error: GPU workspace overflow (" + std::to_string(at + size) + " > " +
                    std::to_string(capacity_) + " bytes)");
    top_ = at + size;
    if (top_ > peak_) peak_ = top_;
    if (top_ > phase_peak_) phase_peak_ = top_;
    return down_ ? base_ - top_ : base_ + at;
}

}  // namespace fastdemucs::cuda
