#include "io/temp_file.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>

#include "error.h"

namespace fastdemucs {
namespace {

// Live temporary files, readable from a signal handler: a slot is claimed
// (state 1), filled, then published (state 2); the handler only reads
// published slots.
constexpr int kSlots = 64;
constexpr size_t kPathMax = 4096;
struct Slot {
    std::atomic<int> state{0};
    char path[kPathMax];
};
Slot g_slots[kSlots];

int register_temp(const std::string& path) {
    if (path.size() >= kPathMax) return -1;
    for (int i = 0; i < kSlots; ++i) {
        int expected = 0;
        if (g_slots[i].state.compare_exchange_strong(expected, 1)) {
            std::memcpy(g_slots[i].path, path.c_str(), path.size() + 1);
            g_slots[i].state.store(2);
            return i;
        }
    }
    return -1;  // too many at once: such files are just not cleaned on signals
}

void unregister_temp(int slot) {
    if (slot >= 0) g_slots[slot].state.store(0);
}

extern "C" void remove_temps_and_die(int signal_number) {
    for (Slot& slot : g_slots)
        if (slot.state.load() == 2) ::unlink(slot.path);
    ::signal(signal_number, SIG_DFL);
    ::raise(signal_number);
}

}  // namespace

void remove_temp_files_on_signals() {
    for (int signal_number : {SIGINT, SIGTERM, SIGHUP}) {
        struct sigaction action {};
        action.sa_handler = remove_temps_and_die;
        sigemptyset(&action.sa_mask);
        action.sa_flags = SA_RESETHAND;
        ::sigaction(signal_number, &action, nullptr);
    }
}

TempFile::TempFile(const std::string& final_path) : final_path_(final_path) {
    namespace fs = std::filesystem;
    const fs::path target(final_path);
    const fs::path folder = target.has_parent_path() ? target.parent_path() : fs::path(".");
    std::random_device entropy;
    std::mt19937_64 generator((uint64_t(entropy()) << 32) ^ entropy());
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    for (int attempt = 0; attempt < 100; ++attempt) {
        std::string suffix(6, 'x');
        for (char& c : suffix) c = alphabet[generator() % (sizeof(alphabet) - 1)];
        const std::string candidate = (folder / ("." + target.filename().string() + ".tmp-" + suffix)).string();
        // O_EXCL: never reuse someone else's file. Mode 0666 lets the umask
        // decide, as for any ordinary new file.
        const int fd = ::open(candidate.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd >= 0) {
            ::close(fd);
            path_ = candidate;
            slot_ = register_temp(path_);
            return;
        }
        if (errno != EEXIST) throw Error("cannot write " + final_path + ": " + std::strerror(errno));
    }
    throw Error("cannot write " + final_path + ": no free temporary file name");
}

TempFile::~TempFile() {
    if (!committed_) ::unlink(path_.c_str());
    unregister_temp(slot_);
}

void TempFile::commit() {
    // The data reaches the disk before the name does, so that even a power
    // cut leaves either the old file or the complete new one.
    const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw Error("cannot write " + final_path_ + ": " + std::strerror(errno));
    const int synced = ::fsync(fd);
    const int sync_errno = errno;
    ::close(fd);
    if (synced != 0) throw Error("cannot write " + final_path_ + ": " + std::strerror(sync_errno));
    if (std::rename(path_.c_str(), final_path_.c_str()) != 0)
        throw Error("cannot write " + final_path_ + ": " + std::strerror(errno));
    committed_ = true;
    unregister_temp(slot_);
    slot_ = -1;
}

}  // namespace fastdemucs
