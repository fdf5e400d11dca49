// Command line of `fastdemucs`: the official `demucs` options (same names,
// defaults and meaning) plus a few of our own (--precision, --batch-size,
// --seed, --quiet, --model-url, --offline).
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
    std::string repo;       // empty: the pretrained models by name
    bool list_models = false;
    std::string model_url;  // empty: $FASTDEMUCS_MODEL_URL, else the official root
    bool offline = false;
    std::string out = "separated";
    std::string filename = "{track}/{stem}.{ext}";
    fastdemucs::DeviceKind device = fastdemucs::DeviceKind::Cpu;
    int device_index = 0;
    std::string device_text = "cpu";  // as given (or defaulted), for messages
    fastdemucs::Precision precision = fastdemucs::Precision::Fp16;
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
    bool mp3 = false;
    int mp3_bitrate = 320;
    int mp3_preset = 2;
    int jobs = 0;
    int batch_size = 0;  // 0 = the backend's choice
    uint64_t seed = 0;   // 0 = random shift offsets
    bool verbose = false;
    bool quiet = false;

    // The {ext} of the stems, as the official command picks it.
    std::string extension() const { return mp3 ? "mp3" : flac ? "flac" : "wav"; }
    // How a stem is written to `path`: the container comes from the path's
    // suffix (as the official save_audio decides), the rest from the options
    // (FLAC ignores --float32; MP3 ignores the bit depth). Throws Error when
    // the suffix is not .wav, .flac or .mp3.
    fastdemucs::WriteParams write_params(const std::string& path) const;
};

// The device used when -d is not given: cuda when this build has the CUDA
// backend and a GPU is usable, else cpu.
std::string default_device();

// Parses and validates argv. Returns -1 when the command should go on, else
// the exit code (0 after --help, 1 after an error, already reported).
int parse_options(int argc, char** argv, CliOptions& options);

}  // namespace fastdemucs_cli
