// The CPU forward against the official code's float64 references: block by
// block on the tiny model, end to end on full6s.
#include <gtest/gtest.h>

#include <map>

#include "engine/backend.h"
#include "io/audio_file.h"
#include "model/model.h"
#include "test_support.h"

using namespace fastdemucs;
using testing_support::Array;

namespace {

// float32 engine contract: relative L2 error <= 1e-4 (80 dB).
constexpr double kMaxRelativeError = 1e-4;

struct Tapped {
    std::vector<int64_t> shape;
    std::vector<float> data;
};

std::map<std::string, Tapped> run_tapped(ModelBackend& backend, const Array& input) {
    std::map<std::string, Tapped> taps;
    const int S = backend.model().config.num_sources();
    const int64_t C = input.shape[0], L = input.shape[1];
    std::vector<float> out(S * C * L);
    backend.forward(input.data.data(), 1, L, out.data(), [&](const std::string& name, const std::vector<int64_t>& shape,
                                                             const float* data) {
        int64_t n = 1;
        for (auto d : shape) n *= d;
        taps[name] = {shape, std::vector<float>(data, data + n)};
    });
    taps["output"] = {{1, S, C, L}, out};
    return taps;
}

}  // namespace

TEST(ForwardCpu, TinyMatchesEveryBlock) {
    auto model = load_htdemucs(testing_support::fixture("tiny/0d0b2025.th"));
    auto refs = testing_support::read_npz(testing_support::fixture("tiny/tiny_forward_1.5s.npz"));
    auto backend = make_cpu_backend(model, 0);
    auto taps = run_tapped(*backend, refs.at("input"));

    // The spectrogram: reference as separate real / imaginary planes.
    {
        const Array& re = refs.at("spec_real");
        const Array& im = refs.at("spec_imag");
        const Tapped& spec = taps.at("spec");
        const int64_t C = re.shape[1], plane = re.shape[2] * re.shape[3];
        std::vector<float> ref(2 * C * plane);
        for (int64_t c = 0; c < C; c++) {
            std::copy_n(re.data.begin() + c * plane, plane, ref.begin() + (2 * c) * plane);
            std::copy_n(im.data.begin() + c * plane, plane, ref.begin() + (2 * c + 1) * plane);
        }
        ASSERT_EQ(int64_t(spec.data.size()), int64_t(ref.size()));
        EXPECT_LE(testing_support::relative_l2(spec.data.data(), ref.data(), ref.size()), kMaxRelativeError) << "spec";
    }
    // The frequency embedding table as the module returns it (weight * scale).
    {
        const Array& ref = refs.at("freq_emb");
        const auto& table = model->weight("freq_emb.embedding.weight");
        std::vector<float> scaled(table.data);
        for (auto& v : scaled) v *= float(model->config.emb_scale);
        ASSERT_EQ(scaled.size(), ref.data.size());
        EXPECT_LE(testing_support::relative_l2(scaled.data(), ref.data.data(), ref.numel()), kMaxRelativeError);
    }
    // Every block output, in forward order, so the first failure pinpoints the block.
    const char* blocks[] = {"tencoder.0", "encoder.0", "tencoder.1", "encoder.1", "tencoder.2", "encoder.2",
                            "tencoder.3", "encoder.3", "channel_upsampler", "channel_upsampler_t",
                            "crosstransformer.0", "channel_downsampler", "channel_downsampler_t", "decoder.0.0",
                            "tdecoder.0.0", "decoder.1.0", "tdecoder.1.0", "decoder.2.0", "tdecoder.2.0",
                            "decoder.3.0", "tdecoder.3.0", "output"};
    for (const char* name : blocks) {
        SCOPED_TRACE(name);
        ASSERT_TRUE(taps.count(name)) << "block not produced: " << name;
        const Array& ref = refs.at(name);
        const Tapped& got = taps.at(name);
        ASSERT_EQ(int64_t(got.data.size()), ref.numel()) << name;
        const double err = testing_support::relative_l2(got.data.data(), ref.data.data(), ref.numel());
        EXPECT_LE(err, kMaxRelativeError) << name << " relative error " << err;
    }
}

TEST(ForwardCpu, Full6sForward3sPerStem) {
    auto model = load_htdemucs(testing_support::fixture("full6s/full6s-86db6bad.th"));
    Audio mix = read_audio(testing_support::fixture("full6s/mix_3s.wav"));
    Array ref = testing_support::read_npy(testing_support::fixture("full6s/full6s_forward_3s.npy"));
    auto backend = make_cpu_backend(model, 0);
    const int S = model->config.num_sources();
    ASSERT_EQ(ref.shape, (std::vector<int64_t>{S, mix.channels, mix.samples}));
    std::vector<float> out(S * mix.channels * mix.samples);
    backend->forward(mix.data.data(), 1, mix.samples, out.data());
    const int64_t per_stem = mix.channels * mix.samples;
    for (int s = 0; s < S; s++) {
        const double snr = testing_support::snr_db(out.data() + s * per_stem, ref.data.data() + s * per_stem, per_stem);
        ::testing::Test::RecordProperty("snr_db_" + model->config.sources[s], std::to_string(snr));
        EXPECT_GE(snr, 80.0) << model->config.sources[s];
    }
}
