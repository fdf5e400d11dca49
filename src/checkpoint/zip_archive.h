// A read-only view of a zip archive held in memory (libzip underneath).
// Errors throw fastdemucs::Error with messages that start with `name`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

struct zip;

namespace fastdemucs {

class ZipArchive {
public:
    // `data` must outlive the archive: entries are read from it in place.
    ZipArchive(std::string name, const uint8_t* data, size_t size);
    ~ZipArchive();
    ZipArchive(const ZipArchive&) = delete;
    ZipArchive& operator=(const ZipArchive&) = delete;

    std::vector<std::string> entry_names() const;
    bool contains(const std::string& entry) const;
    // The whole entry, decompressed and CRC-checked.
    std::vector<uint8_t> read(const std::string& entry) const;

private:
    [[noreturn]] void fail_entry(const std::string& entry, const std::string& why) const;

    std::string name_;
    struct zip* zip_ = nullptr;
};

}  // namespace fastdemucs
