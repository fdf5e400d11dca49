// CPU benchmark: one HTDemucs checkpoint (default: the full6s fixture, the
// htdemucs_6s architecture) on this machine's CPU.
//   cpu_bench CHECKPOINT THREADS [REPEATS]
// Prints: FLOPs of one segment, median seconds per segment forward, seconds
// to separate one minute of audio through the official command path
// (shifts=1, overlap 0.25), achieved GFLOP/s and peak RSS.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "engine/apply.h"
#include "engine/backend.h"
#include "model/flops.h"
#include "model/model.h"

using namespace fastdemucs;
using Clock = std::chrono::steady_clock;

static double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s CHECKPOINT THREADS [REPEATS]\n", argv[0]);
        return 2;
    }
    try {
        auto model = load_htdemucs(argv[1]);
        const int threads = std::atoi(argv[2]);
        const int repeats = argc > 3 ? std::atoi(argv[3]) : 5;
        const auto& cfg = model->config;
        const int64_t L = cfg.segment_samples();
        const int C = cfg.audio_channels, S = cfg.num_sources();
        const FlopCount flops = count_forward_flops(cfg, model->plan);

        // Deterministic music-like input: a few tones and noise bursts.
        std::mt19937 rng(1234);
        std::normal_distribution<float> noise(0.0f, 0.05f);
        const int64_t minute = int64_t(cfg.samplerate) * 60;
        std::vector<float> track(int64_t(C) * minute);
        for (int c = 0; c < C; c++)
            for (int64_t i = 0; i < minute; i++) {
                const double t = double(i) / cfg.samplerate;
                track[c * minute + i] = float(0.3 * std::sin(2 * M_PI * 220 * t) + 0.2 * std::sin(2 * M_PI * 330.5 * t + c) +
                                              (std::fmod(t, 0.5) < 0.05 ? noise(rng) * 4 : noise(rng)));
            }

        auto backend = make_cpu_backend(model, threads);
        std::vector<float> out(int64_t(S) * C * L);
        std::vector<double> times;
        for (int r = 0; r < repeats + 1; r++) {  // the first run warms the buffer pool
            auto t0 = Clock::now();
            backend->forward(track.data(), 1, L, out.data());
            if (r > 0) times.push_back(seconds_since(t0));
        }
        std::sort(times.begin(), times.end());
        const double median = times[times.size() / 2];
        struct rusage usage;
        getrusage(RUSAGE_SELF, &usage);
        const double segment_rss_mib = usage.ru_maxrss / 1024.0;

        SeparateParams params = separate_default_params();  // official defaults: shifts 1, overlap 0.25
        params.threads = threads;
        params.seed = 1;
        std::vector<BagMember> bag(1);
        bag[0].backend = std::move(backend);
        auto t0 = Clock::now();
        separate_with_bag(bag, track.data(), C, minute, params);
        const double per_minute = seconds_since(t0);

        getrusage(RUSAGE_SELF, &usage);
        std::printf("checkpoint        %s\n", argv[1]);
        std::printf("threads           %d\n", threads);
        std::printf("segment           %.2f s (%lld samples)\n", cfg.segment_seconds(), (long long)L);
        std::printf("flops/segment     %.1f GFLOP (conv %.1f, proj %.1f, attn %.1f, fft %.1f)\n", flops.total() / 1e9,
                    flops.convolutions / 1e9, flops.projections / 1e9, flops.attention / 1e9, flops.spectral / 1e9);
        std::printf("segment forward   median %.3f s over %d (min %.3f, max %.3f)\n", median, repeats, times.front(),
                    times.back());
        std::printf("achieved          %.1f GFLOP/s\n", flops.total() / median / 1e9);
        std::printf("minute of audio   %.2f s (command path, shifts=1, overlap 0.25)\n", per_minute);
        std::printf("peak RSS          %.0f MiB after the segment forwards, %.0f MiB after the minute\n",
                    segment_rss_mib, usage.ru_maxrss / 1024.0);
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "cpu_bench: %s\n", e.what());
        return 1;
    }
}
