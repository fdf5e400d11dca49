#include "cuda/download_ring.h"

#include <algorithm>

#include "cuda/common.h"
#include "error.h"

namespace fastdemucs::cuda {

// Slots of whole 4 KiB: a slot never ends inside an element of the host vector.
DownloadRing::DownloadRing(int device, size_t slot_bytes, int slots, int threads)
    : device_(device), slot_bytes_((std::max<size_t>(slot_bytes, 1) + 4095) / 4096 * 4096), pool_(std::max(threads, 1)) {
    struct Undo {  // what was made, released if the constructor throws
        DownloadRing* ring;
        bool done = false;
        ~Undo() {
            if (done) return;
            for (char* s : ring->slots_) cudaFreeHost(s);
            for (cudaEvent_t e : ring->slot_done_) cudaEventDestroy(e);
            if (ring->stream_) cudaStreamDestroy(ring->stream_);
            cudaGetLastError();
        }
    } undo{this};
    FD_CUDA(cudaSetDevice(device_));
    FD_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    for (int i = 0; i < std::max(slots, 1); i++) {
        char* slot = nullptr;
        FD_CUDA(cudaHostAlloc(reinterpret_cast<void**>(&slot), slot_bytes_, cudaHostAllocDefault));
        slots_.push_back(slot);
        cudaEvent_t e = nullptr;
        FD_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
        slot_done_.push_back(e);
    }
    thread_ = std::thread([this] { serve(); });
    undo.done = true;
}

DownloadRing::~DownloadRing() {
    try {
        drain();
    } catch (...) {
    }
    {
        std::lock_guard<std::mutex> lock(mutex_);
        quit_ = true;
    }
    work_.notify_all();
    thread_.join();
    for (char* s : slots_) cudaFreeHost(s);
    for (cudaEvent_t e : slot_done_) cudaEventDestroy(e);
    cudaStreamDestroy(stream_);
    cudaGetLastError();
}

void DownloadRing::submit(void* dst, const void* src, size_t bytes, cudaEvent_t after,
                          std::function<void(const char* end)> writable) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (failure_ || bytes == 0) {
        cudaEventDestroy(after);
        if (failure_) std::rethrow_exception(failure_);
        return;
    }
    try {
        jobs_.push_back({static_cast<char*>(dst), static_cast<const char*>(src), bytes, after, std::move(writable)});
    } catch (...) {
        cudaEventDestroy(after);
        throw;
    }
    outstanding_++;
    lock.unlock();
    work_.notify_one();
}

void DownloadRing::drain() {
    std::unique_lock<std::mutex> lock(mutex_);
    idle_.wait(lock, [&] { return outstanding_ == 0; });
    if (failure_) {
        std::exception_ptr failure = failure_;
        failure_ = nullptr;  // the next track starts clean
        std::rethrow_exception(failure);
    }
}

// The oldest slot in flight: its device copy awaited, its bytes copied into
// the host vector (once `writable` allows); its job done if it was the last.
void DownloadRing::finish_oldest() {
    const InFlight f = flight_.front();
    flight_.pop_front();
    FD_CUDA(cudaEventSynchronize(slot_done_[size_t(f.slot)]));
    (*f.writable)(f.dst + f.bytes);
    pool_.copy(f.dst, slots_[size_t(f.slot)], f.bytes);
    if (f.last_of_job) {
        std::lock_guard<std::mutex> lock(mutex_);
        started_.pop_front();
        if (--outstanding_ == 0) idle_.notify_all();
    }
}

void DownloadRing::serve() {
    for (;;) {
        try {
            Job* job = nullptr;
            {
                std::unique_lock<std::mutex> lock(mutex_);
                // Nothing new to start: what is in flight lands (drain() waits for it).
                while (jobs_.empty() && !flight_.empty()) {
                    lock.unlock();
                    finish_oldest();
                    lock.lock();
                }
                work_.wait(lock, [&] { return quit_ || !jobs_.empty(); });
                if (jobs_.empty()) return;  // quit, nothing left
                started_.push_back(std::move(jobs_.front()));
                jobs_.pop_front();
                job = &started_.back();  // stays put: a deque's push_back / pop_front move no other element
            }
            FD_CUDA(cudaSetDevice(device_));
            const cudaError_t waited = cudaStreamWaitEvent(stream_, job->after, 0);
            cudaEventDestroy(job->after);
            job->after = nullptr;
            FD_CUDA(waited);
            for (size_t at = 0; at < job->bytes; at += slot_bytes_) {
                const size_t n = std::min(slot_bytes_, job->bytes - at);
                // Round robin: when every slot is in flight, the oldest holds the next one.
                if (flight_.size() == slots_.size()) finish_oldest();
                const int slot = next_slot_;
                next_slot_ = (next_slot_ + 1) % int(slots_.size());
                FD_CUDA(cudaMemcpyAsync(slots_[size_t(slot)], job->src + at, n, cudaMemcpyDeviceToHost, stream_));
                FD_CUDA(cudaEventRecord(slot_done_[size_t(slot)], stream_));
                flight_.push_back({slot, job->dst + at, n, &job->writable, at + n == job->bytes});
            }
        } catch (...) {
            // Everything queued is dropped; drain() (or the next submit) reports the failure.
            cudaStreamSynchronize(stream_);
            cudaGetLastError();
            flight_.clear();
            std::lock_guard<std::mutex> lock(mutex_);
            if (!failure_) failure_ = std::current_exception();
            for (Job& j : jobs_)
                if (j.after) cudaEventDestroy(j.after);
            for (Job& j : started_)
                if (j.after) cudaEventDestroy(j.after);
            jobs_.clear();
            started_.clear();
            outstanding_ = 0;
            idle_.notify_all();
        }
    }
}

}  // namespace fastdemucs::cuda
