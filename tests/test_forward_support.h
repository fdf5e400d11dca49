// Shared by the CPU and CUDA forward tests: a forward with every block's
// output tapped, the tiny fixture's block-by-block check and the full6s
// per-stem check, so both backends are held to the same comparisons.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "io/audio_file.h"
#include "test_support.h"

namespace forward_testing {

struct Tapped {
    std::vector<int64_t> shape;
    std::vector<float> data;
};

// One forward of input [C, L] (batch 1): every block's output by its
// official module name, plus "output" [1, S, C, L].
inline std::map<std::string, Tapped> run_tapped(fastdemucs::ModelBackend& backend,
                                                const testing_support::Array& input) {
    std::map<std::string, Tapped> taps;
    const int S = backend.model().config.num_sources();
    const int64_t C = input.shape[0], L = input.shape[1];
    std::vector<float> out(S * C * L);
    backend.forward(input.data.data(), 1, L, out.data(),
                    [&](const std::string& name, const std::vector<int64_t>& shape, const float* data) {
                        int64_t n = 1;
                        for (auto d : shape) n *= d;
                        taps[name] = {shape, std::vector<float>(data, data + n)};
                    });
    taps["output"] = {{1, S, C, L}, out};
    return taps;
}

// The spectrogram and every block of tiny_forward_1.5s.npz, in forward
// order (the first failure pinpoints the block): relative L2 <= max_error.
inline void expect_tiny_blocks_match(const std::map<std::string, Tapped>& taps,
                                     const std::map<std::string, testing_support::Array>& refs, double max_error) {
    {
        // The reference holds real and imaginary parts as separate planes.
        const testing_support::Array& re = refs.at("spec_real");
        const testing_support::Array& im = refs.at("spec_imag");
        ASSERT_TRUE(taps.count("spec"));
        const Tapped& spec = taps.at("spec");
        const int64_t C = re.shape[1], plane = re.shape[2] * re.shape[3];
        std::vector<float> ref(2 * C * plane);
        for (int64_t c = 0; c < C; c++) {
            std::copy_n(re.data.begin() + c * plane, plane, ref.begin() + (2 * c) * plane);
            std::copy_n(im.data.begin() + c * plane, plane, ref.begin() + (2 * c + 1) * plane);
        }
        ASSERT_EQ(int64_t(spec.data.size()), int64_t(ref.size()));
        EXPECT_LE(testing_support::relative_l2(spec.data.data(), ref.data(), ref.size()), max_error) << "spec";
    }
    const char* blocks[] = {"tencoder.0", "encoder.0", "tencoder.1", "encoder.1", "tencoder.2", "encoder.2",
                            "tencoder.3", "encoder.3", "channel_upsampler", "channel_upsampler_t",
                            "crosstransformer.0", "channel_downsampler", "channel_downsampler_t", "decoder.0.0",
                            "tdecoder.0.0", "decoder.1.0", "tdecoder.1.0", "decoder.2.0", "tdecoder.2.0",
                            "decoder.3.0", "tdecoder.3.0", "output"};
    for (const char* name : blocks) {
        SCOPED_TRACE(name);
        ASSERT_TRUE(taps.count(name)) << "block not produced: " << name;
        const testing_support::Array& ref = refs.at(name);
        const Tapped& got = taps.at(name);
        ASSERT_EQ(int64_t(got.data.size()), ref.numel()) << name;
        const double err = testing_support::relative_l2(got.data.data(), ref.data.data(), ref.numel());
        EXPECT_LE(err, max_error) << name << " relative error " << err;
    }
}

// full6s's forward of mix_3s against full6s_forward_3s.npy: per stem SNR >=
// min_snr, recorded as the property snr_db_[<precision>_]<source> and printed.
inline void expect_full6s_forward(fastdemucs::ModelBackend& backend, double min_snr, const std::string& precision) {
    const auto& cfg = backend.model().config;
    const fastdemucs::Audio mix = fastdemucs::read_audio(testing_support::fixture("full6s/mix_3s.wav"));
    const testing_support::Array ref =
        testing_support::read_npy(testing_support::fixture("full6s/full6s_forward_3s.npy"));
    const int S = cfg.num_sources();
    ASSERT_EQ(ref.shape, (std::vector<int64_t>{S, mix.channels, mix.samples}));
    std::vector<float> out(S * mix.channels * mix.samples);
    backend.forward(mix.data.data(), 1, mix.samples, out.data());
    const int64_t per_stem = mix.channels * mix.samples;
    for (int s = 0; s < S; s++) {
        const double snr = testing_support::snr_db(out.data() + s * per_stem, ref.data.data() + s * per_stem, per_stem);
        ::testing::Test::RecordProperty("snr_db_" + (precision.empty() ? "" : precision + "_") + cfg.sources[s],
                                        std::to_string(snr));
        std::cout << "[ snr      ] full6s forward 3s " << (precision.empty() ? "" : precision + " ") << cfg.sources[s]
                  << ": " << snr << " dB\n";
        EXPECT_GE(snr, min_snr) << cfg.sources[s];
    }
}

}  // namespace forward_testing
