// The official command's sample path from float stems to 16/24-bit PCM, one
// definition for the host writer (io), the engine's host conversion and the
// CUDA kernel: the clip mode of prevent_clip in float32 as torch computes
// it, then torchaudio's float -> PCM rounding through sox. Plain
// comparisons (no fminf / fmaxf) so that host and device treat NaN alike.
#pragma once

#include <cstdint>
#include <vector>

#include "fastdemucs/fastdemucs.h"

#ifdef __CUDACC__
#define FD_HOST_DEVICE __host__ __device__
#else
#define FD_HOST_DEVICE
#endif

namespace fastdemucs::pcm {

// Larger of |x| and peak; a NaN x leaves peak as it is.
FD_HOST_DEVICE inline float max_abs(float peak, float x) {
    const float v = x < 0.0f ? -x : x;
    return peak < v ? v : peak;
}

// Rescale's divisor for a stem whose largest |sample| is `peak`: max(1.01 * peak, 1).
FD_HOST_DEVICE inline float rescale_divisor(float peak) {
    const float scaled = 1.01f * peak;
    return scaled < 1.0f ? 1.0f : scaled;
}

// One sample through the clip mode (divisor: rescale_divisor of the stem's peak).
FD_HOST_DEVICE inline float clip(float x, ClipMode mode, float divisor) {
    switch (mode) {
#ifdef __CUDA_ARCH__
        case ClipMode::Rescale: return __fdiv_rn(x, divisor);  // IEEE even under --use_fast_math
#else
        case ClipMode::Rescale: return x / divisor;
#endif
        case ClipMode::Clamp: {
            const float low = x < -0.99f ? -0.99f : x;  // std::max(x, -0.99f)
            return 0.99f < low ? 0.99f : low;           // std::min(low, 0.99f)
        }
        case ClipMode::None: break;
    }
    return x;
}

// torchaudio's float -> `Bits`-bit PCM, through sox: x scaled by 2^31 in
// double, clamped to int32 and truncated toward zero (a sox sample s); then
// half a step added and the low bits dropped, floor((s + 2^(31-bits)) /
// 2^(32-bits)), saturating at the top. Here in float arithmetic, which
// vectorises: x * 2^31 is exact in float as in double (a power of two), the
// floats near 2^31 are multiples of 128, and clamping to the largest float
// below INT32_MAX - half_step gives the saturated value exactly; the
// arithmetic shift is the floor. NaN writes 0. (Checked against the double
// form on every float of magnitude <= 4.)
template <int Bits>
FD_HOST_DEVICE inline int32_t to_pcm(float x) {
    constexpr int32_t half_step = int32_t(1) << (31 - Bits);
    constexpr float lowest = -2147483648.0f;
    constexpr float highest = 2147483648.0f - float(half_step) - 128.0f;
    float scaled = x * 2147483648.0f;
    scaled = scaled < lowest ? lowest : scaled;
    scaled = scaled > highest ? highest : scaled;
    scaled = x == x ? scaled : 0.0f;
    return (static_cast<int32_t>(scaled) + half_step) >> (32 - Bits);
}

// Float stems [S, C, L] -> 16-bit PCM [S, L, C], each stem with its own
// clip (rescale: its own peak); one thread per stem.
std::vector<int16_t> convert_stems(const float* stems, int S, int C, int64_t L, ClipMode clip);

}  // namespace fastdemucs::pcm
