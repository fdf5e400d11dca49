// End-to-end runs of the `fastdemucs` command on the tiny fixture model,
// checked against the official CLI-path reference and the official rules for
// --two-stems, file names and errors.
#include <gtest/gtest.h>

#include <pty.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "fastdemucs/fastdemucs.h"
#include "io/audio_file.h"
#include "test_cli_support.h"
#include "test_support.h"

#ifdef FASTDEMUCS_CLI_PATH

using namespace fastdemucs;
using namespace cli_testing;
namespace fs = std::filesystem;
using testing_support::Array;

namespace {

const std::vector<std::string>& kSources = tiny_sources();

class Cli : public CliFixture {};

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
        "--no-split --segment 1", "--shifts two", "--unknown-flag", "--mp3-preset 9",
        "--mp3-preset 1", "--mp3-bitrate 0", "--mp3-bitrate 999", "--flac --mp3", "--precision fp8",
        "--batch-size -1", "--jobs -2", "-d cuda:x", "-d cuda1", "--verbose --quiet", "--overlap -0.1",
        "-o ''"};
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


TEST_F(Cli, UndecodableTrackReportsAndGoesOn) {
    std::ofstream(scratch("notes.wav")) << "these are not samples\n";
    const CliResult r = run_exact(quoted(scratch("notes.wav")) + " " + quoted(mix()));
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.err.find("fastdemucs: error: cannot decode " + scratch("notes.wav") + " (libsndfile: "),
              std::string::npos)
        << r.err;
    EXPECT_FALSE(fs::exists(out_dir() + "/tiny/notes"));
    for (const auto& s : kSources) EXPECT_TRUE(fs::exists(stem_path(s))) << s;
    expect_no_temp_files(out_dir());
}

// Tracks after the first are read while the one before is separated: a
// bad one is still reported in its turn and the others are separated.
TEST_F(Cli, ReadAheadTrackErrorsAreReportedInTheirTurn) {
    std::ofstream(scratch("notes.wav")) << "these are not samples\n";
    fs::copy_file(mix(), scratch("again.wav"));
    const CliResult r =
        run_exact(quoted(mix()) + " " + quoted(scratch("notes.wav")) + " " + quoted(scratch("again.wav")));
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.err.find("fastdemucs: error: cannot decode " + scratch("notes.wav")), std::string::npos) << r.err;
    const size_t separating_notes = r.out.find("Separating track " + scratch("notes.wav"));
    const size_t separating_again = r.out.find("Separating track " + scratch("again.wav"));
    EXPECT_NE(separating_notes, std::string::npos) << r.out;
    EXPECT_LT(separating_notes, separating_again) << r.out;
    for (int s = 0; s < 4; ++s) {
        expect_stem_matches(stem_path(kSources[s]), reference_sum({s}), 80.0);
        expect_stem_matches(stem_path(kSources[s], "again"), reference_sum({s}), 80.0);
    }
    EXPECT_FALSE(fs::exists(out_dir() + "/tiny/notes"));
    expect_no_temp_files(out_dir());
}

// FASTDEMUCS_TRACE=1: the start-up time line on stderr, from main to the exit.
TEST_F(Cli, TraceShowsTheTimeLine) {
    const CliResult traced = run("-n tiny -d cpu --shifts 0 " + quoted(mix()), "FASTDEMUCS_TRACE=1");
    EXPECT_EQ(traced.status, 0) << traced.err;
    for (const char* step : {"main", "checkpoint read", "model ready", "audio read", "separated", "stems written",
                             "exiting"})
        EXPECT_NE(traced.err.find(std::string("s  ") + step), std::string::npos) << step << "\n" << traced.err;
    EXPECT_EQ(traced.err.rfind("fastdemucs trace: +", 0), 0u) << traced.err;
    const CliResult quiet = run("-n tiny -d cpu --shifts 0 " + quoted(mix()));
    EXPECT_EQ(quiet.status, 0);
    EXPECT_EQ(quiet.err.find("fastdemucs trace"), std::string::npos) << quiet.err;
}

TEST_F(Cli, UnwritableOutputFolderFailsBeforeAnyWork) {
    // Under a regular file nothing can be created, even by root.
    std::ofstream(scratch("file.txt")) << "x";
    const std::string blocked = scratch("file.txt") + "/out";
    const CliResult r = run_command("--repo " + quoted(tiny_repo()) + " -n tiny -o " + quoted(blocked) + " " +
                                    quoted(mix()));
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.err.find("fastdemucs: error: cannot create the output folder " + blocked + "/tiny: " +
                         scratch("file.txt") + " is not a folder"),
              std::string::npos)
        << r.err;
    EXPECT_EQ(r.out, "");  // failed before loading the model
    if (geteuid() != 0) {
        fs::create_directory(scratch("ro"));
        fs::permissions(scratch("ro"), fs::perms::owner_read | fs::perms::owner_exec);
        const CliResult ro = run_command("--repo " + quoted(tiny_repo()) + " -n tiny -o " +
                                         quoted(scratch("ro/out")) + " " + quoted(mix()));
        fs::permissions(scratch("ro"), fs::perms::owner_all);
        EXPECT_EQ(ro.status, 1);
        EXPECT_NE(ro.err.find("is not writable"), std::string::npos) << ro.err;
        EXPECT_TRUE(fs::is_empty(scratch("ro")));
    }
}

TEST_F(Cli, FullDiskLeavesNoPartialFileAndKeepsTheOldOne) {
    // A file size limit makes writes fail part way, as a full disk does; the
    // shell ignores SIGXFSZ so the command sees the error (EFBIG).
    fs::create_directories(out_dir() + "/tiny/mix_4s");
    std::ofstream(stem_path("drums")) << "the previous drums";
    const CliResult r = run("-n tiny -d cpu --shifts 0 --float32 --clip-mode none " + quoted(mix()), "",
                            "trap '' XFSZ; ulimit -f 256;");
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.err.find("fastdemucs: error: cannot write " + stem_path("drums") + ": "), std::string::npos)
        << r.err;
    EXPECT_EQ(read_text(stem_path("drums")), "the previous drums");
    EXPECT_EQ(files_under(out_dir()), std::vector<std::string>{"tiny/mix_4s/drums.wav"});
    expect_no_temp_files(out_dir());
}

TEST_F(Cli, ProgressGoesToStderrOnlyOnATerminalOrWithVerbose) {
    const CliResult plain = run("-n tiny --shifts 0 " + quoted(mix()));
    ASSERT_EQ(plain.status, 0) << plain.err;
    EXPECT_EQ(plain.err, "");
    EXPECT_NE(plain.out.find("Separating track " + mix()), std::string::npos) << plain.out;

    const CliResult verbose = run("-n tiny --shifts 0 -v " + quoted(mix()));
    ASSERT_EQ(verbose.status, 0) << verbose.err;
    EXPECT_NE(verbose.err.find("mix_4s.wav 100% 3/3 chunks"), std::string::npos) << verbose.err;
    EXPECT_NE(verbose.err.find("mix_4s.wav: done in "), std::string::npos) << verbose.err;
    EXPECT_NE(verbose.out.find("wrote " + stem_path("vocals")), std::string::npos) << verbose.out;

    const CliResult quiet = run("-n tiny --shifts 0 -q " + quoted(mix()));
    ASSERT_EQ(quiet.status, 0) << quiet.err;
    EXPECT_EQ(quiet.out, "");
    EXPECT_EQ(quiet.err, "");
}

TEST_F(Cli, ProgressBarOnATerminal) {
    // stdout and stderr on a pseudo-terminal: the bar is redrawn in place
    // with \r and ends with the track's time.
    int master = -1;
    const pid_t pid = forkpty(&master, nullptr, nullptr, nullptr);
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        const std::string repo = tiny_repo(), out = out_dir(), track = mix();
        ::execl(FASTDEMUCS_CLI_PATH, FASTDEMUCS_CLI_PATH, "--repo", repo.c_str(), "-n", "tiny", "--shifts", "0",
                "-o", out.c_str(), track.c_str(), static_cast<char*>(nullptr));
        ::_exit(127);
    }
    std::string screen;
    char buffer[4096];
    for (;;) {
        const ssize_t got = ::read(master, buffer, sizeof buffer);
        if (got <= 0) break;  // EIO once the child is gone
        screen.append(buffer, static_cast<size_t>(got));
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    ::close(master);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << screen;
    EXPECT_NE(screen.find("\r"), std::string::npos) << screen;
    EXPECT_NE(screen.find("3/3 chunks"), std::string::npos) << screen;
    EXPECT_NE(screen.find("elapsed"), std::string::npos) << screen;
    EXPECT_NE(screen.find("mix_4s.wav: done in "), std::string::npos) << screen;
}

TEST_F(Cli, SameSeedGivesTheSameStems) {
    const std::string args = "-n tiny -d cpu --shifts 2 --seed 1234 --float32 --two-stems vocals "
                             "--other-method none -j 1 ";
    ASSERT_EQ(run(args + quoted(mix())).status, 0);
    const Audio first = read_audio(stem_path("vocals"));
    ASSERT_EQ(run(args + quoted(mix())).status, 0);
    EXPECT_TRUE(same_samples(read_audio(stem_path("vocals")), first));
}

// 16-bit WAV and FLAC of the sources take the model's own 16-bit stems
// (Separator::separate_pcm16); the same files as the float stems written by
// the float writer (FASTDEMUCS_FLOAT_STEMS=1), in each clip mode, the
// default rescale among them.
TEST_F(Cli, SixteenBitStemsEqualTheFloatWritersFiles) {
    for (const std::string options : {"", "--clip-mode clamp", "--clip-mode none --flac"}) {
        const std::string args = "-n tiny -d cpu --shifts 0 " + options + " " + quoted(mix());
        const std::string ext = options.find("--flac") == std::string::npos ? "wav" : "flac";
        ASSERT_EQ(run(args).status, 0) << options;
        std::vector<std::string> pcm16_files;
        for (const auto& stem : tiny_sources()) pcm16_files.push_back(read_text(stem_path(stem, "mix_4s", ext)));
        const CliResult r = run(args, "FASTDEMUCS_FLOAT_STEMS=1");
        ASSERT_EQ(r.status, 0) << r.err;
        for (size_t s = 0; s < tiny_sources().size(); s++) {
            if (ext == "wav") EXPECT_GT(pcm16_files[s].size(), size_t(2 * 2 * kSamples)) << tiny_sources()[s];
            EXPECT_EQ(read_text(stem_path(tiny_sources()[s], "mix_4s", ext)), pcm16_files[s])
                << options << ": " << tiny_sources()[s];
        }
    }
}

TEST_F(Cli, CudaDeviceNeedsTheCudaBackend) {
#ifdef FASTDEMUCS_WITH_CUDA
    GTEST_SKIP() << "this build has the CUDA backend";
#else
    for (const char* device : {"cuda", "cuda:1"}) {
        const CliResult r = run(std::string("-n tiny -d ") + device + " " + quoted(mix()));
        EXPECT_EQ(r.status, 1) << device;
        EXPECT_NE(r.err.find("fastdemucs: error: this build of fastdemucs has no CUDA backend; use -d cpu"),
                  std::string::npos)
            << r.err;
        EXPECT_FALSE(fs::exists(out_dir() + "/tiny/mix_4s")) << device;
    }
    // Without -d, a build without CUDA runs on the CPU.
    const CliResult r = run("-n tiny --shifts 0 -v " + quoted(mix()));
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.out.find(", on cpu"), std::string::npos) << r.out;
#endif
}

TEST_F(Cli, HelpAndVersion) {
    const CliResult help = run_command("--help");
    EXPECT_EQ(help.status, 0);
    for (const char* option : {"--name", "--repo", "--list-models", "--model-url", "--offline", "--out",
                               "--filename", "--device", "--shifts", "--overlap", "--no-split", "--segment",
                               "--two-stems", "--other-method", "--int24", "--float32", "--clip-mode", "--flac",
                               "--mp3", "--mp3-bitrate", "--mp3-preset", "--jobs", "--precision", "--batch-size",
                               "--seed", "--verbose", "--quiet"})
        EXPECT_NE(help.out.find(option), std::string::npos) << option;
    const CliResult version = run_command("--version");
    EXPECT_EQ(version.status, 0);
    EXPECT_EQ(version.out.rfind("fastdemucs ", 0), 0u) << version.out;
}

TEST_F(Cli, DemoClipSeparates) {
    // The clip scripts/demo.sh separates (there with htdemucs_6s).
    const std::string demo = (fs::path(__FILE__).parent_path().parent_path() / "demo" / "demo.flac").string();
    const Audio clip = read_audio(demo);
    EXPECT_EQ(clip.channels, 2);
    EXPECT_EQ(clip.samplerate, 44100);
    EXPECT_EQ(clip.samples, 8 * 44100);
    EXPECT_LT(fs::file_size(demo), 1u << 20);
    const CliResult r = run("-n tiny --shifts 0 " + quoted(demo));
    ASSERT_EQ(r.status, 0) << r.err;
    for (const auto& s : kSources) EXPECT_EQ(read_audio(stem_path(s, "demo")).samples, 8 * 44100) << s;
}

TEST_F(Cli, SixStemModel) {
    // The htdemucs_6s architecture (random weights): six stems by name, and
    // --two-stems with one of the two extra ones.
    const std::string repo = testing_support::fixture("full6s");
    const std::string track = testing_support::fixture("full6s/mix_3s.wav");
    const CliResult r = run_command("--repo " + quoted(repo) + " -n full6s -d cpu --shifts 0 --float32 "
                                    "--clip-mode none --filename '{stem}.{ext}' " + quoted(track));
    ASSERT_EQ(r.status, 0) << r.err;
    const std::vector<std::string> six = {"bass", "drums", "guitar", "other", "piano", "vocals"};
    std::vector<std::string> expected;
    for (const auto& s : six) expected.push_back("full6s/" + s + ".wav");
    ASSERT_EQ(files_under(out_dir()), expected);
    const Audio mix = read_audio(track);
    std::vector<float> others(mix.data.size(), 0.0f);
    for (const auto& s : six) {
        const Audio stem = read_audio(out_dir() + "/full6s/" + s + ".wav");
        ASSERT_EQ(stem.channels, 2) << s;
        ASSERT_EQ(stem.samples, mix.samples) << s;
        if (s != "piano")
            for (size_t i = 0; i < others.size(); ++i) others[i] += stem.data[i];
    }
    // no_piano is the other five summed, written by the same run as piano.
    const CliResult two = run_command("--repo " + quoted(repo) + " -n full6s -d cpu --shifts 0 --float32 "
                                      "--clip-mode none --two-stems piano --filename 'two/{stem}.{ext}' " +
                                      quoted(track));
    ASSERT_EQ(two.status, 0) << two.err;
    const Audio no_piano = read_audio(out_dir() + "/full6s/two/no_piano.wav");
    EXPECT_GE(testing_support::snr_db(no_piano.data.data(), others.data(), int64_t(others.size())), 100.0);
    EXPECT_TRUE(same_samples(read_audio(out_dir() + "/full6s/two/piano.wav"),
                             read_audio(out_dir() + "/full6s/piano.wav")));
}

TEST_F(Cli, OverlapSegmentAndBagsLikeOfficial) {
    const Array overlap50 = testing_support::read_npy(testing_support::fixture("tiny/tiny_separate_4s_overlap50.npy"));
    ASSERT_EQ(run_exact("--overlap 0.5 " + quoted(mix())).status, 0);
    for (int s = 0; s < 4; ++s) {
        const std::vector<float> want(overlap50.data.begin() + s * 2 * kSamples,
                                      overlap50.data.begin() + (s + 1) * 2 * kSamples);
        expect_stem_matches(stem_path(kSources[s]), want, 80.0);
    }
    const Array bag = testing_support::read_npy(testing_support::fixture("tiny/tiny_bag_separate_4s.npy"));
    const CliResult r = run("-n tiny_bag -d cpu --shifts 0 --float32 --clip-mode none " + quoted(mix()));
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.out.find("Selected model is a bag of 4 models. You will see that many progress bars per track."),
              std::string::npos)
        << r.out;
    for (int s = 0; s < 4; ++s) {
        const std::vector<float> want(bag.data.begin() + s * 2 * kSamples, bag.data.begin() + (s + 1) * 2 * kSamples);
        expect_stem_matches(out_dir() + "/tiny_bag/mix_4s/" + kSources[s] + ".wav", want, 80.0);
    }
    // A shorter segment, in seconds with decimals: same length, other stems
    // (the random-weight model depends much on its context length).
    fs::remove_all(out_dir());
    ASSERT_EQ(run_exact("--segment 1.5 --two-stems vocals --other-method none " + quoted(mix())).status, 0);
    const Audio vocals = read_audio(stem_path("vocals"));
    ASSERT_EQ(vocals.samples, kSamples);
    const double snr = testing_support::snr_db(vocals.data.data(), reference_stem(3), 2 * kSamples);
    EXPECT_TRUE(std::isfinite(snr));
    EXPECT_LT(snr, 80.0);
    EXPECT_GT(std::fabs(vocals.data[kSamples / 2]) + std::fabs(vocals.data[kSamples / 3]), 0.0f);
}

#endif  // FASTDEMUCS_CLI_PATH
