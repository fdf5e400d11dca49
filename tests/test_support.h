// Helpers shared by the tests: fixture paths, .npy/.npz reading, SNR.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace testing_support {

// Folder of the shared fixtures (env FASTDEMUCS_FIXTURES overrides).
std::string fixtures_dir();
std::string fixture(const std::string& relative);  // fixtures_dir() + "/" + relative

struct Array {
    std::vector<int64_t> shape;
    std::vector<float> data;  // converted to float32
    int64_t numel() const;
};

Array read_npy(const std::string& path);
// The full6s command-path reference [6, 2, 12 s] (stored as two files: sources 0-2 and 3-5).
Array read_full6s_separate_12s();
Array parse_npy(const std::string& name, const std::vector<uint8_t>& bytes);
std::map<std::string, Array> read_npz(const std::string& path);  // keys without ".npy"

// Relative L2 error ||out - ref|| / ||ref|| over n values (in double).
double relative_l2(const float* out, const float* ref, int64_t n);
// SNR in dB: -20 log10(relative_l2).
double snr_db(const float* out, const float* ref, int64_t n);

// A fresh temporary directory, removed by the caller (or left in /tmp).
std::string make_temp_dir(const std::string& tag);

// Sets an environment variable for the lifetime of the object (the engine
// reads its switches when a backend is made), then restores what was there.
struct ScopedEnv {
    std::string name;
    bool had = false;
    std::string before;
    ScopedEnv(const std::string& n, const std::string& value) : name(n) {
        if (const char* old = getenv(n.c_str())) had = true, before = old;
        setenv(n.c_str(), value.c_str(), 1);
    }
    ~ScopedEnv() {
        if (had)
            setenv(name.c_str(), before.c_str(), 1);
        else
            unsetenv(name.c_str());
    }
};

}  // namespace testing_support

// Skips when a fixture file is absent (the GPU machine may carry only a subset).
#define REQUIRE_FIXTURES(...)                                                        \
    do {                                                                             \
        for (const char* f_ : {__VA_ARGS__})                                         \
            if (!std::filesystem::exists(testing_support::fixture(f_)))              \
                GTEST_SKIP() << "fixture not present: " << f_;                       \
    } while (0)
