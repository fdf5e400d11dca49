// Local model folder resolution (official LocalRepo + BagOnlyRepo rules).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "engine/repo.h"
#include "fastdemucs/fastdemucs.h"
#include "test_support.h"

using namespace fastdemucs;
namespace fs = std::filesystem;

namespace {

// sha256("hello")
const char kHelloSha256[] = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

std::string file_name(const std::string& path) { return fs::path(path).filename().string(); }

void write_text(const fs::path& path, const std::string& text) {
    std::ofstream(path, std::ios::binary) << text;
}

// A scratch repo folder, removed at the end of the test.
class ScratchRepo {
public:
    ScratchRepo() : dir_(testing_support::make_temp_dir("repo")) {}
    ~ScratchRepo() { fs::remove_all(dir_); }
    const std::string& dir() const { return dir_; }
    fs::path operator/(const std::string& name) const { return fs::path(dir_) / name; }

private:
    std::string dir_;
};

// Runs `f`, expecting an Error whose message contains `needle`.
template <typename F>
void expect_error_containing(F f, const std::string& needle) {
    try {
        f();
        ADD_FAILURE() << "no error thrown, expected one containing: " << needle;
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
}

}  // namespace

TEST(Repo, ResolvesBagOfOneModel) {
    const BagSpec bag = resolve_local_model("tiny", testing_support::fixture("tiny"));
    EXPECT_EQ(bag.name, "tiny");
    ASSERT_EQ(bag.checkpoints.size(), 1u);
    EXPECT_EQ(file_name(bag.checkpoints[0]), "0d0b2025.th");
    EXPECT_TRUE(bag.weights.empty());
    EXPECT_EQ(bag.segment, 0.0);
}

TEST(Repo, ResolvesBagWeightsInModelOrder) {
    const BagSpec bag = resolve_local_model("tiny_bag", testing_support::fixture("tiny"));
    const std::vector<std::string> expected = {"0d0b2025.th", "6325d78b.th", "597c7e2b.th",
                                               "2834c0f1.th"};
    ASSERT_EQ(bag.checkpoints.size(), expected.size());
    for (size_t i = 0; i < expected.size(); ++i) EXPECT_EQ(file_name(bag.checkpoints[i]), expected[i]);
    ASSERT_EQ(bag.weights.size(), 4u);
    for (size_t m = 0; m < 4; ++m) {
        ASSERT_EQ(bag.weights[m].size(), 4u);
        for (size_t s = 0; s < 4; ++s) EXPECT_EQ(bag.weights[m][s], m == s ? 1.0 : 0.0);
    }
}

TEST(Repo, ResolvesSignatureAsSingleModel) {
    const BagSpec bag = resolve_local_model("6325d78b", testing_support::fixture("tiny"));
    ASSERT_EQ(bag.checkpoints.size(), 1u);
    EXPECT_EQ(file_name(bag.checkpoints[0]), "6325d78b.th");
    EXPECT_TRUE(bag.weights.empty());
}

TEST(Repo, ResolvesFull6sThroughChecksummedFile) {
    const std::string dir = testing_support::fixture("full6s");
    const BagSpec bag = resolve_local_model("full6s", dir);
    ASSERT_EQ(bag.checkpoints.size(), 1u);
    EXPECT_EQ(file_name(bag.checkpoints[0]), "full6s-86db6bad.th");
    EXPECT_EQ(sha256_file(bag.checkpoints[0]),
              "86db6bada591229a71ed07c830f98df9941d9d8e4a1a382f0149a1e3ffa09f81");
}

TEST(Repo, SignatureWinsOverBagOfSameName) {
    ScratchRepo repo;
    write_text(repo / "abc.th", "x");
    write_text(repo / "def.th", "y");
    write_text(repo / "abc.yaml", "models: ['def']\n");
    const BagSpec bag = resolve_local_model("abc", repo.dir());
    ASSERT_EQ(bag.checkpoints.size(), 1u);
    EXPECT_EQ(file_name(bag.checkpoints[0]), "abc.th");
}

TEST(Repo, ParsesSegmentAndIgnoresOtherFiles) {
    ScratchRepo repo;
    write_text(repo / "m1.th", "x");
    write_text(repo / "notes.txt", "not a model");
    write_text(repo / "bag.yaml", "models: [m1]\nsegment: 7.8\n");
    const BagSpec bag = resolve_local_model("bag", repo.dir());
    EXPECT_DOUBLE_EQ(bag.segment, 7.8);
    EXPECT_TRUE(bag.weights.empty());
}

TEST(Repo, UnknownNameThrows) {
    expect_error_containing([] { resolve_local_model("nope", testing_support::fixture("tiny")); },
                            "nope");
}

TEST(Repo, MissingFolderThrows) {
    expect_error_containing([] { resolve_local_model("tiny", "/nonexistent/fastdemucs/repo"); },
                            "must exist and be a directory");
}

TEST(Repo, ChecksumMismatchThrows) {
    ScratchRepo repo;
    fs::copy_file(testing_support::fixture("tiny/0d0b2025.th"), repo / "mine-deadbeef.th");
    expect_error_containing([&] { resolve_local_model("mine", repo.dir()); },
                            "expected deadbeef but got 0d0b2025");
}

TEST(Repo, MatchingChecksumPasses) {
    ScratchRepo repo;
    fs::copy_file(testing_support::fixture("tiny/0d0b2025.th"), repo / "mine-0d0b2025.th");
    const BagSpec bag = resolve_local_model("mine", repo.dir());
    EXPECT_EQ(file_name(bag.checkpoints[0]), "mine-0d0b2025.th");
}

TEST(Repo, ChecksumIsVerifiedForBagMembers) {
    ScratchRepo repo;
    write_text(repo / "m1-0123.th", "hello");
    write_text(repo / "bag.yaml", "models: [m1]\n");
    expect_error_containing([&] { resolve_local_model("bag", repo.dir()); }, "invalid checksum");
}

TEST(Repo, DuplicateSignatureThrows) {
    ScratchRepo repo;
    write_text(repo / "sig.th", "a");
    write_text(repo / "sig-2cf24dba.th", "hello");
    expect_error_containing([&] { resolve_local_model("sig", repo.dir()); },
                            "duplicate models for signature sig");
}

TEST(Repo, BagNamingMissingSignatureThrows) {
    ScratchRepo repo;
    write_text(repo / "m1.th", "x");
    write_text(repo / "bag.yaml", "models: [m1, m2]\n");
    expect_error_containing([&] { resolve_local_model("bag", repo.dir()); }, "m2");
}

TEST(Repo, BadYamlThrows) {
    ScratchRepo repo;
    write_text(repo / "m1.th", "x");
    write_text(repo / "broken.yaml", "models: [m1\n");
    write_text(repo / "nomodels.yaml", "weights: [[1]]\n");
    write_text(repo / "badweights.yaml", "models: [m1]\nweights: [[1, 0], [0, 1]]\n");
    write_text(repo / "notnumbers.yaml", "models: [m1]\nweights: [[a, b]]\n");
    expect_error_containing([&] { resolve_local_model("broken", repo.dir()); }, "broken.yaml");
    expect_error_containing([&] { resolve_local_model("nomodels", repo.dir()); }, "models");
    expect_error_containing([&] { resolve_local_model("badweights", repo.dir()); }, "weights");
    expect_error_containing([&] { resolve_local_model("notnumbers", repo.dir()); }, "notnumbers.yaml");
}

TEST(Repo, Sha256AndChecksumPrefix) {
    ScratchRepo repo;
    write_text(repo / "hello.bin", "hello");
    const std::string path = (repo / "hello.bin").string();
    EXPECT_EQ(sha256_file(path), kHelloSha256);
    EXPECT_NO_THROW(verify_checksum(path, "2cf24dba"));
    EXPECT_NO_THROW(verify_checksum(path, kHelloSha256));
    expect_error_containing([&] { verify_checksum(path, "2cf24dbb"); }, path);
    expect_error_containing([&] { sha256_file((repo / "absent").string()); }, "absent");
}
