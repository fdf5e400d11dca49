// The forward's activation memory: one device allocation handed out as a
// stack (bump pointer with mark/release). Every forward of a given batch
// size takes the same buffers in the same order, so their addresses repeat
// from call to call, which is what lets a captured CUDA graph be replayed.
// In dry mode the arena has no memory: it only measures the peak, which is
// how the workspace size (and max_batch) is derived from the model plan.
//
// A second stack may grow down from the top of the same allocation (the
// time branch's, on a stream of its own: cuda_backend.cpp run_network). Each
// stack then records its peak per phase (begin_phase): within a phase the
// two streams may run in any interleaving, so the workspace must hold the
// sum of both phase peaks.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fastdemucs::cuda {

class Arena {
public:
    static constexpr size_t kAlign = 256;

    // Serve allocations from [base, base + capacity).
    void bind(void* base, size_t capacity);
    // Serve allocations downwards from `end` (exclusive), at most `capacity` bytes.
    void bind_down(void* end, size_t capacity);
    // Measure only: allocations return distinct fake addresses from `base`
    // (with `down`, below it), never dereferenced.
    void start_dry(char* base = dry_base(), bool down = false);
    // Where a dry arena's fake addresses start: a real arena bound after it hands out
    // base + (fake - dry_base()) for the same sequence of allocations.
    static char* dry_base() { return reinterpret_cast<char*>(uintptr_t(1) << 44); }
    bool dry() const { return dry_; }
    // Where allocations start (a downward stack: its end).
    char* base() const { return base_; }

    void reset() { top_ = 0; }
    size_t peak() const { return peak_; }
    size_t capacity() const { return capacity_; }

    // The bytes in use at most since the last begin_phase() (or bind / start_dry).
    size_t phase_peak() const { return phase_peak_; }
    void begin_phase() { phase_peak_ = top_; }

    void* alloc_bytes(size_t bytes);
    template <typename T>
    T* alloc(int64_t count) {
        return static_cast<T*>(alloc_bytes(static_cast<size_t>(count) * sizeof(T)));
    }

    size_t mark() const { return top_; }
    void release(size_t mark) { top_ = mark; }

private:
    char* base_ = nullptr;  // (down: the end)
    size_t capacity_ = 0, top_ = 0, peak_ = 0, phase_peak_ = 0;
    bool dry_ = false, down_ = false;
};

// Releases everything taken from the arena after its construction.
class ArenaScope {
public:
    explicit ArenaScope(Arena& arena) : arena_(arena), mark_(arena.mark()) {}
    ~ArenaScope() { arena_.release(mark_); }
    ArenaScope(const ArenaScope&) = delete;
    ArenaScope& operator=(const ArenaScope&) = delete;

private:
    Arena& arena_;
    size_t mark_;
};

}  // namespace fastdemucs::cuda
