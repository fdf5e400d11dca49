// The fixture of the command-line tests: runs the built `fastdemucs` in a
// scratch folder (its own TORCH_HOME, no FASTDEMUCS_MODEL_URL), with the tiny
// fixture model by default. OpenMP workers sleep instead of spinning
// (OMP_WAIT_POLICY=passive): on a loaded machine spinning workers make a run
// 5-10x slower, and these tests check results, not speed.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "fastdemucs/fastdemucs.h"
#include "io/audio_file.h"
#include "test_audio_support.h"
#include "test_support.h"

#ifdef FASTDEMUCS_CLI_PATH

namespace cli_testing {

namespace fs = std::filesystem;
using testing_support::quoted;
using testing_support::read_text;

inline const std::vector<std::string>& tiny_sources() {
    static const std::vector<std::string> sources = {"drums", "bass", "other", "vocals"};
    return sources;
}
constexpr int64_t kSamples = 176400;  // mix_4s: 4 s at 44.1 kHz

struct CliResult {
    int status = -1;
    std::string out, err;
};

class CliFixture : public ::testing::Test {
protected:
    void SetUp() override {
        scratch_ = testing_support::make_temp_dir("cli");
        fs::create_directory(logs());
        fs::create_directories(torch_home());
    }
    void TearDown() override {
        std::error_code ec;
        fs::remove_all(scratch_, ec);
    }

    std::string logs() const { return scratch_ + "/logs"; }
    std::string out_dir() const { return scratch_ + "/out"; }
    std::string torch_home() const { return scratch_ + "/torch"; }
    std::string scratch(const std::string& name) const { return scratch_ + "/" + name; }
    static std::string mix() { return testing_support::fixture("tiny/mix_4s.wav"); }
    static std::string tiny_repo() { return testing_support::fixture("tiny"); }

    // Runs `fastdemucs ARGS` with `-o OUT` (stdout and stderr captured).
    // `env` adds VAR=VALUE settings; `shell` runs first in the same shell
    // (ulimit, trap).
    CliResult run_command(const std::string& args, const std::string& env = "",
                          const std::string& shell = "") const {
        const std::string command = shell + " env -u FASTDEMUCS_MODEL_URL TORCH_HOME=" + quoted(torch_home()) +
                                    " no_proxy=127.0.0.1 NO_PROXY=127.0.0.1 OMP_WAIT_POLICY=passive " + env + " " +
                                    quoted(FASTDEMUCS_CLI_PATH) + " -o " + quoted(out_dir()) + " " + args +
                                    " >" + quoted(logs() + "/out") + " 2>" + quoted(logs() + "/err");
        CliResult result;
        result.status = testing_support::shell(command);
        result.out = read_text(logs() + "/out");
        result.err = read_text(logs() + "/err");
        return result;
    }
    // With the tiny fixture repo.
    CliResult run(const std::string& args, const std::string& env = "", const std::string& shell = "") const {
        return run_command("--repo " + quoted(tiny_repo()) + " " + args, env, shell);
    }
    // The fast, exact mode the reference was computed in.
    CliResult run_exact(const std::string& args) const {
        return run("-n tiny -d cpu --shifts 0 --float32 --clip-mode none " + args);
    }

    std::string stem_path(const std::string& stem, const std::string& track = "mix_4s",
                          const std::string& ext = "wav") const {
        return out_dir() + "/tiny/" + track + "/" + stem + "." + ext;
    }

    std::string scratch_;
};

inline std::vector<std::string> files_under(const std::string& dir) {
    std::vector<std::string> files;
    if (!fs::exists(dir)) return files;
    for (const auto& entry : fs::recursive_directory_iterator(dir))
        if (entry.is_regular_file()) files.push_back(fs::relative(entry.path(), dir).string());
    std::sort(files.begin(), files.end());
    return files;
}

// No file under `dir` is a leftover temporary file.
inline void expect_no_temp_files(const std::string& dir) {
    if (!fs::exists(dir)) return;
    for (const auto& entry : fs::recursive_directory_iterator(dir))
        EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos) << entry.path();
}

inline void write_float_wav(const std::string& path, const fastdemucs::Audio& audio) {
    fastdemucs::WriteParams p;
    p.format = fastdemucs::SampleFormat::Float32;
    p.clip = fastdemucs::ClipMode::None;
    fastdemucs::write_audio(path, audio.data.data(), audio.channels, audio.samples, audio.samplerate, p);
}

inline bool same_samples(const fastdemucs::Audio& a, const fastdemucs::Audio& b) {
    return a.channels == b.channels && a.samples == b.samples && a.samplerate == b.samplerate &&
           std::memcmp(a.data.data(), b.data.data(), a.data.size() * sizeof(float)) == 0;
}

inline double snr_db(const fastdemucs::Audio& got, const fastdemucs::Audio& want) {
    const int64_t n = std::min<int64_t>(got.data.size(), want.data.size());
    return testing_support::snr_db(got.data.data(), want.data.data(), n);
}

}  // namespace cli_testing

#endif  // FASTDEMUCS_CLI_PATH
