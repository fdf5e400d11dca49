// GPU benchmark: a whole track through one model on the CUDA backend.
//   gpu_bench CHECKPOINT TRACK.wav OUT_DIR [RUNS]
// For each precision (fp32, fp16, bf16): separates TRACK with the official
// command path's settings (shifts=1, overlap 0.25, seed 1), timing from
// samples in host memory to stems in host memory (median of RUNS after one
// warm-up, which also captures the CUDA graphs), and writes the stems to
// OUT_DIR/stems_<precision>.npy ([S, C, T] float32) for the fidelity check
// against the float64 reference (bench/official_baseline.py). Prints one
// JSON line per precision: median and all times, achieved TFLOP/s from the
// FLOP count, peak GPU memory in use; the same separation as 16-bit stems
// (Separator::separate_pcm16, converted on the GPU); the model alone on one
// batch; the whole track into an output vector reused from the previous call;
// and the whole track from GPU memory to GPU memory (separate_on_device).
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cuda/common.h"
#include "engine/apply.h"
#include "engine/backend.h"
#include "fastdemucs/fastdemucs.h"
#include "io/audio_file.h"
#include "model/flops.h"
#include "model/model.h"
#include "npy_file.h"

using namespace fastdemucs;
using fastdemucs_bench::write_npy;
using Clock = std::chrono::steady_clock;

// The seconds of `runs` calls of fn() after `warmups` untimed ones, in call order.
template <typename Fn>
static std::vector<double> timed_runs(int runs, int warmups, Fn fn) {
    std::vector<double> times;
    for (int r = 0; r < warmups + runs; r++) {
        const auto t0 = Clock::now();
        fn();
        if (r >= warmups) times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
    return times;
}

static double median_of(std::vector<double> times) {
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
}

static size_t used_gpu_bytes() {
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    return total_b - free_b;
}

int main(int argc, char** argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: %s CHECKPOINT TRACK.wav OUT_DIR [RUNS]\n", argv[0]);
        return 2;
    }
    try {
        const std::string checkpoint = argv[1], out_dir = argv[3];
        const int runs = argc > 4 ? std::atoi(argv[4]) : 5;
        if (runs < 1) throw std::runtime_error("RUNS must be at least 1");
        Audio track = read_audio(argv[2]);
        auto model = load_htdemucs(checkpoint);
        const FlopCount flops = count_forward_flops(model->config, model->plan);
        SeparateParams params = separate_default_params();
        params.seed = 1;
        // Fidelity is checked against the official code run with the same
        // settings; its shift offsets come from Python's RNG, so compare at
        // shifts = 0 unless told otherwise (BENCH_SHIFTS).
        params.shifts = std::getenv("BENCH_SHIFTS") ? std::atoi(std::getenv("BENCH_SHIFTS")) : 0;
        const int64_t chunks = count_chunks(track.samples, model->config.segment_samples(), params, track.samplerate);
        const double total_flops = flops.total() * double(chunks);
        const size_t baseline = used_gpu_bytes();

        const std::pair<const char*, Precision> precisions[] = {
            {"fp32", Precision::Fp32}, {"fp16", Precision::Fp16}, {"bf16", Precision::Bf16}};
        // GPU_BENCH_PRECISIONS=fp16,fp32 picks precisions; GPU_BENCH_NCU=1 only
        // runs one batched forward per precision between cudaProfilerStart/Stop
        // (for `ncu --profile-from-start off`).
        const char* only = std::getenv("GPU_BENCH_PRECISIONS");
        const bool ncu = std::getenv("GPU_BENCH_NCU") != nullptr;
        for (const auto& [name, precision] : precisions) {
            if (only && ("," + std::string(only) + ",").find("," + std::string(name) + ",") == std::string::npos)
                continue;
            if (ncu) {
                auto backend = make_cuda_backend(model, 0, precision);
                const int batch = backend->max_batch();
                const int64_t L = model->config.segment_samples();
                std::vector<float> in(int64_t(batch) * track.channels * L),
                    out(int64_t(batch) * model->config.num_sources() * track.channels * L);
                for (int64_t i = 0; i < int64_t(in.size()); i++) in[i] = track.data[i % track.data.size()];
                backend->forward(in.data(), batch, L, out.data());
                cudaProfilerStart();
                backend->forward(in.data(), batch, L, out.data());
                cudaProfilerStop();
                std::printf("{\"mode\": \"ncu_%s\", \"batch\": %d}\n", name, batch);
                continue;
            }
            LoadParams load = load_default_params();
            load.checkpoint = checkpoint;
            load.device = DeviceKind::Cuda;
            load.precision = precision;
            auto separator = Separator::load(load);
            Stems stems = separator->separate(track, params);  // warm-up: allocation, plans, graph capture
            const std::vector<double> times = timed_runs(runs, 0, [&] { stems = separator->separate(track, params); });
            // The same separation as 16-bit stems, clip mode rescale (the
            // command's default output): converted on the GPU, half the bytes down.
            std::printf("{\"mode\": \"fastdemucs_%s_pcm16\", \"median_s\": %.5f}\n", name,
                        median_of(timed_runs(runs, 1, [&] {
                            separator->separate_pcm16(track, params, ClipMode::Rescale);
                        })));
            // Peak memory: one more untimed run with the device memory in use
            // sampled every 0.2 ms on a thread (after a call returns, the
            // track's own buffers are already gone).
            size_t peak = used_gpu_bytes();
            {
                std::atomic<bool> running{true};
                std::thread sampler([&] {
                    while (running.load()) {
                        peak = std::max(peak, used_gpu_bytes());
                        std::this_thread::sleep_for(std::chrono::microseconds(200));
                    }
                });
                struct Stop {  // also when separate() throws
                    std::atomic<bool>& running;
                    std::thread& sampler;
                    ~Stop() {
                        running = false;
                        sampler.join();
                    }
                } stop{running, sampler};
                stems = separator->separate(track, params);
            }
            write_npy(out_dir + "/stems_" + name + ".npy", stems.data.data(),
                      {int64_t(stems.names.size()), stems.channels, stems.samples}, false);

            // The model alone: one batch of max_batch() chunks, already on the
            // GPU side of the copy (graph replay after two warm-up calls).
            auto backend = make_cuda_backend(model, 0, precision);
            const int batch = backend->max_batch();
            const int64_t L = model->config.segment_samples();
            std::vector<float> in(int64_t(batch) * track.channels * L), out(int64_t(batch) * model->config.num_sources() * track.channels * L);
            for (int64_t i = 0; i < int64_t(in.size()); i++) in[i] = track.data[i % track.data.size()];
            const double fwd_median =
                median_of(timed_runs(runs, 2, [&] { backend->forward(in.data(), batch, L, out.data()); }));
            std::printf("{\"mode\": \"fastdemucs_%s_forward_batch\", \"batch\": %d, \"median_s\": %.5f, \"per_chunk_ms\": %.2f, \"tflops\": %.2f}\n",
                        name, batch, fwd_median, fwd_median / batch * 1e3, flops.total() * batch / fwd_median / 1e12);
            // The whole track again into an output vector that already has
            // its size (a catalogue's next track): no host page faults, so
            // this is the GPU's time plus the last region's download.
            std::vector<float> reused;
            const std::vector<int64_t> offsets(size_t(std::max(0, params.shifts)), 0);
            const double reused_median = median_of(timed_runs(runs, 1, [&] {
                if (!backend->separate_track(track.data.data(), track.samples, params, offsets, reused, nullptr))
                    throw std::runtime_error("no track path");
            }));
            std::printf("{\"mode\": \"fastdemucs_%s_reused_output\", \"median_s\": %.5f}\n", name, reused_median);
            // The track and the stems in GPU memory (separate_on_device):
            // what the official rows without "host_to_host" time.
            {
                const size_t mix_bytes = track.data.size() * sizeof(float);
                const cuda::DeviceBuffer mix_d = cuda::upload(track.data.data(), mix_bytes, "the track");
                const cuda::DeviceBuffer stems_d(mix_bytes * stems.names.size(), "the stems");
                const DeviceAudio view{mix_d.as<float>(), track.channels, track.samples, track.samplerate};
                std::printf("{\"mode\": \"fastdemucs_%s_device_resident\", \"median_s\": %.5f}\n", name,
                            median_of(timed_runs(runs, 1, [&] {
                                separator->separate_on_device(view, stems_d.as<float>(), params);
                            })));
            }
            const double median = median_of(times);
            std::printf("{\"mode\": \"fastdemucs_%s\", \"median_s\": %.5f, \"times_s\": [", name, median);
            for (size_t i = 0; i < times.size(); i++) std::printf("%s%.5f", i ? ", " : "", times[i]);
            std::printf("], \"chunks\": %lld, \"gflop\": %.1f, \"tflops\": %.2f, \"peak_gpu_mib\": %.0f}\n",
                        (long long)chunks, total_flops / 1e9, total_flops / median / 1e12,
                        double(peak - baseline) / (1 << 20));
            std::fflush(stdout);
        }
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "gpu_bench: %s\n", e.what());
        return 1;
    }
}
