// The official command path (normalise, apply_model with split and overlap,
// bags, shifts) through the public API, against the fixtures' references.
#include <gtest/gtest.h>

#include "engine/apply.h"
#include "fastdemucs/fastdemucs.h"
#include "io/audio_file.h"
#include "model/model.h"
#include "test_pcm16_support.h"
#include "test_support.h"

using namespace fastdemucs;
using testing_support::Array;

namespace {

std::unique_ptr<Separator> load(const std::string& folder, const std::string& name) {
    LoadParams p = load_default_params();
    p.name = name;
    p.repo = testing_support::fixture(folder);
    return Separator::load(p);
}

// Per-stem SNR >= 80 dB against a [S, C, L] reference.
void expect_stems_match(const Stems& stems, const Array& ref) {
    ASSERT_EQ(ref.shape, (std::vector<int64_t>{int64_t(stems.names.size()), stems.channels, stems.samples}));
    const int64_t per_stem = stems.channels * stems.samples;
    for (size_t s = 0; s < stems.names.size(); s++) {
        const double snr = testing_support::snr_db(stems.stem(s), ref.data.data() + s * per_stem, per_stem);
        ::testing::Test::RecordProperty("snr_db_" + stems.names[s], std::to_string(snr));
        EXPECT_GE(snr, 80.0) << stems.names[s];
    }
}

SeparateParams no_shift(double overlap) {
    SeparateParams p = separate_default_params();
    p.shifts = 0;
    p.overlap = overlap;
    return p;
}

}  // namespace

TEST(SeparateCpu, TinyOverlap25) {
    auto sep = load("tiny", "tiny");
    Audio mix = read_audio(testing_support::fixture("tiny/mix_4s.wav"));
    expect_stems_match(sep->separate(mix, no_shift(0.25)),
                       testing_support::read_npy(testing_support::fixture("tiny/tiny_separate_4s.npy")));
}

// separate_on_device needs a GPU separator: on the CPU it is a one-line error.
TEST(SeparateCpu, OnDeviceIsAnErrorOnTheCpu) {
    REQUIRE_FIXTURES("tiny/0d0b2025.th", "tiny/tiny.yaml", "tiny/mix_4s.wav");
    auto sep = load("tiny", "tiny");
    const Audio mix = read_audio(testing_support::fixture("tiny/mix_4s.wav"));
    std::vector<float> stems(sep->sources().size() * mix.data.size());
    const DeviceAudio view{mix.data.data(), mix.channels, mix.samples, mix.samplerate};
    try {
        sep->separate_on_device(view, stems.data(), no_shift(0.25));
        FAIL() << "no error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("-d cuda"), std::string::npos) << e.what();
    }
}

TEST(SeparateCpu, TinyOverlap50) {
    auto sep = load("tiny", "tiny");
    Audio mix = read_audio(testing_support::fixture("tiny/mix_4s.wav"));
    expect_stems_match(sep->separate(mix, no_shift(0.5)),
                       testing_support::read_npy(testing_support::fixture("tiny/tiny_separate_4s_overlap50.npy")));
}

TEST(SeparateCpu, TinyBagOfFour) {
    auto sep = load("tiny", "tiny_bag");
    EXPECT_EQ(sep->num_models(), 4);
    Audio mix = read_audio(testing_support::fixture("tiny/mix_4s.wav"));
    expect_stems_match(sep->separate(mix, no_shift(0.25)),
                       testing_support::read_npy(testing_support::fixture("tiny/tiny_bag_separate_4s.npy")));
}

TEST(SeparateCpu, Full6sCommandPath12s) {
    auto sep = load("full6s", "full6s");
    Audio mix = read_audio(testing_support::fixture("full6s/mix_12s.wav"));
    expect_stems_match(sep->separate(mix, no_shift(0.25)), testing_support::read_full6s_separate_12s());
}

TEST(SeparateCpu, ChunkOffsetsAndWeightFollowTheOfficialSplit) {
    // 4 s at 2 s segments, overlap 0.25: stride int(0.75 * 88200) = 66150.
    EXPECT_EQ(chunk_offsets(176400, 88200, 0.25), (std::vector<int64_t>{0, 66150, 132300}));
    EXPECT_EQ(chunk_offsets(176400, 88200, 0.5), (std::vector<int64_t>{0, 44100, 88200, 132300}));
    auto w = transition_weight(6, 1.0);  // 1 2 3 3 2 1, over 3
    std::vector<float> expected = {1 / 3.f, 2 / 3.f, 1.f, 1.f, 2 / 3.f, 1 / 3.f};
    for (size_t i = 0; i < w.size(); i++) EXPECT_FLOAT_EQ(w[i], expected[i]);
    auto w2 = transition_weight(5, 2.0);  // 1 2 3 2 1 -> squared over 9
    EXPECT_FLOAT_EQ(w2[1], 4.f / 9.f);
}

TEST(SeparateCpu, ShiftAtMaxOffsetEqualsNoShift) {
    // An offset of exactly max_shift cuts the padded mix back to the mix itself.
    auto model = load_htdemucs(testing_support::fixture("tiny/0d0b2025.th"));
    auto backend = make_cpu_backend(model, 0);
    Audio mix = read_audio(testing_support::fixture("tiny/mix_3s.wav"));
    SeparateParams p = no_shift(0.25);
    auto plain = apply_single_model(*backend, mix.data.data(), mix.channels, mix.samples, p, {});
    p.shifts = 1;
    auto shifted = apply_single_model(*backend, mix.data.data(), mix.channels, mix.samples, p, {22050});
    ASSERT_EQ(plain.size(), shifted.size());
    EXPECT_LE(testing_support::relative_l2(shifted.data(), plain.data(), plain.size()), 1e-6);
}

TEST(SeparateCpu, ShiftsAreSeeded) {
    auto sep = load("tiny", "tiny");
    Audio mix = read_audio(testing_support::fixture("tiny/mix_3s.wav"));
    SeparateParams p = no_shift(0.25);
    p.shifts = 2;
    p.seed = 7;
    Stems a = sep->separate(mix, p), b = sep->separate(mix, p);
    EXPECT_EQ(a.data, b.data);
    p.seed = 8;
    Stems c = sep->separate(mix, p);
    EXPECT_NE(a.data, c.data);
}

TEST(SeparateCpu, ShiftsAverageTheShiftedEstimates) {
    auto model = load_htdemucs(testing_support::fixture("tiny/0d0b2025.th"));
    auto backend = make_cpu_backend(model, 0);
    Audio mix = read_audio(testing_support::fixture("tiny/mix_3s.wav"));
    SeparateParams p = no_shift(0.25);
    p.shifts = 1;
    auto first = apply_single_model(*backend, mix.data.data(), mix.channels, mix.samples, p, {1234});
    auto second = apply_single_model(*backend, mix.data.data(), mix.channels, mix.samples, p, {20000});
    p.shifts = 2;
    auto both = apply_single_model(*backend, mix.data.data(), mix.channels, mix.samples, p, {1234, 20000});
    std::vector<float> mean(first.size());
    for (size_t i = 0; i < mean.size(); i++) mean[i] = 0.5f * (first[i] + second[i]);
    EXPECT_LE(testing_support::relative_l2(both.data(), mean.data(), mean.size()), 1e-6);
    // A shift is not a no-op: the network is not exactly time-equivariant.
    EXPECT_GT(testing_support::relative_l2(first.data(), second.data(), first.size()), 1e-4);
}

TEST(SeparateCpu, SegmentLongerThanTrainingIsRefused) {
    auto sep = load("tiny", "tiny");
    Audio mix = read_audio(testing_support::fixture("tiny/mix_3s.wav"));
    SeparateParams p = no_shift(0.25);
    p.segment = 3.0;
    EXPECT_THROW(sep->separate(mix, p), Error);
    p.segment = 1.0;  // shorter is fine: each 1 s chunk is zero-padded to 2 s by the model
    Stems s = sep->separate(mix, p);
    EXPECT_EQ(s.samples, mix.samples);
}

TEST(SeparateCpu, NoSplitLongerThanSegmentIsRefused) {
    auto sep = load("tiny", "tiny");
    Audio mix = read_audio(testing_support::fixture("tiny/mix_3s.wav"));
    SeparateParams p = no_shift(0.25);
    p.split = false;
    EXPECT_THROW(sep->separate(mix, p), Error);
}

// The 16-bit stems of the API: the float stems converted (the CPU backend
// has no conversion of its own: the engine's host one), a plain model and a
// bag, with shifts; the mix made loud enough that stems pass full scale.
TEST(SeparateCpu, Pcm16StemsAreTheFloatStemsConverted) {
    Audio mix = read_audio(testing_support::fixture("tiny/mix_4s.wav"));
    for (float& v : mix.data) v *= 6.0f;
    SeparateParams p = no_shift(0.25);
    testing_support::expect_pcm16_equals_converted(*load("tiny", "tiny"), mix, p, "tiny");
    p.shifts = 2;
    p.seed = 11;
    testing_support::expect_pcm16_equals_converted(*load("tiny", "tiny_bag"), mix, p, "tiny bag, 2 shifts");
}
