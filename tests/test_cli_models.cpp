// Models by name from the command line: --list-models, downloads from a
// mirror (--model-url, FASTDEMUCS_MODEL_URL) into the cache under
// TORCH_HOME, offline use, unsupported and unknown names. The mirror is a
// python3 HTTP server on 127.0.0.1 serving the tiny fixture models.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>

#include "fastdemucs/fastdemucs.h"
#include "io/audio_file.h"
#include "test_cli_support.h"
#include "test_support.h"
#include "test_support_http.h"

#ifdef FASTDEMUCS_CLI_PATH

using namespace fastdemucs;
using namespace cli_testing;

namespace {

// The line of `text` that starts with `start`, or "".
std::string line_starting(const std::string& text, const std::string& start) {
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line);)
        if (line.rfind(start, 0) == 0) return line;
    return "";
}

class CliModels : public CliFixture {
protected:
    std::string cache() const { return torch_home() + "/hub/checkpoints"; }

    // A mirror in the official layout with made-up signatures for the tiny
    // models: files.txt, tiny.yaml (one model), tiny_bag.yaml (four).
    void start_mirror() {
        const std::map<std::string, std::string> models = {
            {"aaaa0001", "0d0b2025"}, {"aaaa0002", "6325d78b"}, {"aaaa0003", "597c7e2b"}, {"aaaa0004", "2834c0f1"}};
        const fs::path mirror = scratch("mirror");
        fs::create_directories(mirror / "models");
        std::string files = "root: models/\n";
        for (const auto& [signature, checksum] : models) {
            fs::copy_file(testing_support::fixture("tiny/" + checksum + ".th"),
                          mirror / "models" / (signature + "-" + checksum + ".th"));
            files += signature + "-" + checksum + ".th\n";
        }
        std::ofstream(mirror / "files.txt") << files;
        std::ofstream(mirror / "tiny.yaml") << "models: ['aaaa0001']\n";
        std::ofstream(mirror / "tiny_bag.yaml")
            << "models: ['aaaa0001', 'aaaa0002', 'aaaa0003', 'aaaa0004']\n"
               "weights: [[1., 0., 0., 0.], [0., 1., 0., 0.], [0., 0., 1., 0.], [0., 0., 0., 1.]]\n";
        std::ofstream(scratch("server.py")) << testing_support::kHttpServerScript;
        server_ = std::make_unique<testing_support::MirrorServer>(scratch("server.py"), mirror, scratch("requests.log"));
    }
    // Requests for model files the server has seen.
    int model_requests() const {
        std::istringstream log(read_text(scratch("requests.log")));
        int count = 0;
        for (std::string line; std::getline(log, line);) count += line.size() > 3 && line.substr(line.size() - 3) == ".th";
        return count;
    }

    std::unique_ptr<testing_support::MirrorServer> server_;
};

}  // namespace

TEST_F(CliModels, ListModelsInTheOfficialLayoutWithStemsAndCacheState) {
    fs::create_directories(cache());
    std::ofstream(cache() + "/955717e8-8726e21a.th") << "not verified by --list-models";
    const CliResult r = run_command("--list-models");
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out.rfind("Bag of models:\n    htdemucs ", 0), 0u) << r.out;
    const std::string htdemucs = line_starting(r.out, "    htdemucs ");
    EXPECT_NE(htdemucs.find("drums,bass,other,vocals "), std::string::npos) << htdemucs;
    EXPECT_NE(htdemucs.find(" cached "), std::string::npos) << htdemucs;
    EXPECT_NE(htdemucs.find(" supported"), std::string::npos) << htdemucs;
    const std::string six = line_starting(r.out, "    htdemucs_6s ");
    EXPECT_NE(six.find("drums,bass,other,vocals,guitar,piano"), std::string::npos) << six;
    EXPECT_NE(six.find("not cached"), std::string::npos) << six;
    EXPECT_NE(line_starting(r.out, "    htdemucs_ft ").find(" supported"), std::string::npos) << r.out;
    EXPECT_NE(line_starting(r.out, "    mdx_extra_q ").find("not supported yet"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("\nSingle models:\n"), std::string::npos) << r.out;
    EXPECT_NE(line_starting(r.out, "    955717e8 ").find(" cached "), std::string::npos) << r.out;
    EXPECT_NE(line_starting(r.out, "    5c90dfd2 ").find("not cached"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("Cache: " + cache()), std::string::npos) << r.out;
    EXPECT_FALSE(fs::exists(out_dir()));
}

TEST_F(CliModels, ListModelsOfARepoFolder) {
    const CliResult r = run("--list-models");
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out,
              "Bag of models:\n    tiny\n    tiny_bag\n"
              "Single models:\n    0d0b2025\n    2834c0f1\n    597c7e2b\n    6325d78b\n");
    const CliResult missing = run_command("--list-models --repo " + quoted(scratch("nowhere")));
    EXPECT_EQ(missing.status, 1);
    EXPECT_NE(missing.err.find(scratch("nowhere") + " must exist and be a directory."), std::string::npos)
        << missing.err;
}

TEST_F(CliModels, DownloadsFromAMirrorOnceThenUsesTheCache) {
    // The same model through --repo, for comparison.
    const std::string exact = "-d cpu --shifts 0 --float32 --clip-mode none --two-stems vocals ";
    ASSERT_EQ(run("-n tiny " + exact + quoted(mix())).status, 0);
    const Audio from_repo = read_audio(stem_path("vocals"));
    fs::remove_all(out_dir());

    start_mirror();
    const CliResult first = run_command("-n tiny --model-url " + server_->url() + " " + exact + quoted(mix()));
    if (first.err.find("no download support (FASTDEMUCS_DOWNLOAD=OFF)") != std::string::npos)
        GTEST_SKIP() << "built without downloads";
    ASSERT_EQ(first.status, 0) << first.err;
    EXPECT_NE(first.err.find("Downloading " + server_->url() + "models/aaaa0001-0d0b2025.th to " + cache() +
                             "/aaaa0001-0d0b2025.th"),
              std::string::npos)
        << first.err;
    EXPECT_TRUE(fs::exists(cache() + "/aaaa0001-0d0b2025.th"));
    EXPECT_TRUE(same_samples(read_audio(stem_path("vocals")), from_repo));
    EXPECT_EQ(model_requests(), 1);

    // Again, the mirror named by the environment: the cached file is used.
    const CliResult second = run_command("-n tiny " + exact + quoted(mix()), "FASTDEMUCS_MODEL_URL=" + server_->url());
    ASSERT_EQ(second.status, 0) << second.err;
    EXPECT_EQ(second.err.find("Downloading"), std::string::npos) << second.err;
    EXPECT_EQ(model_requests(), 1);

    // A bag of four, by name; the option wins over the environment.
    const CliResult bag = run_command("-n tiny_bag --model-url " + server_->url() + " -q --shifts 0 " + quoted(mix()),
                                      "FASTDEMUCS_MODEL_URL=http://127.0.0.1:1/");
    ASSERT_EQ(bag.status, 0) << bag.err;
    EXPECT_EQ(bag.out, "");
    EXPECT_EQ(model_requests(), 4);
    for (const auto& source : tiny_sources())
        EXPECT_TRUE(fs::exists(out_dir() + "/tiny_bag/mix_4s/" + source + ".wav")) << source;

    const CliResult unknown = run_command("-n nothere --model-url " + server_->url() + " " + quoted(mix()));
    EXPECT_EQ(unknown.status, 1);
    EXPECT_NE(unknown.err.find("fastdemucs: error: unknown model nothere"), std::string::npos) << unknown.err;
    EXPECT_FALSE(fs::exists(out_dir() + "/nothere"));
}

TEST_F(CliModels, OfflineWithoutTheModelSaysWhatToDownloadAndWhere) {
    const CliResult r = run_command("-n htdemucs --offline " + quoted(mix()));
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.err.find("fastdemucs: error: model file 955717e8-8726e21a.th is not in the cache (" + cache() +
                         ") and could not be downloaded from "
                         "https://dl.fbaipublicfiles.com/demucs/hybrid_transformer/955717e8-8726e21a.th: offline "
                         "mode; download it by hand and put it there"),
              std::string::npos)
        << r.err;
    EXPECT_FALSE(fs::exists(out_dir()));
}

TEST_F(CliModels, UnsupportedAndUnknownNamesFailBeforeAnyWork) {
    const CliResult mdx = run_command("-n mdx_extra --offline " + quoted(mix()));
    EXPECT_EQ(mdx.status, 1);
    EXPECT_NE(mdx.err.find("fastdemucs: error: model mdx_extra is not supported yet"), std::string::npos) << mdx.err;
    const CliResult unknown = run_command("-n nosuchmodel --offline " + quoted(mix()));
    EXPECT_EQ(unknown.status, 1);
    EXPECT_NE(unknown.err.find("fastdemucs: error: unknown model nosuchmodel"), std::string::npos) << unknown.err;
    EXPECT_FALSE(fs::exists(out_dir()));
}

#endif  // FASTDEMUCS_CLI_PATH
