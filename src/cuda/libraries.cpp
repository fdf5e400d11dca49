#include "cuda/libraries.h"

#include <dlfcn.h>

#include <string>

#include "error.h"

#ifndef FASTDEMUCS_CUDA_LIBRARY_DIR
#define FASTDEMUCS_CUDA_LIBRARY_DIR ""
#endif

namespace fastdemucs::cuda {

void* open_library(const std::string& soname, std::string& reason) {
    if (void* lib = dlopen(soname.c_str(), RTLD_NOW | RTLD_LOCAL)) return lib;
    const char* first = dlerror();
    reason = first ? first : soname + ": not found";
    const std::string dir = FASTDEMUCS_CUDA_LIBRARY_DIR;
    if (!dir.empty()) {
        if (void* lib = dlopen((dir + "/" + soname).c_str(), RTLD_NOW | RTLD_LOCAL)) return lib;
        if (const char* second = dlerror()) reason += "; " + std::string(second);
    }
    return nullptr;
}

namespace {

template <typename Fn>
void resolve(void* lib, const char* name, Fn& fn, std::string& missing) {
    fn = reinterpret_cast<Fn>(dlsym(lib, name));
    if (!fn && missing.empty()) missing = name;
}

template <typename Table>
struct Loaded {
    Table table;
    std::string error;  // empty when loaded
};

// Opens `soname` and fills the table (fill(lib, table, missing)); the error
// names what failed.
template <typename Table, typename Fill>
Loaded<Table> load(const std::string& what, const std::string& soname, Fill fill) {
    Loaded<Table> loaded;
    std::string reason;
    void* lib = open_library(soname, reason);
    if (!lib) {
        loaded.error = "cannot load " + what + " for the GPU (" + reason + ")";
        return loaded;
    }
    std::string missing;
    fill(lib, loaded.table, missing);
    if (!missing.empty()) loaded.error = soname + " lacks " + missing + " (a different CUDA version?)";
    return loaded;
}

#define FD_RESOLVE(name) resolve(lib, #name, t.name, missing);

const Loaded<CublasApi>& cublas_library() {
    static const Loaded<CublasApi> loaded =
        load<CublasApi>("cuBLAS", "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR),
                        [](void* lib, CublasApi& t, std::string& missing) {
                            FD_RESOLVE(cublasCreate_v2)
                            FD_RESOLVE(cublasDestroy_v2)
                            FD_RESOLVE(cublasSetStream_v2)
                            FD_RESOLVE(cublasSetMathMode)
                            FD_RESOLVE(cublasGetMathMode)
                            FD_RESOLVE(cublasSetWorkspace_v2)
                            FD_RESOLVE(cublasGemmStridedBatchedEx)
                        });
    return loaded;
}

const Loaded<CublasLtApi>& cublas_lt_library() {
    static const Loaded<CublasLtApi> loaded =
        load<CublasLtApi>("cuBLASLt", "libcublasLt.so." + std::to_string(CUBLAS_VER_MAJOR),
                          [](void* lib, CublasLtApi& t, std::string& missing) {
                              FD_RESOLVE(cublasLtCreate)
                              FD_RESOLVE(cublasLtDestroy)
                              FD_RESOLVE(cublasLtMatmulDescCreate)
                              FD_RESOLVE(cublasLtMatmulDescDestroy)
                              FD_RESOLVE(cublasLtMatmulDescSetAttribute)
                              FD_RESOLVE(cublasLtMatrixLayoutCreate)
                              FD_RESOLVE(cublasLtMatrixLayoutDestroy)
                              FD_RESOLVE(cublasLtMatrixLayoutSetAttribute)
                              FD_RESOLVE(cublasLtMatmulPreferenceCreate)
                              FD_RESOLVE(cublasLtMatmulPreferenceDestroy)
                              FD_RESOLVE(cublasLtMatmulPreferenceSetAttribute)
                              FD_RESOLVE(cublasLtMatmulAlgoGetHeuristic)
                              FD_RESOLVE(cublasLtMatmul)
                          });
    return loaded;
}

const Loaded<CufftApi>& cufft_library() {
    static const Loaded<CufftApi> loaded =
        load<CufftApi>("cuFFT", "libcufft.so." + std::to_string(CUFFT_VER_MAJOR),
                       [](void* lib, CufftApi& t, std::string& missing) {
                           FD_RESOLVE(cufftCreate)
                           FD_RESOLVE(cufftDestroy)
                           FD_RESOLVE(cufftMakePlanMany64)
                           FD_RESOLVE(cufftSetAutoAllocation)
                           FD_RESOLVE(cufftSetStream)
                           FD_RESOLVE(cufftSetWorkArea)
                           FD_RESOLVE(cufftExecR2C)
                           FD_RESOLVE(cufftExecC2R)
                       });
    return loaded;
}

#undef FD_RESOLVE

}  // namespace

const CublasApi& blas_api() {
    const auto& loaded = cublas_library();
    if (!loaded.error.empty()) throw Error(loaded.error);
    return loaded.table;
}

const CublasLtApi& blas_lt_api() {
    const auto& loaded = cublas_lt_library();
    if (!loaded.error.empty()) throw Error(loaded.error);
    return loaded.table;
}

const CufftApi& fft_api() {
    const auto& loaded = cufft_library();
    if (!loaded.error.empty()) throw Error(loaded.error);
    return loaded.table;
}

void preload_cuda_libraries() {
    cublas_library();
    cublas_lt_library();
    cufft_library();
}

}  // namespace fastdemucs::cuda
