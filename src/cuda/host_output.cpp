#include "cuda/host_output.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <system_error>

#include "cuda/common.h"
#include "engine/trace.h"
#include "error.h"

namespace fastdemucs::cuda {
namespace {

constexpr uintptr_t kHugePage = uintptr_t(2) << 20;

// Asks for transparent huge pages over [p, p + bytes) before it is first
// touched: a 3-minute track's 381 MB of stems are 93 k page faults in 4 KiB
// pages (FASTDEMUCS_NO_HUGE_PAGES=1: leave the kernel's default).
void advise_huge_pages(void* p, size_t bytes) {
    static const bool off = env_flag("FASTDEMUCS_NO_HUGE_PAGES");
    const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + kHugePage - 1) & ~(kHugePage - 1);
    const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kHugePage - 1);
    if (!off && end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

}  // namespace

template <typename T>
HostOutput<T>::HostOutput(std::vector<T>& out, size_t n, int device, bool pin, cudaStream_t copies,
                       size_t piece_bytes, DownloadRing* ring)
    : n_(n), copies_(copies), ring_(ring) {
    if (ring_) pin = false;
    const bool faulted = out.size() >= n;  // a vector reused from an earlier track
    if (out.capacity() < n) {
        out.clear();  // nothing worth copying into the new allocation
        out.reserve(n);
        advise_huge_pages(out.data(), n * sizeof(T));
    }
    if (faulted) out.resize(n);
    data_ = out.data();
    // Inner bounds on huge-page boundaries: no page belongs to two registrations.
    const uintptr_t base = reinterpret_cast<uintptr_t>(data_);
    const size_t piece = std::max<size_t>(piece_bytes, kHugePage);
    bounds_.push_back(0);
    for (size_t k = 1;; k++) {
        const uintptr_t at = (base + k * piece) & ~(kHugePage - 1);
        const size_t elements = (at - base) / sizeof(T);
        if (elements >= n) break;
        bounds_.push_back(elements);
    }
    if (n > 0) bounds_.push_back(n);
    const size_t pieces = bounds_.size() - 1;
    locked_.assign(pieces, 0);
    if (faulted) faulted_ = pieces;
    if (faulted && !pin) ready_ = n;
    // A thread that cannot be started leaves its work to this one. Anything
    // else thrown here stops the started thread before the object unwinds.
    try {
        if (!faulted) {
            try {
                faulter_ = std::thread([this, &out, pin] { fault_in(out, pin); });
            } catch (const std::system_error&) {
                fault_in(out, pin);
            }
        }
        if (pin && pieces > 0) {
            try {
                locker_ = std::thread([this, device] { lock_pieces(device); });
            } catch (const std::system_error&) {
                lock_pieces(device);
            }
        }
    } catch (...) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            failed_ = true;
            progressed_.notify_all();
        }
        release();
        throw;
    }
}

template <typename T>
HostOutput<T>::~HostOutput() { release(); }

template <typename T>
void HostOutput<T>::fault_in(std::vector<T>& out, bool pin) {
    for (size_t k = 0; k + 1 < bounds_.size(); k++) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (failed_) return;
        }
        try {
            if (out.size() < bounds_[k + 1]) out.resize(bounds_[k + 1]);  // zero-filled: the pages fault in
        } catch (...) {
            std::lock_guard<std::mutex> lock(mutex_);
            failure_ = std::current_exception();
            failed_ = true;
            progressed_.notify_all();
            return;
        }
        std::lock_guard<std::mutex> lock(mutex_);
        faulted_ = k + 1;
        if (!pin) ready_.store(bounds_[k + 1], std::memory_order_release);
        progressed_.notify_all();
    }
    trace_point("cuda: host output faulted in");
}

template <typename T>
void HostOutput<T>::lock_pieces(int device) {
    const bool on_device = cudaSetDevice(device) == cudaSuccess;
    for (size_t k = 0; k + 1 < bounds_.size(); k++) {
        {
            std::unique_lock<std::mutex> lock(mutex_);
            progressed_.wait(lock, [&] { return failed_ || faulted_ > k; });
            if (failed_) return;
        }
        // Not locked (no device, or the driver refused): the copies still work, slower.
        locked_[k] = on_device && cudaHostRegister(data_ + bounds_[k], (bounds_[k + 1] - bounds_[k]) * sizeof(T),
                                                   cudaHostRegisterPortable) == cudaSuccess;
        cudaGetLastError();
        std::lock_guard<std::mutex> lock(mutex_);
        ready_.store(bounds_[k + 1], std::memory_order_release);
        progressed_.notify_all();
    }
    trace_point("cuda: host output page-locked");
}

template <typename T>
void HostOutput<T>::wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    progressed_.wait(lock, [&] { return failed_ || queueable() == n_; });
    if (failed_) std::rethrow_exception(failure_);
}

template <typename T>
void HostOutput<T>::wait_ready(size_t n) {
    std::unique_lock<std::mutex> lock(mutex_);
    progressed_.wait(lock, [&] { return failed_ || ready() >= n; });
    if (failed_) std::rethrow_exception(failure_ ? failure_ : std::make_exception_ptr(Error("host output abandoned")));
}

template <typename T>
void HostOutput<T>::copy_from_device(size_t offset, const T* src, size_t count) {
    if (offset + count > queueable()) throw Error("internal error: a copy into host output not ready yet");
    if (count == 0) return;
    if (ring_) {
        // The ring's copy of each slot waits until the faults have passed it
        // (the faulting thread zero-fills what it faults in).
        cudaEvent_t after = nullptr;
        FD_CUDA(cudaEventCreateWithFlags(&after, cudaEventDisableTiming));
        const cudaError_t recorded = cudaEventRecord(after, copies_);
        if (recorded != cudaSuccess) cudaEventDestroy(after);
        FD_CUDA(recorded);
        T* const base = data_;
        ring_->submit(data_ + offset, src, count * sizeof(T), after, [this, base](const char* end) {
            wait_ready(size_t(reinterpret_cast<const T*>(end) - base));
        });
        return;
    }
    // Before ready() the faulting thread may still zero-fill (overwrite) the range.
    size_t k = size_t(std::upper_bound(bounds_.begin(), bounds_.end(), offset) - bounds_.begin()) - 1;
    while (count > 0) {
        const size_t len = std::min(count, bounds_[k + 1] - offset);
        FD_CUDA(cudaMemcpyAsync(data_ + offset, src, len * sizeof(T), cudaMemcpyDeviceToHost, copies_));
        offset += len, src += len, count -= len, k++;
    }
}

template <typename T>
void HostOutput<T>::join() {
    if (faulter_.joinable()) faulter_.join();
    if (locker_.joinable()) locker_.join();
}

template <typename T>
void HostOutput<T>::finish() {
    if (ring_) ring_->drain();
}

template <typename T>
void HostOutput<T>::release() {
    if (ring_) {
        try {  // (the ring's jobs wait on this object's faults: drained before the faulting thread is joined)
            ring_->drain();
        } catch (...) {
        }
    }
    try {
        join();
    } catch (const std::system_error&) {  // not joinable after all: nothing left to wait for
    }
    cudaStreamSynchronize(copies_);  // no copy may still target a piece
    for (size_t k = 0; k < locked_.size(); k++) {
        if (locked_[k]) cudaHostUnregister(data_ + bounds_[k]);
        locked_[k] = 0;
    }
    cudaGetLastError();
}

template class HostOutput<float>;
template class HostOutput<int16_t>;

}  // namespace fastdemucs::cuda
