// Start-up and phase tracing for the time-to-first-stem work: with
// FASTDEMUCS_TRACE=1 every trace_point() prints one line to stderr,
//     fastdemucs trace: +0.412 s  cuda: weights uploaded
// where the time counts from the process's start (as the kernel recorded it),
// so that dynamic loading before main() shows too. Off, it costs one branch.
#pragma once

namespace fastdemucs {

bool trace_enabled();
// FASTDEMUCS_TRACE=2: also the finer points (each block of a CUDA graph
// capture, the host time spent in cuBLAS while capturing).
bool trace_detailed();
void trace_point(const char* what);

}  // namespace fastdemucs
