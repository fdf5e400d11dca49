// Uploads from pageable host memory through a page-locked double buffer
// filled by several threads. Why: a pageable cudaMemcpy goes through the
// driver's own staging, one host thread copying, ~8 GB/s on the H200
// machine (a 3-minute track's 63 MB took 7.5-8.9 ms before the first
// forward could start); host copies on several threads, each piece's DMA
// overlapping the next piece's copy, take that to the host's memcpy rate.
// The threads live as long as the staging (cuda/copy_pool.h says why).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "cuda/copy_pool.h"

namespace fastdemucs::cuda {

class UploadStaging {
public:
    // piece_floats per half; `threads` host threads (the caller's
    // included) copy each piece.
    explicit UploadStaging(size_t piece_floats = size_t(2) << 20, int threads = 4);
    ~UploadStaging();
    UploadStaging(const UploadStaging&) = delete;
    UploadStaging& operator=(const UploadStaging&) = delete;

    // dst [rows][dpitch] (device) <- src [rows][spitch] (host), `width`
    // floats of each row, queued on `stream`. Returns once src has been
    // read (the last DMA may still run; the staging halves are reused only
    // after their copy's event). Allocates the page-locked buffer on first
    // use; throws Error on failure.
    void upload(float* dst, size_t dpitch, const float* src, size_t spitch, size_t width, size_t rows,
                cudaStream_t stream);

private:
    size_t piece_;
    CopyPool pool_;
    float* host_ = nullptr;                    // 2 * piece_ floats, page-locked
    cudaEvent_t done_[2] = {nullptr, nullptr};  // each half's last copy
};

}  // namespace fastdemucs::cuda
