#include "checkpoint/zip_archive.h"

#include <zip.h>

#include <memory>

#include "error.h"

namespace fastdemucs {

namespace {

// Deflate expands at most about 1032:1; a larger claimed size is a damaged
// header, refused before allocating for it.
constexpr uint64_t kMaxExpansion = 1100;

struct FileCloser {
    void operator()(zip_file_t* f) const { zip_fclose(f); }
};

std::string libzip_message(zip_error_t* error) {
    std::string text = zip_error_strerror(error);
    zip_error_fini(error);
    return text;
}

}  // namespace

ZipArchive::ZipArchive(std::string name, const uint8_t* data, size_t size) : name_(std::move(name)) {
    zip_error_t error;
    zip_error_init(&error);
    zip_source_t* source = zip_source_buffer_create(data, size, 0, &error);
    if (!source) throw Error(name_ + ": cannot open the zip archive (" + libzip_message(&error) + ")");
    zip_ = zip_open_from_source(source, ZIP_RDONLY, &error);
    if (!zip_) {
        zip_source_free(source);
        throw Error(name_ + ": not a torch checkpoint (truncated or damaged zip archive: " +
                    libzip_message(&error) + ")");
    }
    zip_error_fini(&error);
}

ZipArchive::~ZipArchive() {
    if (zip_) zip_discard(zip_);  // read-only: nothing to write back
}

std::vector<std::string> ZipArchive::entry_names() const {
    std::vector<std::string> names;
    zip_int64_t count = zip_get_num_entries(zip_, 0);
    for (zip_int64_t k = 0; k < count; ++k) {
        const char* entry = zip_get_name(zip_, static_cast<zip_uint64_t>(k), ZIP_FL_ENC_RAW);
        if (entry) names.emplace_back(entry);
    }
    return names;
}

bool ZipArchive::contains(const std::string& entry) const {
    return zip_name_locate(zip_, entry.c_str(), ZIP_FL_ENC_RAW) >= 0;
}

void ZipArchive::fail_entry(const std::string& entry, const std::string& why) const {
    throw Error(name_ + ": damaged zip entry " + entry + " (" + why + ")");
}

std::vector<uint8_t> ZipArchive::read(const std::string& entry) const {
    zip_int64_t index = zip_name_locate(zip_, entry.c_str(), ZIP_FL_ENC_RAW);
    if (index < 0) throw Error(name_ + ": no entry " + entry + " in the zip archive");
    zip_stat_t st;
    zip_stat_init(&st);
    if (zip_stat_index(zip_, static_cast<zip_uint64_t>(index), 0, &st) != 0 ||
        !(st.valid & ZIP_STAT_SIZE) || !(st.valid & ZIP_STAT_COMP_SIZE))
        fail_entry(entry, zip_strerror(zip_));
    if (st.size > kMaxExpansion * st.comp_size + 4096) fail_entry(entry, "implausible size");

    std::unique_ptr<zip_file_t, FileCloser> file(zip_fopen_index(zip_, static_cast<zip_uint64_t>(index), 0));
    if (!file) fail_entry(entry, zip_strerror(zip_));
    std::vector<uint8_t> bytes(static_cast<size_t>(st.size));
    size_t done = 0;
    while (done < bytes.size()) {
        zip_int64_t n = zip_fread(file.get(), bytes.data() + done, bytes.size() - done);
        if (n < 0) fail_entry(entry, zip_file_strerror(file.get()));
        if (n == 0) fail_entry(entry, "shorter than its header says");
        done += static_cast<size_t>(n);
    }
    // libzip checks the CRC when it reaches the end of the entry, so read
    // once more: that must report end-of-data without error.
    uint8_t extra;
    zip_int64_t n = zip_fread(file.get(), &extra, 1);
    if (n < 0) fail_entry(entry, zip_file_strerror(file.get()));
    if (n > 0) fail_entry(entry, "longer than its header says");
    return bytes;
}

}  // namespace fastdemucs
