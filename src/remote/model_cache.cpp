#include "remote/model_cache.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <random>
#include <set>
#include <system_error>

#include "engine/repo.h"
#include "remote/download.h"

namespace fastdemucs {
namespace {

namespace fs = std::filesystem;

// Cached files already verified by this process, keyed by path, size and
// modification time, so that a bag used repeatedly is hashed once while a
// file replaced on disk is hashed again.
class VerifiedFiles {
public:
    static std::string key(const fs::path& path) {
        std::error_code ec;
        const auto size = fs::file_size(path, ec);
        const auto time = fs::last_write_time(path, ec);
        return path.string() + "|" + std::to_string(size) + "|" +
               std::to_string(time.time_since_epoch().count());
    }
    bool contains(const std::string& key) {
        std::lock_guard<std::mutex> lock(mutex_);
        return keys_.count(key) > 0;
    }
    void add(const std::string& key) {
        std::lock_guard<std::mutex> lock(mutex_);
        keys_.insert(key);
    }

private:
    std::mutex mutex_;
    std::set<std::string> keys_;
};

VerifiedFiles& verified_files() {
    static VerifiedFiles files;
    return files;
}

// Empty when the file's sha256 starts with `checksum`, else what it starts with.
std::string checksum_mismatch(const fs::path& path, const std::string& checksum) {
    const std::string actual = sha256_file(path.string()).substr(0, checksum.size());
    return actual == checksum ? std::string() : actual;
}

bool cached_file_is_good(const fs::path& path, const CachedFileRequest& request, const RemoteOptions& options) {
    const std::string key = VerifiedFiles::key(path);
    if (verified_files().contains(key)) return true;
    const std::string actual = checksum_mismatch(path, request.checksum);
    if (actual.empty()) {
        verified_files().add(key);
        return true;
    }
    report_warning(options, "the cached model file " + path.string() + " is damaged (sha256 starts with " + actual +
                                ", expected " + request.checksum + ")" +
                                (options.offline ? "" : "; downloading it again"));
    return false;
}

std::string manual_download_hint(const CachedFileRequest& request, const RemoteOptions& options,
                                 const std::string& reason, bool damaged) {
    const std::string state = damaged ? "is damaged in the cache (" + options.cache_dir + ")"
                                      : "is not in the cache (" + options.cache_dir + ")";
    return "model file " + request.file_name + " " + state + " and could not be downloaded from " + request.url +
           ": " + reason + "; download it by hand and put it there";
}

// Creates the folder (with parents) and checks that files can be made in it,
// so that the error names the folder rather than a temporary file.
void prepare_cache_folder(const std::string& dir) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec || !fs::is_directory(dir, ec))
        throw Error("cannot create the model cache folder " + dir + ": " +
                    (ec ? ec.message() : std::string("not a directory")));
    if (::access(dir.c_str(), W_OK | X_OK) != 0)
        throw Error("cannot write in the model cache folder " + dir + ": " + std::strerror(errno));
}

// A name no other process or thread uses: each download has its own file, so
// concurrent downloads of one model never write into the same file.
fs::path temporary_path(const fs::path& final_path) {
    static std::mutex mutex;
    static std::mt19937_64 generator{std::random_device{}()};
    uint64_t random;
    {
        std::lock_guard<std::mutex> lock(mutex);
        random = generator();
    }
    return final_path.string() + ".partial-" + std::to_string(::getpid()) + "-" + std::to_string(random);
}

// Removes the temporary file unless released (after a successful rename).
class TemporaryFile {
public:
    explicit TemporaryFile(fs::path path) : path_(std::move(path)) {}
    ~TemporaryFile() {
        std::error_code ec;
        if (!path_.empty()) fs::remove(path_, ec);
    }
    const fs::path& path() const { return path_; }
    void release() { path_.clear(); }

private:
    fs::path path_;
};

// Downloads into a temporary file, verifies it, and renames it into place.
// rename() is atomic: readers see the old file or the complete new one, and
// concurrent downloads of the same file simply replace identical bytes.
void download_into_cache(const CachedFileRequest& request, const fs::path& final_path,
                         const RemoteOptions& options, bool damaged) {
    prepare_cache_folder(options.cache_dir);
    TemporaryFile temporary(temporary_path(final_path));
    if (options.download_started) options.download_started(request.url, final_path.string());
    try {
        download_to_file(request.url, temporary.path().string(), options.progress);
    } catch (const DownloadFailure& failure) {
        throw Error(manual_download_hint(request, options, failure.reason(), damaged));
    }
    const std::string actual = checksum_mismatch(temporary.path(), request.checksum);
    if (!actual.empty())
        throw Error("checksum mismatch for " + request.file_name + ": expected " + request.checksum + ", got " +
                    actual + " (downloaded from " + request.url + "; not cached)");
    std::error_code ec;
    fs::rename(temporary.path(), final_path, ec);
    if (ec) throw Error("cannot move the downloaded file to " + final_path.string() + ": " + ec.message());
    temporary.release();
    verified_files().add(VerifiedFiles::key(final_path));
}

}  // namespace

bool is_cached(const std::string& cache_dir, const std::string& file_name) {
    std::error_code ec;
    return fs::is_regular_file(fs::path(cache_dir) / file_name, ec);
}

std::string ensure_cached(const CachedFileRequest& request, const RemoteOptions& options) {
    const fs::path final_path = fs::path(options.cache_dir) / request.file_name;
    const bool present = is_cached(options.cache_dir, request.file_name);
    if (present && cached_file_is_good(final_path, request, options)) return final_path.string();
    if (options.offline)
        throw Error(manual_download_hint(request, options, "offline mode", present));
    download_into_cache(request, final_path, options, present);
    return final_path.string();
}

}  // namespace fastdemucs
