// Host memcpy rates on the machine at hand: what the track upload's staging
// (src/cuda/staging.h) can reach. A 63 MB buffer (a 3-minute stereo track in
// float32) copied by 1..12 threads into page-locked and pageable memory, and
// in 8 MB pieces with the threads started per piece (the staging's first
// design). Best of 5 each.
// Usage: host_copy_rate [MEGABYTES]
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

// dst[0, n) = src[0, n) on `threads` threads started for the call (the caller's included).
void copy_on_threads(char* dst, const char* src, size_t n, int threads) {
    const size_t share = (n + size_t(threads) - 1) / size_t(threads);
    std::vector<std::thread> pool;
    for (int i = 1; i < threads; i++) {
        const size_t at = std::min(n, size_t(i) * share);
        pool.emplace_back([=] { std::memcpy(dst + at, src + at, std::min(share, n - at)); });
    }
    std::memcpy(dst, src, std::min(share, n));
    for (std::thread& t : pool) t.join();
}

double best_of_5(const std::function<void()>& run) {
    double best = 1e300;
    for (int rep = 0; rep < 5; rep++) {
        const auto t0 = Clock::now();
        run();
        best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
    }
    return best;
}

}  // namespace

int main(int argc, char** argv) {
    const size_t n = size_t(argc > 1 ? std::atoi(argv[1]) : 63) << 20;
    std::vector<char> src(n, 1), pageable(n, 0);
    char* pinned = nullptr;
    if (cudaHostAlloc(reinterpret_cast<void**>(&pinned), n, cudaHostAllocDefault) != cudaSuccess) {
        std::fprintf(stderr, "host_copy_rate: no page-locked memory (no CUDA device?)\n");
        return 1;
    }
    std::memset(pinned, 0, n);
    std::printf("%u hardware threads, %zu MB\n", std::thread::hardware_concurrency(), n >> 20);
    for (char* dst : {pinned, pageable.data()})
        for (int threads : {1, 2, 4, 8, 12}) {
            const double s = best_of_5([&] { copy_on_threads(dst, src.data(), n, threads); });
            std::printf("%s, %2d threads: %6.2f ms (%5.1f GB/s)\n", dst == pinned ? "page-locked" : "pageable   ",
                        threads, s * 1e3, double(n) / s / 1e9);
        }
    const size_t piece = size_t(8) << 20;
    for (int threads : {4, 8}) {
        const double s = best_of_5([&] {
            for (size_t at = 0; at < n; at += piece)
                copy_on_threads(pinned + at, src.data() + at, std::min(piece, n - at), threads);
        });
        std::printf("page-locked, 8 MB pieces, %d threads started per piece: %.2f ms\n", threads, s * 1e3);
    }
    cudaFreeHost(pinned);
    return 0;
}
