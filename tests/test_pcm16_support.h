// Separator::separate_pcm16 checked against the float stems of the same
// separation converted by the engine's host code (engine/pcm.h), in every
// clip mode: equal sample for sample. (The host conversion is checked
// against the WAV writer's in test_audio_file.cpp.)
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "engine/pcm.h"
#include "fastdemucs/fastdemucs.h"

namespace testing_support {

inline const char* clip_name(fastdemucs::ClipMode clip) {
    return clip == fastdemucs::ClipMode::Rescale ? "rescale" : clip == fastdemucs::ClipMode::Clamp ? "clamp" : "none";
}

// p.seed must be set when p.shifts > 0 (both separations draw the same shifts).
inline void expect_pcm16_equals_converted(const fastdemucs::Separator& sep, const fastdemucs::Audio& mix,
                                          const fastdemucs::SeparateParams& p, const std::string& what) {
    using fastdemucs::ClipMode;
    // A fresh GPU separator's first calls run a short last batch eagerly at
    // its own size (no graph of the full batch yet), then as the full batch's
    // graph, then with a graph of its own (a process's next track): stems
    // equal to float rounding only. From the third call every call replays
    // the same graphs.
    sep.separate(mix, p);
    sep.separate(mix, p);
    const fastdemucs::Stems floats = sep.separate(mix, p);
    const int S = static_cast<int>(floats.names.size());
    float peak = 0.0f;
    for (float v : floats.data) peak = fastdemucs::pcm::max_abs(peak, v);
    EXPECT_GT(peak, 1.0f) << what << ": the mix should drive a stem past full scale (rescale, clamp and clipping)";
    for (ClipMode clip : {ClipMode::Rescale, ClipMode::Clamp, ClipMode::None}) {
        const fastdemucs::Pcm16Stems pcm = sep.separate_pcm16(mix, p, clip);
        EXPECT_EQ(pcm.names, floats.names);
        ASSERT_EQ(pcm.channels, floats.channels);
        ASSERT_EQ(pcm.samples, floats.samples);
        EXPECT_EQ(pcm.samplerate, floats.samplerate);
        const std::vector<int16_t> expected =
            fastdemucs::pcm::convert_stems(floats.data.data(), S, floats.channels, floats.samples, clip);
        ASSERT_EQ(pcm.data.size(), expected.size());
        size_t differ = 0, first = 0;
        for (size_t i = 0; i < expected.size(); i++)
            if (pcm.data[i] != expected[i] && differ++ == 0) first = i;
        EXPECT_EQ(differ, 0u) << what << ", " << clip_name(clip) << ": first difference at " << first << " ("
                              << pcm.data[first] << " vs " << expected[first] << ")";
    }
}

}  // namespace testing_support
