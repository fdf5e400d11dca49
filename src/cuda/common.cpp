#include "cuda/common.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "error.h"

namespace fastdemucs::cuda {
namespace {

std::string where(const char* expr, const char* file, int line) {
    const char* base = std::strrchr(file, '/');
    std::ostringstream s;
    s << " (" << expr << " at " << (base ? base + 1 : file) << ":" << line << ")";
    return s.str();
}

const char* cublas_status_name(cublasStatus_t s) {
    switch (s) {
        case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
        case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
        case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
        case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
        case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
        case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
        case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
        case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
        case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
        default: return "cuBLAS error";
    }
}

}  // namespace

void fail_cuda(cudaError_t err, const char* expr, const char* file, int line) {
    cudaGetLastError();  // clear a non-sticky error so the next call starts clean
    if (err == cudaErrorMemoryAllocation) {
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        cudaGetLastError();
        std::ostringstream s;
        s << "out of GPU memory (" << int64_t(mib(free_b)) << " MiB free)" << where(expr, file, line);
        throw Error(s.str());
    }
    throw Error(std::string("CUDA error: ") + cudaGetErrorString(err) + where(expr, file, line));
}

void fail_cublas(cublasStatus_t status, const char* expr, const char* file, int line) {
    throw Error(std::string("cuBLAS error: ") + cublas_status_name(status) + where(expr, file, line));
}

void fail_cufft(cufftResult status, const char* expr, const char* file, int line) {
    const char* name = "cuFFT error";
    if (status == CUFFT_ALLOC_FAILED) name = "cuFFT could not allocate GPU memory";
    throw Error(std::string(name) + " " + std::to_string(int(status)) + where(expr, file, line));
}

size_t dtype_bytes(DType t) { return t == DType::F32 ? 4 : 2; }

const char* dtype_name(DType t) {
    switch (t) {
        case DType::F32: return "float32";
        case DType::F16: return "float16";
        case DType::BF16: return "bfloat16";
    }
    return "?";
}

bool env_flag(const char* name) {
    const std::string v = env_string(name);
    return v == "1" || v == "true" || v == "yes" || v == "on" || v == "TRUE" || v == "ON";
}

std::string env_string(const char* name) {
    const char* v = std::getenv(name);
    return v ? std::string(v) : std::string();
}

void device_memory(size_t* free_bytes, size_t* total_bytes) { FD_CUDA(cudaMemGetInfo(free_bytes, total_bytes)); }

DeviceBuffer::DeviceBuffer(size_t bytes, const std::string& what) : bytes_(bytes) {
    if (bytes == 0) return;
    const cudaError_t err = cudaMalloc(&ptr_, bytes);
    if (err != cudaSuccess) {
        ptr_ = nullptr;
        cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        cudaGetLastError();
        if (err == cudaErrorMemoryAllocation) {
            std::ostringstream s;
            s << "out of GPU memory: need " << int64_t(mib(bytes) + 0.5) << " MiB for " << what << ", "
              << int64_t(mib(free_b)) << " MiB free";
            throw Error(s.str());
        }
        throw Error(std::string("CUDA error: ") + cudaGetErrorString(err) + " allocating " + what);
    }
}

DeviceBuffer::~DeviceBuffer() { reset(); }

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
        reset();
        ptr_ = o.ptr_;
        bytes_ = o.bytes_;
        o.ptr_ = nullptr;
        o.bytes_ = 0;
    }
    return *this;
}

void DeviceBuffer::reset() {
    if (ptr_) cudaFree(ptr_);  // never throws; an error here is reported by the next checked call
    ptr_ = nullptr;
    bytes_ = 0;
}

DeviceBuffer upload(const void* host, size_t bytes, const std::string& what) {
    DeviceBuffer b(bytes, what);
    if (bytes) {
        FD_CUDA(cudaMemcpy(b.get(), host, bytes, cudaMemcpyHostToDevice));
        // From pageable memory cudaMemcpy may return before its DMA is done,
        // and the backend's streams do not wait for the legacy stream.
        FD_CUDA(cudaStreamSynchronize(cudaStreamLegacy));
    }
    return b;
}

}  // namespace fastdemucs::cuda
