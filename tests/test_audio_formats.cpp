// Decoding every input format the command accepts (libsndfile, then FFmpeg),
// channel conversion, resampling with libsoxr, and MP3 output through LAME.
// Encoded inputs are made in the test from the tiny fixture's mix with the
// `ffmpeg` program.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "fastdemucs/fastdemucs.h"
#include "io/audio_file.h"
#include "io/temp_file.h"
#include "test_audio_support.h"
#include "test_support.h"

using namespace fastdemucs;
namespace fs = std::filesystem;
using testing_support::ffmpeg;

namespace {

constexpr int64_t kSamples = 176400;  // mix_4s: 4 s at 44.1 kHz, 16-bit stereo

std::string mix() { return testing_support::fixture("tiny/mix_4s.wav"); }

class AudioFormats : public ::testing::Test {
protected:
    void SetUp() override { dir_ = testing_support::make_temp_dir("formats"); }
    void TearDown() override { fs::remove_all(dir_); }
    std::string path(const std::string& name) const { return dir_ + "/" + name; }
    // The mix encoded by ffmpeg into `name` with `args`.
    std::string encoded(const std::string& name, const std::string& args) const {
        ffmpeg(mix(), args, path(name));
        return path(name);
    }
    std::string dir_;
};

// The samples of `path` as the ffmpeg program decodes them (what the official
// command feeds its model): raw float32 read back through a float WAV.
Audio ffmpeg_decoded(const std::string& path) {
    const std::string wav = path + ".ffmpeg.wav";
    ffmpeg(path, "-c:a pcm_f32le", wav);
    Audio audio = read_audio(wav);
    fs::remove(wav);
    return audio;
}

void expect_same_samples(const Audio& got, const Audio& want, const std::string& what) {
    ASSERT_EQ(got.channels, want.channels) << what;
    ASSERT_EQ(got.samplerate, want.samplerate) << what;
    ASSERT_EQ(got.samples, want.samples) << what;
    ASSERT_EQ(got.data.size(), want.data.size()) << what;
    EXPECT_EQ(std::memcmp(got.data.data(), want.data.data(), got.data.size() * sizeof(float)), 0) << what;
}

double snr_db(const Audio& got, const Audio& want, int64_t samples) {
    double num = 0, den = 0;
    for (int c = 0; c < want.channels; ++c)
        for (int64_t t = 0; t < samples; ++t) {
            const double d = double(got.channel(c)[t]) - want.channel(c)[t];
            num += d * d;
            den += double(want.channel(c)[t]) * want.channel(c)[t];
        }
    return 10.0 * std::log10(den / std::max(num, 1e-300));
}

}  // namespace

TEST_F(AudioFormats, LosslessInputsDecodeToTheWavSamplesExactly) {
    const Audio wav = read_audio(mix());
    ASSERT_EQ(wav.samples, kSamples);
    const std::vector<std::pair<std::string, std::string>> inputs = {
        {"a.flac", "-c:a flac"},
        {"b.flac", "-c:a flac -sample_fmt s32"},  // 24-bit FLAC
        {"c.aiff", "-c:a pcm_s16be"},
        {"d.wav", "-c:a pcm_s24le"},
        {"e.wav", "-c:a pcm_s32le"},
        {"f.wav", "-c:a pcm_f32le"},
        {"g.wav", "-c:a pcm_f64le"},
        {"h.w64", "-c:a pcm_s16le"},
    };
    for (const auto& [name, args] : inputs) expect_same_samples(read_audio(encoded(name, args)), wav, name);
}

TEST_F(AudioFormats, FfmpegOnlyContainersMatchTheFfmpegProgram) {
#ifndef FASTDEMUCS_WITH_FFMPEG
    GTEST_SKIP() << "built without FFmpeg (FASTDEMUCS_FFMPEG=OFF)";
#endif
    // Neither is readable by libsndfile: M4A/AAC and a video with a blank
    // picture. The official command decodes both with the ffmpeg program.
    const std::string m4a = encoded("a.m4a", "-c:a aac -b:a 128k");
    const std::string mp4 = encoded("b.mp4", "-f lavfi -i color=black:s=16x16:d=4 -shortest -c:a aac -c:v libx264");
    const std::string mkv = encoded("c.mkv", "-f lavfi -i color=black:s=16x16:d=4 -shortest -c:a libvorbis -c:v libx264");
    const Audio wav = read_audio(mix());
    for (const std::string& file : {m4a, mp4, mkv}) {
        const Audio audio = read_audio(file);
        expect_same_samples(audio, ffmpeg_decoded(file), file);
        // Aligned with the original (the encoder delay is removed) and about as long.
        EXPECT_NEAR(double(audio.samples), double(kSamples), 1024 + 1) << file;
        EXPECT_GT(snr_db(audio, wav, std::min(audio.samples, kSamples)), 15.0) << file;
    }
}

TEST_F(AudioFormats, LossyInputsDecodeAlignedAndFullLength) {
    const Audio wav = read_audio(mix());
    const std::vector<std::pair<std::string, std::string>> inputs = {
        {"a.mp3", "-c:a libmp3lame -b:a 192k"},
        {"b.ogg", "-c:a libvorbis -q:a 6"},
        {"c.opus", "-c:a libopus -b:a 160k"},
    };
    for (const auto& [name, args] : inputs) {
        const std::string file = encoded(name, args);
        const Audio audio = read_audio(file);
        const Audio reference = ffmpeg_decoded(file);
        ASSERT_EQ(audio.channels, 2) << name;
        // Opus always decodes at 48 kHz.
        ASSERT_EQ(audio.samplerate, name == "c.opus" ? 48000 : 44100) << name;
        EXPECT_EQ(audio.samples, reference.samples) << name;
        EXPECT_GT(snr_db(audio, reference, std::min(audio.samples, reference.samples)), 60.0) << name;
        const Audio at_model_rate = resample(audio, 44100);
        EXPECT_EQ(at_model_rate.samples, kSamples) << name;
        EXPECT_GT(snr_db(at_model_rate, wav, kSamples), 15.0) << name;
    }
}

TEST_F(AudioFormats, UndecodableFilesNameTheFileAndEachDecoder) {
    const std::string text = path("notes.wav");
    std::ofstream(text) << "this is not audio\n";
    const std::string empty = path("empty.mp3");
    std::ofstream(empty).flush();
    const std::string truncated = path("cut.m4a");
    {
        const std::string m4a = encoded("full.m4a", "-c:a aac");
        std::ifstream in(m4a, std::ios::binary);
        std::string head(2000, '\0');
        in.read(&head[0], 2000);
        std::ofstream(truncated, std::ios::binary) << head;
    }
    for (const std::string& file : {text, empty, truncated, path("missing.flac"), dir_}) {
        try {
            read_audio(file);
            ADD_FAILURE() << "decoded " << file;
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find(file), std::string::npos) << e.what();
        }
    }
    try {
        read_audio(text);
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("libsndfile: "), std::string::npos) << e.what();
#ifdef FASTDEMUCS_WITH_FFMPEG
        EXPECT_NE(std::string(e.what()).find("FFmpeg: "), std::string::npos) << e.what();
#endif
    }
}

TEST(AudioConvert, ChannelsAsOfficialConvertAudioChannels) {
    Audio four;
    four.channels = 4;
    four.samples = 3;
    four.data = {1, 2, 3, 10, 20, 30, 100, 200, 300, 5, 5, 5};
    const Audio stereo = convert_channels(four, 2);
    EXPECT_EQ(stereo.data, (std::vector<float>{1, 2, 3, 10, 20, 30}));
    const Audio mono = convert_channels(four, 1);
    EXPECT_EQ(mono.data, (std::vector<float>{116.0f / 4, 227.0f / 4, 338.0f / 4}));
    Audio one;
    one.channels = 1;
    one.samples = 2;
    one.data = {0.5f, -0.25f};
    EXPECT_EQ(convert_channels(one, 2).data, (std::vector<float>{0.5f, -0.25f, 0.5f, -0.25f}));
    EXPECT_EQ(convert_channels(stereo, 2).data, stereo.data);
    Audio three = four;
    three.channels = 3;
    three.data.resize(9);
    EXPECT_THROW(convert_channels(stereo, 3), Error);  // 2 -> 3: neither mono nor more
}

TEST(AudioResample, SineKeepsPhaseAndLength) {
    // A 997 Hz sine at 48 kHz, resampled to 44.1 kHz, is the same sine sampled
    // at 44.1 kHz: no delay, no gain change (edges left out).
    for (const auto& [from, to] : std::vector<std::pair<int, int>>{{48000, 44100}, {22050, 44100}, {44100, 32000}}) {
        Audio in;
        in.channels = 2;
        in.samplerate = from;
        in.samples = from * 2;
        in.data.resize(2 * in.samples);
        for (int c = 0; c < 2; ++c)
            for (int64_t t = 0; t < in.samples; ++t)
                in.channel(c)[t] = 0.5f * std::sin(2 * M_PI * 997.0 * t / from + c);
        const Audio out = resample(in, to);
        ASSERT_EQ(out.samplerate, to);
        ASSERT_EQ(out.samples, int64_t(to) * 2);
        double err = 0, ref = 0;
        for (int c = 0; c < 2; ++c)
            for (int64_t t = to / 10; t < out.samples - to / 10; ++t) {
                const double want = 0.5 * std::sin(2 * M_PI * 997.0 * t / to + c);
                err += (out.channel(c)[t] - want) * (out.channel(c)[t] - want);
                ref += want * want;
            }
        EXPECT_GT(10 * std::log10(ref / err), 100.0) << from << " -> " << to;
    }
}

TEST(AudioResample, SameRateIsUntouchedAndOddLengthsRound) {
    const Audio wav = read_audio(mix());
    const Audio same = resample(wav, 44100);
    EXPECT_EQ(same.data, wav.data);
    Audio odd;
    odd.channels = 1;
    odd.samplerate = 48000;
    odd.samples = 1001;
    odd.data.assign(1001, 0.1f);
    EXPECT_EQ(resample(odd, 44100).samples, std::llround(1001 * 44100.0 / 48000));
}

TEST_F(AudioFormats, Mp3OutputThroughLame) {
    const Audio wav = read_audio(mix());
    WriteParams params;
    params.container = "mp3";
    params.clip = ClipMode::None;
    const std::string best = path("best.mp3"), small = path("small.mp3"), fast = path("fast.mp3");
    write_audio(best, wav.data.data(), 2, wav.samples, 44100, params);
    params.mp3_bitrate = 96;
    write_audio(small, wav.data.data(), 2, wav.samples, 44100, params);
    params.mp3_bitrate = 320;
    params.mp3_preset = 7;
    write_audio(fast, wav.data.data(), 2, wav.samples, 44100, params);
    for (const std::string& file : {best, small, fast}) {
        const Audio back = read_audio(file);
        EXPECT_EQ(back.channels, 2) << file;
        EXPECT_EQ(back.samplerate, 44100) << file;
        // The LAME tag tells decoders the delay and padding: the exact length.
        EXPECT_EQ(back.samples, kSamples) << file;
        EXPECT_GT(snr_db(back, wav, kSamples), file == small ? 15.0 : 25.0) << file;
        EXPECT_EQ(ffmpeg_decoded(file).samples, kSamples) << file;
    }
    // Constant bitrate: the size follows it (4 s at 320 kbps = 160 kB).
    EXPECT_NEAR(double(fs::file_size(best)), 4 * 320000 / 8.0, 8000);
    EXPECT_NEAR(double(fs::file_size(small)), 4 * 96000 / 8.0, 4000);
    // Mono is written as mono.
    write_audio(path("mono.mp3"), wav.data.data(), 1, wav.samples, 44100, params);
    EXPECT_EQ(read_audio(path("mono.mp3")).channels, 1);
    EXPECT_EQ(fs::directory_iterator(dir_) == fs::directory_iterator(), false);
    for (const auto& entry : fs::directory_iterator(dir_))
        EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos);
}

TEST_F(AudioFormats, Mp3AppliesClipModeThenOfficialInt16Conversion) {
    // A 441 Hz sine of amplitude 1.6: each clip mode gives a different
    // signal (rescaled, clamped at 0.99, clamped at 1 by the int16
    // conversion), whose level survives 320 kbps coding within a fraction
    // of a percent.
    const int64_t n = 44100;
    std::vector<float> loud(2 * n);
    for (int64_t t = 0; t < n; ++t) loud[t] = loud[n + t] = 1.6f * float(std::sin(2 * M_PI * 441.0 * t / 44100));
    const auto rms = [](const float* x, int64_t count) {
        double sum = 0;
        for (int64_t i = 0; i < count; ++i) sum += double(x[i]) * x[i];
        return std::sqrt(sum / count);
    };
    // The official chain: prevent_clip, then clamp(-1, 1) * 32767 truncated.
    const auto expected_rms = [&](ClipMode mode) {
        std::vector<float> ints(loud.size());
        for (size_t i = 0; i < loud.size(); ++i) {
            float x = loud[i];
            if (mode == ClipMode::Rescale) x /= std::max(1.01f * 1.6f, 1.0f);
            if (mode == ClipMode::Clamp) x = std::min(std::max(x, -0.99f), 0.99f);
            ints[i] = float(int16_t(std::min(std::max(x, -1.0f), 1.0f) * 32767.0f)) / 32768.0f;
        }
        return rms(ints.data(), int64_t(ints.size()));
    };
    WriteParams params;
    params.container = "mp3";
    for (ClipMode mode : {ClipMode::Rescale, ClipMode::Clamp, ClipMode::None}) {
        params.clip = mode;
        write_audio(path("x.mp3"), loud.data(), 2, n, 44100, params);
        const Audio back = read_audio(path("x.mp3"));
        ASSERT_EQ(back.samples, n);
        // Leave out the first and last 20 ms (coder transients).
        const int64_t edge = 882;
        EXPECT_NEAR(rms(back.channel(0) + edge, n - 2 * edge), expected_rms(mode), 0.003) << int(mode);
    }
    EXPECT_GT(expected_rms(ClipMode::None) - expected_rms(ClipMode::Clamp), 0.005);
}

TEST(AudioFile, ContainerComesFromTheSuffix) {
    EXPECT_EQ(container_for_path("a/b/vocals.wav"), "wav");
    EXPECT_EQ(container_for_path("x.FLAC"), "flac");
    EXPECT_EQ(container_for_path("x.Mp3"), "mp3");
    EXPECT_EQ(container_for_path("x.ogg"), "");
    EXPECT_EQ(container_for_path("wav"), "");
}

TEST(AudioFile, TempFilesAreRemovedWhenTheProgramIsInterrupted) {
    // A child makes a temporary file, as a writer does, and is interrupted
    // (Ctrl-C) before committing it: the file goes with it.
    const std::string dir = testing_support::make_temp_dir("signals");
    for (int signal_number : {SIGINT, SIGTERM}) {
        int ready[2];
        ASSERT_EQ(::pipe(ready), 0);
        const pid_t pid = ::fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            ::close(ready[0]);
            remove_temp_files_on_signals();
            TempFile temp(dir + "/stem.wav");
            const char byte = 'x';
            if (::write(ready[1], &byte, 1) != 1) ::_exit(2);
            ::pause();
            ::_exit(3);
        }
        ::close(ready[1]);
        char byte = 0;
        ASSERT_EQ(::read(ready[0], &byte, 1), 1);
        ::close(ready[0]);
        EXPECT_FALSE(fs::is_empty(dir));  // the temporary file exists
        ::kill(pid, signal_number);
        int status = 0;
        ::waitpid(pid, &status, 0);
        EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == signal_number) << status;
        EXPECT_TRUE(fs::is_empty(dir)) << signal_number;
    }
    fs::remove_all(dir);
}
