// The model description: config from kwargs, the layer plan, the weight
// manifest against real checkpoints, the refusals of unsupported options,
// and the FLOP count.
#include <gtest/gtest.h>

#include "checkpoint/checkpoint.h"
#include "error.h"
#include "model/flops.h"
#include "model/model.h"
#include "test_support.h"

using namespace fastdemucs;

namespace {

// A copy of `kwargs` (a Dict) with `key` set to `value`.
PyValuePtr with_kwarg(const PyValue& kwargs, const std::string& key, PyValuePtr value) {
    auto copy = std::make_shared<PyValue>(kwargs);
    bool replaced = false;
    for (auto& kv : copy->dict)
        if (kv.first->kind == PyValue::Kind::String && kv.first->s == key) kv.second = value, replaced = true;
    if (!replaced) {
        auto k = std::make_shared<PyValue>();
        k->kind = PyValue::Kind::String;
        k->s = key;
        copy->dict.emplace_back(k, value);
    }
    return copy;
}

PyValuePtr integer(int64_t v) {
    auto p = std::make_shared<PyValue>();
    p->kind = PyValue::Kind::Int;
    p->i = v;
    return p;
}

PyValuePtr boolean(bool v) {
    auto p = std::make_shared<PyValue>();
    p->kind = PyValue::Kind::Bool;
    p->b = v;
    p->i = v;
    return p;
}

PyValuePtr text(const std::string& v) {
    auto p = std::make_shared<PyValue>();
    p->kind = PyValue::Kind::String;
    p->s = v;
    return p;
}

void expect_error_containing(const std::function<void()>& fn, const std::string& needle) {
    try {
        fn();
        ADD_FAILURE() << "no error; expected one containing: " << needle;
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
}

}  // namespace

TEST(ModelPlan, TinyConfigFromKwargs) {
    Checkpoint ck = read_checkpoint(testing_support::fixture("tiny/0d0b2025.th"));
    HTDemucsConfig c = config_from_kwargs(*ck.kwargs, ck.path);
    EXPECT_EQ(c.sources, (std::vector<std::string>{"drums", "bass", "other", "vocals"}));
    EXPECT_EQ(c.channels, 8);
    EXPECT_EQ(c.bottom_channels, 32);
    EXPECT_EQ(c.t_layers, 2);
    EXPECT_EQ(c.segment_samples(), 88200);
    ModelPlan p = make_plan(c);
    ASSERT_EQ(p.encoder.size(), 4u);
    ASSERT_EQ(p.tencoder.size(), 4u);
    EXPECT_EQ(p.encoder[0].chin, 4);              // stereo, complex as channels
    EXPECT_EQ(p.decoder.back().chout, 4 * 2 * 2);  // sources x channels x (re, im)
    EXPECT_EQ(p.decoder.front().prefix, "decoder.0.");
    EXPECT_EQ(p.freq_emb_rows, 512);
    EXPECT_TRUE(p.bottom);
    EXPECT_EQ(p.transformer_dim, 32);
    EXPECT_FALSE(p.layers[0].cross);
    EXPECT_TRUE(p.layers[1].cross);
}

TEST(ModelPlan, ManifestMatchesEveryFixtureExactly) {
    for (const char* file : {"tiny/0d0b2025.th", "full6s/full6s-86db6bad.th"}) {
        SCOPED_TRACE(file);
        Checkpoint ck = read_checkpoint(testing_support::fixture(file));
        HTDemucsConfig c = config_from_kwargs(*ck.kwargs, ck.path);
        auto manifest = weight_manifest(c, make_plan(c));
        EXPECT_EQ(manifest.size(), ck.state.size());
        EXPECT_NO_THROW(check_state(ck.state, manifest, ck.path));
    }
}

TEST(ModelPlan, StateThatDisagreesWithKwargsIsRefused) {
    Checkpoint ck = read_checkpoint(testing_support::fixture("tiny/0d0b2025.th"));
    HTDemucsConfig c = config_from_kwargs(*ck.kwargs, ck.path);
    auto manifest = weight_manifest(c, make_plan(c));

    auto missing = ck.state;
    missing.erase("crosstransformer.layers.1.cross_attn.in_proj_weight");
    expect_error_containing([&] { check_state(missing, manifest, "x.th"); },
                            "x.th: missing tensor crosstransformer.layers.1.cross_attn.in_proj_weight");

    auto reshaped = ck.state;
    reshaped["encoder.0.conv.weight"].shape = {8, 4, 4, 2};
    expect_error_containing([&] { check_state(reshaped, manifest, "x.th"); },
                            "tensor encoder.0.conv.weight has shape [8, 4, 4, 2] but the checkpoint's kwargs imply [8, 4, 8, 1]");

    auto extra = ck.state;
    extra["encoder.9.conv.weight"] = HostTensor{{1}, {0.0f}};
    expect_error_containing([&] { check_state(extra, manifest, "x.th"); }, "unexpected tensor encoder.9.conv.weight");

    // kwargs that describe another size than the tensors: wider channels.
    auto wider = with_kwarg(*ck.kwargs, "channels", integer(16));
    ck.kwargs = wider;
    expect_error_containing([&] { make_htdemucs(std::move(ck)); }, "has shape");
}

TEST(ModelPlan, UnsupportedOptionsAreNamed) {
    Checkpoint ck = read_checkpoint(testing_support::fixture("tiny/0d0b2025.th"));
    const PyValue& kw = *ck.kwargs;
    struct Case {
        std::string key;
        PyValuePtr value;
        std::string message;
    } cases[] = {
        {"wiener_iters", integer(1), "wiener_iters > 0"},
        {"cac", boolean(false), "cac=False"},
        {"t_sparse_self_attn", boolean(true), "t_sparse_self_attn"},
        {"t_sparse_cross_attn", boolean(true), "t_sparse_cross_attn"},
        {"t_emb", text("cape"), "t_emb='cape'"},
        {"t_sin_random_shift", integer(2), "t_sin_random_shift"},
        {"t_group_norm", boolean(true), "t_group_norm"},
        {"use_train_segment", boolean(false), "use_train_segment"},
    };
    for (const auto& c : cases) {
        SCOPED_TRACE(c.key);
        auto changed = with_kwarg(kw, c.key, c.value);
        expect_error_containing([&] { config_from_kwargs(*changed, "m.th"); }, "m.th: option " + c.message);
        expect_error_containing([&] { config_from_kwargs(*changed, "m.th"); }, "not supported");
    }
    auto no_sources = with_kwarg(kw, "sources", integer(3));
    expect_error_containing([&] { config_from_kwargs(*no_sources, "m.th"); }, "sources");
}

TEST(ModelPlan, FlopCountOfHtdemucs6sSegment) {
    Checkpoint ck = read_checkpoint(testing_support::fixture("full6s/full6s-86db6bad.th"));
    HTDemucsConfig c = config_from_kwargs(*ck.kwargs, ck.path);
    FlopCount f = count_forward_flops(c, make_plan(c));
    // Hand count of the dominant terms: four 3x3 decoder rewrites of
    // 2 * (2C) * C * 9 * F * T = 14.3 GFLOP each, and the transformer's
    // attention over 2688 frequency and 1344 time tokens of width 384.
    EXPECT_NEAR(f.attention / 1e9, 2 * 2.0 * 384 * (3 * (2688.0 * 2688 + 1344.0 * 1344) + 2 * 2 * 2688.0 * 1344) / 1e9, 0.01);
    EXPECT_GT(f.convolutions / 1e9, 4 * 14.3);
    EXPECT_NEAR(f.total() / 1e9, 257, 5);
}
