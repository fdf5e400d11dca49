// Audio file reading and writing: the dispatch between decoders, and the
// libsndfile side (reading; writing WAV and FLAC).
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

#include <sndfile.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <future>
#include <limits>
#include <memory>
#include <system_error>
#include <vector>

#include "error.h"
#include "io/codecs.h"
#include "io/temp_file.h"

namespace fastdemucs {
namespace {

using io_detail::ClipTransform;

constexpr int64_t kBlockFrames = 1 << 16;

struct SndfileCloser {
    void operator()(SNDFILE* file) const { sf_close(file); }
};
using SndfileHandle = std::unique_ptr<SNDFILE, SndfileCloser>;

// --- writing ---------------------------------------------------------------

int sndfile_format(const WriteParams& params, const std::string& path) {
    int container = 0;
    if (params.container == "wav")
        container = SF_FORMAT_WAV;
    else if (params.container == "flac")
        container = SF_FORMAT_FLAC;
    else
        throw Error("cannot write " + path + ": unknown container '" + params.container +
                    "' (wav, flac or mp3)");
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

// The whole signal clipped, converted and interleaved, by up to four
// threads over ranges of frames (each channel's part of a block in
// contiguous, vectorised loops), then handed to libsndfile in one call. One
// stem of 3 minutes took ~0.1 s on one core of the GPU machine; the command
// writes its six stems at once, so the conversion was most of its write phase.
constexpr int64_t kMaxParts = 4;

// Frames [begin, end) of part p of `parts` (equal runs).
int64_t part_begin(int64_t samples, int64_t parts, int64_t p) {
    return std::min(samples, p * ((samples + parts - 1) / parts));
}

// How many threads share a signal of this length (one below ~1 s of audio).
int64_t parts_for(int64_t samples) {
    return std::max<int64_t>(1, std::min<int64_t>(kMaxParts, samples / (4 * kBlockFrames)));
}

// fn(p) for p in [0, parts), p > 0 on threads of their own (or on this one
// when no thread can be started).
template <typename Fn>
void run_parts(int64_t parts, Fn fn) {
    std::vector<std::future<void>> helpers;
    int64_t p = 1;
    try {
        for (; p < parts; ++p) helpers.push_back(std::async(std::launch::async, fn, p));
    } catch (const std::system_error&) {
        for (; p < parts; ++p) fn(p);
    }
    fn(0);
    for (auto& h : helpers) h.get();
}

// The clip transform of planar data, its peak (rescale mode) found by the same threads.
ClipTransform parallel_clip(ClipMode mode, const float* data, int channels, int64_t samples) {
    if (mode != ClipMode::Rescale) return ClipTransform(mode, 0.0f);
    const int64_t parts = parts_for(samples);
    std::vector<float> peaks(static_cast<size_t>(parts), 0.0f);
    run_parts(parts, [&](int64_t p) {
        const int64_t begin = part_begin(samples, parts, p), end = part_begin(samples, parts, p + 1);
        for (int c = 0; c < channels; ++c)
            peaks[p] = std::max(peaks[p], io_detail::peak_abs(data + static_cast<int64_t>(c) * samples + begin,
                                                              end - begin));
    });
    return ClipTransform(mode, *std::max_element(peaks.begin(), peaks.end()));
}

// Frames converted and written at once: a bounded buffer per stem (32 MB in
// 16-bit stereo) however long the track; one write up to 3 min 10 s at 44.1 kHz.
constexpr int64_t kWindowFrames = 128 * kBlockFrames;

template <typename Sample, typename Convert, typename WriteFrames>
void write_converted(const float* data, int channels, int64_t samples, const ClipTransform& clip, Convert convert,
                     WriteFrames write_frames) {
    const int64_t window = std::min(samples, kWindowFrames);
    std::vector<Sample> interleaved(static_cast<size_t>(channels) * static_cast<size_t>(window));
    // Frames [begin, end) of the signal into the buffer, which starts at frame `first`.
    auto convert_range = [&](int64_t first, int64_t begin, int64_t end) {
        std::vector<float> clipped(static_cast<size_t>(kBlockFrames));
        std::vector<Sample> converted(static_cast<size_t>(kBlockFrames));
        for (int64_t start = begin; start < end; start += kBlockFrames) {
            const int64_t frames = std::min(kBlockFrames, end - start);
            for (int c = 0; c < channels; ++c) {
                clip.apply(data + static_cast<int64_t>(c) * samples + start, clipped.data(), frames);
                for (int64_t t = 0; t < frames; ++t) converted[t] = convert(clipped[t]);
                Sample* out = interleaved.data() + (start - first) * channels + c;
                for (int64_t t = 0; t < frames; ++t) out[t * channels] = converted[t];
            }
        }
    };
    for (int64_t first = 0; first < samples; first += window) {
        const int64_t frames = std::min(window, samples - first);
        const int64_t parts = parts_for(frames);
        run_parts(parts, [&](int64_t p) {
            convert_range(first, first + part_begin(frames, parts, p), first + part_begin(frames, parts, p + 1));
        });
        write_frames(interleaved.data(), frames);
    }
}

void write_samples(SNDFILE* file, const std::string& path, const float* data, int channels,
                   int64_t samples, const WriteParams& params) {
    const ClipTransform clip = parallel_clip(params.clip, data, channels, samples);
    auto check = [&](sf_count_t written, int64_t frames) {
        if (written != frames)
            throw Error("cannot write " + path + ": " + sf_strerror(file) + " (short write)");
    };
    switch (params.format) {
        case SampleFormat::Float32:
            write_converted<float>(data, channels, samples, clip, [](float x) { return x; },
                                [&](const float* block, int64_t n) { check(sf_writef_float(file, block, n), n); });
            break;
        case SampleFormat::Int16:
            write_converted<short>(
                data, channels, samples, clip, [](float x) { return static_cast<short>(pcm::to_pcm<16>(x)); },
                [&](const short* block, int64_t n) { check(sf_writef_short(file, block, n), n); });
            break;
        case SampleFormat::Int24:
            // libsndfile takes int samples as full-scale 32-bit and keeps the
            // top 24 bits: the 24-bit value times 256 is written exactly.
            write_converted<int>(
                data, channels, samples, clip, [](float x) { return pcm::to_pcm<24>(x) * 256; },
                [&](const int* block, int64_t n) { check(sf_writef_int(file, block, n), n); });
            break;
    }
}

}  // namespace

namespace io_detail {

bool decode_with_sndfile(const std::string& path, Audio& out, std::string& error) {
    SF_INFO info{};
    SndfileHandle file(sf_open(path.c_str(), SFM_READ, &info));
    if (!file) {
        error = sf_strerror(nullptr);
        return false;
    }
    if (info.channels <= 0) {
        error = "no audio channels";
        return false;
    }
    // int16 / 32768 (and int24 / 2^23): libsndfile's normalised reads divide
    // by 0x8000 / 0x800000, the same as FFmpeg's decoders used officially.
    sf_command(file.get(), SFC_SET_NORM_FLOAT, nullptr, SF_TRUE);
    const int channels = info.channels;
    std::vector<float> interleaved;
    if (info.frames > 0 && info.frames < (int64_t(1) << 34) / channels)
        interleaved.reserve(static_cast<size_t>(info.frames) * channels);
    std::vector<float> block(static_cast<size_t>(kBlockFrames) * channels);
    for (;;) {
        const sf_count_t got = sf_readf_float(file.get(), block.data(), kBlockFrames);
        if (got < 0) break;
        if (got == 0) break;
        interleaved.insert(interleaved.end(), block.begin(), block.begin() + got * channels);
    }
    if (sf_error(file.get()) != SF_ERR_NO_ERROR) {
        error = sf_strerror(file.get());
        return false;
    }
    out = Audio();
    out.channels = channels;
    out.samplerate = info.samplerate;
    out.samples = static_cast<int64_t>(interleaved.size()) / channels;
    out.data.resize(interleaved.size());
    for (int c = 0; c < channels; ++c) {
        float* channel = out.channel(c);
        for (int64_t t = 0; t < out.samples; ++t) channel[t] = interleaved[t * channels + c];
    }
    return true;
}

}  // namespace io_detail

Audio read_audio(const std::string& path) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) throw Error("cannot read " + path + ": no such file");
    if (std::filesystem::is_directory(path, ec)) throw Error("cannot read " + path + ": it is a folder");
    Audio audio;
    std::string sndfile_error;
    bool decoded = io_detail::decode_with_sndfile(path, audio, sndfile_error);
    std::string reasons = "libsndfile: " + sndfile_error;
#ifdef FASTDEMUCS_WITH_FFMPEG
    if (!decoded) {
        std::string ffmpeg_error;
        decoded = io_detail::decode_with_ffmpeg(path, audio, ffmpeg_error);
        reasons += "; FFmpeg: " + ffmpeg_error;
    }
#else
    if (!decoded) reasons += " (this build has no FFmpeg decoder)";
#endif
    if (!decoded) throw Error("cannot decode " + path + " (" + reasons + ")");
    if (audio.samplerate <= 0) throw Error("cannot decode " + path + ": invalid sample rate");
    return audio;
}

std::string audio_decoders() {
#ifdef FASTDEMUCS_WITH_FFMPEG
    return "libsndfile, FFmpeg";
#else
    return "libsndfile";
#endif
}

Audio load_audio(const std::string& path, int samplerate, int channels) {
    Audio audio = read_audio(path);
    try {
        audio = convert_channels(audio, channels);
    } catch (const Error& e) {
        throw Error(path + ": " + e.what());
    }
    return resample(audio, samplerate);
}

std::string container_for_path(const std::string& path) {
    std::string suffix = std::filesystem::path(path).extension().string();
    std::transform(suffix.begin(), suffix.end(), suffix.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (suffix == ".wav") return "wav";
    if (suffix == ".flac") return "flac";
    if (suffix == ".mp3") return "mp3";
    return "";
}

namespace {

void check_audio_shape(const std::string& path, const void* data, int channels, int64_t samples, int samplerate) {
    if (channels <= 0 || samples < 0 || samplerate <= 0 || (samples > 0 && data == nullptr))
        throw Error("cannot write " + path + ": invalid audio (channels " +
                    std::to_string(channels) + ", samples " + std::to_string(samples) +
                    ", samplerate " + std::to_string(samplerate) + ")");
}

// A libsndfile file at a temporary name: `write` fills it, then the header
// is finished and the file renamed to `path`.
template <typename Write>
void write_sndfile(const std::string& path, int channels, int samplerate, const WriteParams& params, Write write) {
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
        write(file.get());
        // sf_close finishes the header (and the FLAC stream): its failure is
        // a failed write too.
        const int close_error = sf_close(file.release());
        if (close_error != 0)
            throw Error("cannot write " + path + ": " + sf_error_number(close_error));
    }
    temp.commit();
}

}  // namespace

void write_audio(const std::string& path, const float* data, int channels, int64_t samples,
                 int samplerate, const WriteParams& params) {
    check_audio_shape(path, data, channels, samples, samplerate);
    if (params.container == "mp3") {
        if (channels > 2) throw Error("cannot write " + path + ": MP3 holds at most 2 channels");
        TempFile temp(path);
        io_detail::encode_mp3(temp.path(), path, data, channels, samples, samplerate, params);
        temp.commit();
        return;
    }
    write_sndfile(path, channels, samplerate, params,
                  [&](SNDFILE* file) { write_samples(file, path, data, channels, samples, params); });
}

void write_audio_pcm16(const std::string& path, const int16_t* interleaved, int channels, int64_t samples,
                       int samplerate, const WriteParams& params) {
    check_audio_shape(path, interleaved, channels, samples, samplerate);
    if (params.format != SampleFormat::Int16 || params.container == "mp3")
        throw Error("cannot write " + path + ": 16-bit PCM goes to a 16-bit WAV or FLAC file");
    static_assert(sizeof(short) == sizeof(int16_t));
    write_sndfile(path, channels, samplerate, params, [&](SNDFILE* file) {
        for (int64_t first = 0; first < samples; first += kWindowFrames) {
            const int64_t frames = std::min(kWindowFrames, samples - first);
            const short* block = reinterpret_cast<const short*>(interleaved + first * channels);
            if (sf_writef_short(file, block, frames) != frames)
                throw Error("cannot write " + path + ": " + sf_strerror(file) + " (short write)");
        }
    });
}

}  // namespace fastdemucs
