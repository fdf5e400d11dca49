// A second stream beside a forward's own: the time branch's layers run on it
// while the frequency branch's run on the main one (the two meet only in the
// cross-transformer's cross layers and the final sum), with a stack of
// their own growing down from the top of the workspace (cuda/arena.h).
//
// fork() and join() end a phase of both stacks: within a phase the two
// streams may run in any interleaving, so the workspace must hold the sum of
// both stacks' peaks of that phase; used() is the largest such sum.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda/arena.h"
#include "cuda/common.h"

namespace fastdemucs::cuda {

class Branch {
public:
    // The branch on `main`'s own stream and stack: fork and join do nothing.
    // (`main` is kept by reference: it outlives the Branch.)
    explicit Branch(const Ctx& main) : main_(main), ctx_(main) {}
    // The branch on `ctx.stream` / `ctx.blas` with this object's stack, which
    // the caller binds (arena(): down from the top of the workspace, its
    // capacity the offset of that top from the main stack's base); the
    // events order the two streams (reused: each wait is queued right after
    // its record).
    Branch(const Ctx& main, const Ctx& ctx, cudaEvent_t fork_event, cudaEvent_t join_event);
    // Joins a branch left forked (a forward that threw): the main stream's
    // later work must not overtake what is still queued on the branch.
    ~Branch();
    Branch(const Branch&) = delete;
    Branch& operator=(const Branch&) = delete;

    const Ctx& ctx() const { return ctx_; }
    Arena& arena() { return arena_; }
    bool split() const { return ctx_.stream != main_.stream; }

    // The branch runs what follows after what the main stream has queued (if not forked already).
    void fork();
    // The main stream runs what follows after what the branch has queued (if forked).
    void join();
    // Ends the last phase (call once the forward is queued). fork, join and
    // finish throw where, outside a dry run, the phase just ended had the two
    // stacks overlap (an internal error: the dry runs measure what they need).
    void finish() { phase_ends(); }
    // The workspace both stacks needed (the main stack's alone where the branch does not split).
    size_t used() const { return used_; }

    // Forks queued on a real stream by this process (tests: the branch is used).
    static int64_t forks_queued();

private:
    void phase_ends();

    const Ctx& main_;
    Ctx ctx_;
    Arena arena_;
    cudaEvent_t fork_event_ = nullptr, join_event_ = nullptr;
    bool forked_ = false;
    size_t used_ = 0;
};

}  // namespace fastdemucs::cuda
