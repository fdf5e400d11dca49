#include "cuda/plan_store.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <system_error>

namespace fastdemucs::cuda {
namespace {

namespace fs = std::filesystem;

// File layout: the magic line, the description line, the payload's size as
// 8 little-endian bytes, the payload. The description inside the file (not
// only its hash in the name) is what a load checks.
const char kMagic[] = "fastdemucs plan store 1\n";

std::string env_value(const char* name) {
    const char* value = std::getenv(name);
    return value ? std::string(value) : std::string();
}

// FNV-1a, 64 bits: only names the file; collisions are caught by the
// description stored inside it.
uint64_t fnv1a(const std::string& text) {
    uint64_t h = 1469598103934665603ull;
    for (unsigned char c : text) {
        h ^= c;
        h *= 1099511628211ull;
    }
    return h;
}

// One line: a description holding a line break would end early.
std::string one_line(std::string text) {
    for (char& c : text)
        if (c == '\n' || c == '\r') c = ' ';
    return text;
}

// What a file for `description` starts with (its payload's size follows).
std::string header(const std::string& description) { return kMagic + one_line(description) + "\n"; }

}  // namespace

std::string PlanStore::default_folder() {
    const std::string chosen = env_value("FASTDEMUCS_PLAN_CACHE");
    if (chosen == "off") return {};
    if (!chosen.empty()) return chosen;
    const std::string xdg = env_value("XDG_CACHE_HOME");
    if (!xdg.empty()) return xdg + "/fastdemucs/plans";
    const std::string home = env_value("HOME");
    if (!home.empty()) return home + "/.cache/fastdemucs/plans";
    return {};
}

PlanStore::PlanStore(std::string folder) : folder_(std::move(folder)) {}

std::string PlanStore::path_of(const std::string& description) const {
    char name[40];
    std::snprintf(name, sizeof name, "plan-%016llx.bin", (unsigned long long)fnv1a(one_line(description)));
    return (fs::path(folder_) / name).string();
}

std::vector<uint8_t> PlanStore::load(const std::string& description) const {
    if (folder_.empty()) return {};
    std::ifstream in(path_of(description), std::ios::binary);
    if (!in) return {};
    const std::string expected = header(description);
    std::string head(expected.size(), '\0');
    if (!in.read(head.data(), std::streamsize(head.size())) || head != expected) return {};
    unsigned char size_bytes[8];
    if (!in.read(reinterpret_cast<char*>(size_bytes), 8)) return {};
    uint64_t size = 0;
    for (int i = 7; i >= 0; i--) size = size << 8 | size_bytes[i];
    if (size == 0 || size > (uint64_t(1) << 30)) return {};
    std::vector<uint8_t> bytes(size);
    if (!in.read(reinterpret_cast<char*>(bytes.data()), std::streamsize(size))) return {};
    if (in.peek() != std::char_traits<char>::eof()) return {};  // longer than it says: damaged
    return bytes;
}

bool PlanStore::save(const std::string& description, const std::vector<uint8_t>& bytes) const {
    if (folder_.empty() || bytes.empty()) return false;
    std::error_code ec;
    fs::create_directories(folder_, ec);
    if (ec) return false;
    const std::string final_path = path_of(description);
    // A name no other writer uses at the same time: the process, then a
    // counter shared by its threads.
    static std::atomic<uint64_t> counter{0};
    const std::string temp_path = final_path + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
    bool written = false;
    {
        std::ofstream out(temp_path, std::ios::binary | std::ios::trunc);
        if (out) {
            const std::string head = header(description);
            unsigned char size_bytes[8];
            for (int i = 0; i < 8; i++) size_bytes[i] = (uint64_t(bytes.size()) >> (8 * i)) & 0xff;
            out.write(head.data(), std::streamsize(head.size()));
            out.write(reinterpret_cast<const char*>(size_bytes), 8);
            out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
            out.close();  // errors at close (a full disk, NFS) count too
            written = !out.fail();
        }
    }
    if (written) {
        fs::rename(temp_path, final_path, ec);
        written = !ec;
    }
    if (!written) fs::remove(temp_path, ec);
    return written;
}

}  // namespace fastdemucs::cuda
