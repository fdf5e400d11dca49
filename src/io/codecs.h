// Internal to src/io: the decoders and encoders behind audio_file.h.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "engine/pcm.h"
#include "io/audio_file.h"

namespace fastdemucs {
namespace io_detail {

// Decoders: true and `out` filled on success, else false with `error` set
// (a short reason, without the path).
bool decode_with_sndfile(const std::string& path, Audio& out, std::string& error);
#ifdef FASTDEMUCS_WITH_FFMPEG
bool decode_with_ffmpeg(const std::string& path, Audio& out, std::string& error);
#endif

// Encodes MP3 into `file_path` (an already created, empty temporary file).
// Errors name `final_path`.
void encode_mp3(const std::string& file_path, const std::string& final_path, const float* data, int channels,
                int64_t samples, int samplerate, const WriteParams& params);

// max |x| over data, NaNs ignored. Independent lanes (max is exact in any
// order) so that the compiler vectorises it without -ffast-math.
inline float peak_abs(const float* data, int64_t n) {
    constexpr int kLanes = 16;
    float lane[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (int j = 0; j < kLanes; ++j) lane[j] = pcm::max_abs(lane[j], data[i + j]);
    float peak = 0.0f;
    for (; i < n; ++i) peak = pcm::max_abs(peak, data[i]);
    for (float v : lane) peak = pcm::max_abs(peak, v);
    return peak;
}

// The official prevent_clip of one signal (engine/pcm.h).
class ClipTransform {
public:
    ClipTransform(ClipMode mode, const float* data, int64_t n)
        : ClipTransform(mode, mode == ClipMode::Rescale ? peak_abs(data, n) : 0.0f) {}
    // With the signal's peak_abs already known.
    ClipTransform(ClipMode mode, float peak)
        : mode_(mode), divisor_(mode == ClipMode::Rescale ? pcm::rescale_divisor(peak) : 1.0f) {}
    float operator()(float x) const { return pcm::clip(x, mode_, divisor_); }
    // out[i] = (*this)(in[i]), with the mode fixed per loop (loops the compiler vectorises).
    void apply(const float* in, float* out, int64_t n) const {
        switch (mode_) {
            case ClipMode::Rescale:
                for (int64_t i = 0; i < n; ++i) out[i] = pcm::clip(in[i], ClipMode::Rescale, divisor_);
                return;
            case ClipMode::Clamp:
                for (int64_t i = 0; i < n; ++i) out[i] = pcm::clip(in[i], ClipMode::Clamp, divisor_);
                return;
            case ClipMode::None: break;
        }
        std::copy(in, in + n, out);
    }

private:
    ClipMode mode_;
    float divisor_;
};

}  // namespace io_detail
}  // namespace fastdemucs
