// Audio files in and out, through libsndfile. Writers never leave a partial
// file under the final name: they write NAME.tmp-XXXX and rename at the end.
#pragma once

#include <string>

#include "fastdemucs/fastdemucs.h"

namespace fastdemucs {

// Reads any format libsndfile reads, as float in [-1, 1) (int16 / 32768 for
// 16-bit PCM). Throws Error naming the file on failure.
Audio read_audio(const std::string& path);

enum class SampleFormat { Int16, Int24, Float32 };
enum class ClipMode { Rescale, Clamp, None };

struct WriteParams {
    SampleFormat format = SampleFormat::Int16;
    ClipMode clip = ClipMode::Rescale;
    std::string container = "wav";  // "wav" or "flac"
};

// Writes planar `data` [channels, samples] (official save_audio semantics for
// clip modes). Atomic: temp file + rename. Throws Error on failure.
void write_audio(const std::string& path, const float* data, int channels, int64_t samples,
                 int samplerate, const WriteParams& params);

}  // namespace fastdemucs
