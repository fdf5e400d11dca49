// Internal to src/io: the decoders and encoders behind audio_file.h.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

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
        for (int j = 0; j < kLanes; ++j) {
            const float v = std::fabs(data[i + j]);
            lane[j] = lane[j] < v ? v : lane[j];
        }
    float peak = 0.0f;
    for (; i < n; ++i) peak = std::max(peak, std::fabs(data[i]));
    for (float v : lane) peak = std::max(peak, v);
    return peak;
}

// The official prevent_clip, in float32 like the torch code: rescale divides
// the whole signal by max(1.01 * peak, 1); clamp limits to [-0.99, 0.99].
class ClipTransform {
public:
    ClipTransform(ClipMode mode, const float* data, int64_t n)
        : ClipTransform(mode, mode == ClipMode::Rescale ? peak_abs(data, n) : 0.0f) {}
    // With the signal's peak_abs already known.
    ClipTransform(ClipMode mode, float peak) : mode_(mode) {
        if (mode_ == ClipMode::Rescale) divisor_ = std::max(1.01f * peak, 1.0f);
    }
    float operator()(float x) const {
        switch (mode_) {
            case ClipMode::Rescale: return x / divisor_;
            case ClipMode::Clamp: return std::min(std::max(x, -0.99f), 0.99f);
            case ClipMode::None: break;
        }
        return x;
    }
    // out[i] = (*this)(in[i]), with the mode chosen once per call (a loop the compiler vectorises).
    void apply(const float* in, float* out, int64_t n) const {
        switch (mode_) {
            case ClipMode::Rescale:
                for (int64_t i = 0; i < n; ++i) out[i] = in[i] / divisor_;
                return;
            case ClipMode::Clamp:
                for (int64_t i = 0; i < n; ++i) out[i] = std::min(std::max(in[i], -0.99f), 0.99f);
                return;
            case ClipMode::None: break;
        }
        std::copy(in, in + n, out);
    }

private:
    ClipMode mode_;
    float divisor_ = 1.0f;
};

}  // namespace io_detail
}  // namespace fastdemucs
