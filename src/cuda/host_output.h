// The host side of the track path's download: the stems' vector (381 MB of
// floats for 3 minutes of 6 stems, half that in 16-bit PCM) faulted in and
// page-locked while the GPU works.
// Why in pieces: on the H200 machine the first-touch faults of 381 MB take
// ~87 ms and locking it ~15-29 ms more; done whole, one after the other, they
// outlasted the GPU's ~100 ms and held the last copies back. Here one thread
// faults the vector in piece by piece (~32 MB) and another locks each piece
// as soon as it is in, so the locking overlaps the faults, and a range can be
// copied as soon as the pieces under it are locked. With a DownloadRing
// (cuda/download_ring.h) nothing is locked: the copies go through the
// ring's page-locked slots, each landing once the faults have passed it.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "cuda/download_ring.h"

namespace fastdemucs::cuda {

template <typename T>  // float or int16_t (explicitly instantiated)
class HostOutput {
public:
    using value_type = T;
    // `out` becomes n elements (its contents undefined until copied into);
    // the caller must not touch it until this object is gone. pin = false:
    // faulted in only (copies then go through the driver's staging). A
    // `ring`: faulted in only, the copies through it (pin is ignored).
    // Copies into it are ordered after the work queued on `copies` before
    // them; release() drains them first.
    HostOutput(std::vector<T>& out, size_t n, int device, bool pin, cudaStream_t copies,
               size_t piece_bytes = size_t(32) << 20, DownloadRing* ring = nullptr);
    ~HostOutput();
    HostOutput(const HostOutput&) = delete;
    HostOutput& operator=(const HostOutput&) = delete;

    // Elements [0, ready()) are faulted in and, where pinning, locked.
    size_t ready() const { return ready_.load(std::memory_order_acquire); }
    // Copies may be queued for elements [0, queueable()): ready(), or all of
    // them with a ring.
    size_t queueable() const { return ring_ ? n_ : ready(); }
    // Blocks until everything is queueable; rethrows the preparation's
    // failure (std::bad_alloc when the vector could not grow).
    void wait();
    // Queues out[offset, offset + count) <- src[0, count) (device) after the
    // work queued on the copy stream so far: on that stream, split where the
    // pieces meet (each copy within one registration), or through the ring;
    // offset + count <= queueable().
    void copy_from_device(size_t offset, const T* src, size_t count);
    // Blocks until every copy has landed; rethrows a failure of the ring's.
    void finish();
    // Drains the copies (never throws), then unlocks every locked piece; joins the threads.
    void release();

private:
    void fault_in(std::vector<T>& out, bool pin);
    void lock_pieces(int device);
    void join();
    void wait_ready(size_t n);  // until ready() >= n; rethrows the preparation's failure

    T* data_ = nullptr;
    size_t n_ = 0;
    cudaStream_t copies_ = nullptr;
    DownloadRing* ring_ = nullptr;
    std::vector<size_t> bounds_;    // piece k: elements [bounds_[k], bounds_[k + 1])
    std::vector<char> locked_;      // per piece, written by the locking thread
    std::atomic<size_t> faulted_{0};  // pieces faulted in
    std::atomic<size_t> ready_{0};    // elements ready for copies
    std::mutex mutex_;
    std::condition_variable progressed_;
    std::exception_ptr failure_;
    bool failed_ = false;
    std::thread faulter_, locker_;
};

}  // namespace fastdemucs::cuda
