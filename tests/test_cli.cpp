// End-to-end runs of the `fastdemucs` command on the tiny fixture model,
// checked against the official CLI-path reference and the official rules for
// --two-stems, file names and errors.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "fastdemucs/fastdemucs.h"
#include "io/audio_file.h"
#include "test_support.h"

#ifdef FASTDEMUCS_CLI_PATH

using namespace fastdemucs;
namespace fs = std::filesystem;
using testing_support::Array;

namespace {

const std::vector<std::string> kSources = {"drums", "bass", "other", "vocals"};
constexpr int64_t kSamples = 176400;  // mix_4s: 4 s at 44.1 kHz

std::string quoted(const std::string& text) {
    std::string q = "'";
    for (char c : text) q += (c == '\'') ? std::string("'\\''") : std::string(1, c);
    return q + "'";
}

std::string read_text(const std::string& path) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

struct CliResult {
    int status = -1;
    std::string out, err;
};

class Cli : public ::testing::Test {
protected:
    void SetUp() override {
        scratch_ = testing_support::make_temp_dir("cli");
        fs::create_directory(logs());
    }
    void TearDown() override { fs::remove_all(scratch_); }

    std::string logs() const { return scratch_ + "/logs"; }
    std::string out_dir() const { return scratch_ + "/out"; }
    std::string scratch(const std::string& name) const { return scratch_ + "/" + name; }
    static std::string mix() { return testing_support::fixture("tiny/mix_4s.wav"); }

    // Runs the command with the tiny repo and our output folder.
    CliResult run(const std::string& args) const {
        const std::string command = quoted(FASTDEMUCS_CLI_PATH) + " --repo " +
                                    quoted(testing_support::fixture("tiny")) + " -o " +
                                    quoted(out_dir()) + " " + args + " >" + quoted(logs() + "/out") +
                                    " 2>" + quoted(logs() + "/err");
        const int raw = std::system(command.c_str());
        CliResult result;
        result.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
        result.out = read_text(logs() + "/out");
        result.err = read_text(logs() + "/err");
        return result;
    }
    // The fast, exact mode the reference was computed in.
    CliResult run_exact(const std::string& args) const {
        return run("-n tiny -d cpu --shifts 0 --float32 --clip-mode none " + args);
    }

    std::string stem_path(const std::string& stem, const std::string& track = "mix_4s") const {
        return out_dir() + "/tiny/" + track + "/" + stem + ".wav";
    }

    std::string scratch_;
};

const Array& reference() {
    static const Array ref = testing_support::read_npy(testing_support::fixture("tiny/tiny_separate_4s.npy"));
    return ref;
}

const float* reference_stem(int s) { return reference().data.data() + s * 2 * kSamples; }

// Reads a written stem, checks its shape and that it matches `expected`.
void expect_stem_matches(const std::string& path, const std::vector<float>& expected, double min_snr) {
    ASSERT_TRUE(fs::exists(path)) << path;
    const Audio audio = read_audio(path);
    ASSERT_EQ(audio.channels, 2) << path;
    ASSERT_EQ(audio.samples, kSamples) << path;
    const double snr = testing_support::snr_db(audio.data.data(), expected.data(), 2 * kSamples);
    EXPECT_GE(snr, min_snr) << path;
}

std::vector<float> reference_sum(const std::vector<int>& stems) {
    std::vector<float> sum(2 * kSamples, 0.0f);
    for (int s : stems)
        for (int64_t i = 0; i < 2 * kSamples; ++i) sum[i] += reference_stem(s)[i];
    return sum;
}

// No file under `dir` is a leftover temporary file.
void expect_no_temp_files(const std::string& dir) {
    if (!fs::exists(dir)) return;
    for (const auto& entry : fs::recursive_directory_iterator(dir))
        EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos) << entry.path();
}

std::vector<std::string> files_under(const std::string& dir) {
    std::vector<std::string> files;
    if (!fs::exists(dir)) return files;
    for (const auto& entry : fs::recursive_directory_iterator(dir))
        if (entry.is_regular_file()) files.push_back(fs::relative(entry.path(), dir).string());
    std::sort(files.begin(), files.end());
    return files;
}

void write_float_wav(const std::string& path, const Audio& audio) {
    WriteParams p;
    p.format = SampleFormat::Float32;
    p.clip = ClipMode::None;
    write_audio(path, audio.data.data(), audio.channels, audio.samples, audio.samplerate, p);
}

}  // namespace

TEST_F(Cli, SeparatesTinyLikeOfficial) {
    const CliResult r = run_exact(quoted(mix()));
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.out.find("Separated tracks will be stored in"), std::string::npos) << r.out;
    for (int s = 0; s < 4; ++s) expect_stem_matches(stem_path(kSources[s]), reference_sum({s}), 80.0);
    EXPECT_EQ(files_under(out_dir()).size(), 4u);
    expect_no_temp_files(out_dir());
}

TEST_F(Cli, TwoStemsAddWritesStemAndSumOfOthers) {
    const CliResult r = run_exact("--two-stems vocals " + quoted(mix()));
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(files_under(out_dir()),
              (std::vector<std::string>{"tiny/mix_4s/no_vocals.wav", "tiny/mix_4s/vocals.wav"}));
    expect_stem_matches(stem_path("vocals"), reference_sum({3}), 80.0);
    expect_stem_matches(stem_path("no_vocals"), reference_sum({0, 1, 2}), 80.0);
}

TEST_F(Cli, TwoStemsMinusWritesMixMinusStem) {
    const CliResult r = run_exact("--two-stems drums --other-method minus " + quoted(mix()));
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(files_under(out_dir()),
              (std::vector<std::string>{"tiny/mix_4s/drums.wav", "tiny/mix_4s/minus_drums.wav"}));
    const Audio input = read_audio(mix());
    std::vector<float> expected(input.data);
    for (int64_t i = 0; i < 2 * kSamples; ++i) expected[i] -= reference_stem(0)[i];
    expect_stem_matches(stem_path("drums"), reference_sum({0}), 80.0);
    expect_stem_matches(stem_path("minus_drums"), expected, 80.0);
}

TEST_F(Cli, TwoStemsNoneWritesOnlyTheStem) {
    const CliResult r = run_exact("--two-stems bass --other-method none " + quoted(mix()));
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(files_under(out_dir()), (std::vector<std::string>{"tiny/mix_4s/bass.wav"}));
    expect_stem_matches(stem_path("bass"), reference_sum({1}), 80.0);
}

TEST_F(Cli, FilenameTemplateAndFlac) {
    const CliResult r = run("-n tiny --shifts 0 --flac --filename '{track}_{stem}.{trackext}.{ext}' " +
                            quoted(mix()));
    ASSERT_EQ(r.status, 0) << r.err;
    std::vector<std::string> expected;
    for (const auto& s : kSources) expected.push_back("tiny/mix_4s_" + s + ".wav.flac");
    std::sort(expected.begin(), expected.end());
    ASSERT_EQ(files_under(out_dir()), expected);
    // Default clip mode (rescale) and 16 bits: integer samples, close to the reference.
    const Audio drums = read_audio(out_dir() + "/tiny/mix_4s_drums.wav.flac");
    ASSERT_EQ(drums.samples, kSamples);
    for (float v : drums.data) ASSERT_EQ(v * 32768.0f, std::round(v * 32768.0f));
    EXPECT_GE(testing_support::snr_db(drums.data.data(), reference_stem(0), 2 * kSamples), 30.0);
}

TEST_F(Cli, Int24WritesTwentyFourBitSamples) {
    const CliResult r = run("-n tiny --shifts 0 --int24 --clip-mode clamp " + quoted(mix()));
    ASSERT_EQ(r.status, 0) << r.err;
    const Audio vocals = read_audio(stem_path("vocals"));
    bool finer_than_16_bits = false;
    for (float v : vocals.data) {
        const double scaled = std::ldexp(double(v), 23);
        ASSERT_EQ(scaled, std::round(scaled));
        ASSERT_LE(std::fabs(v), 0.99f + 1e-7f);
        finer_than_16_bits |= std::fmod(scaled, 256.0) != 0.0;
    }
    EXPECT_TRUE(finer_than_16_bits);
}

TEST_F(Cli, MonoInputIsDuplicatedToStereo) {
    const Audio input = read_audio(mix());
    Audio mono = input, doubled = input;
    mono.channels = 1;
    mono.data.assign(input.channel(0), input.channel(0) + input.samples);
    std::copy(input.channel(0), input.channel(0) + input.samples, doubled.channel(1));
    write_float_wav(scratch("mono.wav"), mono);
    write_float_wav(scratch("doubled.wav"), doubled);
    const CliResult r = run_exact(quoted(scratch("mono.wav")) + " " + quoted(scratch("doubled.wav")));
    ASSERT_EQ(r.status, 0) << r.err;
    for (const auto& s : kSources) {
        const Audio from_mono = read_audio(stem_path(s, "mono"));
        const Audio from_doubled = read_audio(stem_path(s, "doubled"));
        ASSERT_EQ(from_mono.channels, 2);
        ASSERT_EQ(from_mono.data.size(), from_doubled.data.size());
        EXPECT_GE(testing_support::snr_db(from_mono.data.data(), from_doubled.data.data(),
                                          int64_t(from_mono.data.size())),
                  100.0)
            << s;
    }
}

TEST_F(Cli, MissingTrackReportsAndGoesOn) {
    const CliResult r = run_exact(quoted(scratch("missing.wav")) + " " + quoted(mix()));
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.err.find("fastdemucs: error: File " + scratch("missing.wav") + " does not exist"),
              std::string::npos)
        << r.err;
    for (const auto& s : kSources) EXPECT_TRUE(fs::exists(stem_path(s))) << s;
    expect_no_temp_files(out_dir());
}

TEST_F(Cli, UnknownModelFailsBeforeAnyWork) {
    const CliResult r = run("-n nosuchmodel " + quoted(mix()));
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.err.find("fastdemucs: error:"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("nosuchmodel"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(out_dir()));
}

TEST_F(Cli, UnknownStemFailsBeforeAnyWork) {
    const CliResult r = run("-n tiny --two-stems guitar " + quoted(mix()));
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.err.find("stem \"guitar\" is not in selected model. STEM must be one of drums, "
                         "bass, other, vocals"),
              std::string::npos)
        << r.err;
    EXPECT_FALSE(fs::exists(out_dir()));
}

TEST_F(Cli, BadOptionValuesFailBeforeAnyWork) {
    const std::vector<std::string> bad = {
        "--clip-mode loud", "--other-method sum", "--shifts -1",  "--overlap 1.5",
        "--device tpu",     "--filename '{nope}'", "--segment 0", "--int24 --float32",
        "--no-split --segment 1", "--shifts two", "--unknown-flag"};
    for (const auto& args : bad) {
        const CliResult r = run("-n tiny " + args + " " + quoted(mix()));
        EXPECT_EQ(r.status, 1) << args;
        EXPECT_EQ(r.err.rfind("fastdemucs: error: ", 0), 0u) << args << ": " << r.err;
        EXPECT_FALSE(fs::exists(out_dir())) << args;
    }
    const CliResult no_tracks = run("-n tiny");
    EXPECT_EQ(no_tracks.status, 1);
    EXPECT_NE(no_tracks.err.find("tracks"), std::string::npos) << no_tracks.err;
}

TEST_F(Cli, SegmentLongerThanModelFails) {
    const CliResult r = run("-n tiny --segment 3 " + quoted(mix()));
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.err.find("Maximum segment is: 2"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(out_dir()));
}

TEST_F(Cli, SampleRateMismatchFailsForThatTrack) {
    Audio input = read_audio(mix());
    input.samplerate = 22050;
    write_float_wav(scratch("slow.wav"), input);
    const CliResult r = run_exact(quoted(scratch("slow.wav")));
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.err.find("sample rate 22050"), std::string::npos) << r.err;
    EXPECT_TRUE(files_under(out_dir()).empty());
}

#endif  // FASTDEMUCS_CLI_PATH
