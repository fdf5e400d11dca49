#include "cpu/transformer.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/ops.h"
#include "cpu/tensor.h"
#include "cpu/vector_math.h"
#include "model/embeddings.h"

namespace fastdemucs::cpu {
namespace {

// Y [N, out] = X [N, in] W^T + b, W [out, in] as nn.Linear stores it.
void linear(const float* x, int64_t n, int64_t in, const float* w, const float* b, int64_t out, float* y) {
    gemm(false, true, n, out, in, 1.0f, x, in, w, in, 0.0f, y, out);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < out; j++) y[i * out + j] += b[j];
}

// softmax(Q K^T / sqrt(dh)) V for every head; Q [N, C], K and V [M, C] with
// row strides ldq / ldkv, heads interleaved along C as nn.MultiheadAttention
// splits them. Query rows go in blocks so the scores stay small; the
// softmax's division is applied to the dh outputs of a row instead of its M
// probabilities.
void attention(const float* q, int64_t ldq, const float* k, const float* v, int64_t ldkv, int64_t n, int64_t m,
               int64_t c, int heads, float* out) {
    const int64_t dh = c / heads, block = 1024;
    const float scale = float(1.0 / std::sqrt(double(dh)));
    Storage scores(block * m);
    std::vector<float> totals(static_cast<size_t>(block));
    for (int h = 0; h < heads; h++)
        for (int64_t r0 = 0; r0 < n; r0 += block) {
            const int64_t rows = std::min(block, n - r0);
            gemm(false, true, rows, m, dh, scale, q + r0 * ldq + h * dh, ldq, k + h * dh, ldkv, 0.0f, scores.data(), m);
#pragma omp parallel for schedule(static)
            for (int64_t r = 0; r < rows; r++) totals[size_t(r)] = softmax_numerators(scores.data() + r * m, m);
            float* o = out + r0 * c + h * dh;
            gemm(false, false, rows, dh, m, 1.0f, scores.data(), m, v + h * dh, ldkv, 0.0f, o, c);
            for (int64_t r = 0; r < rows; r++) {
                const float inv = 1.0f / totals[size_t(r)];
                for (int64_t j = 0; j < dh; j++) o[r * c + j] *= inv;
            }
        }
}

struct LayerWeights {
    const HTDemucsModel& model;
    std::string prefix;
    const float* operator()(const std::string& name) const { return model.data(prefix + name); }
};

// Multi-head attention of query tokens q [N, C] over kv [M, C] -> out [N, C].
void mha(const LayerWeights& w, const std::string& attn, const float* q, int64_t n, const float* kv, int64_t m,
         int64_t c, int heads, float* out) {
    const float* in_w = w(attn + "in_proj_weight");  // [3C, C]: q, k, v stacked
    const float* in_b = w(attn + "in_proj_bias");
    Storage qp(n * c), kvp(m * 2 * c), o(n * c);
    linear(q, n, c, in_w, in_b, c, qp.data());
    linear(kv, m, c, in_w + c * c, in_b + c, 2 * c, kvp.data());  // [M, 2C]: k | v
    attention(qp.data(), c, kvp.data(), kvp.data() + c, 2 * c, n, m, c, heads, o.data());
    linear(o.data(), n, c, w(attn + "out_proj.weight"), w(attn + "out_proj.bias"), c, out);
}

// linear2(act(linear1(x))): x [N, C] -> out [N, C].
void feed_forward(const LayerWeights& w, const float* x, int64_t n, int64_t c, int64_t hidden, bool use_gelu,
                  float* out) {
    Storage h(n * hidden);
    linear(x, n, c, w("linear1.weight"), w("linear1.bias"), hidden, h.data());
    if (use_gelu) {
        gelu(h.data(), n * hidden);
    } else {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n * hidden; i++) h[i] = std::max(h[i], 0.0f);
    }
    linear(h.data(), n, hidden, w("linear2.weight"), w("linear2.bias"), c, out);
}

// x += gamma * y (LayerScale on the channel dim of token-major data).
void residual(float* x, const float* y, const float* gamma, int64_t n, int64_t c) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < c; j++) x[i * c + j] += (gamma ? gamma[j] : 1.0f) * y[i * c + j];
}

// GroupNorm(1, C) over all tokens and channels of one item, affine per channel.
void norm_out(float* x, int64_t n, int64_t c, const float* weight, const float* bias) {
    double sum = 0.0;
    for (int64_t i = 0; i < n * c; i++) sum += x[i];
    const double mean = sum / double(n * c);
    double var = 0.0;
    for (int64_t i = 0; i < n * c; i++) var += (x[i] - mean) * (x[i] - mean);
    const double inv = 1.0 / std::sqrt(var / double(n * c) + 1e-5);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < c; j++) x[i * c + j] = float((x[i * c + j] - mean) * inv) * weight[j] + bias[j];
}

// One encoder layer on the tokens x [N, C] of one item; kv [M, C] is the
// other branch for a cross-attention layer, nullptr for self-attention.
void encoder_layer(const HTDemucsModel& model, const TransformerLayerPlan& plan, float* x, int64_t n,
                   const float* kv, int64_t m) {
    const auto& cfg = model.config;
    const int64_t c = model.plan.transformer_dim, hidden = model.plan.transformer_hidden;
    const LayerWeights w{model, plan.prefix};
    const std::string attn = plan.cross ? "cross_attn." : "self_attn.";
    const float* gamma1 = cfg.t_layer_scale ? w("gamma_1.scale") : nullptr;
    const float* gamma2 = cfg.t_layer_scale ? w("gamma_2.scale") : nullptr;
    const std::string ff_norm = plan.cross ? "norm3." : "norm2.";
    Storage a(n * c), b(n * c);
    if (cfg.t_norm_first) {
        layer_norm(x, a.data(), n, c, w("norm1.weight"), w("norm1.bias"));
        if (plan.cross) {
            Storage kvn(m * c);
            layer_norm(kv, kvn.data(), m, c, w("norm2.weight"), w("norm2.bias"));
            mha(w, attn, a.data(), n, kvn.data(), m, c, cfg.t_heads, b.data());
        } else {
            mha(w, attn, a.data(), n, a.data(), n, c, cfg.t_heads, b.data());
        }
        residual(x, b.data(), gamma1, n, c);
        layer_norm(x, a.data(), n, c, w(ff_norm + "weight"), w(ff_norm + "bias"));
        feed_forward(w, a.data(), n, c, hidden, cfg.t_gelu, b.data());
        residual(x, b.data(), gamma2, n, c);
        if (cfg.t_norm_out) norm_out(x, n, c, w("norm_out.weight"), w("norm_out.bias"));
    } else {
        // Post-norm: x = norm1(x + attn(x)); x = norm2(x + ff(x)).
        mha(w, attn, x, n, plan.cross ? kv : x, plan.cross ? m : n, c, cfg.t_heads, b.data());
        residual(x, b.data(), gamma1, n, c);
        layer_norm(x, x, n, c, w("norm1.weight"), w("norm1.bias"));
        feed_forward(w, x, n, c, hidden, cfg.t_gelu, b.data());
        residual(x, b.data(), gamma2, n, c);
        layer_norm(x, x, n, c, w("norm2.weight"), w("norm2.bias"));
    }
}

}  // namespace

void cross_transformer(const HTDemucsModel& model, Tensor& x, Tensor& xt) {
    const auto& cfg = model.config;
    const int64_t B = x.dim(0), C = x.dim(1), Fr = x.dim(2), T1 = x.dim(3), T2 = xt.dim(-1);
    const int64_t n1 = Fr * T1;
    const std::vector<float> pos2d = sin_embedding_2d(C, Fr, T1, cfg.t_max_period);  // [C, Fr, T1]
    const std::vector<float> pos1d = sin_embedding_1d(T2, C, cfg.t_max_period);      // [T2, C]
    const float wpos = float(cfg.t_weight_pos_embed);

    for (int64_t b = 0; b < B; b++) {
        // Tokens: frequency branch ordered (t1, fr), as rearrange "b c fr t1 -> b (t1 fr) c".
        Storage tok(n1 * C), tok_t(T2 * C);
        const float* xb = x.ptr() + b * C * n1;
        for (int64_t c = 0; c < C; c++)
            for (int64_t f = 0; f < Fr; f++)
                for (int64_t t = 0; t < T1; t++) tok[(t * Fr + f) * C + c] = xb[(c * Fr + f) * T1 + t];
        const float* xtb = xt.ptr() + b * C * T2;
        for (int64_t c = 0; c < C; c++)
            for (int64_t t = 0; t < T2; t++) tok_t[t * C + c] = xtb[c * T2 + t];
        if (cfg.t_norm_in) {
            layer_norm(tok.data(), tok.data(), n1, C, model.data("crosstransformer.norm_in.weight"),
                       model.data("crosstransformer.norm_in.bias"));
            layer_norm(tok_t.data(), tok_t.data(), T2, C, model.data("crosstransformer.norm_in_t.weight"),
                       model.data("crosstransformer.norm_in_t.bias"));
        }
        for (int64_t c = 0; c < C; c++)
            for (int64_t f = 0; f < Fr; f++)
                for (int64_t t = 0; t < T1; t++) tok[(t * Fr + f) * C + c] += wpos * pos2d[(c * Fr + f) * T1 + t];
        for (int64_t i = 0; i < T2 * C; i++) tok_t[i] += wpos * pos1d[i];

        for (size_t i = 0; i < model.plan.layers.size(); i++) {
            if (!model.plan.layers[i].cross) {
                encoder_layer(model, model.plan.layers[i], tok.data(), n1, nullptr, 0);
                encoder_layer(model, model.plan.layers_t[i], tok_t.data(), T2, nullptr, 0);
            } else {
                // The time layer attends to the frequency tokens from before this layer.
                Storage old = tok;
                encoder_layer(model, model.plan.layers[i], tok.data(), n1, tok_t.data(), T2);
                encoder_layer(model, model.plan.layers_t[i], tok_t.data(), T2, old.data(), n1);
            }
        }

        float* xo = x.ptr() + b * C * n1;
        for (int64_t c = 0; c < C; c++)
            for (int64_t f = 0; f < Fr; f++)
                for (int64_t t = 0; t < T1; t++) xo[(c * Fr + f) * T1 + t] = tok[(t * Fr + f) * C + c];
        float* xto = xt.ptr() + b * C * T2;
        for (int64_t c = 0; c < C; c++)
            for (int64_t t = 0; t < T2; t++) xto[c * T2 + t] = tok_t[t * C + c];
    }
}

}  // namespace fastdemucs::cpu
