// Atomic file replacement: write under a fresh hidden name beside the final
// one, then rename over it. A crash or error never leaves a partial file
// under the final name, and an existing file is only replaced by a complete
// new one.
#pragma once

#include <string>

namespace fastdemucs {

// A fresh, empty file `.NAME.tmp-XXXXXX` beside `final_path`, removed on
// destruction unless committed. Throws Error naming `final_path` when the
// folder does not allow it.
class TempFile {
public:
    explicit TempFile(const std::string& final_path);
    ~TempFile();
    TempFile(const TempFile&) = delete;
    TempFile& operator=(const TempFile&) = delete;

    const std::string& path() const { return path_; }
    // Flushes the file to disk and renames it over the final name.
    void commit();

private:
    std::string final_path_;
    std::string path_;
    bool committed_ = false;
    int slot_ = -1;  // in the registry of live temporary files
};

// Makes SIGINT, SIGTERM and SIGHUP remove the live temporary files before
// the process dies of the signal, so an interrupted run leaves no
// .NAME.tmp-XXXXXX behind. For programs (the command), not libraries.
void remove_temp_files_on_signals();

}  // namespace fastdemucs
