// Where pretrained models come from (root URL), where they are kept (cache
// folder) and whether the network may be used. Shared by everything under
// src/remote/.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace fastdemucs {

// The official download location of the Demucs weights.
inline constexpr char kOfficialRootUrl[] = "https://dl.fbaipublicfiles.com/demucs/";
// Environment variable naming a mirror of the official layout.
inline constexpr char kModelUrlEnv[] = "FASTDEMUCS_MODEL_URL";

struct RemoteOptions {
    // Empty: FASTDEMUCS_MODEL_URL when set, else kOfficialRootUrl (see
    // resolve_root_url). A value here (from --model-url) wins over the variable.
    std::string root_url;
    // Empty: torch.hub's checkpoint folder (see default_cache_dir), so files
    // already downloaded by the official `demucs` are reused, and vice versa.
    std::string cache_dir;
    bool offline = false;  // never touch the network
    // Bytes done / total of the file being downloaded (total 0 while unknown).
    std::function<void(int64_t done, int64_t total)> progress;
    // Called once before each download starts (e.g. to print what is fetched).
    std::function<void(const std::string& url, const std::string& path)> download_started;
    // Non-fatal problems, such as a damaged cached file about to be replaced.
    // Unset: printed to stderr.
    std::function<void(const std::string& message)> warning;
};

// The root URL in force: `option` when non-empty, else $FASTDEMUCS_MODEL_URL
// when non-empty, else the official one. Always ends with '/'.
std::string resolve_root_url(const std::string& option);

// True when `root` (as returned by resolve_root_url) is not the official URL.
bool is_mirror_root(const std::string& root);

// torch.hub's folder: $TORCH_HOME/hub/checkpoints, else
// $XDG_CACHE_HOME/torch/hub/checkpoints, else ~/.cache/torch/hub/checkpoints.
std::string default_cache_dir();

// `options` with root_url and cache_dir filled in by the rules above.
RemoteOptions resolve_options(const RemoteOptions& options);

// Reports a warning through options.warning, or to stderr when unset.
void report_warning(const RemoteOptions& options, const std::string& message);

}  // namespace fastdemucs
