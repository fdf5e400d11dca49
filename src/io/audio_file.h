// Audio files in and out.
//
// Reading: libsndfile first (WAV, FLAC, Ogg Vorbis, Opus, AIFF, MP3, ...),
// then, when built with FASTDEMUCS_FFMPEG, FFmpeg's libraries (M4A/AAC,
// video containers, anything else FFmpeg decodes: the first audio stream,
// as the official command takes it). Resampling with libsoxr.
//
// Writing: WAV (16/24-bit, float32) and FLAC through libsndfile, MP3 through
// LAME. Writers never leave a partial file under the final name: they write
// .NAME.tmp-XXXXXX and rename at the end.
#pragma once

#include <cstdint>
#include <string>

#include "fastdemucs/fastdemucs.h"

namespace fastdemucs {

// Reads the whole file as float in [-1, 1) (int16 / 32768 for 16-bit PCM),
// at its own sample rate and channel count. Throws Error naming the file
// (and what each decoder said) on failure.
Audio read_audio(const std::string& path);

// The official convert_audio_channels: same count kept, a mono target gets
// the mean of the channels, a mono source is duplicated, extra channels are
// dropped (the first `channels` kept). Throws Error for 2..n-1 channels to n.
Audio convert_channels(const Audio& audio, int channels);

// Band-limited resampling (libsoxr, very high quality, linear phase, no
// delay). The result has round(samples * samplerate / audio.samplerate)
// samples. Unchanged when the rates are equal.
Audio resample(const Audio& audio, int samplerate);

// What a model gets from a file: read, channels converted, then resampled,
// in the official order (convert_audio).
Audio load_audio(const std::string& path, int samplerate, int channels);

// The decoders built in, for messages: "libsndfile" or "libsndfile, FFmpeg".
std::string audio_decoders();

enum class SampleFormat { Int16, Int24, Float32 };

struct WriteParams {
    SampleFormat format = SampleFormat::Int16;  // wav, flac (no Float32 in flac)
    ClipMode clip = ClipMode::Rescale;
    std::string container = "wav";              // "wav", "flac" or "mp3"
    int mp3_bitrate = 320;                      // kbps (LAME picks the nearest valid one)
    int mp3_preset = 2;                         // LAME quality: 2 best .. 7 fastest
};

// The container the official save_audio picks for a path, from its suffix
// (any case): "wav", "flac", "mp3", or "" for anything else.
std::string container_for_path(const std::string& path);

// Writes planar `data` [channels, samples] (official save_audio semantics for
// clip modes and sample conversion). Atomic: temp file + rename. Throws Error
// naming the file on failure.
void write_audio(const std::string& path, const float* data, int channels, int64_t samples,
                 int samplerate, const WriteParams& params);

// Writes 16-bit PCM already converted (Separator::separate_pcm16), frames
// interleaved [samples, channels], to a WAV or FLAC file: params.format must
// be Int16 (params.clip is not applied again). Atomic like write_audio.
void write_audio_pcm16(const std::string& path, const int16_t* interleaved, int channels, int64_t samples,
                       int samplerate, const WriteParams& params);

}  // namespace fastdemucs
