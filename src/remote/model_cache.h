// The local cache of checkpoint files: <cache_dir>/SIG-CHECKSUM.th, the names
// torch.hub gives the official URLs, so the official `demucs` and we share
// downloads. Files enter the cache only complete and checksum-verified.
#pragma once

#include <string>

#include "remote/remote_options.h"

namespace fastdemucs {

// One file to have in the cache.
struct CachedFileRequest {
    std::string file_name;  // SIG-CHECKSUM.th
    std::string checksum;   // the CHECKSUM part: leading hex digits of its sha256
    std::string url;        // where to download it from when missing
};

// The path of the requested file in options.cache_dir (options resolved by
// resolve_options), downloading it when missing or damaged and allowed to.
// Throws Error when the file can be neither found nor fetched.
std::string ensure_cached(const CachedFileRequest& request, const RemoteOptions& options);

// Whether the file is present in the cache folder (not verified).
bool is_cached(const std::string& cache_dir, const std::string& file_name);

}  // namespace fastdemucs
