// Audio file reading and writing through libsndfile.
//
// Writing reproduces what the official `demucs` command writes: its
// save_audio applies the clip mode, then hands the float tensor to
// torchaudio.save (torchaudio < 2.1, the sox_io backend on Linux). That path
// turns each float into a 32-bit sox sample, trunc(clamp(x * 2^31)), and sox
// rounds that to 16 or 24 bits (halves toward +inf, saturating at the top).
// We compute those integers ourselves and hand them to libsndfile as
// integers, so libsndfile's own float->int conversion (which scales 16-bit by
// 32767) never runs. Float32 files are written bit-exact.
#include "io/audio_file.h"

#include <fcntl.h>
#include <sndfile.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <random>
#include <vector>

#include "error.h"

namespace fastdemucs {
namespace {

constexpr int64_t kBlockFrames = 1 << 16;

// --- reading ---------------------------------------------------------------

struct SndfileCloser {
    void operator()(SNDFILE* file) const { sf_close(file); }
};
using SndfileHandle = std::unique_ptr<SNDFILE, SndfileCloser>;

std::vector<float> read_interleaved(SNDFILE* file, int channels, const std::string& path) {
    std::vector<float> interleaved;
    std::vector<float> block(static_cast<size_t>(kBlockFrames) * channels);
    for (;;) {
        const sf_count_t got = sf_readf_float(file, block.data(), kBlockFrames);
        if (got < 0) throw Error("cannot read " + path + ": " + sf_strerror(file));
        if (got == 0) break;
        interleaved.insert(interleaved.end(), block.begin(), block.begin() + got * channels);
    }
    if (sf_error(file) != SF_ERR_NO_ERROR)
        throw Error("cannot read " + path + ": " + sf_strerror(file));
    return interleaved;
}

// --- sample conversion -----------------------------------------------------

float peak_abs(const float* data, int64_t n) {
    float peak = 0.0f;
    for (int64_t i = 0; i < n; ++i) peak = std::max(peak, std::fabs(data[i]));
    return peak;
}

// The official prevent_clip, in float32 like the torch code: rescale divides
// the whole signal by max(1.01 * peak, 1); clamp limits to [-0.99, 0.99].
class ClipTransform {
public:
    ClipTransform(ClipMode mode, const float* data, int64_t n) : mode_(mode) {
        if (mode_ == ClipMode::Rescale) divisor_ = std::max(1.01f * peak_abs(data, n), 1.0f);
    }
    float operator()(float x) const {
        switch (mode_) {
            case ClipMode::Rescale: return x / divisor_;
            case ClipMode::Clamp: return std::min(std::max(x, -0.99f), 0.99f);
            case ClipMode::None: break;
        }
        return x;
    }

private:
    ClipMode mode_;
    float divisor_ = 1.0f;
};

// torchaudio's float -> sox sample: scale by 2^31 in double, clamp to int32,
// convert with truncation toward zero.
int32_t to_sox_sample(float x) {
    if (std::isnan(x)) return 0;
    double scaled = static_cast<double>(x) * 2147483648.0;
    scaled = std::min(std::max(scaled, -2147483648.0), 2147483647.0);
    return static_cast<int32_t>(scaled);
}

// sox's sample -> `bits`-bit signed integer: add half a step, drop the low
// bits (a floor, done on the offset-binary value so it is well defined), and
// saturate what would round past the top.
int32_t sox_sample_to_bits(int32_t sample, int bits) {
    const uint32_t half_step = 1u << (31 - bits);
    const int32_t top = static_cast<int32_t>((1u << (bits - 1)) - 1);
    if (sample > std::numeric_limits<int32_t>::max() - static_cast<int32_t>(half_step)) return top;
    const uint32_t offset_binary = static_cast<uint32_t>(sample) ^ 0x80000000u;
    const uint32_t rounded = (offset_binary + half_step) >> (32 - bits);
    return static_cast<int32_t>(rounded) - (top + 1);
}

// --- atomic temp file ------------------------------------------------------

// A fresh, empty file `.NAME.tmp-XXXXXX` beside `final_path`, removed on
// destruction unless committed (renamed over the final name).
class TempFile {
public:
    explicit TempFile(const std::string& final_path) : final_path_(final_path) {
        namespace fs = std::filesystem;
        const fs::path target(final_path);
        const fs::path folder = target.has_parent_path() ? target.parent_path() : fs::path(".");
        std::random_device entropy;
        std::mt19937_64 generator((uint64_t(entropy()) << 32) ^ entropy());
        static const char alphabet[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        for (int attempt = 0; attempt < 100; ++attempt) {
            std::string suffix(6, 'x');
            for (char& c : suffix) c = alphabet[generator() % (sizeof(alphabet) - 1)];
            const std::string candidate =
                (folder / ("." + target.filename().string() + ".tmp-" + suffix)).string();
            // O_EXCL: never reuse someone else's file. Mode 0666 lets the
            // umask decide, as for any ordinary new file.
            const int fd = ::open(candidate.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
            if (fd >= 0) {
                ::close(fd);
                path_ = candidate;
                return;
            }
            if (errno != EEXIST)
                throw Error("cannot write " + final_path + ": " + std::strerror(errno));
        }
        throw Error("cannot write " + final_path + ": no free temporary file name");
    }
    ~TempFile() {
        if (!committed_) ::unlink(path_.c_str());
    }
    TempFile(const TempFile&) = delete;
    TempFile& operator=(const TempFile&) = delete;

    const std::string& path() const { return path_; }
    void commit() {
        if (std::rename(path_.c_str(), final_path_.c_str()) != 0)
            throw Error("cannot write " + final_path_ + ": " + std::strerror(errno));
        committed_ = true;
    }

private:
    std::string final_path_;
    std::string path_;
    bool committed_ = false;
};

// --- writing ---------------------------------------------------------------

int sndfile_format(const WriteParams& params, const std::string& path) {
    int container = 0;
    if (params.container == "wav")
        container = SF_FORMAT_WAV;
    else if (params.container == "flac")
        container = SF_FORMAT_FLAC;
    else
        throw Error("cannot write " + path + ": unknown container '" + params.container +
                    "' (wav or flac)");
    switch (params.format) {
        case SampleFormat::Int16: return container | SF_FORMAT_PCM_16;
        case SampleFormat::Int24: return container | SF_FORMAT_PCM_24;
        case SampleFormat::Float32:
            if (container == SF_FORMAT_FLAC)
                throw Error("cannot write " + path + ": FLAC has no float32 samples");
            return container | SF_FORMAT_FLOAT;
    }
    throw Error("cannot write " + path + ": unknown sample format");
}

// Streams the planar data to an open file in interleaved blocks, converting
// each sample with `convert` (float -> the type libsndfile is given).
template <typename Sample, typename Convert, typename WriteFrames>
void write_blocks(const float* data, int channels, int64_t samples, Convert convert,
                  WriteFrames write_frames) {
    std::vector<Sample> block(static_cast<size_t>(kBlockFrames) * channels);
    for (int64_t start = 0; start < samples; start += kBlockFrames) {
        const int64_t frames = std::min(kBlockFrames, samples - start);
        for (int c = 0; c < channels; ++c) {
            const float* channel = data + static_cast<int64_t>(c) * samples + start;
            for (int64_t t = 0; t < frames; ++t) block[t * channels + c] = convert(channel[t]);
        }
        write_frames(block.data(), frames);
    }
}

void write_samples(SNDFILE* file, const std::string& path, const float* data, int channels,
                   int64_t samples, const WriteParams& params) {
    const ClipTransform clip(params.clip, data, static_cast<int64_t>(channels) * samples);
    auto check = [&](sf_count_t written, int64_t frames) {
        if (written != frames)
            throw Error("cannot write " + path + ": " + sf_strerror(file) + " (short write)");
    };
    switch (params.format) {
        case SampleFormat::Float32:
            write_blocks<float>(data, channels, samples, clip, [&](const float* block, int64_t n) {
                check(sf_writef_float(file, block, n), n);
            });
            break;
        case SampleFormat::Int16:
            write_blocks<short>(
                data, channels, samples,
                [&](float x) { return static_cast<short>(sox_sample_to_bits(to_sox_sample(clip(x)), 16)); },
                [&](const short* block, int64_t n) { check(sf_writef_short(file, block, n), n); });
            break;
        case SampleFormat::Int24:
            // libsndfile takes int samples as full-scale 32-bit and keeps the
            // top 24 bits: the 24-bit value times 256 is written exactly.
            write_blocks<int>(
                data, channels, samples,
                [&](float x) { return sox_sample_to_bits(to_sox_sample(clip(x)), 24) * 256; },
                [&](const int* block, int64_t n) { check(sf_writef_int(file, block, n), n); });
            break;
    }
}

}  // namespace

Audio read_audio(const std::string& path) {
    SF_INFO info{};
    SndfileHandle file(sf_open(path.c_str(), SFM_READ, &info));
    if (!file) throw Error("cannot read " + path + ": " + sf_strerror(nullptr));
    if (info.channels <= 0) throw Error("cannot read " + path + ": no audio channels");
    // int16 / 32768 (and int24 / 2^23): libsndfile's normalised reads divide
    // by 0x8000 / 0x800000, the same as FFmpeg's decoders used officially.
    sf_command(file.get(), SFC_SET_NORM_FLOAT, nullptr, SF_TRUE);
    const std::vector<float> interleaved = read_interleaved(file.get(), info.channels, path);

    Audio audio;
    audio.channels = info.channels;
    audio.samplerate = info.samplerate;
    audio.samples = static_cast<int64_t>(interleaved.size()) / info.channels;
    audio.data.resize(interleaved.size());
    for (int c = 0; c < audio.channels; ++c) {
        float* channel = audio.channel(c);
        for (int64_t t = 0; t < audio.samples; ++t)
            channel[t] = interleaved[t * audio.channels + c];
    }
    return audio;
}

void write_audio(const std::string& path, const float* data, int channels, int64_t samples,
                 int samplerate, const WriteParams& params) {
    if (channels <= 0 || samples < 0 || samplerate <= 0 || (samples > 0 && data == nullptr))
        throw Error("cannot write " + path + ": invalid audio (channels " +
                    std::to_string(channels) + ", samples " + std::to_string(samples) +
                    ", samplerate " + std::to_string(samplerate) + ")");
    SF_INFO info{};
    info.channels = channels;
    info.samplerate = samplerate;
    info.format = sndfile_format(params, path);
    if (!sf_format_check(&info))
        throw Error("cannot write " + path + ": libsndfile does not support this format");

    TempFile temp(path);
    SNDFILE* raw = sf_open(temp.path().c_str(), SFM_WRITE, &info);
    if (!raw) throw Error("cannot write " + path + ": " + sf_strerror(nullptr));
    {
        SndfileHandle file(raw);
        write_samples(file.get(), path, data, channels, samples, params);
        // sf_close finishes the header (and the FLAC stream): its failure is
        // a failed write too.
        const int close_error = sf_close(file.release());
        if (close_error != 0)
            throw Error("cannot write " + path + ": " + sf_error_number(close_error));
    }
    temp.commit();
}

}  // namespace fastdemucs
