// HTTP(S) downloads with libcurl: redirects followed, HTTP errors (>= 400)
// and stalled or cut transfers reported as DownloadFailure.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "error.h"

namespace fastdemucs {

// The server could not be reached or did not deliver the whole file.
// Local problems (cannot write the destination) are plain Errors.
class DownloadFailure : public Error {
public:
    DownloadFailure(const std::string& url, const std::string& reason, long http_status);
    const std::string& url() const { return url_; }
    const std::string& reason() const { return reason_; }  // e.g. "HTTP status 404"
    long http_status() const { return http_status_; }     // 0 when no HTTP error
private:
    std::string url_;
    std::string reason_;
    long http_status_;
};

using DownloadProgress = std::function<void(int64_t done, int64_t total)>;

// Downloads `url` into the new file `path` (created here, must not exist; left
// behind, possibly partial, on failure: the caller owns its removal).
void download_to_file(const std::string& url, const std::string& path, const DownloadProgress& progress);

// Downloads a small text resource (a files.txt, a bag yaml); fails when it is
// larger than `max_bytes`.
std::string download_text(const std::string& url, size_t max_bytes = 1 << 20);

}  // namespace fastdemucs
