// MP3 output through LAME, as the official command's encode_mp3 (lameenc):
// the clipped signal is turned into 16-bit PCM by clamp(-1, 1) * 32767 with
// truncation, then encoded at a constant bitrate with LAME's quality setting
// (the "preset", 2 best .. 7 fastest), at the stems' sample rate. We also
// write LAME's Info tag into the first frame so decoders know the encoder
// delay and padding (gapless).
#include <lame/lame.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "error.h"
#include "io/codecs.h"

namespace fastdemucs {
namespace io_detail {
namespace {

void silent(const char*, va_list) {}

struct LameCloser {
    void operator()(lame_global_flags* lame) const { lame_close(lame); }
};
struct FileCloser {
    void operator()(FILE* file) const { std::fclose(file); }
};

// The official i16_pcm: clamp to [-1, 1], scale by 2^15 - 1 in float32,
// truncate toward zero.
short to_pcm16(float x) {
    if (std::isnan(x)) return 0;
    const float clamped = std::min(std::max(x, -1.0f), 1.0f);
    return static_cast<short>(clamped * 32767.0f);
}

}  // namespace

void encode_mp3(const std::string& file_path, const std::string& final_path, const float* data, int channels,
                int64_t samples, int samplerate, const WriteParams& params) {
    const auto fail = [&](const std::string& why) { return Error("cannot write " + final_path + ": " + why); };
    if (channels < 1 || channels > 2) throw fail("MP3 holds 1 or 2 channels");
    std::unique_ptr<lame_global_flags, LameCloser> lame(lame_init());
    if (!lame) throw fail("cannot start the LAME encoder");
    lame_set_errorf(lame.get(), silent);
    lame_set_debugf(lame.get(), silent);
    lame_set_msgf(lame.get(), silent);
    lame_set_num_channels(lame.get(), channels);
    lame_set_in_samplerate(lame.get(), samplerate);
    // Left alone, LAME lowers the sample rate for low bitrates; the stems
    // keep the model's.
    lame_set_out_samplerate(lame.get(), samplerate);
    lame_set_brate(lame.get(), params.mp3_bitrate);
    lame_set_quality(lame.get(), params.mp3_preset);
    lame_set_bWriteVbrTag(lame.get(), 1);
    if (channels == 1) lame_set_mode(lame.get(), MONO);
    if (lame_init_params(lame.get()) < 0)
        throw fail("LAME refuses these settings (bitrate " + std::to_string(params.mp3_bitrate) + " kbps, " +
                   std::to_string(samplerate) + " Hz, " + std::to_string(channels) + " channels)");

    std::unique_ptr<FILE, FileCloser> file(std::fopen(file_path.c_str(), "wb"));
    if (!file) throw fail(std::strerror(errno));
    const auto put = [&](const unsigned char* bytes, size_t n) {
        if (n > 0 && std::fwrite(bytes, 1, n, file.get()) != n) throw fail(std::strerror(errno));
    };

    const ClipTransform clip(params.clip, data, static_cast<int64_t>(channels) * samples);
    constexpr int kBlock = 1152 * 16;
    std::vector<short> left(kBlock), right(kBlock);
    std::vector<unsigned char> out(static_cast<size_t>(1.25 * kBlock) + 7200);
    for (int64_t start = 0; start < samples; start += kBlock) {
        const int n = static_cast<int>(std::min<int64_t>(kBlock, samples - start));
        for (int t = 0; t < n; ++t) {
            left[t] = to_pcm16(clip(data[start + t]));
            right[t] = channels == 2 ? to_pcm16(clip(data[samples + start + t])) : left[t];
        }
        const int bytes = lame_encode_buffer(lame.get(), left.data(), right.data(), n, out.data(),
                                             static_cast<int>(out.size()));
        if (bytes < 0) throw fail("LAME error " + std::to_string(bytes));
        put(out.data(), static_cast<size_t>(bytes));
    }
    const int bytes = lame_encode_flush(lame.get(), out.data(), static_cast<int>(out.size()));
    if (bytes < 0) throw fail("LAME error " + std::to_string(bytes));
    put(out.data(), static_cast<size_t>(bytes));

    // The Info tag replaces the placeholder frame LAME put first.
    std::vector<unsigned char> tag(8192);
    const size_t tag_size = lame_get_lametag_frame(lame.get(), tag.data(), tag.size());
    if (tag_size > 0 && tag_size <= tag.size()) {
        if (std::fseek(file.get(), 0, SEEK_SET) != 0) throw fail(std::strerror(errno));
        put(tag.data(), tag_size);
    }
    if (std::fflush(file.get()) != 0) throw fail(std::strerror(errno));
    FILE* raw = file.release();
    if (std::fclose(raw) != 0) throw fail(std::strerror(errno));
}

}  // namespace io_detail
}  // namespace fastdemucs
