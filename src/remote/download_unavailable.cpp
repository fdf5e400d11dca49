// Stand-in for download.cpp in builds without libcurl (-DFASTDEMUCS_DOWNLOAD=OFF):
// cached and local models work, anything that needs the network says why not.
#include "remote/download.h"

namespace fastdemucs {

DownloadFailure::DownloadFailure(const std::string& url, const std::string& reason, long http_status)
    : Error("cannot download " + url + ": " + reason), url_(url), reason_(reason), http_status_(http_status) {}

void download_to_file(const std::string& url, const std::string&, const DownloadProgress&) {
    throw DownloadFailure(url, "this build of fastdemucs has no download support (FASTDEMUCS_DOWNLOAD=OFF)", 0);
}

std::string download_text(const std::string& url, size_t) {
    throw DownloadFailure(url, "this build of fastdemucs has no download support (FASTDEMUCS_DOWNLOAD=OFF)", 0);
}

}  // namespace fastdemucs
