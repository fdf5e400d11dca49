// The engine's host conversion of float stems to 16-bit PCM (the backends
// without their own, bags, and the host path).
#include "engine/pcm.h"

#include <future>
#include <system_error>

namespace fastdemucs::pcm {
namespace {

// Stem s of stems [S, C, L] into out [S, L, C].
void convert_stem(const float* stems, int s, int C, int64_t L, ClipMode clip, int16_t* out) {
    const float* stem = stems + int64_t(s) * C * L;
    float peak = 0.0f;
    if (clip == ClipMode::Rescale)
        for (int64_t i = 0; i < int64_t(C) * L; i++) peak = max_abs(peak, stem[i]);
    const float divisor = clip == ClipMode::Rescale ? rescale_divisor(peak) : 1.0f;
    int16_t* dst = out + int64_t(s) * L * C;
    for (int c = 0; c < C; c++)
        for (int64_t t = 0; t < L; t++)
            dst[t * C + c] = static_cast<int16_t>(to_pcm<16>(pcm::clip(stem[int64_t(c) * L + t], clip, divisor)));
}

}  // namespace

std::vector<int16_t> convert_stems(const float* stems, int S, int C, int64_t L, ClipMode clip) {
    std::vector<int16_t> out(size_t(S) * size_t(C) * size_t(L));
    std::vector<std::future<void>> helpers;
    int s = 1;
    try {
        for (; s < S; s++)
            helpers.push_back(std::async(std::launch::async, convert_stem, stems, s, C, L, clip, out.data()));
    } catch (const std::system_error&) {  // no thread to be had: the rest here
        for (; s < S; s++) convert_stem(stems, s, C, L, clip, out.data());
    }
    if (S > 0) convert_stem(stems, 0, C, L, clip, out.data());
    for (auto& h : helpers) h.get();
    return out;
}

}  // namespace fastdemucs::pcm
