// The plan store that keeps cuDNN's generated attention plans between
// processes (cuda/plan_store.h). No GPU needed: it only keeps bytes.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "cuda/plan_store.h"
#include "test_support.h"

using fastdemucs::cuda::PlanStore;
using testing_support::make_temp_dir;
using testing_support::ScopedEnv;
namespace fs = std::filesystem;

namespace {

std::vector<uint8_t> some_bytes(size_t n, uint8_t seed) {
    std::vector<uint8_t> bytes(n);
    for (size_t i = 0; i < n; i++) bytes[i] = uint8_t(seed + 31 * i);
    return bytes;
}

size_t files_in(const std::string& folder) {
    size_t n = 0;
    for (const auto& entry : fs::directory_iterator(folder)) n += entry.is_regular_file();
    return n;
}

}  // namespace

TEST(PlanStore, GivesBackWhatWasSavedUnderTheSameDescriptionOnly) {
    const std::string dir = make_temp_dir("plans");
    const PlanStore store(dir + "/nested/plans");  // made on the first save
    const std::string a = "cudnn sdpa fwd; cudnn 91400; gpu H200; B 8 N 2688", b = a + " M 1344";
    EXPECT_TRUE(store.load(a).empty());
    const auto bytes_a = some_bytes(76721, 3), bytes_b = some_bytes(100, 9);
    ASSERT_TRUE(store.save(a, bytes_a));
    ASSERT_TRUE(store.save(b, bytes_b));
    EXPECT_EQ(store.load(a), bytes_a);
    EXPECT_EQ(store.load(b), bytes_b);
    EXPECT_TRUE(store.load(a + " ").empty());
    // A second save replaces the first whole; no temporary file is left.
    const auto again = some_bytes(5000, 77);
    ASSERT_TRUE(store.save(a, again));
    EXPECT_EQ(store.load(a), again);
    EXPECT_EQ(files_in(dir + "/nested/plans"), 2u);
    fs::remove_all(dir);
}

TEST(PlanStore, IgnoresDamagedAndForeignFiles) {
    const std::string dir = make_temp_dir("plans");
    const PlanStore store(dir);
    const std::string a = "plan a";
    const auto bytes = some_bytes(4096, 1);
    ASSERT_TRUE(store.save(a, bytes));
    const std::string path = store.path_of(a);
    const auto whole = fs::file_size(path);
    // Cut short.
    fs::resize_file(path, whole - 10);
    EXPECT_TRUE(store.load(a).empty());
    // Longer than its header says.
    ASSERT_TRUE(store.save(a, bytes));
    std::ofstream(path, std::ios::binary | std::ios::app) << "tail";
    EXPECT_TRUE(store.load(a).empty());
    // Another description under this name (a hash collision): not handed out.
    const PlanStore other(dir + "/other");
    ASSERT_TRUE(other.save("plan b", bytes));
    fs::copy_file(other.path_of("plan b"), path, fs::copy_options::overwrite_existing);
    EXPECT_TRUE(store.load(a).empty());
    // Garbage.
    std::ofstream(path, std::ios::binary | std::ios::trunc) << "not a plan";
    EXPECT_TRUE(store.load(a).empty());
    fs::remove_all(dir);
}

TEST(PlanStore, WithoutAUsableFolderKeepsNothingAndNeverThrows) {
    const PlanStore none("");
    EXPECT_FALSE(none.save("a", some_bytes(10, 0)));
    EXPECT_TRUE(none.load("a").empty());
    const std::string dir = make_temp_dir("plans");
    std::ofstream(dir + "/file") << "x";
    const PlanStore under_a_file(dir + "/file/plans");
    EXPECT_FALSE(under_a_file.save("a", some_bytes(10, 0)));
    EXPECT_TRUE(under_a_file.load("a").empty());
    if (geteuid() != 0) {  // root writes anywhere
        fs::create_directory(dir + "/read-only");
        chmod((dir + "/read-only").c_str(), 0555);
        const PlanStore read_only(dir + "/read-only");
        EXPECT_FALSE(read_only.save("a", some_bytes(10, 0)));
        EXPECT_EQ(files_in(dir + "/read-only"), 0u);
        chmod((dir + "/read-only").c_str(), 0755);
    }
    EXPECT_FALSE(PlanStore(dir).save("a", {}));  // nothing to keep
    fs::remove_all(dir);
}

TEST(PlanStore, DefaultFolderFollowsTheEnvironment) {
    {
        ScopedEnv chosen("FASTDEMUCS_PLAN_CACHE", "/somewhere/plans");
        EXPECT_EQ(PlanStore::default_folder(), "/somewhere/plans");
    }
    {
        ScopedEnv off("FASTDEMUCS_PLAN_CACHE", "off");
        EXPECT_EQ(PlanStore::default_folder(), "");
    }
    ScopedEnv unset_choice("FASTDEMUCS_PLAN_CACHE", "");
    {
        ScopedEnv xdg("XDG_CACHE_HOME", "/xdg");
        EXPECT_EQ(PlanStore::default_folder(), "/xdg/fastdemucs/plans");
    }
    ScopedEnv no_xdg("XDG_CACHE_HOME", "");
    {
        ScopedEnv home("HOME", "/home/someone");
        EXPECT_EQ(PlanStore::default_folder(), "/home/someone/.cache/fastdemucs/plans");
    }
    ScopedEnv no_home("HOME", "");
    EXPECT_EQ(PlanStore::default_folder(), "");
}
