// Pretrained models by name: catalog, mirror lookup, download into the cache,
// verification, offline use. Downloads go to a small HTTP server on 127.0.0.1
// started by the test, serving a mirror folder built from the tiny fixtures.
#include <gtest/gtest.h>

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <thread>

#include "engine/repo.h"
#include "fastdemucs/fastdemucs.h"
#include "remote/catalog.h"
#include "remote/remote_models.h"
#include "remote/remote_options.h"
#include "test_support.h"
#include "test_support_http.h"

using namespace fastdemucs;
namespace fs = std::filesystem;

namespace {

// The tiny fixtures are named by their sha256 prefix; in the mirror they get
// made-up signatures, as official files are SIG-CHECKSUM.th.
const std::map<std::string, std::string> kMirrorModels = {
    {"aaaa0001", "0d0b2025"}, {"aaaa0002", "6325d78b"}, {"aaaa0003", "597c7e2b"}, {"aaaa0004", "2834c0f1"}};

// The test HTTP server (test_support_http.h); see there for the /cut/,
// /corrupt/ and /redirect/ prefixes.
using testing_support::MirrorServer;
const char* const kServerScript = testing_support::kHttpServerScript;

std::string read_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_file(const fs::path& path, const std::string& bytes) {
    fs::create_directories(path.parent_path());
    std::ofstream(path, std::ios::binary) << bytes;
}

// Leftover temporary downloads in a folder.
std::vector<std::string> partial_files(const fs::path& dir) {
    std::vector<std::string> found;
    std::error_code ec;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
        if (it->path().filename().string().find(".partial-") != std::string::npos)
            found.push_back(it->path().string());
    return found;
}

template <typename F>
std::string error_of(F f) {
    try {
        f();
    } catch (const Error& e) {
        return e.what();
    }
    ADD_FAILURE() << "no error thrown";
    return "";
}

#define EXPECT_CONTAINS(text, needle) \
    EXPECT_NE(std::string(text).find(needle), std::string::npos) << "in: " << (text)

// Sets (or unsets, with nullopt) environment variables, restoring them after.
class EnvGuard {
public:
    ~EnvGuard() {
        for (const auto& [name, value] : saved_) {
            if (value)
                ::setenv(name.c_str(), value->c_str(), 1);
            else
                ::unsetenv(name.c_str());
        }
    }
    void set(const std::string& name, const std::optional<std::string>& value) {
        if (!saved_.count(name)) {
            const char* old = std::getenv(name.c_str());
            saved_[name] = old ? std::optional<std::string>(old) : std::nullopt;
        }
        if (value)
            ::setenv(name.c_str(), value->c_str(), 1);
        else
            ::unsetenv(name.c_str());
    }

private:
    std::map<std::string, std::optional<std::string>> saved_;
};

// A temp folder with a mirror (served by MirrorServer) and an empty cache.
class RemoteMirror : public ::testing::Test {
protected:
    void SetUp() override {
        // The tests decide the root URL themselves, and talk to 127.0.0.1 directly.
        env_.set(kModelUrlEnv, std::nullopt);
        env_.set("no_proxy", "127.0.0.1");
        env_.set("NO_PROXY", "127.0.0.1");
        dir_ = testing_support::make_temp_dir("remote");
        mirror_ = dir_ / "mirror";
        cache_ = dir_ / "cache";
        build_mirror();
        write_file(dir_ / "server.py", kServerScript);
        server_ = std::make_unique<MirrorServer>(dir_ / "server.py", mirror_, dir_ / "requests.log");
    }
    void TearDown() override {
        server_.reset();
        std::error_code ec;
        fs::remove_all(dir_, ec);
    }

    void build_mirror() {
        std::string files_txt = "# test mirror\nroot: models/\n";
        for (const auto& [signature, checksum] : kMirrorModels) {
            fs::create_directories(mirror_ / "models");
            fs::copy_file(tiny(checksum), mirror_ / "models" / (signature + "-" + checksum + ".th"));
            files_txt += signature + "-" + checksum + ".th\n";
        }
        // Listed with a checksum its bytes do not have.
        fs::copy_file(tiny("0d0b2025"), mirror_ / "models" / "bbbb0001-deadbeef.th");
        // Listed but absent: a 404.
        files_txt += "\n# broken entries\nbbbb0001-deadbeef.th\nbbbb0002-12345678.th\n";
        write_file(mirror_ / "files.txt", files_txt);
        write_file(mirror_ / "tiny.yaml", "models: ['aaaa0001']\n");
        write_file(mirror_ / "tiny_bag.yaml",
                   "models: ['aaaa0001', 'aaaa0002', 'aaaa0003', 'aaaa0004']\n"
                   "weights: [[1., 0., 0., 0.], [0., 1., 0., 0.], [0., 0., 1., 0.], [0., 0., 0., 1.]]\n"
                   "segment: 5\n");
        // Under the official name of htdemucs, but the bytes of a tiny model.
        fs::create_directories(mirror_ / "hybrid_transformer");
        fs::copy_file(tiny("0d0b2025"), mirror_ / "hybrid_transformer" / "955717e8-8726e21a.th");
    }

    static fs::path tiny(const std::string& checksum) { return testing_support::fixture("tiny/" + checksum + ".th"); }

    RemoteOptions options(const std::string& url_prefix = "") const {
        RemoteOptions o;
        o.root_url = server_->url() + url_prefix;
        o.cache_dir = cache_.string();
        return o;
    }
    std::string cached(const std::string& signature) const {
        return (cache_ / (signature + "-" + kMirrorModels.at(signature) + ".th")).string();
    }
    size_t requests() const {
        std::ifstream log(dir_ / "requests.log");
        size_t lines = 0;
        for (std::string line; std::getline(log, line);) ++lines;
        return lines;
    }
    // A catalog shaped like the official one, with the mirror's tiny models.
    static Catalog tiny_catalog() {
        Catalog catalog;
        for (const auto& [signature, checksum] : kMirrorModels)
            catalog.files.push_back(RemoteFile{signature, checksum, "models/", true, {}});
        catalog.bags.push_back(BagDefinition{"tinybag", {"aaaa0001", "aaaa0002"}, {}, 0.0});
        return catalog;
    }

    EnvGuard env_;
    fs::path dir_, mirror_, cache_;
    std::unique_ptr<MirrorServer> server_;
};

}  // namespace

// --- options ---------------------------------------------------------------

TEST(RemoteOptions, RootUrlOptionWinsOverEnvironment) {
    EnvGuard env;
    env.set(kModelUrlEnv, std::nullopt);
    EXPECT_EQ(resolve_root_url(""), kOfficialRootUrl);
    EXPECT_FALSE(is_mirror_root(resolve_root_url("")));
    env.set(kModelUrlEnv, "http://127.0.0.1:9/env");
    EXPECT_EQ(resolve_root_url(""), "http://127.0.0.1:9/env/");
    EXPECT_EQ(resolve_root_url("http://127.0.0.1:9/flag/"), "http://127.0.0.1:9/flag/");
    EXPECT_TRUE(is_mirror_root(resolve_root_url("")));
    env.set(kModelUrlEnv, "");
    EXPECT_EQ(resolve_root_url(""), kOfficialRootUrl);
}

TEST(RemoteOptions, CacheDirFollowsTorchHub) {
    EnvGuard env;
    env.set("HOME", "/home/someone");
    env.set("TORCH_HOME", "/data/torch");
    env.set("XDG_CACHE_HOME", "/xdg");
    EXPECT_EQ(default_cache_dir(), "/data/torch/hub/checkpoints");
    env.set("TORCH_HOME", "~/torch");
    EXPECT_EQ(default_cache_dir(), "/home/someone/torch/hub/checkpoints");
    env.set("TORCH_HOME", std::nullopt);
    EXPECT_EQ(default_cache_dir(), "/xdg/torch/hub/checkpoints");
    env.set("XDG_CACHE_HOME", std::nullopt);
    EXPECT_EQ(default_cache_dir(), "/home/someone/.cache/torch/hub/checkpoints");

    RemoteOptions explicit_dir;
    explicit_dir.cache_dir = "/somewhere/else";
    EXPECT_EQ(resolve_options(explicit_dir).cache_dir, "/somewhere/else");
    EXPECT_EQ(resolve_options(RemoteOptions{}).cache_dir, "/home/someone/.cache/torch/hub/checkpoints");
}

// --- catalog ---------------------------------------------------------------

TEST(RemoteCatalog, OfficialBagsMatchTheOfficialFiles) {
    const Catalog& catalog = official_catalog();
    const BagDefinition* ft = catalog.find_bag("htdemucs_ft");
    ASSERT_NE(ft, nullptr);
    EXPECT_EQ(ft->models, (std::vector<std::string>{"f7e0c4bc", "d12395a8", "92cfc3b6", "04573f0d"}));
    ASSERT_EQ(ft->weights.size(), 4u);
    for (size_t m = 0; m < 4; ++m)
        for (size_t s = 0; s < 4; ++s) EXPECT_EQ(ft->weights[m][s], m == s ? 1.0 : 0.0);
    EXPECT_TRUE(catalog.supports(*ft));

    ASSERT_NE(catalog.find_bag("htdemucs"), nullptr);
    EXPECT_EQ(catalog.find_bag("htdemucs")->models, std::vector<std::string>{"955717e8"});
    EXPECT_TRUE(catalog.find_bag("htdemucs")->weights.empty());
    const RemoteFile* six = catalog.find_file(catalog.find_bag("htdemucs_6s")->models.at(0));
    ASSERT_NE(six, nullptr);
    EXPECT_EQ(six->file_name(), "5c90dfd2-34c22ccb.th");
    EXPECT_EQ(six->folder, "hybrid_transformer/");
    EXPECT_EQ(six->sources.size(), 6u);
    EXPECT_FALSE(catalog.supports(*catalog.find_bag("mdx")));
}

TEST(RemoteCatalog, RefusesUnsupportedAndUnknownNamesWithoutNetwork) {
    RemoteOptions offline;
    offline.offline = true;
    offline.root_url = kOfficialRootUrl;
    offline.cache_dir = "/nonexistent/cache";
    for (const char* name : {"mdx", "mdx_extra_q", "hdemucs_mmi", "repro_mdx_a_time_only", "0d19c1c6", "75fc33f5"})
        EXPECT_EQ(error_of([&] { resolve_remote_model(name, offline); }),
                  std::string("model ") + name +
                      " is not supported yet (only HTDemucs models: htdemucs, htdemucs_6s, htdemucs_ft)");
    EXPECT_EQ(error_of([&] { resolve_remote_model("nonsense", offline); }), "unknown model nonsense");
    offline.offline = false;  // an unknown name never reaches the network either
    EXPECT_EQ(error_of([&] { resolve_remote_model("nonsense", offline); }), "unknown model nonsense");
}

TEST(RemoteCatalog, ListsModelsWithCacheState) {
    const std::string cache = testing_support::make_temp_dir("remote-list");
    write_file(fs::path(cache) / "955717e8-8726e21a.th", "x");
    RemoteOptions options;
    options.cache_dir = cache;
    const auto entries = list_catalog(options);
    std::map<std::string, CatalogEntry> by_name;
    for (const auto& entry : entries) by_name[entry.name] = entry;
    fs::remove_all(cache);

    EXPECT_EQ(entries.at(0).name, "htdemucs");
    EXPECT_EQ(entries.at(0).kind, CatalogEntry::Kind::Bag);
    EXPECT_TRUE(entries.at(0).supported);
    EXPECT_TRUE(entries.at(0).cached);
    EXPECT_EQ(entries.at(0).sources, (std::vector<std::string>{"drums", "bass", "other", "vocals"}));

    EXPECT_EQ(by_name.at("htdemucs_ft").files.size(), 4u);
    EXPECT_FALSE(by_name.at("htdemucs_ft").cached);
    EXPECT_EQ(by_name.at("htdemucs_6s").sources.size(), 6u);
    EXPECT_FALSE(by_name.at("mdx").supported);
    EXPECT_EQ(by_name.at("955717e8").kind, CatalogEntry::Kind::Single);
    EXPECT_TRUE(by_name.at("955717e8").cached);
    EXPECT_TRUE(by_name.at("5c90dfd2").supported);
    EXPECT_FALSE(by_name.at("e51eebcc").supported);
    EXPECT_EQ(by_name.size(), entries.size());  // no name twice
}

TEST(RemoteCatalog, ParsesFileListsAndBagFiles) {
    const auto files = parse_file_list("# c\nroot: a/\n  x1-0abc.th \n\n# d\nroot: b/\ny2-ff.th\n", "files.txt");
    ASSERT_EQ(files.size(), 2u);
    EXPECT_EQ(files[0].signature, "x1");
    EXPECT_EQ(files[0].checksum, "0abc");
    EXPECT_EQ(files[0].folder, "a/");
    EXPECT_EQ(files[1].folder, "b/");
    EXPECT_CONTAINS(error_of([] { parse_file_list("x1.th\n", "files.txt"); }), "files.txt: bad line 'x1.th'");
    EXPECT_CONTAINS(error_of([] { parse_file_list("x1-ab.th\nx1-cd.th\n", "f"); }), "x1 is listed twice");

    const BagDefinition bag = parse_bag_file("b", "models: ['s1', 's2']\nweights: [[1, 2], [3, 4]]\nsegment: 44\n", "b.yaml");
    EXPECT_EQ(bag.models, (std::vector<std::string>{"s1", "s2"}));
    EXPECT_EQ(bag.weights.at(1).at(0), 3.0);
    EXPECT_EQ(bag.segment, 44.0);
    EXPECT_CONTAINS(error_of([] { parse_bag_file("b", "weights: []\n", "b.yaml"); }), "'models'");
    EXPECT_CONTAINS(error_of([] { parse_bag_file("b", "models: [a]\nweights: [[1], [2]]\n", "b.yaml"); }),
                    "'weights'");
}

// --- downloads -------------------------------------------------------------

TEST_F(RemoteMirror, FirstDownloadCachesFileUnderItsName) {
    RemoteOptions o = options();
    int64_t last_done = -1, last_total = -1;
    std::vector<std::string> started;
    o.progress = [&](int64_t done, int64_t total) { last_done = done, last_total = total; };
    o.download_started = [&](const std::string& url, const std::string&) { started.push_back(url); };

    const BagSpec bag = resolve_remote_model("tiny", o);
    ASSERT_EQ(bag.checkpoints.size(), 1u);
    EXPECT_EQ(bag.checkpoints[0], cached("aaaa0001"));
    EXPECT_EQ(read_file(bag.checkpoints[0]), read_file(tiny("0d0b2025")));
    EXPECT_EQ(last_done, static_cast<int64_t>(fs::file_size(tiny("0d0b2025"))));
    EXPECT_EQ(last_total, last_done);
    EXPECT_EQ(started, std::vector<std::string>{server_->url() + "models/aaaa0001-0d0b2025.th"});
    EXPECT_TRUE(partial_files(cache_).empty());
}

TEST_F(RemoteMirror, ResolvesMirrorBagAndSignature) {
    const BagSpec bag = resolve_remote_model("tiny_bag", options());
    ASSERT_EQ(bag.checkpoints.size(), 4u);
    EXPECT_EQ(bag.checkpoints[3], cached("aaaa0004"));
    EXPECT_EQ(read_file(bag.checkpoints[3]), read_file(tiny("2834c0f1")));
    ASSERT_EQ(bag.weights.size(), 4u);
    EXPECT_EQ(bag.weights[2], (std::vector<double>{0, 0, 1, 0}));
    EXPECT_EQ(bag.segment, 5.0);

    const BagSpec single = resolve_remote_model("aaaa0002", options());
    EXPECT_EQ(single.checkpoints, std::vector<std::string>{cached("aaaa0002")});
    EXPECT_TRUE(single.weights.empty());
}

TEST_F(RemoteMirror, ReusesCacheWithoutNetwork) {
    const BagSpec first = resolve_model_from_catalog("tinybag", tiny_catalog(), options());
    const size_t after_download = requests();
    EXPECT_EQ(after_download, 2u);

    EXPECT_EQ(resolve_model_from_catalog("tinybag", tiny_catalog(), options()).checkpoints, first.checkpoints);
    EXPECT_EQ(requests(), after_download);  // cache checked before any request

    server_->stop();
    EXPECT_EQ(resolve_model_from_catalog("tinybag", tiny_catalog(), options()).checkpoints, first.checkpoints);
    RemoteOptions offline = options();
    offline.offline = true;
    const BagSpec again = resolve_model_from_catalog("aaaa0002", tiny_catalog(), offline);
    EXPECT_EQ(again.checkpoints, std::vector<std::string>{cached("aaaa0002")});
}

TEST_F(RemoteMirror, MissingFileOfflineOrUnreachableExplainsWhatToDo) {
    RemoteOptions o = options();
    o.offline = true;
    const std::string url = server_->url() + "models/aaaa0001-0d0b2025.th";
    EXPECT_EQ(error_of([&] { resolve_model_from_catalog("aaaa0001", tiny_catalog(), o); }),
              "model file aaaa0001-0d0b2025.th is not in the cache (" + cache_.string() +
                  ") and could not be downloaded from " + url +
                  ": offline mode; download it by hand and put it there");
    EXPECT_EQ(requests(), 0u);

    server_->stop();
    o.offline = false;
    const std::string message = error_of([&] { resolve_model_from_catalog("aaaa0001", tiny_catalog(), o); });
    EXPECT_CONTAINS(message, "model file aaaa0001-0d0b2025.th is not in the cache (" + cache_.string() +
                                 ") and could not be downloaded from " + url + ": ");
    EXPECT_CONTAINS(message, "download it by hand and put it there");
    EXPECT_FALSE(fs::exists(cached("aaaa0001")));
    EXPECT_TRUE(partial_files(cache_).empty());
}

TEST_F(RemoteMirror, RejectsChecksumMismatchWithoutCaching) {
    EXPECT_EQ(error_of([&] { resolve_remote_model("bbbb0001", options()); }),
              "checksum mismatch for bbbb0001-deadbeef.th: expected deadbeef, got 0d0b2025 (downloaded from " +
                  server_->url() + "models/bbbb0001-deadbeef.th; not cached)");
    EXPECT_FALSE(fs::exists(cache_ / "bbbb0001-deadbeef.th"));
    EXPECT_TRUE(partial_files(cache_).empty());
}

TEST_F(RemoteMirror, RejectsCorruptedBytes) {
    EXPECT_CONTAINS(error_of([&] { resolve_remote_model("tiny", options("corrupt/")); }),
                    "checksum mismatch for aaaa0001-0d0b2025.th: expected 0d0b2025, got ");
    EXPECT_FALSE(fs::exists(cached("aaaa0001")));
    EXPECT_TRUE(partial_files(cache_).empty());
}

TEST_F(RemoteMirror, ConnectionCutMidFileLeavesNothing) {
    const std::string message = error_of([&] { resolve_remote_model("tiny", options("cut/")); });
    EXPECT_CONTAINS(message, "could not be downloaded from " + server_->url() + "cut/models/aaaa0001-0d0b2025.th");
    EXPECT_FALSE(fs::exists(cached("aaaa0001")));
    EXPECT_TRUE(partial_files(cache_).empty());
}

TEST_F(RemoteMirror, NotFoundNamesUrlAndStatus) {
    EXPECT_CONTAINS(error_of([&] { resolve_remote_model("bbbb0002", options()); }),
                    "could not be downloaded from " + server_->url() + "models/bbbb0002-12345678.th: HTTP status 404");
    EXPECT_EQ(error_of([&] { resolve_remote_model("nothere", options()); }),
              "unknown model nothere: neither a built-in model nor a signature in " + server_->url() +
                  "files.txt or a bag at " + server_->url() + "nothere.yaml");
    RemoteOptions offline = options();
    offline.offline = true;
    EXPECT_CONTAINS(error_of([&] { resolve_remote_model("tiny", offline); }), "unknown model tiny");
    EXPECT_CONTAINS(error_of([&] { resolve_remote_model("../tiny", options()); }), "unknown model ../tiny");
}

TEST_F(RemoteMirror, BuiltinNamesUseTheOfficialLayoutOnAMirror) {
    // The mirror's hybrid_transformer/955717e8-8726e21a.th holds other bytes.
    EXPECT_CONTAINS(error_of([&] { resolve_remote_model("htdemucs", options()); }),
                    "checksum mismatch for 955717e8-8726e21a.th: expected 8726e21a, got 0d0b2025 (downloaded from " +
                        server_->url() + "hybrid_transformer/955717e8-8726e21a.th");
    EXPECT_CONTAINS(error_of([&] { resolve_remote_model("htdemucs_6s", options()); }),
                    server_->url() + "hybrid_transformer/5c90dfd2-34c22ccb.th: HTTP status 404");
}

TEST_F(RemoteMirror, FollowsRedirects) {
    const BagSpec bag = resolve_remote_model("tiny", options("redirect/"));
    EXPECT_EQ(read_file(bag.checkpoints.at(0)), read_file(tiny("0d0b2025")));
}

TEST_F(RemoteMirror, UnwritableCacheFolderIsNamed) {
    // Under a regular file nothing can be created, even by root.
    write_file(dir_ / "file.txt", "not a folder");
    RemoteOptions o = options();
    o.cache_dir = (dir_ / "file.txt" / "sub").string();
    const std::string message = error_of([&] { resolve_remote_model("tiny", o); });
    EXPECT_CONTAINS(message, "cannot create the model cache folder " + o.cache_dir + ": ");
}

TEST_F(RemoteMirror, CreatesMissingCacheFolders) {
    RemoteOptions o = options();
    o.cache_dir = (dir_ / "new" / "nested" / "cache").string();
    const BagSpec bag = resolve_remote_model("tiny", o);
    EXPECT_EQ(bag.checkpoints.at(0), o.cache_dir + "/aaaa0001-0d0b2025.th");
}

TEST_F(RemoteMirror, ConcurrentDownloadsOfOneModelAllSucceed) {
    constexpr int kThreads = 4;
    std::vector<std::thread> threads;
    std::vector<std::string> errors(kThreads);
    std::atomic<int> ready{0};
    for (int t = 0; t < kThreads; ++t)
        threads.emplace_back([&, t] {
            ++ready;
            while (ready < kThreads) std::this_thread::yield();
            try {
                resolve_remote_model("tiny_bag", options());
            } catch (const std::exception& e) {
                errors[t] = e.what();
            }
        });
    for (auto& thread : threads) thread.join();
    for (const auto& error : errors) EXPECT_EQ(error, "");
    for (const auto& [signature, checksum] : kMirrorModels)
        EXPECT_EQ(read_file(cached(signature)), read_file(tiny(checksum))) << signature;
    EXPECT_TRUE(partial_files(cache_).empty());
}

TEST_F(RemoteMirror, DamagedCachedFileIsReportedAndReplaced) {
    write_file(cached("aaaa0001"), "garbage");
    RemoteOptions offline = options();
    offline.offline = true;
    std::vector<std::string> warnings;
    offline.warning = [&](const std::string& message) { warnings.push_back(message); };
    EXPECT_CONTAINS(error_of([&] { resolve_model_from_catalog("aaaa0001", tiny_catalog(), offline); }),
                    "model file aaaa0001-0d0b2025.th is damaged in the cache (" + cache_.string() + ")");
    ASSERT_EQ(warnings.size(), 1u);
    EXPECT_CONTAINS(warnings[0], "the cached model file " + cached("aaaa0001") + " is damaged");

    RemoteOptions online = offline;
    online.offline = false;
    const BagSpec bag = resolve_model_from_catalog("aaaa0001", tiny_catalog(), online);
    EXPECT_EQ(warnings.size(), 2u);
    EXPECT_CONTAINS(warnings[1], "downloading it again");
    EXPECT_EQ(read_file(bag.checkpoints.at(0)), read_file(tiny("0d0b2025")));
}

TEST_F(RemoteMirror, EnvironmentSelectsMirrorButOptionWins) {
    env_.set(kModelUrlEnv, server_->url());
    RemoteOptions o;
    o.cache_dir = cache_.string();
    EXPECT_EQ(resolve_remote_model("tiny", o).checkpoints.at(0), cached("aaaa0001"));

    o.root_url = "http://127.0.0.1:1/";  // nothing listens there
    EXPECT_CONTAINS(error_of([&] { resolve_remote_model("tiny_bag", o); }),
                    "cannot look up model tiny_bag on the mirror http://127.0.0.1:1/");
}
