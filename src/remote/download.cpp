#include "remote/download.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>

namespace fastdemucs {
namespace {

constexpr long kConnectTimeoutSeconds = 30;
// A transfer slower than this for this long is considered dead.
constexpr long kLowSpeedBytesPerSecond = 1024;
constexpr long kLowSpeedSeconds = 60;
constexpr long kMaxRedirects = 10;

// curl_global_init is not guaranteed thread-safe: run it once per process.
void init_curl_once() {
    static std::once_flag once;
    static CURLcode result = CURLE_OK;
    std::call_once(once, [] { result = curl_global_init(CURL_GLOBAL_DEFAULT); });
    if (result != CURLE_OK) throw Error(std::string("cannot initialise libcurl: ") + curl_easy_strerror(result));
}

// Where received bytes go; errors are kept here because curl callbacks must
// not throw through C code.
struct Sink {
    std::function<bool(const char*, size_t)> write;  // false: stop the transfer
    const DownloadProgress* progress = nullptr;
    std::exception_ptr error;  // set when a callback failed
};

size_t on_data(char* data, size_t size, size_t count, void* user) {
    auto* sink = static_cast<Sink*>(user);
    const size_t bytes = size * count;
    try {
        return sink->write(data, bytes) ? bytes : 0;
    } catch (...) {
        sink->error = std::current_exception();
        return 0;
    }
}

int on_progress(void* user, curl_off_t total, curl_off_t done, curl_off_t, curl_off_t) {
    auto* sink = static_cast<Sink*>(user);
    try {
        (*sink->progress)(static_cast<int64_t>(done), static_cast<int64_t>(total));
        return 0;
    } catch (...) {
        sink->error = std::current_exception();
        return 1;  // aborts the transfer
    }
}

using CurlHandle = std::unique_ptr<CURL, void (*)(CURL*)>;

// Runs one GET of `url` into `sink`. Throws DownloadFailure for what the
// network or server did, rethrows the callbacks' own errors.
void perform(const std::string& url, Sink& sink) {
    init_curl_once();
    CurlHandle curl(curl_easy_init(), &curl_easy_cleanup);
    if (!curl) throw Error("cannot initialise a libcurl handle");
    char detail[CURL_ERROR_SIZE] = {0};
    CURL* h = curl.get();
    curl_easy_setopt(h, CURLOPT_URL, url.c_str());
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, detail);
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(h, CURLOPT_MAXREDIRS, kMaxRedirects);
#if LIBCURL_VERSION_NUM >= 0x075500  // 7.85: the string forms replace the bitmasks
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(h, CURLOPT_PROTOCOLS, CURLPROTO_HTTP | CURLPROTO_HTTPS);
    curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS, CURLPROTO_HTTP | CURLPROTO_HTTPS);
#endif
    curl_easy_setopt(h, CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, kConnectTimeoutSeconds);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, kLowSpeedBytesPerSecond);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, kLowSpeedSeconds);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);  // timeouts without SIGALRM: safe in threads
    curl_easy_setopt(h, CURLOPT_USERAGENT, "fastdemucs");
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, &on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &sink);
    if (sink.progress && *sink.progress) {
        curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, &on_progress);
        curl_easy_setopt(h, CURLOPT_XFERINFODATA, &sink);
    }
    const CURLcode code = curl_easy_perform(h);
    if (sink.error) std::rethrow_exception(sink.error);
    if (code == CURLE_OK) return;
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    if (code == CURLE_HTTP_RETURNED_ERROR)
        throw DownloadFailure(url, "HTTP status " + std::to_string(status), status);
    std::string reason = curl_easy_strerror(code);
    if (detail[0]) reason += std::string(" (") + detail + ")";
    throw DownloadFailure(url, reason, 0);
}

}  // namespace

DownloadFailure::DownloadFailure(const std::string& url, const std::string& reason, long http_status)
    : Error("cannot download " + url + ": " + reason), url_(url), reason_(reason), http_status_(http_status) {}

void download_to_file(const std::string& url, const std::string& path, const DownloadProgress& progress) {
    // O_EXCL: never write into a file someone else created under this name.
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) throw Error("cannot create " + path + ": " + std::strerror(errno));
    std::unique_ptr<FILE, int (*)(FILE*)> out(::fdopen(fd, "wb"), &std::fclose);
    if (!out) {
        ::close(fd);
        throw Error("cannot open " + path + ": " + std::strerror(errno));
    }
    Sink sink;
    sink.progress = &progress;
    sink.write = [&](const char* data, size_t bytes) {
        if (std::fwrite(data, 1, bytes, out.get()) != bytes)
            throw Error("cannot write " + path + ": " + std::strerror(errno));
        return true;
    };
    perform(url, sink);
    const int closed = std::fclose(out.release());
    if (closed != 0) throw Error("cannot write " + path + ": " + std::strerror(errno));
}

std::string download_text(const std::string& url, size_t max_bytes) {
    std::string text;
    Sink sink;
    sink.write = [&](const char* data, size_t bytes) {
        if (text.size() + bytes > max_bytes)
            throw DownloadFailure(url, "larger than " + std::to_string(max_bytes) + " bytes", 0);
        text.append(data, bytes);
        return true;
    };
    perform(url, sink);
    return text;
}

}  // namespace fastdemucs
