// Command line of `fastdemucs`: the official `demucs` options (same names,
// defaults and meaning) plus a few of our own (--seed, --quiet).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fastdemucs/fastdemucs.h"
#include "io/audio_file.h"

namespace fastdemucs_cli {

enum class OtherMethod { None, Add, Minus };

struct CliOptions {
    std::vector<std::string> tracks;
    std::string name = "htdemucs";
    std::string repo;  // empty: the library's default
    std::string out = "separated";
    std::string filename = "{track}/{stem}.{ext}";
    fastdemucs::DeviceKind device = fastdemucs::DeviceKind::Cpu;
    int device_index = 0;
    int shifts = 1;
    double overlap = 0.25;
    bool split = true;
    double segment = 0.0;  // seconds; 0 = the model's own
    std::string two_stems;  // empty: write every source
    OtherMethod other_method = OtherMethod::Add;
    bool int24 = false;
    bool float32 = false;
    fastdemucs::ClipMode clip = fastdemucs::ClipMode::Rescale;
    bool flac = false;
    int jobs = 0;
    uint64_t seed = 0;  // 0 = random shift offsets
    bool verbose = false;
    bool quiet = false;

    // File extension and sample format of the stems, as the official
    // save_audio picks them (FLAC ignores --float32 and is 16 or 24 bits).
    std::string extension() const { return flac ? "flac" : "wav"; }
    fastdemucs::WriteParams write_params() const;
};

// Parses and validates argv. Returns -1 when the command should go on, else
// the exit code (0 after --help, 1 after an error, already reported).
int parse_options(int argc, char** argv, CliOptions& options);

}  // namespace fastdemucs_cli
