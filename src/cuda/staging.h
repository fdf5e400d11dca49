// Uploads from pageable host memory through page-locked slots filled by
// several threads. Why: a pageable cudaMemcpy goes through the driver's own
// staging, one host thread copying, ~8 GB/s on the H200 machine (a
// 3-minute track's 63 MB took 7.5-8.9 ms before the first forward could
// start); host copies on several threads, each piece's DMA overlapping the
// next pieces' copies, take it to ~30 GB/s. With two slots each copy
// waited for the DMA two pieces back (the upload took 2.7-2.8 ms of host
// time); with as many slots as a 3-minute stereo track takes (8 x 8 MB)
// no copy waits, and with the pool's streaming stores the host part is
// 1.9-2.3 ms on a quiet host (session 16), still above the DMA's own
// 1.3 ms (50 GB/s): the host's memory is the limit. The threads live as
// long as the staging (cuda/copy_pool.h says why).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <vector>

#include "cuda/copy_pool.h"

namespace fastdemucs::cuda {

class UploadStaging {
public:
    // `slots` page-locked slots of piece_floats each (allocated here:
    // throws Error where that fails); `threads` host threads (the caller's
    // included) copy each piece.
    UploadStaging(size_t piece_floats, int slots, int threads);
    ~UploadStaging();
    UploadStaging(const UploadStaging&) = delete;
    UploadStaging& operator=(const UploadStaging&) = delete;

    // dst [rows][dpitch] (device) <- src [rows][spitch] (host), `width`
    // floats of each row, queued on `stream`. Returns once src has been
    // read (DMAs may still run; a slot is refilled only after its copy's
    // event). Throws Error on failure.
    void upload(float* dst, size_t dpitch, const float* src, size_t spitch, size_t width, size_t rows,
                cudaStream_t stream);
    int slots() const { return int(slots_.size()); }

private:
    void release() noexcept;

    size_t piece_;
    CopyPool pool_;
    std::vector<float*> slots_;        // page-locked, piece_ floats each
    std::vector<cudaEvent_t> done_;    // each slot's last copy
    size_t next_ = 0;                  // the slot the next piece takes
};

}  // namespace fastdemucs::cuda
