#include "cuda/branch.h"

#include <algorithm>
#include <atomic>
#include <string>

#include "error.h"

namespace fastdemucs::cuda {

namespace {
std::atomic<int64_t> forks{0};
}  // namespace

Branch::Branch(const Ctx& main, const Ctx& ctx, cudaEvent_t fork_event, cudaEvent_t join_event)
    : main_(main), ctx_(ctx), fork_event_(fork_event), join_event_(join_event) {
    ctx_.arena = &arena_;
}

Branch::~Branch() {
    if (!forked_ || main_.dry) return;
    // Never throws: a capture that failed is discarded whole by its caller.
    if (cudaEventRecord(join_event_, ctx_.stream) == cudaSuccess) cudaStreamWaitEvent(main_.stream, join_event_, 0);
    cudaGetLastError();
}

int64_t Branch::forks_queued() { return forks.load(); }

// `to` runs what follows after what `from` has queued so far (nothing in a
// dry run). In a graph capture the waiting stream joins the capture.
static void stream_waits(const Ctx& from, const Ctx& to, cudaEvent_t event) {
    if (from.dry) return;
    FD_CUDA(cudaEventRecord(event, from.stream));
    FD_CUDA(cudaStreamWaitEvent(to.stream, event, 0));
}

void Branch::fork() {
    if (forked_ || !split()) return;
    phase_ends();
    stream_waits(main_, ctx_, fork_event_);
    forked_ = true;
    if (!main_.dry) forks++;
}

void Branch::join() {
    if (!forked_) return;
    phase_ends();
    stream_waits(ctx_, main_, join_event_);
    forked_ = false;
}

void Branch::phase_ends() {
    Arena& main = *main_.arena;
    const size_t both = main.phase_peak() + (split() ? arena_.phase_peak() : 0);
    used_ = std::max(used_, both);
    main.begin_phase();
    arena_.begin_phase();
    if (split() && !main_.dry && both > arena_.capacity())
        throw Error("internal error: the forward's two stacks overlap (" + std::to_string(both) + " > " +
                    std::to_string(arena_.capacity()) + " bytes)");
}

}  // namespace fastdemucs::cuda
