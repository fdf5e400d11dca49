// The track path's downloads through page-locked slots the backend keeps,
// copied from there into the caller's (pageable) vector by host threads.
// Why: page-locking the caller's vector (cuda/host_output.h's pinned mode)
// costs its cudaHostUnregister after the last copy, with nothing left to
// overlap it: 3 ms for a 3-minute track's 190 MB of 16-bit stems, 8 ms for
// its 381 MB of floats on the H200 machine. Through the ring the host copies
// run while the GPU works on later batches, and nothing is locked per call.
#pragma once

#include <cuda_runtime.h>

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "cuda/copy_pool.h"

namespace fastdemucs::cuda {

class DownloadRing {
public:
    // `slots` page-locked slots of slot_bytes each (allocated here: throws
    // Error where that fails); `threads` copy each slot into the host vector.
    DownloadRing(int device, size_t slot_bytes, int slots, int threads);
    ~DownloadRing();  // drains first
    DownloadRing(const DownloadRing&) = delete;
    DownloadRing& operator=(const DownloadRing&) = delete;

    // dst[0, bytes) (host) <- src[0, bytes) (device), once `after` (an event
    // recorded after src was written; the ring destroys it) has completed
    // and `writable` (called on the ring's thread before each slot's host
    // copy with the end of that copy, in bytes from dst) has returned.
    // Returns at once; jobs complete in the order submitted. Rethrows an
    // earlier job's failure.
    void submit(void* dst, const void* src, size_t bytes, cudaEvent_t after,
                std::function<void(const char* end)> writable);
    // Blocks until every submitted job has landed; rethrows a failure (once).
    void drain();

private:
    struct Job {
        char* dst;
        const char* src;
        size_t bytes;
        cudaEvent_t after;
        std::function<void(const char*)> writable;
    };
    struct InFlight {  // a slot's device-to-host copy, queued, its host copy not yet done
        int slot;
        char* dst;
        size_t bytes;
        const std::function<void(const char*)>* writable;
        bool last_of_job;
    };
    void serve();
    void finish_oldest();

    int device_;
    size_t slot_bytes_;
    std::vector<char*> slots_;
    std::vector<cudaEvent_t> slot_done_;
    cudaStream_t stream_ = nullptr;
    CopyPool pool_;
    std::mutex mutex_;
    std::condition_variable work_, idle_;
    std::deque<Job> jobs_;        // submitted, not started
    std::deque<Job> started_;     // started, their slots not all copied (keeps `writable` alive)
    std::deque<InFlight> flight_;  // the serving thread's own
    size_t outstanding_ = 0;      // jobs submitted and not finished
    int next_slot_ = 0;
    bool quit_ = false;
    std::exception_ptr failure_;
    std::thread thread_;
};

}  // namespace fastdemucs::cuda
