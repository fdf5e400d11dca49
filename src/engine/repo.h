// Finds a model by name in a local model folder, as the official `demucs`
// LocalRepo + BagOnlyRepo do: `NAME.yaml` (a bag: `models:`, optional
// `weights:` and `segment:`) or a single `NAME-CHECKSUM.th` / `NAME.th`.
#pragma once

#include <string>
#include <vector>

namespace fastdemucs {

struct BagSpec {
    std::string name;
    std::vector<std::string> checkpoints;       // .th paths, one per model
    std::vector<std::vector<double>> weights;   // [models][sources]; empty = all ones
    double segment = 0.0;                       // bag segment override; 0 = none
};

// Throws Error ("unknown model NAME in DIR", "DIR must exist and be a directory",
// "duplicate models for signature SIG", bad yaml, ...).
BagSpec resolve_local_model(const std::string& name, const std::string& repo_dir);

// Verifies that the hex sha256 of `path` starts with `prefix` (the part after
// the '-' in SIG-CHECKSUM.th). Throws Error naming the file, expected and got.
void verify_checksum(const std::string& path, const std::string& prefix);

// Hex sha256 of a file (OpenSSL).
std::string sha256_file(const std::string& path);

}  // namespace fastdemucs
