// The command on every input format (encoded in the test with the ffmpeg
// program), resampled and multichannel inputs, every output format and bit
// depth read back, clip modes, and file name templates. What the engine
// received is checked through the stems: a track that decodes to the same
// samples as another gives bit-identical stems (the tiny model, --shifts 0,
// float32 output).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "fastdemucs/fastdemucs.h"
#include "io/audio_file.h"
#include "test_audio_support.h"
#include "test_cli_support.h"
#include "test_support.h"

#ifdef FASTDEMUCS_CLI_PATH

using namespace fastdemucs;
using namespace cli_testing;
using testing_support::ffmpeg;

namespace {

class CliFormats : public CliFixture {
protected:
    // The mix encoded by ffmpeg into scratch/NAME.
    std::string encoded(const std::string& name, const std::string& args) const {
        ffmpeg(mix(), args, scratch(name));
        return scratch(name);
    }
    // A track as the ffmpeg program decodes it, saved as float WAV.
    std::string ffmpeg_reference(const std::string& track, const std::string& name) const {
        ffmpeg(track, "-c:a pcm_f32le", scratch(name));
        return scratch(name);
    }
    Audio stem(const std::string& name, const std::string& track, const std::string& ext = "wav") const {
        return read_audio(stem_path(name, track, ext));
    }
};

// Peak absolute value.
float peak(const Audio& audio) {
    float p = 0;
    for (float v : audio.data) p = std::max(p, std::fabs(v));
    return p;
}

}  // namespace

TEST_F(CliFormats, LosslessInputsGiveTheStemsOfTheWav) {
    fs::copy_file(mix(), scratch("wav.wav"));
    const std::vector<std::string> tracks = {
        encoded("flac16.flac", "-c:a flac"),    encoded("flac24.flac", "-c:a flac -sample_fmt s32"),
        encoded("aiff.aiff", "-c:a pcm_s16be"), encoded("int24.wav", "-c:a pcm_s24le"),
        encoded("f32.wav", "-c:a pcm_f32le"),
    };
    std::string args;
    for (const auto& track : tracks) args += " " + quoted(track);
    const CliResult r = run_exact(quoted(scratch("wav.wav")) + args);
    ASSERT_EQ(r.status, 0) << r.err;
    for (const auto& source : tiny_sources()) {
        const Audio want = stem(source, "wav");
        ASSERT_EQ(want.samples, kSamples);
        for (const auto& name : {"flac16", "flac24", "aiff", "int24", "f32"})
            EXPECT_TRUE(same_samples(stem(source, name), want)) << name << " " << source;
    }
    expect_no_temp_files(out_dir());
}

TEST_F(CliFormats, LossyAndVideoInputsSeparateLikeTheFfmpegDecodedTrack) {
    // Each track next to the ffmpeg program's decoding of it (what the
    // official command would separate). Through FFmpeg's libraries (M4A, MP4
    // video) the stems are identical; libsndfile's MP3/Vorbis/Opus decoders
    // differ from FFmpeg's in the last bits only.
    std::vector<std::pair<std::string, std::string>> inputs = {
        {"mp3.mp3", "-c:a libmp3lame -b:a 192k"},
        {"vorbis.ogg", "-c:a libvorbis"},
        {"opus.opus", "-c:a libopus -b:a 128k"},
    };
#ifdef FASTDEMUCS_WITH_FFMPEG
    inputs.push_back({"m4a.m4a", "-c:a aac -b:a 128k"});
    inputs.push_back({"video.mp4", "-f lavfi -i color=black:s=16x16:d=4 -shortest -c:a aac -c:v libx264"});
#endif
    std::string args;
    for (const auto& [name, codec] : inputs) {
        const std::string track = encoded(name, codec);
        args += " " + quoted(track) + " " + quoted(ffmpeg_reference(track, fs::path(name).stem().string() + "_ref.wav"));
    }
    const CliResult r = run_exact(args);
    ASSERT_EQ(r.status, 0) << r.err;
    for (const auto& [name, codec] : inputs) {
        const std::string track = fs::path(name).stem().string();
        const bool through_ffmpeg = track == "m4a" || track == "video";
        for (const auto& source : tiny_sources()) {
            const Audio got = stem(source, track), want = stem(source, track + "_ref");
            EXPECT_EQ(got.samplerate, 44100) << track;
            EXPECT_EQ(got.samples, want.samples) << track;
            EXPECT_NEAR(double(got.samples), double(kSamples), 1024) << track;
            if (through_ffmpeg)
                EXPECT_TRUE(same_samples(got, want)) << track << " " << source;
            else
                EXPECT_GT(snr_db(got, want), 60.0) << track << " " << source;
        }
    }
}

TEST_F(CliFormats, ResamplesToTheModelRate) {
    // 48 kHz and 22.05 kHz versions of the mix (float, so only the rate
    // differs): the stems come out at 44.1 kHz with the input's duration,
    // close to the stems of the original.
    const std::string high = encoded("high.wav", "-ar 48000 -c:a pcm_f32le");
    const std::string low = encoded("low.wav", "-ar 22050 -c:a pcm_f32le");
    const CliResult r = run_exact("-v " + quoted(mix()) + " " + quoted(high) + " " + quoted(low));
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.out.find("read 2 channel(s) at 48000 Hz, 4.00 s, resampled to 44100 Hz"), std::string::npos)
        << r.out;
    for (const auto& source : tiny_sources()) {
        const Audio original = stem(source, "mix_4s");
        for (const auto& [track, min_snr] : {std::pair<std::string, double>{"high", 15.0}, {"low", 6.0}}) {
            const Audio got = stem(source, track);
            EXPECT_EQ(got.samplerate, 44100) << track;
            EXPECT_EQ(got.samples, kSamples) << track;
            EXPECT_GT(snr_db(got, original), min_snr) << track << " " << source;
        }
    }
}

TEST_F(CliFormats, FourChannelInputUsesTheFirstTwo) {
    const Audio stereo = read_audio(mix());
    Audio four = stereo;
    four.channels = 4;
    four.data.resize(4 * stereo.samples);
    for (int64_t t = 0; t < stereo.samples; ++t) {
        four.channel(2)[t] = 0.5f * std::sin(0.01f * t);
        four.channel(3)[t] = -0.25f;
    }
    write_float_wav(scratch("quad.wav"), four);
    const CliResult r = run_exact(quoted(mix()) + " " + quoted(scratch("quad.wav")));
    ASSERT_EQ(r.status, 0) << r.err;
    for (const auto& source : tiny_sources())
        EXPECT_TRUE(same_samples(stem(source, "quad"), stem(source, "mix_4s"))) << source;
}

TEST_F(CliFormats, EveryOutputFormatReadsBack) {
    const std::string one_stem = "-n tiny -d cpu --shifts 0 --two-stems vocals --other-method none --clip-mode none ";
    struct Case {
        std::string args, ext;
        int bits;  // 0: float32; -1: mp3
        int mp3_bitrate = 320, mp3_preset = 2;
    };
    const std::vector<Case> cases = {
        {"--float32", "wav", 0},          {"", "wav", 16},      {"--int24", "wav", 24},
        {"--flac", "flac", 16},           {"--flac --int24", "flac", 24},
        {"--flac --float32", "flac", 16},  // FLAC ignores --float32, as official
        {"--mp3", "mp3", -1},             {"--mp3 --mp3-bitrate 128 --mp3-preset 7", "mp3", -1, 128, 7},
    };
    Audio exact;
    std::vector<uintmax_t> mp3_sizes;
    for (const Case& c : cases) {
        fs::remove_all(out_dir());
        const CliResult r = run(one_stem + c.args + " " + quoted(mix()));
        ASSERT_EQ(r.status, 0) << c.args << ": " << r.err;
        const std::string path = stem_path("vocals", "mix_4s", c.ext);
        ASSERT_EQ(files_under(out_dir()), std::vector<std::string>{"tiny/mix_4s/vocals." + c.ext}) << c.args;
        const Audio got = read_audio(path);
        EXPECT_EQ(got.channels, 2) << c.args;
        EXPECT_EQ(got.samplerate, 44100) << c.args;
        ASSERT_EQ(got.samples, kSamples) << c.args;
        if (c.bits == 0) {
            exact = got;
            continue;
        }
        ASSERT_EQ(exact.samples, kSamples) << "the float32 case runs first";
        if (c.bits > 0) {
            // Integers of the right width, within half a step (sox rounding)
            // of the float32 stems (none of which clip here).
            const double step = std::ldexp(1.0, 1 - c.bits);
            ASSERT_LT(peak(exact), 1.0f);
            double worst = 0;
            bool finer_than_16 = false;
            for (size_t i = 0; i < got.data.size(); ++i) {
                const double scaled = got.data[i] / step;
                ASSERT_EQ(scaled, std::round(scaled)) << c.args;
                worst = std::max(worst, std::fabs(double(got.data[i]) - exact.data[i]));
                finer_than_16 |= std::fmod(std::ldexp(double(got.data[i]), 15), 1.0) != 0.0;
            }
            EXPECT_LE(worst, step / 2 + 1e-9) << c.args;
            EXPECT_EQ(finer_than_16, c.bits == 24) << c.args;
        } else {
            // The very bytes LAME makes of the float32 stem with this bitrate
            // and preset (the tiny model's stems are noise-like, so the
            // coding error itself says little; LAME on music is checked in
            // test_audio_formats.cpp).
            WriteParams params;
            params.container = "mp3";
            params.clip = ClipMode::None;
            params.mp3_bitrate = c.mp3_bitrate;
            params.mp3_preset = c.mp3_preset;
            write_audio(scratch("direct.mp3"), exact.data.data(), 2, exact.samples, 44100, params);
            EXPECT_EQ(read_text(path), read_text(scratch("direct.mp3"))) << c.args;
            EXPECT_GT(snr_db(got, exact), 5.0) << c.args;
            mp3_sizes.push_back(fs::file_size(path));
        }
    }
    ASSERT_EQ(mp3_sizes.size(), 2u);
    EXPECT_NEAR(double(mp3_sizes[0]), 4 * 320000 / 8.0, 8000);  // constant 320 kbps
    EXPECT_NEAR(double(mp3_sizes[1]), 4 * 128000 / 8.0, 4000);
}

TEST_F(CliFormats, ClipModesOnATrackThatClips) {
    // The mix at 8x: its stems go well past full scale.
    Audio loud = read_audio(mix());
    for (float& v : loud.data) v *= 8.0f;
    write_float_wav(scratch("loud.wav"), loud);
    const std::string args = "-n tiny -d cpu --shifts 0 --float32 --two-stems drums --other-method none ";
    const auto drums_with = [&](const std::string& mode) {
        fs::remove_all(out_dir());
        const CliResult r = run(args + "--clip-mode " + mode + " " + quoted(scratch("loud.wav")));
        EXPECT_EQ(r.status, 0) << r.err;
        return stem("drums", "loud");
    };
    const Audio none = drums_with("none"), rescale = drums_with("rescale"), clamp = drums_with("clamp");
    const float top = peak(none);
    ASSERT_GT(top, 1.2f);
    ASSERT_EQ(rescale.data.size(), none.data.size());
    ASSERT_EQ(clamp.data.size(), none.data.size());
    const float divisor = std::max(1.01f * top, 1.0f);
    for (size_t i = 0; i < none.data.size(); ++i) {
        ASSERT_EQ(rescale.data[i], none.data[i] / divisor) << i;
        ASSERT_EQ(clamp.data[i], std::min(std::max(none.data[i], -0.99f), 0.99f)) << i;
    }
    // Default 16-bit output with the default rescale: nothing saturates.
    fs::remove_all(out_dir());
    ASSERT_EQ(run("-n tiny --shifts 0 --two-stems drums --other-method none " + quoted(scratch("loud.wav"))).status, 0);
    EXPECT_LE(peak(stem("drums", "loud")), 1.0f / 1.01f + 1.0f / 32768);
}

TEST_F(CliFormats, FilenameTemplatesWithSubfolders) {
    const CliResult r = run_exact("--filename '{stem}/{track}.{trackext}.{ext}' --two-stems bass " + quoted(mix()));
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(files_under(out_dir()),
              (std::vector<std::string>{"tiny/bass/mix_4s.wav.wav", "tiny/no_bass/mix_4s.wav.wav"}));
    fs::remove_all(out_dir());
    const CliResult deep = run_exact("--filename 'a/{track}/b/{stem}.{ext}' --two-stems bass --other-method none --mp3 " +
                                     quoted(mix()));
    ASSERT_EQ(deep.status, 0) << deep.err;
    EXPECT_EQ(files_under(out_dir()), (std::vector<std::string>{"tiny/a/mix_4s/b/bass.mp3"}));
}

TEST_F(CliFormats, FilenameWithAnUnknownSuffixFailsThatTrack) {
    // The format comes from the file name, as official; .ogg is not written.
    const CliResult r = run_exact("--filename '{track}/{stem}.ogg' " + quoted(mix()));
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.err.find("fastdemucs: error: cannot write " + out_dir() +
                         "/tiny/mix_4s/drums.ogg: the file name must end in .wav, .flac or .mp3"),
              std::string::npos)
        << r.err;
    EXPECT_TRUE(files_under(out_dir()).empty());
}

#endif  // FASTDEMUCS_CLI_PATH
