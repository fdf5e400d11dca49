// The CUDA forward against the official code's float64 references: block by
// block on the tiny model, end to end on full6s, in every precision; batch,
// CUDA-graph and attention-path consistency; device errors. Every test skips
// itself without a GPU.
#include <gtest/gtest.h>

#include <filesystem>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <map>

#include "engine/backend.h"
#include "fastdemucs/fastdemucs.h"
#include "io/audio_file.h"
#include "model/model.h"
#include "test_forward_support.h"
#include "test_support.h"

using namespace fastdemucs;
using testing_support::Array;
using testing_support::ScopedEnv;


namespace {

// float32 engine contract: relative L2 error <= 1e-4 (80 dB).
constexpr double kMaxRelativeError = 1e-4;

const char* precision_name(Precision p) {
    return p == Precision::Fp32 ? "fp32" : p == Precision::Fp16 ? "fp16" : "bf16";
}

// `count` chunks of `length` samples from a [C, total] mix, `hop` apart: [count, C, length].
std::vector<float> chunks(const Audio& mix, int count, int64_t length, int64_t hop) {
    std::vector<float> out(size_t(count) * mix.channels * length, 0.0f);
    for (int i = 0; i < count; i++)
        for (int c = 0; c < mix.channels; c++)
            for (int64_t t = 0; t < length && i * hop + t < mix.samples; t++)
                out[(size_t(i) * mix.channels + c) * length + t] = mix.channel(c)[i * hop + t];
    return out;
}

void full6s_forward(Precision precision, double min_snr) {
    auto backend = make_cuda_backend(load_htdemucs(testing_support::fixture("full6s/full6s-86db6bad.th")), 0, precision);
    ASSERT_NO_FATAL_FAILURE(forward_testing::expect_full6s_forward(*backend, min_snr, precision_name(precision)));
}

}  // namespace

TEST(ForwardCuda, TinyMatchesEveryBlockFp32) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("tiny/0d0b2025.th", "tiny/tiny_forward_1.5s.npz");
    auto model = load_htdemucs(testing_support::fixture("tiny/0d0b2025.th"));
    auto refs = testing_support::read_npz(testing_support::fixture("tiny/tiny_forward_1.5s.npz"));
    auto backend = make_cuda_backend(model, 0, Precision::Fp32);
    auto taps = forward_testing::run_tapped(*backend, refs.at("input"));

    ASSERT_NO_FATAL_FAILURE(forward_testing::expect_tiny_blocks_match(taps, refs, kMaxRelativeError));
}

// Reduced precision, block by block: informational (printed), only the output is checked loosely
// here; the precision contract is checked on the command-path fixtures (test_separate_cuda).
TEST(ForwardCuda, TinyBlocksReducedPrecisionReport) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("tiny/0d0b2025.th", "tiny/tiny_forward_1.5s.npz");
    auto model = load_htdemucs(testing_support::fixture("tiny/0d0b2025.th"));
    auto refs = testing_support::read_npz(testing_support::fixture("tiny/tiny_forward_1.5s.npz"));
    for (Precision p : {Precision::Fp16, Precision::Bf16}) {
        auto backend = make_cuda_backend(model, 0, p);
        auto taps = forward_testing::run_tapped(*backend, refs.at("input"));
        for (const char* name : {"encoder.0", "encoder.3", "tencoder.3", "crosstransformer.0", "decoder.3.0",
                                 "tdecoder.3.0", "output"}) {
            const Array& ref = refs.at(name);
            ASSERT_TRUE(taps.count(name)) << name;
            ASSERT_EQ(int64_t(taps.at(name).data.size()), ref.numel()) << name;
            const double snr = testing_support::snr_db(taps.at(name).data.data(), ref.data.data(), ref.numel());
            std::cout << "[ snr      ] tiny forward " << precision_name(p) << " " << name << ": " << snr << " dB\n";
            EXPECT_GE(snr, 10.0) << precision_name(p) << " " << name;  // catches a broken path, not the contract
        }
    }
}

// Thresholds: fp32 the engine contract; fp16 / bf16 the official autocast's own figures on this fixture.
TEST(ForwardCuda, Full6sForward3sFp32) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("full6s/full6s-86db6bad.th", "full6s/mix_3s.wav", "full6s/full6s_forward_3s.npy");
    full6s_forward(Precision::Fp32, 80.0);
}

TEST(ForwardCuda, Full6sForward3sFp16) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("full6s/full6s-86db6bad.th", "full6s/mix_3s.wav", "full6s/full6s_forward_3s.npy");
    full6s_forward(Precision::Fp16, 32.8);
}

TEST(ForwardCuda, Full6sForward3sBf16) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("full6s/full6s-86db6bad.th", "full6s/mix_3s.wav", "full6s/full6s_forward_3s.npy");
    full6s_forward(Precision::Bf16, 14.6);
}

TEST(ForwardCuda, BatchOfThreeEqualsThreeSingles) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("tiny/0d0b2025.th", "tiny/mix_4s.wav");
    auto model = load_htdemucs(testing_support::fixture("tiny/0d0b2025.th"));
    Audio mix = read_audio(testing_support::fixture("tiny/mix_4s.wav"));
    auto backend = make_cuda_backend(model, 0, Precision::Fp32);
    const int S = model->config.num_sources(), C = mix.channels;
    const int64_t L = model->config.segment_samples() - 1000;  // shorter than the segment: padded inside
    const std::vector<float> in = chunks(mix, 3, L, 40000);
    std::vector<float> batched(size_t(3) * S * C * L);
    backend->forward(in.data(), 3, L, batched.data());
    for (int i = 0; i < 3; i++) {
        std::vector<float> single(size_t(S) * C * L);
        backend->forward(in.data() + size_t(i) * C * L, 1, L, single.data());
        const double err = testing_support::relative_l2(batched.data() + size_t(i) * S * C * L, single.data(),
                                                        int64_t(single.size()));
        EXPECT_LE(err, 1e-5) << "chunk " << i;
    }
}

TEST(ForwardCuda, Full6sBatchOfTwoEqualsSingles) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("full6s/full6s-86db6bad.th", "full6s/mix_12s.wav");
    auto model = load_htdemucs(testing_support::fixture("full6s/full6s-86db6bad.th"));
    Audio mix = read_audio(testing_support::fixture("full6s/mix_12s.wav"));
    auto backend = make_cuda_backend(model, 0, Precision::Fp32);
    const int S = model->config.num_sources(), C = mix.channels;
    const int64_t L = model->config.segment_samples();
    const std::vector<float> in = chunks(mix, 2, L, 100000);
    std::vector<float> batched(size_t(2) * S * C * L);
    backend->forward(in.data(), 2, L, batched.data());
    for (int i = 0; i < 2; i++) {
        std::vector<float> single(size_t(S) * C * L);
        backend->forward(in.data() + size_t(i) * C * L, 1, L, single.data());
        const double err = testing_support::relative_l2(batched.data() + size_t(i) * S * C * L, single.data(),
                                                        int64_t(single.size()));
        EXPECT_LE(err, 1e-5) << "chunk " << i;
    }
}

// First call eager, second captured into a graph, later ones replayed: all
// must equal a backend that never uses graphs, and replays must read the new input.
TEST(ForwardCuda, GraphReplayEqualsEager) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("tiny/0d0b2025.th", "tiny/mix_4s.wav");
    auto model = load_htdemucs(testing_support::fixture("tiny/0d0b2025.th"));
    Audio mix = read_audio(testing_support::fixture("tiny/mix_4s.wav"));
    const int S = model->config.num_sources(), C = mix.channels, B = 2;
    const int64_t L = model->config.segment_samples();
    const std::vector<float> a = chunks(mix, B, L, 30000);
    const std::vector<float> b = chunks(mix, B, L, 70000);
    const size_t n = size_t(B) * S * C * L;

    std::vector<float> ref_a(n), ref_b(n);
    {
        ScopedEnv no_graph("FASTDEMUCS_NO_GRAPH", "1");
        auto eager = make_cuda_backend(model, 0, Precision::Fp32);
        eager->forward(a.data(), B, L, ref_a.data());
        eager->forward(b.data(), B, L, ref_b.data());
        eager->forward(a.data(), B, L, ref_a.data());  // eager is repeatable too
    }
    auto backend = make_cuda_backend(model, 0, Precision::Fp32);
    std::vector<float> out(n);
    const std::vector<const std::vector<float>*> inputs = {&a, &b, &a, &b, &a};
    for (size_t call = 0; call < inputs.size(); call++) {
        backend->forward(inputs[call]->data(), B, L, out.data());
        const std::vector<float>& ref = inputs[call] == &a ? ref_a : ref_b;
        const double err = testing_support::relative_l2(out.data(), ref.data(), int64_t(n));
        EXPECT_LE(err, 1e-6) << "call " << call;
    }
}

TEST(ForwardCuda, FusedAttentionEqualsCublasAttention) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("full6s/full6s-86db6bad.th", "full6s/mix_3s.wav");
    auto model = load_htdemucs(testing_support::fixture("full6s/full6s-86db6bad.th"));
    Audio mix = read_audio(testing_support::fixture("full6s/mix_3s.wav"));
    const int S = model->config.num_sources();
    std::vector<float> fused(size_t(S) * mix.channels * mix.samples), blas(fused.size());
    make_cuda_backend(model, 0, Precision::Fp32)->forward(mix.data.data(), 1, mix.samples, fused.data());
    {
        ScopedEnv path("FASTDEMUCS_ATTENTION", "cublas");
        make_cuda_backend(model, 0, Precision::Fp32)->forward(mix.data.data(), 1, mix.samples, blas.data());
    }
    EXPECT_LE(testing_support::relative_l2(fused.data(), blas.data(), int64_t(fused.size())), 1e-5);
}

TEST(ForwardCuda, MaxBatchIsPositiveAndWorks) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("tiny/0d0b2025.th");
    auto model = load_htdemucs(testing_support::fixture("tiny/0d0b2025.th"));
    auto backend = make_cuda_backend(model, 0, Precision::Fp16);
    const int batch = backend->max_batch();
    EXPECT_GE(batch, 1);
    const int S = model->config.num_sources(), C = model->config.audio_channels;
    const int64_t L = model->config.segment_samples();
    std::vector<float> in(size_t(batch) * C * L, 0.01f), out(size_t(batch) * S * C * L);
    backend->forward(in.data(), batch, L, out.data());
    for (float v : out) ASSERT_TRUE(std::isfinite(v));
}

TEST(ForwardCuda, TooLongInputIsRefused) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("tiny/0d0b2025.th");
    auto model = load_htdemucs(testing_support::fixture("tiny/0d0b2025.th"));
    auto backend = make_cuda_backend(model, 0, Precision::Fp32);
    const int64_t L = model->config.segment_samples() + 1;
    std::vector<float> in(size_t(2) * L), out(size_t(8) * L);
    EXPECT_THROW(backend->forward(in.data(), 1, L, out.data()), Error);
}

TEST(ForwardCuda, BadDeviceIndexThrows) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    REQUIRE_FIXTURES("tiny/0d0b2025.th", "tiny/tiny.yaml");
    auto model = load_htdemucs(testing_support::fixture("tiny/0d0b2025.th"));
    const int n = cuda_device_count();
    try {
        make_cuda_backend(model, n, Precision::Fp32);
        FAIL() << "no error for device " << n;
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("not found"), std::string::npos) << e.what();
    }
    EXPECT_THROW(make_cuda_backend(model, -1, Precision::Fp32), Error);

    LoadParams p = load_default_params();
    p.name = "tiny";
    p.repo = testing_support::fixture("tiny");
    p.device = DeviceKind::Cuda;
    p.device_index = n + 3;
    EXPECT_THROW(Separator::load(p), Error);
}
