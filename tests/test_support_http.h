// A small HTTP server on 127.0.0.1 for tests that download (models by name):
// python3's http.server serving a folder, started and stopped by the test.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>

namespace testing_support {

// The server program (python3). Run as: python3 SCRIPT ROOT LOG; it prints
// its port on stdout, serves ROOT and appends each request path to LOG.
// Prefixes change how .th files are served: /cut/ sends the full
// Content-Length but half the bytes, then closes; /corrupt/ flips the first
// byte; /redirect/ answers 302 to the path without the prefix.
extern const char kHttpServerScript[];

// The server above as a child process, from a script file holding
// kHttpServerScript; stopped (killed) on destruction.
class MirrorServer {
public:
    MirrorServer(const std::filesystem::path& script, const std::filesystem::path& root,
                 const std::filesystem::path& log);
    ~MirrorServer();
    MirrorServer(const MirrorServer&) = delete;
    MirrorServer& operator=(const MirrorServer&) = delete;
    // "http://127.0.0.1:PORT/"
    std::string url() const;
    void stop();

private:
    pid_t pid_ = -1;
    int port_ = -1;
};

}  // namespace testing_support
