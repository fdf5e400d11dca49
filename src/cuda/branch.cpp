#include "cuda/branch.h"

#include <algorithm>

namespace fastdemucs::cuda {

Branch::Branch(const Ctx& main, const Ctx& ctx, cudaEvent_t fork_event, cudaEvent_t join_event)
    : main_(main), ctx_(ctx), fork_event_(fork_event), join_event_(join_event) {
    ctx_.arena = &arena_;
}

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
}

void Branch::join() {
    if (!forked_) return;
    phase_ends();
    stream_waits(ctx_, main_, join_event_);
    forked_ = false;
}

void Branch::phase_ends() {
    Arena& main = *main_.arena;
    used_ = std::max(used_, main.phase_peak() + (split() ? arena_.phase_peak() : 0));
    main.begin_phase();
    arena_.begin_phase();
}

}  // namespace fastdemucs::cuda
