#include "cuda/transformer.h"

#include <algorithm>
#include <vector>

#include "cuda/arena.h"
#include "cuda/attention.h"
#include "cuda/branch.h"
#include "cuda/gemm.h"
#include "cuda/kernels.h"
#include "cuda/profile.h"
#include "error.h"
#include "model/embeddings.h"

namespace fastdemucs::cuda {

// Buffers shared by every layer, sized for the longer of the two token sets.
struct CrossTransformer::Work {
    void* a = nullptr;      // LayerNorm output [rows, C], operand type
    void* kvn = nullptr;    // LayerNorm of the other branch [rows, C], operand type
    float* wide = nullptr;  // GEMM output [rows, max(3C, hidden)] (qkv or FF hidden)
    void* wide_op = nullptr;  // the same after bias (+activation), operand type (aliases wide in float32)
    float* kv = nullptr;    // cross-attention k|v projection [rows, 2C]
    void* kv_op = nullptr;  // operand type (aliases kv in float32)
    void* attn = nullptr;   // attention output [rows, C], operand type
    float* proj = nullptr;  // out_proj / linear2 output [rows, C]
};

CrossTransformer::CrossTransformer(const HTDemucsModel& model, const DeviceWeights& weights, int64_t Fr, int64_t T1,
                                   int64_t T2)
    : model_(model), weights_(weights), Fr_(Fr), T1_(T1), T2_(T2) {
    const auto& plan = model.plan;
    const auto& cfg = model.config;
    C_ = plan.transformer_dim;
    hidden_ = plan.transformer_hidden;
    // Positional embeddings, computed once on the host, uploaded token-major.
    const std::vector<float> pos2d = sin_embedding_2d(C_, Fr, T1, cfg.t_max_period);  // [C, Fr, T1]
    std::vector<float> tok2d(size_t(Fr * T1 * C_));
    for (int64_t c = 0; c < C_; c++)
        for (int64_t f = 0; f < Fr; f++)
            for (int64_t t = 0; t < T1; t++) tok2d[(t * Fr + f) * C_ + c] = pos2d[(c * Fr + f) * T1 + t];
    const std::vector<float> pos1d = sin_embedding_1d(T2, C_, cfg.t_max_period);  // [T2, C]
    pos2d_ = upload(tok2d.data(), tok2d.size() * sizeof(float), "the positional embeddings");
    pos1d_ = upload(pos1d.data(), pos1d.size() * sizeof(float), "the positional embeddings");
}

// Layer buffers for `rows` tokens attending to `rows_kv` of the other branch, from ctx's arena.
CrossTransformer::Work CrossTransformer::alloc_work(const Ctx& ctx, int64_t rows, int64_t rows_kv) const {
    Arena& arena = *ctx.arena;
    const DType dt = ctx.gemm;
    const int64_t C = C_, wide_cols = std::max(3 * C, hidden_);
    const size_t op = dtype_bytes(dt);
    Work w;
    w.a = arena.alloc_bytes(size_t(rows * C) * op);
    w.kvn = arena.alloc_bytes(size_t(rows_kv * C) * op);
    // The float32 GEMM results exist only where the projections do not
    // write the operand type themselves (float32, or narrow outputs off).
    const bool f32_scratch = dt == DType::F32 || !ctx.narrow_gemm_out;
    w.wide = f32_scratch ? arena.alloc<float>(rows * wide_cols) : nullptr;
    w.wide_op = dt == DType::F32 ? static_cast<void*>(w.wide) : arena.alloc_bytes(size_t(rows * wide_cols) * op);
    w.kv = f32_scratch ? arena.alloc<float>(rows_kv * 2 * C) : nullptr;
    w.kv_op = dt == DType::F32 ? static_cast<void*>(w.kv) : arena.alloc_bytes(size_t(rows_kv * 2 * C) * op);
    w.attn = arena.alloc_bytes(size_t(rows * C) * op);
    w.proj = arena.alloc<float>(rows * C);
    return w;
}

void CrossTransformer::run(const Ctx& ctx, Branch& time, int64_t B, float* x, float* xt) const {
    const auto& plan = model_.plan;
    const auto& cfg = model_.config;
    // The time tokens' layers on the time branch's stream and stack where it
    // splits off (cuda/branch.h): the layers of a pair are independent but
    // for the cross layers' inputs, the other branch's tokens from before it.
    const bool split = time.split();
    const Ctx& tctx = time.ctx();
    ArenaScope scope(*ctx.arena);
    ArenaScope time_scope(*tctx.arena);  // (the same arena where it does not split: nested scopes)
    const int64_t C = C_, n1 = Fr_ * T1_, rows1 = B * n1, rows2 = B * T2_;

    float* tok = ctx.arena->alloc<float>(rows1 * C);
    float* tok_t = tctx.arena->alloc<float>(rows2 * C);
    bool any_cross = false;
    for (const auto& l : plan.layers) any_cross = any_cross || l.cross;
    // The cross layers' other-branch inputs: copies of the tokens from before the layer.
    float* old = any_cross ? ctx.arena->alloc<float>(rows1 * C) : nullptr;
    float* old_t = any_cross && split ? tctx.arena->alloc<float>(rows2 * C) : nullptr;

    // One stream: one set of buffers for both layers of a pair; two: one each.
    const int64_t rows = std::max(rows1, rows2);
    const Work w = split ? alloc_work(ctx, rows1, rows2) : alloc_work(ctx, rows, rows);
    const Work w_t = split ? alloc_work(tctx, rows2, rows1) : w;

    time.fork();
    profile_block(ctx, "transformer.in");
    // Tokens: "b c fr t1 -> b (t1 fr) c" and "b c t2 -> b t2 c".
    to_tokens(ctx, x, tok, B, C, Fr_, T1_);
    to_tokens(tctx, xt, tok_t, B, C, 1, T2_);
    if (cfg.t_norm_in) {
        layer_norm(ctx, tok, tok, DType::F32, rows1, C, weights_.f32("crosstransformer.norm_in.weight"),
                   weights_.f32("crosstransformer.norm_in.bias"), 1e-5f);
        layer_norm(tctx, tok_t, tok_t, DType::F32, rows2, C, weights_.f32("crosstransformer.norm_in_t.weight"),
                   weights_.f32("crosstransformer.norm_in_t.bias"), 1e-5f);
    }
    const float wpos = float(cfg.t_weight_pos_embed);
    add_broadcast(ctx, tok, pos2d_.as<float>(), wpos, B, n1 * C);
    add_broadcast(tctx, tok_t, pos1d_.as<float>(), wpos, B, T2_ * C);

    for (size_t i = 0; i < plan.layers.size(); i++) {
        const std::string name = "transformer." + std::to_string(i) + (plan.layers[i].cross ? ".cross" : ".self");
        if (!plan.layers[i].cross) {
            profile_block(ctx, name + ".freq");
            layer(ctx, w, plan.layers[i], tok, B, n1, nullptr, 0);
            profile_block(ctx, name + ".time");
            layer(tctx, w_t, plan.layers_t[i], tok_t, B, T2_, nullptr, 0);
        } else {
            // Each layer attends to the other branch's tokens from before this layer.
            time.join();
            profile_block(ctx, name + ".freq");
            copy(ctx, old, tok, rows1 * C);
            if (split) copy(ctx, old_t, tok_t, rows2 * C);
            time.fork();
            layer(ctx, w, plan.layers[i], tok, B, n1, split ? old_t : tok_t, T2_);
            profile_block(ctx, name + ".time");
            layer(tctx, w_t, plan.layers_t[i], tok_t, B, T2_, old, n1);
        }
    }
    profile_block(ctx, "transformer.out");
    from_tokens(ctx, tok, x, B, C, Fr_, T1_);
    from_tokens(tctx, tok_t, xt, B, C, 1, T2_);
    time.join();
}

// One encoder layer on x [B * n, C]; kv [B * m, C] is the other branch for a
// cross-attention layer, null for self-attention.
void CrossTransformer::layer(const Ctx& ctx, const Work& w, const TransformerLayerPlan& plan, float* x, int64_t B,
                             int64_t n, const float* kv, int64_t m) const {
    const auto& cfg = model_.config;
    const DType dt = ctx.gemm;
    const int64_t C = C_, rows = B * n, rows_kv = B * m;
    auto f32 = [&](const std::string& name) { return weights_.f32(plan.prefix + name); };
    auto gw = [&](const std::string& name) { return weights_.gemm(plan.prefix + name); };
    const std::string attn = plan.cross ? "cross_attn." : "self_attn.";
    const float* gamma1 = cfg.t_layer_scale ? f32("gamma_1.scale") : nullptr;
    const float* gamma2 = cfg.t_layer_scale ? f32("gamma_2.scale") : nullptr;
    const void* in_w = gw(attn + "in_proj_weight");  // [3C, C]: q, k, v stacked
    const float* in_b = f32(attn + "in_proj_bias");
    const void* in_b_op = gw(attn + "in_proj_bias");  // the same in the operand type (the bias epilogue's)

    // op [r, cols] (operand type) = act(x [r, C] W^T + bias). In float16 /
    // bfloat16 the GEMM writes the operand type itself and the bias pass
    // works in place (ctx.narrow_gemm_out: half the bytes of the float32
    // result's round trip), else through the float32 `scratch`.
    auto project = [&](const void* x_op, int64_t r, const void* weight, int64_t cols, const float* bias,
                       const void* bias_op, Act act, float* scratch, void* op) {
        // The bias (and a GELU) in the product's epilogue where it can (linear_bias_as).
        if (linear_bias_as(ctx, x_op, r, C, weight, cols, bias_op, op, dt, act)) return;
        if (dt != DType::F32 && ctx.narrow_gemm_out) {
            linear_as(ctx, x_op, r, C, weight, cols, op, dt);
            bias_act_inplace(ctx, op, dt, bias, r, cols, 1, act);
        } else {
            linear(ctx, x_op, r, C, weight, cols, scratch);
            bias_act(ctx, scratch, op, dt, bias, r, cols, 1, act);
        }
    };
    // Multi-head attention of the queries `q` (operand type, [rows, C]) over
    // `kvsrc` ([rows_kv, C], null for self-attention) into w.proj (+ bias later).
    auto mha = [&](const void* q, const void* kvsrc) {
        AttentionArgs a;
        a.B = B, a.N = n, a.heads = cfg.t_heads, a.dh = int(C / cfg.t_heads);
        a.out = w.attn, a.ldo = C;
        if (!kvsrc) {
            project(q, rows, in_w, 3 * C, in_b, in_b_op, Act::None, w.wide, w.wide_op);
            a.q = w.wide_op, a.ldq = 3 * C;
            a.k = offset(w.wide_op, C, dt), a.v = offset(w.wide_op, 2 * C, dt), a.ldkv = 3 * C;
            a.M = n;
        } else {
            project(q, rows, in_w, C, in_b, in_b_op, Act::None, w.wide, w.wide_op);
            project(kvsrc, rows_kv, offset(in_w, C * C, dt), 2 * C, in_b + C, offset(in_b_op, C, dt), Act::None, w.kv,
                    w.kv_op);
            a.q = w.wide_op, a.ldq = C;
            a.k = w.kv_op, a.v = offset(w.kv_op, C, dt), a.ldkv = 2 * C;
            a.M = m;
        }
        attention(ctx, a);
        linear(ctx, w.attn, rows, C, gw(attn + "out_proj.weight"), C, w.proj);
    };
    const float* out_b = f32(attn + "out_proj.bias");
    const Act ff_act = cfg.t_gelu ? Act::Gelu : Act::Relu;
    // linear2(act(linear1(a))) into w.proj (bias later).
    auto feed_forward = [&](const void* a) {
        project(a, rows, gw("linear1.weight"), hidden_, f32("linear1.bias"), gw("linear1.bias"), ff_act, w.wide,
                w.wide_op);
        linear(ctx, w.wide_op, rows, hidden_, gw("linear2.weight"), C, w.proj);
    };

    if (cfg.t_norm_first) {
        layer_norm(ctx, x, w.a, dt, rows, C, f32("norm1.weight"), f32("norm1.bias"), 1e-5f);
        if (plan.cross) {
            layer_norm(ctx, kv, w.kvn, dt, rows_kv, C, f32("norm2.weight"), f32("norm2.bias"), 1e-5f);
            mha(w.a, w.kvn);
        } else {
            mha(w.a, nullptr);
        }
        const std::string ff_norm = plan.cross ? "norm3." : "norm2.";
        residual_layer_norm(ctx, x, w.proj, out_b, gamma1, w.a, dt, rows, C, f32(ff_norm + "weight"),
                            f32(ff_norm + "bias"), 1e-5f);
        feed_forward(w.a);
        if (cfg.t_norm_out)
            residual_group_norm_tokens(ctx, x, w.proj, f32("linear2.bias"), gamma2, B, n, C, f32("norm_out.weight"),
                                       f32("norm_out.bias"), 1e-5f);
        else
            residual(ctx, x, w.proj, f32("linear2.bias"), gamma2, rows, C);
    } else {
        // Post-norm: x = norm1(x + attn(x)); x = norm2(x + ff(x)).
        convert(ctx, x, w.a, dt, rows * C);
        if (plan.cross) {
            convert(ctx, kv, w.kvn, dt, rows_kv * C);
            mha(w.a, w.kvn);
        } else {
            mha(w.a, nullptr);
        }
        residual_layer_norm(ctx, x, w.proj, out_b, gamma1, x, DType::F32, rows, C, f32("norm1.weight"),
                            f32("norm1.bias"), 1e-5f);
        convert(ctx, x, w.a, dt, rows * C);
        feed_forward(w.a);
        residual_layer_norm(ctx, x, w.proj, f32("linear2.bias"), gamma2, x, DType::F32, rows, C,
                            f32("norm2.weight"), f32("norm2.bias"), 1e-5f);
    }
}

}  // namespace fastdemucs::cuda
