// The official command path (normalise, apply_model with split and overlap,
// bags) through the public API on the CUDA backend, in every precision,
// against the fixtures' float64 references. Skips itself without a GPU.
#include <gtest/gtest.h>

#include <filesystem>
#include <iostream>

#include "engine/backend.h"
#include "fastdemucs/fastdemucs.h"
#include "io/audio_file.h"
#include "test_support.h"

using namespace fastdemucs;
using testing_support::Array;

// Skips when a fixture file is absent (the GPU machine may carry only a subset).
#define REQUIRE_FIXTURES(...)                                                        \
    do {                                                                             \
        for (const char* f_ : {__VA_ARGS__})                                         \
            if (!std::filesystem::exists(testing_support::fixture(f_)))              \
                GTEST_SKIP() << "fixture not present: " << f_;                       \
    } while (0)

namespace {

// fp32: the engine contract. fp16 / bf16: per stem; the official autocast
// reaches 50.7 / 32.2 dB (tiny) and 47.9 / 28.8 dB (full6s) here.
double min_snr(Precision p) { return p == Precision::Fp32 ? 80.0 : p == Precision::Fp16 ? 45.0 : 25.0; }
const char* precision_name(Precision p) {
    return p == Precision::Fp32 ? "fp32" : p == Precision::Fp16 ? "fp16" : "bf16";
}

std::unique_ptr<Separator> load(const std::string& folder, const std::string& name, Precision precision) {
    LoadParams p = load_default_params();
    p.name = name;
    p.repo = testing_support::fixture(folder);
    p.device = DeviceKind::Cuda;
    p.device_index = 0;
    p.precision = precision;
    return Separator::load(p);
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
    Array a = testing_support::read_npy(testing_support::fixture("full6s/full6s_separate_12s.sources0-2.npy"));
    Array b = testing_support::read_npy(testing_support::fixture("full6s/full6s_separate_12s.sources3-5.npy"));
    Array ref;
    ref.shape = {6, a.shape[1], a.shape[2]};
    ref.data = a.data;
    ref.data.insert(ref.data.end(), b.data.begin(), b.data.end());
    expect_stems_match(sep->separate(mix, no_shift(0.25)), ref, precision, "full6s 12s");
}

}  // namespace

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
