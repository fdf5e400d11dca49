// The official command path (normalise, apply_model with split and overlap,
// bags) through the public API on the CUDA backend, in every precision,
// against the fixtures' float64 references; these run the whole-track GPU
// path (ModelBackend::separate_track). The TrackPath tests check that path
// against the host path of engine/apply (FASTDEMUCS_HOST_APPLY=1) with the
// same backend: shifts, segment override, overlap, no split, long tracks
// with a partial last batch, bags, progress. The OnDevice tests check
// Separator::separate_on_device (mix and stems in GPU memory) against
// separate(). Skips itself without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <vector>

#include "cuda/branch.h"
#include "cuda/common.h"
#include "engine/apply.h"
#include "engine/backend.h"
#include "model/model.h"
#include "fastdemucs/fastdemucs.h"
#include "io/audio_file.h"
#include "test_pcm16_support.h"
#include "test_support.h"

using namespace fastdemucs;
using testing_support::Array;
using testing_support::ScopedEnv;


namespace {

// fp32: the engine contract. fp16 / bf16: per stem; the official autocast
// reaches 50.7 / 32.2 dB (tiny) and 47.9 / 28.8 dB (full6s) here.
double min_snr(Precision p) { return p == Precision::Fp32 ? 80.0 : p == Precision::Fp16 ? 45.0 : 25.0; }
const char* precision_name(Precision p) {
    return p == Precision::Fp32 ? "fp32" : p == Precision::Fp16 ? "fp16" : "bf16";
}

LoadParams cuda_params(const std::string& folder, const std::string& name, Precision precision) {
    LoadParams p = load_default_params();
    p.name = name;
    p.repo = testing_support::fixture(folder);
    p.device = DeviceKind::Cuda;
    p.device_index = 0;
    p.precision = precision;
    return p;
}

std::unique_ptr<Separator> load(const std::string& folder, const std::string& name, Precision precision) {
    return Separator::load(cuda_params(folder, name, precision));
}

void expect_stems_match(const Stems& stems, const Array& ref, Precision precision, const std::string& what) {
    ASSERT_EQ(ref.shape, (std::vector<int64_t>{int64_t(stems.names.size()), stems.channels, stems.samples}));
    const int64_t per_stem = stems.channels * stems.samples;
    for (size_t s = 0; s < stems.names.size(); s++) {
        const double snr = testing_support::snr_db(stems.stem(s), ref.data.data() + s * per_stem, per_stem);
        ::testing::Test::RecordProperty("snr_db_" + std::string(precision_name(precision)) + "_" + stems.names[s],
                                        std::to_string(snr));
        std::cout << "[ snr      ] " << what << " " << precision_name(precision) << " " << stems.names[s] << ": "
                  << snr << " dB\n";
        EXPECT_GE(snr, min_snr(precision)) << stems.names[s];
    }
}

SeparateParams no_shift(double overlap) {
    SeparateParams p = separate_default_params();
    p.shifts = 0;
    p.overlap = overlap;
    return p;
}

void tiny_overlap25(Precision precision) {
    auto sep = load("tiny", "tiny", precision);
    Audio mix = read_audio(testing_support::fixture("tiny/mix_4s.wav"));
    expect_stems_match(sep->separate(mix, no_shift(0.25)),
                       testing_support::read_npy(testing_support::fixture("tiny/tiny_separate_4s.npy")), precision,
                       "tiny 4s overlap 0.25");
}

void full6s_12s(Precision precision) {
    auto sep = load("full6s", "full6s", precision);
    Audio mix = read_audio(testing_support::fixture("full6s/mix_12s.wav"));
    expect_stems_match(sep->separate(mix, no_shift(0.25)), testing_support::read_full6s_separate_12s(), precision,
                       "full6s 12s");
}

// The GPU path must reproduce the host path around the same forward: the
// chunk batches may differ (the last batch of a view), nothing else.
constexpr double kTrackVsHost = 1e-5;

// `seconds` of audio from a mix: its repetitions, each with its own gain and
// sign so that no two chunks see the same samples.
Audio tiled(const Audio& mix, double seconds) {
    Audio out;
    out.channels = mix.channels;
    out.samplerate = mix.samplerate;
    out.samples = static_cast<int64_t>(seconds * mix.samplerate);
    out.data.resize(size_t(out.channels) * out.samples);
    for (int c = 0; c < out.channels; c++)
        for (int64_t t = 0; t < out.samples; t++) {
            const int64_t rep = t / mix.samples;
            const float gain = (rep % 2 ? -1.0f : 1.0f) * (0.6f + 0.1f * float(rep % 5));
            out.data[size_t(c) * out.samples + t] = gain * mix.channel(c)[t % mix.samples];
        }
    return out;
}

Audio head(const Audio& mix, double seconds) {
    Audio out = mix;
    out.samples = std::min<int64_t>(mix.samples, static_cast<int64_t>(seconds * mix.samplerate));
    out.data.clear();
    for (int c = 0; c < mix.channels; c++)
        out.data.insert(out.data.end(), mix.channel(c), mix.channel(c) + out.samples);
    return out;
}

// Separates with the GPU track path and with the host path; expects them equal to kTrackVsHost.
void expect_track_equals_host(const Separator& sep, const Audio& mix, const SeparateParams& p,
                              const std::string& what, double tol = kTrackVsHost) {
    Stems gpu = sep.separate(mix, p);
    Stems host;
    {
        ScopedEnv env("FASTDEMUCS_HOST_APPLY", "1");
        host = sep.separate(mix, p);
    }
    ASSERT_EQ(gpu.data.size(), host.data.size());
    ASSERT_EQ(gpu.data.size(), size_t(sep.sources().size()) * mix.channels * mix.samples);
    const int64_t per_stem = gpu.channels * gpu.samples;
    for (size_t s = 0; s < gpu.names.size(); s++) {
        const double rel = testing_support::relative_l2(gpu.stem(s), host.stem(s), per_stem);
        std::cout << "[ track    ] " << what << " " << gpu.names[s] << ": relative " << rel << "\n";
        EXPECT_LE(rel, tol) << what << " " << gpu.names[s];
    }
}

// separate_on_device of `mix` (uploaded first), downloaded: the stems as separate() returns them.
Stems separate_via_device(const Separator& sep, const Audio& mix, const SeparateParams& p) {
    using fastdemucs::cuda::DeviceBuffer;
    const size_t mix_count = mix.data.size(), stem_count = sep.sources().size() * mix_count;
    DeviceBuffer mix_d = fastdemucs::cuda::upload(mix.data.data(), mix_count * sizeof(float), "the test mix");
    DeviceBuffer stems_d(stem_count * sizeof(float), "the test stems");
    // NaNs first: a path that wrote nothing must not pass on a reused buffer's old stems.
    FD_CUDA(cudaMemset(stems_d.get(), 0xff, stem_count * sizeof(float)));
    DeviceAudio view;
    view.data = mix_d.as<float>();
    view.channels = mix.channels;
    view.samples = mix.samples;
    view.samplerate = mix.samplerate;
    sep.separate_on_device(view, stems_d.as<float>(), p);
    Stems out;
    out.names = sep.sources();
    out.channels = mix.channels;
    out.samples = mix.samples;
    out.samplerate = mix.samplerate;
    out.data.resize(stem_count);
    FD_CUDA(cudaMemcpy(out.data.data(), stems_d.get(), stem_count * sizeof(float), cudaMemcpyDeviceToHost));
    return out;
}

}  // namespace

// From GPU memory to GPU memory: the very stems of separate() (the same
// track path, the same shift offsets for the same seed), through the
// shifts' accumulator too; a track past the path's memory cap goes through
// host memory, with the same stems again.
TEST(SeparateCuda, OnDeviceEqualsSeparate) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("tiny/0d0b2025.th", "tiny/tiny.yaml", "tiny/mix_4s.wav");
    const Audio mix = read_audio(testing_support::fixture("tiny/mix_4s.wav"));
    for (Precision precision : {Precision::Fp32, Precision::Fp16}) {
        auto sep = load("tiny", "tiny", precision);
        SeparateParams p = no_shift(0.25);
        EXPECT_EQ(separate_via_device(*sep, mix, p).data, sep->separate(mix, p).data) << "shifts 0";
        p.shifts = 2;
        p.seed = 7;
        EXPECT_EQ(separate_via_device(*sep, mix, p).data, sep->separate(mix, p).data) << "shifts 2";
        p.shifts = 1;
        p.seed = 3;
        p.normalize = false;
        EXPECT_EQ(separate_via_device(*sep, mix, p).data, sep->separate(mix, p).data) << "shifts 1 unnormalised";
        {
            ScopedEnv env("FASTDEMUCS_TRACK_PATH_MAX_MIB", "1");  // declined: through the host
            p.seed = 4;
            const Stems routed = separate_via_device(*sep, mix, p);
            EXPECT_EQ(routed.data, sep->separate(mix, p).data) << "past the cap";
        }
    }
}

// A bag mixes its members' stems in host memory: the stems of separate().
TEST(SeparateCuda, OnDeviceBagEqualsSeparate) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("tiny/tiny_bag.yaml", "tiny/6325d78b.th", "tiny/mix_4s.wav");
    const Audio mix = read_audio(testing_support::fixture("tiny/mix_4s.wav"));
    auto bag = load("tiny", "tiny_bag", Precision::Fp32);
    const SeparateParams p = no_shift(0.25);
    EXPECT_EQ(separate_via_device(*bag, mix, p).data, bag->separate(mix, p).data);
}

// Host pointers, null pointers, a stems buffer too small and a wrong channel count are one-line errors.
TEST(SeparateCuda, OnDeviceRefusesMemoryOutsideTheGpu) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("tiny/0d0b2025.th", "tiny/tiny.yaml", "tiny/mix_4s.wav");
    const Audio mix = read_audio(testing_support::fixture("tiny/mix_4s.wav"));
    auto sep = load("tiny", "tiny", Precision::Fp32);
    std::vector<float> host_stems(sep->sources().size() * mix.data.size());
    fastdemucs::cuda::DeviceBuffer mix_d =
        fastdemucs::cuda::upload(mix.data.data(), mix.data.size() * sizeof(float), "the test mix");
    fastdemucs::cuda::DeviceBuffer stems_d(host_stems.size() * sizeof(float), "the test stems");
    DeviceAudio on_host{mix.data.data(), mix.channels, mix.samples, mix.samplerate};
    DeviceAudio on_device{mix_d.as<float>(), mix.channels, mix.samples, mix.samplerate};
    const SeparateParams p = no_shift(0.25);
    auto message = [&](const DeviceAudio& m, float* stems) {
        try {
            sep->separate_on_device(m, stems, p);
        } catch (const Error& e) {
            return std::string(e.what());
        }
        return std::string("no error");
    };
    EXPECT_NE(message(on_host, stems_d.as<float>()).find("the mix"), std::string::npos);
    EXPECT_NE(message(on_device, host_stems.data()).find("the stems"), std::string::npos);
    EXPECT_NE(message(on_device, nullptr).find("null"), std::string::npos);
    // A stems buffer of the mix's size (one stem's worth): refused before anything runs.
    fastdemucs::cuda::DeviceBuffer small(mix.data.size() * sizeof(float), "a buffer too small");
    EXPECT_NE(message(on_device, small.as<float>()).find("needs"), std::string::npos);
    DeviceAudio mono = on_device;
    mono.channels = 1;
    EXPECT_NE(message(mono, stems_d.as<float>()).find("channels"), std::string::npos);
    EXPECT_EQ(message(on_device, stems_d.as<float>()), "no error");
}

TEST(SeparateCuda, TinyOverlap25Fp32) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("tiny/0d0b2025.th", "tiny/tiny.yaml", "tiny/mix_4s.wav", "tiny/tiny_separate_4s.npy");
    tiny_overlap25(Precision::Fp32);
}

TEST(SeparateCuda, TinyOverlap25Fp16) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("tiny/0d0b2025.th", "tiny/tiny.yaml", "tiny/mix_4s.wav", "tiny/tiny_separate_4s.npy");
    tiny_overlap25(Precision::Fp16);
}

TEST(SeparateCuda, TinyOverlap25Bf16) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("tiny/0d0b2025.th", "tiny/tiny.yaml", "tiny/mix_4s.wav", "tiny/tiny_separate_4s.npy");
    tiny_overlap25(Precision::Bf16);
}

TEST(SeparateCuda, TinyOverlap50Fp32) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("tiny/0d0b2025.th", "tiny/tiny.yaml", "tiny/mix_4s.wav", "tiny/tiny_separate_4s_overlap50.npy");
    auto sep = load("tiny", "tiny", Precision::Fp32);
    Audio mix = read_audio(testing_support::fixture("tiny/mix_4s.wav"));
    expect_stems_match(sep->separate(mix, no_shift(0.5)),
                       testing_support::read_npy(testing_support::fixture("tiny/tiny_separate_4s_overlap50.npy")),
                       Precision::Fp32, "tiny 4s overlap 0.5");
}

TEST(SeparateCuda, TinyBagOfFourFp32) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("tiny/tiny_bag.yaml", "tiny/mix_4s.wav", "tiny/tiny_bag_separate_4s.npy");
    auto sep = load("tiny", "tiny_bag", Precision::Fp32);
    EXPECT_EQ(sep->num_models(), 4);
    Audio mix = read_audio(testing_support::fixture("tiny/mix_4s.wav"));
    expect_stems_match(sep->separate(mix, no_shift(0.25)),
                       testing_support::read_npy(testing_support::fixture("tiny/tiny_bag_separate_4s.npy")),
                       Precision::Fp32, "tiny_bag 4s");
}

TEST(SeparateCuda, Full6sCommandPath12sFp32) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("full6s/full6s-86db6bad.th", "full6s/full6s.yaml", "full6s/mix_12s.wav", "full6s/full6s_separate_12s.sources0-2.npy", "full6s/full6s_separate_12s.sources3-5.npy");
    full6s_12s(Precision::Fp32);
}

TEST(SeparateCuda, Full6sCommandPath12sFp16) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("full6s/full6s-86db6bad.th", "full6s/full6s.yaml", "full6s/mix_12s.wav", "full6s/full6s_separate_12s.sources0-2.npy", "full6s/full6s_separate_12s.sources3-5.npy");
    full6s_12s(Precision::Fp16);
}

TEST(SeparateCuda, Full6sCommandPath12sBf16) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("full6s/full6s-86db6bad.th", "full6s/full6s.yaml", "full6s/mix_12s.wav", "full6s/full6s_separate_12s.sources0-2.npy", "full6s/full6s_separate_12s.sources3-5.npy");
    full6s_12s(Precision::Bf16);
}

TEST(SeparateCuda, TrackPathEqualsHostPathShifts) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("tiny/0d0b2025.th", "tiny/tiny.yaml", "tiny/mix_4s.wav");
    auto sep = load("tiny", "tiny", Precision::Fp32);
    Audio mix = read_audio(testing_support::fixture("tiny/mix_4s.wav"));
    SeparateParams p = no_shift(0.25);
    p.shifts = 2;
    p.seed = 7;
    expect_track_equals_host(*sep, mix, p, "tiny shifts 2");
    p.shifts = 1;
    p.seed = 3;
    expect_track_equals_host(*sep, mix, p, "tiny shifts 1");
    p.shifts = 3;
    p.normalize = false;
    expect_track_equals_host(*sep, mix, p, "tiny shifts 3 unnormalised");
}

TEST(SeparateCuda, TrackPathEqualsHostPathSegmentAndOverlap) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("tiny/0d0b2025.th", "tiny/tiny.yaml", "tiny/mix_4s.wav");
    auto sep = load("tiny", "tiny", Precision::Fp32);
    Audio mix = read_audio(testing_support::fixture("tiny/mix_4s.wav"));
    SeparateParams p = no_shift(0.5);
    expect_track_equals_host(*sep, mix, p, "tiny overlap 0.5");
    p.segment = 1.0;  // each 1 s chunk zero-padded to the model's 2 s
    expect_track_equals_host(*sep, mix, p, "tiny segment 1 s overlap 0.5");
    p.overlap = 0.25;
    p.shifts = 2;
    p.seed = 11;
    p.transition_power = 2.0;
    expect_track_equals_host(*sep, mix, p, "tiny segment 1 s shifts 2 power 2");
    p.segment = 1.3;  // an odd chunk length: centre trims with an odd difference
    p.overlap = 0.1;
    expect_track_equals_host(*sep, mix, p, "tiny segment 1.3 s overlap 0.1");
}

TEST(SeparateCuda, TrackPathEqualsHostPathNoSplit) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("tiny/0d0b2025.th", "tiny/tiny.yaml", "tiny/mix_4s.wav");
    auto sep = load("tiny", "tiny", Precision::Fp32);
    Audio mix = head(read_audio(testing_support::fixture("tiny/mix_4s.wav")), 1.5);
    SeparateParams p = no_shift(0.25);
    p.split = false;
    expect_track_equals_host(*sep, mix, p, "tiny no split");
    p.shifts = 1;  // 1.5 s + up to 0.5 s of shift padding still fits the 2 s segment
    p.seed = 5;
    expect_track_equals_host(*sep, mix, p, "tiny no split shifts 1");
    Audio longer = head(read_audio(testing_support::fixture("tiny/mix_4s.wav")), 2.5);
    EXPECT_THROW(sep->separate(longer, p), Error);
}

// Past FASTDEMUCS_TRACK_PATH_MAX_MIB (or the free memory) the track path
// declines (the backend returns false, its output untouched) and the host
// path streams the track: the very stems of FASTDEMUCS_HOST_APPLY=1, bit
// for bit.
TEST(SeparateCuda, TrackPathDeclinesPastItsMemoryCap) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("tiny/0d0b2025.th", "tiny/tiny.yaml", "tiny/mix_4s.wav");
    Audio mix = tiled(read_audio(testing_support::fixture("tiny/mix_4s.wav")), 37.0);  // ~50 MB of track buffers
    const SeparateParams p = no_shift(0.25);
    {
        auto backend = make_cuda_backend(load_htdemucs(testing_support::fixture("tiny/0d0b2025.th")), 0,
                                         Precision::Fp32);
        std::vector<float> out;
        {
            ScopedEnv env("FASTDEMUCS_TRACK_PATH_MAX_MIB", "1");
            EXPECT_FALSE(backend->separate_track(mix.data.data(), mix.samples, p, {}, out, nullptr));
            EXPECT_TRUE(out.empty());
        }
        {
            ScopedEnv env("FASTDEMUCS_TRACK_PATH_MAX_MIB", "1000");
            EXPECT_TRUE(backend->separate_track(mix.data.data(), mix.samples, p, {}, out, nullptr));
            EXPECT_EQ(out.size(), size_t(4 * mix.channels * mix.samples));
        }
    }
    auto sep = load("tiny", "tiny", Precision::Fp32);
    Stems capped, host;
    {
        ScopedEnv env("FASTDEMUCS_TRACK_PATH_MAX_MIB", "1");
        capped = sep->separate(mix, p);
    }
    {
        ScopedEnv env("FASTDEMUCS_HOST_APPLY", "1");
        host = sep->separate(mix, p);
    }
    EXPECT_EQ(capped.data, host.data);
    expect_track_equals_host(*sep, mix, p, "tiny 37 s, no cap");  // and without the cap, the track path
}

TEST(SeparateCuda, TrackPathEqualsHostPathLongTrackAndBatches) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("tiny/0d0b2025.th", "tiny/tiny.yaml", "tiny/mix_4s.wav");
    auto sep = load("tiny", "tiny", Precision::Fp32);
    // 37 s: 25 chunks of 1.5 s stride, several batches and a partial last one.
    Audio mix = tiled(read_audio(testing_support::fixture("tiny/mix_4s.wav")), 37.0);
    SeparateParams p = no_shift(0.25);
    int64_t reported = 0, calls = 0, last_total = 0;
    p.progress = [&](const Progress& pr) {
        EXPECT_GT(pr.chunks_done, reported);
        reported = pr.chunks_done;
        last_total = pr.chunks_total;
        calls++;
    };
    Stems with_progress = sep->separate(mix, p);  // the GPU path reports each batch once it is done
    EXPECT_EQ(last_total, 25);
    EXPECT_EQ(reported, 25);
    EXPECT_GE(calls, 4);
    p.progress = nullptr;
    const Stems quiet = sep->separate(mix, p);  // reporting changes nothing
    EXPECT_LE(testing_support::relative_l2(quiet.data.data(), with_progress.data.data(), int64_t(quiet.data.size())),
              1e-6);
    expect_track_equals_host(*sep, mix, p, "tiny 37 s");
    p.progress = nullptr;
    p.batch_size = 3;
    expect_track_equals_host(*sep, mix, p, "tiny 37 s batch 3");
    p.batch_size = 0;
    p.shifts = 2;
    p.seed = 2;
    expect_track_equals_host(*sep, mix, p, "tiny 37 s shifts 2");
}

// LoadParams::warm_up captures the full batch's graph at load: the first
// separation replays it, with the stems of a model loaded without it; after
// release_gpus() a new model runs on a fresh context, same stems again.
TEST(SeparateCuda, WarmUpAndReleaseGpusKeepTheStems) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("tiny/0d0b2025.th", "tiny/tiny.yaml", "tiny/mix_4s.wav");
    const Audio mix = tiled(read_audio(testing_support::fixture("tiny/mix_4s.wav")), 37.0);  // full batches
    const SeparateParams p = no_shift(0.25);
    const Stems cold = load("tiny", "tiny", Precision::Fp32)->separate(mix, p);
    LoadParams warm_params = cuda_params("tiny", "tiny", Precision::Fp32);
    warm_params.warm_up = true;
    const Stems warm = Separator::load(warm_params)->separate(mix, p);
    ASSERT_EQ(warm.data.size(), cold.data.size());
    EXPECT_LE(testing_support::relative_l2(warm.data.data(), cold.data.data(), int64_t(cold.data.size())), 1e-6);
    release_gpus();
    const Stems again = Separator::load(warm_params)->separate(mix, p);
    ASSERT_EQ(again.data.size(), cold.data.size());
    EXPECT_LE(testing_support::relative_l2(again.data.data(), cold.data.data(), int64_t(cold.data.size())), 1e-6);
}

// The warm-up runs the forward's matrix products once on the idle arena
// before its capture (FASTDEMUCS_GEMM_PRIME: cuBLAS's kernels then load off
// the capture): garbage in the arena and the primed kernels change nothing,
// to the bit, in float16 (where cuBLASLt's epilogue products run too). Each
// model on a fresh context (release_gpus() between them: cuBLASLt's handle
// is made again).
TEST(SeparateCuda, WarmUpPrimeLeavesTheStemsBitIdentical) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("tiny/0d0b2025.th", "tiny/tiny.yaml", "tiny/mix_4s.wav");
    const Audio mix = tiled(read_audio(testing_support::fixture("tiny/mix_4s.wav")), 37.0);  // full batches
    const SeparateParams p = no_shift(0.25);
    LoadParams params = cuda_params("tiny", "tiny", Precision::Fp16);
    params.warm_up = true;
    Stems unprimed;
    {
        ScopedEnv off("FASTDEMUCS_GEMM_PRIME", "0");
        unprimed = Separator::load(params)->separate(mix, p);
    }
    release_gpus();  // a fresh context: nothing of the first model's kernels loaded
    for (const char* threads : {"", "1"}) {
        ScopedEnv prime("FASTDEMUCS_GEMM_PRIME", threads);
        const Stems primed = Separator::load(params)->separate(mix, p);
        ASSERT_EQ(primed.data.size(), unprimed.data.size());
        EXPECT_EQ(std::memcmp(primed.data.data(), unprimed.data.data(), primed.data.size() * sizeof(float)), 0)
            << "FASTDEMUCS_GEMM_PRIME=" << threads;
        release_gpus();
    }
}

// The time branch's inner layers on a stream and a stack of their own
// (FASTDEMUCS_BRANCH_STREAMS, float16 / bfloat16) run the same kernels as
// with one stream: the stems are bit-identical, replayed as a graph and
// eager, and the branch did run (its forks counted).
static void expect_branch_streams_bit_identical(const std::string& folder, const std::string& name, const Audio& mix,
                                                const std::vector<Precision>& precisions) {
    const SeparateParams p = no_shift(0.25);
    for (const Precision precision : precisions) {
        for (const char* graphs_off : {"", "1"}) {
            ScopedEnv no_graph("FASTDEMUCS_NO_GRAPH", graphs_off);
            const LoadParams params = cuda_params(folder, name, precision);
            Stems one_stream;
            const int64_t forks_before = fastdemucs::cuda::Branch::forks_queued();
            {
                ScopedEnv off("FASTDEMUCS_BRANCH_STREAMS", "0");
                one_stream = Separator::load(params)->separate(mix, p);
            }
            EXPECT_EQ(fastdemucs::cuda::Branch::forks_queued(), forks_before);
            const Stems two = Separator::load(params)->separate(mix, p);
            EXPECT_GT(fastdemucs::cuda::Branch::forks_queued(), forks_before);
            ASSERT_EQ(two.data.size(), one_stream.data.size());
            EXPECT_EQ(std::memcmp(two.data.data(), one_stream.data.data(), two.data.size() * sizeof(float)), 0)
                << name << " precision " << int(precision) << (*graphs_off ? ", no graphs" : ", graphs");
        }
    }
}

TEST(SeparateCuda, BranchStreamsLeaveTheStemsBitIdentical) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("tiny/0d0b2025.th", "tiny/tiny.yaml", "tiny/mix_4s.wav");
    const Audio mix = tiled(read_audio(testing_support::fixture("tiny/mix_4s.wav")), 37.0);
    expect_branch_streams_bit_identical("tiny", "tiny", mix, {Precision::Fp16, Precision::Bf16});
}

// The same through the htdemucs_6s architecture (no channel up / down
// samplers: the transformer works on copies of the last encoders' outputs).
TEST(SeparateCuda, Full6sBranchStreamsLeaveTheStemsBitIdentical) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("full6s/full6s-86db6bad.th", "full6s/full6s.yaml", "full6s/mix_12s.wav");
    const Audio mix = read_audio(testing_support::fixture("full6s/mix_12s.wav"));
    expect_branch_streams_bit_identical("full6s", "full6s", mix, {Precision::Fp16});
}

TEST(SeparateCuda, TrackPathEqualsHostPathBag) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("tiny/tiny_bag.yaml", "tiny/mix_4s.wav");
    auto sep = load("tiny", "tiny_bag", Precision::Fp32);
    Audio mix = read_audio(testing_support::fixture("tiny/mix_4s.wav"));
    SeparateParams p = no_shift(0.25);
    p.shifts = 1;
    p.seed = 9;
    expect_track_equals_host(*sep, mix, p, "tiny_bag shifts 1");
}

TEST(SeparateCuda, TrackPathApplySingleModelWithOffsets) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("tiny/0d0b2025.th", "tiny/mix_3s.wav");
    auto model = load_htdemucs(testing_support::fixture("tiny/0d0b2025.th"));
    auto backend = make_cuda_backend(model, 0, Precision::Fp32);
    Audio mix = read_audio(testing_support::fixture("tiny/mix_3s.wav"));
    SeparateParams p = no_shift(0.25);
    p.shifts = 2;
    const std::vector<int64_t> offsets = {1234, 22050};
    auto gpu = apply_single_model(*backend, mix.data.data(), mix.channels, mix.samples, p, offsets);
    std::vector<float> host;
    {
        ScopedEnv env("FASTDEMUCS_HOST_APPLY", "1");
        host = apply_single_model(*backend, mix.data.data(), mix.channels, mix.samples, p, offsets);
    }
    ASSERT_EQ(gpu.size(), host.size());
    EXPECT_LE(testing_support::relative_l2(gpu.data(), host.data(), host.size()), kTrackVsHost);
    // An offset of max_shift is the unshifted track (as on the host).
    p.shifts = 1;
    auto at_max = apply_single_model(*backend, mix.data.data(), mix.channels, mix.samples, p, {22050});
    p.shifts = 0;
    auto plain = apply_single_model(*backend, mix.data.data(), mix.channels, mix.samples, p, {});
    EXPECT_LE(testing_support::relative_l2(at_max.data(), plain.data(), plain.size()), 1e-6);
}

TEST(SeparateCuda, TrackPathEqualsHostPathFull6s) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("full6s/full6s-86db6bad.th", "full6s/full6s.yaml", "full6s/mix_12s.wav");
    auto sep = load("full6s", "full6s", Precision::Fp32);
    Audio mix = read_audio(testing_support::fixture("full6s/mix_12s.wav"));
    SeparateParams p = no_shift(0.25);
    p.shifts = 1;
    p.seed = 4;
    expect_track_equals_host(*sep, mix, p, "full6s 12 s shifts 1");
}

// The 16-bit stems converted on the GPU (peaks, clip, rounding, interleave)
// equal the engine's host conversion of the float stems, in every clip mode:
// with and without shifts, with every stem rescaled and with only some, in
// fp16, and when the track path declines (the host conversion then runs).
TEST(SeparateCuda, Pcm16StemsAreTheFloatStemsConverted) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    Audio mix = read_audio(testing_support::fixture("tiny/mix_4s.wav"));
    for (float& v : mix.data) v *= 10.0f;
    const Audio longer = tiled(mix, 21.0);
    SeparateParams p = no_shift(0.25);
    auto sep = load("tiny", "tiny", Precision::Fp32);
    testing_support::expect_pcm16_equals_converted(*sep, longer, p, "tiny fp32");
    {
        // Under rescale the track path converts each region with the divisor
        // 1 while the GPU works and converts a stem again only when its peak
        // turns out past 1 / 1.01: a mix scaled so that the loudest stem is
        // past it and the quietest is not. (The stems scale with the mix:
        // the model normalises its input and scales its output back.)
        auto stem_peaks = [](const Stems& stems) {
            std::vector<float> peaks(stems.names.size(), 0.0f);
            const size_t per_stem = size_t(stems.channels) * size_t(stems.samples);
            for (size_t i = 0; i < stems.data.size(); i++)
                peaks[i / per_stem] = pcm::max_abs(peaks[i / per_stem], stems.data[i]);
            return peaks;
        };
        // Without shifts, with one (the stems are the shifted view's window)
        // and with two (their average); each its own gain.
        SeparateParams q = p;
        q.seed = 5;
        for (int shifts : {0, 1, 2}) {
            q.shifts = shifts;
            const std::string what = "tiny fp32, some stems rescaled, " + std::to_string(shifts) + " shifts";
            std::vector<float> peaks = stem_peaks(sep->separate(longer, q));
            const float low = *std::min_element(peaks.begin(), peaks.end());
            const float high = *std::max_element(peaks.begin(), peaks.end());
            ASSERT_GT(high, 1.1f * low) << what << ": the stems' peaks are too close to straddle the threshold";
            const float gain = 2.0f / (high + 1.01f * low);
            Audio mixed = longer;
            for (float& v : mixed.data) v *= gain;
            peaks = stem_peaks(sep->separate(mixed, q));
            int rescaled = 0;
            for (float peak : peaks) rescaled += pcm::rescale_divisor(peak) != 1.0f;
            ASSERT_GT(rescaled, 0) << what;
            ASSERT_LT(rescaled, int(peaks.size())) << what;
            testing_support::expect_pcm16_equals_converted(*sep, mixed, q, what);
        }
    }
    {
        ScopedEnv cap("FASTDEMUCS_TRACK_PATH_MAX_MIB", "1");
        testing_support::expect_pcm16_equals_converted(*sep, longer, p, "tiny fp32, host path");
    }
    p.shifts = 1;  // the command's default: the stems are the shifted view's window
    p.seed = 5;
    testing_support::expect_pcm16_equals_converted(*sep, longer, p, "tiny fp32, 1 shift");
    p.shifts = 2;
    testing_support::expect_pcm16_equals_converted(*sep, longer, p, "tiny fp32, 2 shifts");
    testing_support::expect_pcm16_equals_converted(*load("tiny", "tiny", Precision::Fp16), mix, no_shift(0.25),
                                                   "tiny fp16");
}
