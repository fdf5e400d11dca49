// cuBLAS and cuFFT, loaded with dlopen on first use instead of linked. Why:
// linked, the dynamic loader maps and initialises them (libcublasLt's
// static initialisers touch ~250 MB) before main() runs, ~0.06-0.09 s on the
// H200 machine and ~0.1 s here, paid by every run, `--help` and `-d cpu`
// included, and a build with CUDA would not start at all where they are not
// installed. Loaded on demand, a GPU run starts them on a thread of its own
// (preload_cuda_libraries) while the driver starts and the model is read.
// The tables hold the entry points we call, under their own names
// (`blas_api().cublasCreate(&h)`: cublas_v2.h's macros map the names).
#pragma once

#include <string>

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cufft.h>

namespace fastdemucs::cuda {

// The C entry point (the header also declares C++ overloads of the name).
using CublasGemmStridedBatchedEx = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int,
                                                      int, const void*, const void*, cudaDataType, int, long long int,
                                                      const void*, cudaDataType, int, long long int, const void*, void*,
                                                      cudaDataType, int, long long int, int, cublasComputeType_t,
                                                      cublasGemmAlgo_t);

struct CublasApi {
    decltype(&::cublasCreate_v2) cublasCreate_v2 = nullptr;
    decltype(&::cublasDestroy_v2) cublasDestroy_v2 = nullptr;
    decltype(&::cublasSetStream_v2) cublasSetStream_v2 = nullptr;
    decltype(&::cublasSetMathMode) cublasSetMathMode = nullptr;
    decltype(&::cublasGetMathMode) cublasGetMathMode = nullptr;
    decltype(&::cublasSetWorkspace_v2) cublasSetWorkspace_v2 = nullptr;
    decltype(static_cast<CublasGemmStridedBatchedEx>(&::cublasGemmStridedBatchedEx)) cublasGemmStridedBatchedEx =
        nullptr;
};

// cuBLASLt: the matrix products with a bias epilogue (gemm.h's linear_bias_as, gemm_act_lt).
struct CublasLtApi {
    decltype(&::cublasLtCreate) cublasLtCreate = nullptr;
    decltype(&::cublasLtDestroy) cublasLtDestroy = nullptr;
    decltype(&::cublasLtMatmulDescCreate) cublasLtMatmulDescCreate = nullptr;
    decltype(&::cublasLtMatmulDescDestroy) cublasLtMatmulDescDestroy = nullptr;
    decltype(&::cublasLtMatmulDescSetAttribute) cublasLtMatmulDescSetAttribute = nullptr;
    decltype(&::cublasLtMatrixLayoutCreate) cublasLtMatrixLayoutCreate = nullptr;
    decltype(&::cublasLtMatrixLayoutDestroy) cublasLtMatrixLayoutDestroy = nullptr;
    decltype(&::cublasLtMatrixLayoutSetAttribute) cublasLtMatrixLayoutSetAttribute = nullptr;
    decltype(&::cublasLtMatmulPreferenceCreate) cublasLtMatmulPreferenceCreate = nullptr;
    decltype(&::cublasLtMatmulPreferenceDestroy) cublasLtMatmulPreferenceDestroy = nullptr;
    decltype(&::cublasLtMatmulPreferenceSetAttribute) cublasLtMatmulPreferenceSetAttribute = nullptr;
    decltype(&::cublasLtMatmulAlgoGetHeuristic) cublasLtMatmulAlgoGetHeuristic = nullptr;
    decltype(&::cublasLtMatmul) cublasLtMatmul = nullptr;
};

struct CufftApi {
    decltype(&::cufftCreate) cufftCreate = nullptr;
    decltype(&::cufftDestroy) cufftDestroy = nullptr;
    decltype(&::cufftMakePlanMany64) cufftMakePlanMany64 = nullptr;
    decltype(&::cufftSetAutoAllocation) cufftSetAutoAllocation = nullptr;
    decltype(&::cufftSetStream) cufftSetStream = nullptr;
    decltype(&::cufftSetWorkArea) cufftSetWorkArea = nullptr;
    decltype(&::cufftExecR2C) cufftExecR2C = nullptr;
    decltype(&::cufftExecC2R) cufftExecC2R = nullptr;
};

// The library, loaded once per process (thread-safe; a second caller waits
// for the first). Throws Error naming the library when it cannot be loaded.
const CublasApi& blas_api();
const CublasLtApi& blas_lt_api();
const CufftApi& fft_api();

// Loads both now (errors are left for the first real use); never throws.
void preload_cuda_libraries();

// dlopen of a CUDA library by soname first (LD_LIBRARY_PATH, the loader's
// cache, our RUNPATH), then in the toolkit's folder this build was made
// against. Returns null with the loader's reason on failure.
void* open_library(const std::string& soname, std::string& reason);

}  // namespace fastdemucs::cuda
