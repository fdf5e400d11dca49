// The forward's two stacks (cuda/arena.h) and the second stream's phase
// accounting (cuda/branch.h), in dry mode. No GPU needed: a dry Branch
// launches and records nothing.
#include <gtest/gtest.h>

#include <cstdint>

#include "cuda/arena.h"
#include "cuda/branch.h"
#include "error.h"

using fastdemucs::Error;
using fastdemucs::cuda::Arena;
using fastdemucs::cuda::Branch;
using fastdemucs::cuda::Ctx;

namespace {

constexpr size_t kA = Arena::kAlign;

// A dry main context on a dry main stack, on a stream that is never used
// (dry contexts launch nothing).
struct DryMain {
    Arena arena;
    Ctx ctx;
    DryMain() {
        arena.start_dry();
        ctx.dry = true;
        ctx.arena = &arena;
        ctx.stream = reinterpret_cast<cudaStream_t>(uintptr_t(1));
    }
};

}  // namespace

TEST(Arena, DownwardStackHandsOutAlignedBlocksBelowItsEnd) {
    alignas(256) static char memory[8 * kA];
    Arena down;
    down.bind_down(memory + sizeof memory, sizeof memory);
    char* a = static_cast<char*>(down.alloc_bytes(1));
    char* b = static_cast<char*>(down.alloc_bytes(kA + 1));
    EXPECT_EQ(a, memory + 7 * kA);
    EXPECT_EQ(b, memory + 5 * kA);
    const size_t mark = down.mark();
    down.alloc_bytes(3 * kA);
    down.release(mark);
    EXPECT_EQ(static_cast<char*>(down.alloc_bytes(kA)), memory + 4 * kA);  // reused after the release
    EXPECT_EQ(down.peak(), 6 * kA);
    EXPECT_THROW(down.alloc_bytes(5 * kA), Error);  // 4 blocks of 8 in use: no room for five more
}

TEST(Arena, PhasePeakStartsFromWhatIsInUse) {
    Arena arena;
    arena.start_dry();
    arena.alloc_bytes(2 * kA);
    const size_t mark = arena.mark();
    arena.alloc_bytes(5 * kA);
    arena.release(mark);
    EXPECT_EQ(arena.phase_peak(), 7 * kA);
    arena.begin_phase();  // 2 blocks still in use
    EXPECT_EQ(arena.phase_peak(), 2 * kA);
    arena.alloc_bytes(kA);
    EXPECT_EQ(arena.phase_peak(), 3 * kA);
    EXPECT_EQ(arena.peak(), 7 * kA);
}

TEST(Branch, OnOneStreamItUsesTheMainStackAndCountsItsPeak) {
    DryMain dry;
    Arena& main = dry.arena;
    Branch one(dry.ctx);
    EXPECT_FALSE(one.split());
    EXPECT_EQ(one.ctx().arena, &main);
    main.alloc_bytes(3 * kA);
    one.fork();  // nothing to fork
    one.ctx().arena->alloc_bytes(4 * kA);
    one.join();
    one.finish();
    EXPECT_EQ(one.used(), 7 * kA);
}

TEST(Branch, TwoStacksNeedTheLargestSumOfTheirPeaksInOnePhase) {
    DryMain dry;
    Arena& main = dry.arena;
    Ctx tctx = dry.ctx;
    tctx.stream = reinterpret_cast<cudaStream_t>(uintptr_t(2));  // another stream, never used either
    Branch time(dry.ctx, tctx, nullptr, nullptr);
    ASSERT_TRUE(time.split());
    ASSERT_NE(time.ctx().arena, &main);
    time.arena().start_dry(Arena::dry_base() + (size_t(1) << 30), true);

    main.alloc_bytes(2 * kA);  // serial: 2
    time.fork();
    {
        // Main 2 + 6 at most, the branch 3 kept + 4 at most: 2 + 6 + 3 + 4 = 15 at once.
        const size_t m = main.mark();
        main.alloc_bytes(6 * kA);
        main.release(m);
        Arena& t = *time.ctx().arena;
        t.alloc_bytes(3 * kA);
        const size_t tm = t.mark();
        t.alloc_bytes(4 * kA);
        t.release(tm);
    }
    time.join();
    // Serial again: the branch's 3 stay; main reuses its own freed 6 and more (2 + 10 + 3 = 15).
    main.alloc_bytes(10 * kA);
    time.fork();
    main.alloc_bytes(kA);          // 13 on main
    time.ctx().arena->alloc_bytes(5 * kA);  // 8 on the branch: 21
    time.join();
    time.finish();
    EXPECT_EQ(time.used(), 21 * kA);
}
