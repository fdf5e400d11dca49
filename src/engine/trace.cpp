#include "engine/trace.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>

namespace fastdemucs {
namespace {

// Seconds since boot at which this process started: field 22 of
// /proc/self/stat, in clock ticks (10 ms resolution), on CLOCK_BOOTTIME's scale.
double process_start_seconds() {
    FILE* f = std::fopen("/proc/self/stat", "r");
    if (!f) return -1.0;
    char buf[1024];
    const size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
    std::fclose(f);
    buf[n] = '\0';
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    const char* p = std::strrchr(buf, ')');
    if (!p) return -1.0;
    unsigned long long start_ticks = 0;
    int field = 2;
    for (const char* q = p + 1; *q; q++) {
        if (*q == ' ') {
            field++;
            if (field == 22) {
                start_ticks = std::strtoull(q + 1, nullptr, 10);
                break;
            }
        }
    }
    const long hz = sysconf(_SC_CLK_TCK);
    return hz > 0 ? double(start_ticks) / double(hz) : -1.0;
}

double boot_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

struct TraceState {
    bool on = false;
    bool detailed = false;
    double start = 0.0;
    TraceState() {
        const char* v = std::getenv("FASTDEMUCS_TRACE");
        on = v && *v && std::strcmp(v, "0") != 0;
        detailed = on && std::strcmp(v, "2") == 0;
        if (on) {
            start = process_start_seconds();
            if (start < 0.0) start = boot_seconds();
        }
    }
};

const TraceState& state() {
    static const TraceState s;
    return s;
}

}  // namespace

bool trace_enabled() { return state().on; }
bool trace_detailed() { return state().detailed; }

void trace_point(const char* what) {
    const TraceState& s = state();
    if (!s.on) return;
    static std::mutex mutex;
    std::lock_guard<std::mutex> lock(mutex);
    std::fprintf(stderr, "fastdemucs trace: +%.4f s  %s\n", boot_seconds() - s.start, what);
}

}  // namespace fastdemucs
