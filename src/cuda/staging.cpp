#include "cuda/staging.h"

#include <algorithm>

#include "cuda/common.h"

namespace fastdemucs::cuda {

UploadStaging::UploadStaging(size_t piece_floats, int slots, int threads)
    : piece_(std::max<size_t>(piece_floats, 1024)), pool_(std::max(threads, 1)) {
    try {
        for (int i = 0; i < std::max(slots, 1); i++) {
            float* slot = nullptr;
            FD_CUDA(cudaHostAlloc(reinterpret_cast<void**>(&slot), piece_ * sizeof(float), cudaHostAllocDefault));
            slots_.push_back(slot);
            cudaEvent_t e = nullptr;
            FD_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
            done_.push_back(e);
        }
    } catch (...) {
        release();
        throw;
    }
}

UploadStaging::~UploadStaging() { release(); }

void UploadStaging::release() noexcept {
    for (cudaEvent_t e : done_) {
        cudaEventSynchronize(e);
        cudaEventDestroy(e);
    }
    for (float* s : slots_) cudaFreeHost(s);
    done_.clear();
    slots_.clear();
    cudaGetLastError();
}

void UploadStaging::upload(float* dst, size_t dpitch, const float* src, size_t spitch, size_t width, size_t rows,
                           cudaStream_t stream) {
    for (size_t r = 0; r < rows; r++) {
        for (size_t at = 0; at < width; at += piece_) {
            const size_t n = std::min(piece_, width - at);
            const size_t slot = next_;
            next_ = (next_ + 1) % slots_.size();
            FD_CUDA(cudaEventSynchronize(done_[slot]));  // the slot's previous copy has left
            pool_.copy(slots_[slot], src + r * spitch + at, n * sizeof(float));
            FD_CUDA(cudaMemcpyAsync(dst + r * dpitch + at, slots_[slot], n * sizeof(float), cudaMemcpyHostToDevice,
                                    stream));
            FD_CUDA(cudaEventRecord(done_[slot], stream));
        }
    }
}

}  // namespace fastdemucs::cuda
