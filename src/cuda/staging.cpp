#include "cuda/staging.h"

#include <algorithm>

#include "cuda/common.h"

namespace fastdemucs::cuda {

UploadStaging::UploadStaging(size_t piece_floats, int threads)
    : piece_(std::max<size_t>(piece_floats, 1024)), pool_(std::max(threads, 1)) {}

UploadStaging::~UploadStaging() {
    for (cudaEvent_t e : done_) {
        if (e) {
            cudaEventSynchronize(e);
            cudaEventDestroy(e);
        }
    }
    if (host_) cudaFreeHost(host_);
    cudaGetLastError();
}

void UploadStaging::upload(float* dst, size_t dpitch, const float* src, size_t spitch, size_t width, size_t rows,
                           cudaStream_t stream) {
    for (cudaEvent_t& e : done_)
        if (!e) FD_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    if (!host_) FD_CUDA(cudaHostAlloc(reinterpret_cast<void**>(&host_), 2 * piece_ * sizeof(float), cudaHostAllocDefault));
    int half = 0;
    for (size_t r = 0; r < rows; r++) {
        for (size_t at = 0; at < width; at += piece_) {
            const size_t n = std::min(piece_, width - at);
            float* stage = host_ + size_t(half) * piece_;
            FD_CUDA(cudaEventSynchronize(done_[half]));  // the half's previous copy has left
            pool_.copy(stage, src + r * spitch + at, n * sizeof(float));
            FD_CUDA(cudaMemcpyAsync(dst + r * dpitch + at, stage, n * sizeof(float), cudaMemcpyHostToDevice, stream));
            FD_CUDA(cudaEventRecord(done_[half], stream));
            half ^= 1;
        }
    }
}

}  // namespace fastdemucs::cuda
