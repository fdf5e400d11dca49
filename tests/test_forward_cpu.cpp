// The CPU forward against the official code's float64 references: block by
// block on the tiny model, end to end on full6s.
#include <gtest/gtest.h>

#include "engine/backend.h"
#include "model/model.h"
#include "test_forward_support.h"
#include "test_support.h"

using namespace fastdemucs;
using testing_support::Array;

namespace {

// float32 engine contract: relative L2 error <= 1e-4 (80 dB).
constexpr double kMaxRelativeError = 1e-4;

}  // namespace

TEST(ForwardCpu, TinyMatchesEveryBlock) {
    auto model = load_htdemucs(testing_support::fixture("tiny/0d0b2025.th"));
    auto refs = testing_support::read_npz(testing_support::fixture("tiny/tiny_forward_1.5s.npz"));
    auto backend = make_cpu_backend(model, 0);
    auto taps = forward_testing::run_tapped(*backend, refs.at("input"));

    // The frequency embedding table as the module returns it (weight * scale).
    {
        const Array& ref = refs.at("freq_emb");
        const auto& table = model->weight("freq_emb.embedding.weight");
        std::vector<float> scaled(table.data);
        for (auto& v : scaled) v *= float(model->config.emb_scale);
        ASSERT_EQ(scaled.size(), ref.data.size());
        EXPECT_LE(testing_support::relative_l2(scaled.data(), ref.data.data(), ref.numel()), kMaxRelativeError);
    }
    ASSERT_NO_FATAL_FAILURE(forward_testing::expect_tiny_blocks_match(taps, refs, kMaxRelativeError));
}

TEST(ForwardCpu, Full6sForward3sPerStem) {
    auto backend = make_cpu_backend(load_htdemucs(testing_support::fixture("full6s/full6s-86db6bad.th")), 0);
    ASSERT_NO_FATAL_FAILURE(forward_testing::expect_full6s_forward(*backend, 80.0, ""));
}
