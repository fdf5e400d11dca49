// The CPU DConv a frequency row at a time (cpu/dconv.h) against the same
// layers composed from the whole-tensor ops (dconv_layer_by_layer: conv2d,
// per-row GroupNorm, GELU, 1x1 conv, GroupNorm, GLU, LayerScale), which the
// fixtures check against the official code.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "cpu/dconv.h"

namespace fastdemucs::cpu {
namespace {

std::vector<float> random_values(size_t n, uint32_t seed, float scale, float offset = 0.0f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(offset, scale);
    std::vector<float> v(n);
    for (float& e : v) e = dist(rng);
    return v;
}

// One layer's weights, seeded.
struct Layer {
    int dilation;
    std::vector<float> w0, b0, n1w, n1b, w3, b3, n4w, n4b, scale;
    Layer(int64_t c, int64_t h, int d, uint32_t seed)
        : dilation(d), w0(random_values(size_t(h * c * 3), seed, 0.3f)),
          b0(random_values(size_t(h), seed + 1, 0.1f)), n1w(random_values(size_t(h), seed + 2, 0.2f, 1.0f)),
          n1b(random_values(size_t(h), seed + 3, 0.1f)), w3(random_values(size_t(2 * c * h), seed + 4, 0.3f)),
          b3(random_values(size_t(2 * c), seed + 5, 0.1f)), n4w(random_values(size_t(2 * c), seed + 6, 0.2f, 1.0f)),
          n4b(random_values(size_t(2 * c), seed + 7, 0.1f)), scale(random_values(size_t(c), seed + 8, 0.1f)) {}
    DConvLayerWeights weights() const {
        DConvLayerWeights l;
        l.dilation = dilation;
        l.in_weight = w0.data(), l.in_bias = b0.data(), l.in_norm_weight = n1w.data(), l.in_norm_bias = n1b.data();
        l.out_weight = w3.data(), l.out_bias = b3.data(), l.out_norm_weight = n4w.data();
        l.out_norm_bias = n4b.data(), l.scale = scale.data();
        return l;
    }
};

// Relative L2 error of the rows path's residual branches against the
// layer-by-layer path's.
double rows_error(int64_t B, int64_t C, int64_t hidden, int64_t R, int64_t W, const std::vector<int>& dilations) {
    const std::vector<float> input = random_values(size_t(B * C * R * W), 7, 1.0f);
    Tensor a({B, C, R, W}), b({B, C, R, W});
    std::copy(input.begin(), input.end(), a.ptr());
    std::copy(input.begin(), input.end(), b.ptr());
    std::vector<Layer> layers;
    std::vector<DConvLayerWeights> weights;
    for (size_t i = 0; i < dilations.size(); i++) layers.emplace_back(C, hidden, dilations[i], uint32_t(100 * i + 1));
    for (const Layer& l : layers) weights.push_back(l.weights());
    dconv_rows(a, int(hidden), weights);
    dconv_layer_by_layer(b, int(hidden), weights);
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < input.size(); i++) {
        const double branch_a = double(a.ptr()[i]) - input[i], branch_b = double(b.ptr()[i]) - input[i];
        num += (branch_a - branch_b) * (branch_a - branch_b);
        den += branch_b * branch_b;
    }
    return std::sqrt(num / den);
}

}  // namespace

TEST(DConvCpu, RowsEqualTheLayerByLayerPath) {
    EXPECT_LE(rows_error(1, 48, 6, 3, 336, {1, 2}), 1e-5);  // the frequency branch's outermost shape
    EXPECT_LE(rows_error(2, 8, 3, 5, 37, {1, 2}), 1e-5);    // several batches, W odd
    EXPECT_LE(rows_error(1, 16, 6, 2, 5, {1, 8}), 1e-5);    // taps beyond both ends of a short row
    EXPECT_LE(rows_error(1, 12, 12, 4, 64, {1, 2, 4, 8}), 1e-5);  // four layers
}

TEST(DConvCpu, RowsTakeManyShortRowsOnly) {
    EXPECT_TRUE(dconv_rows_fit(Tensor::uninitialized({1, 48, 512, 336}), 6));    // the frequency branch
    EXPECT_TRUE(dconv_rows_fit(Tensor::uninitialized({1, 96, 128, 336}), 12));
    EXPECT_FALSE(dconv_rows_fit(Tensor::uninitialized({1, 192, 32, 336}), 24));  // past a core's cache
    EXPECT_FALSE(dconv_rows_fit(Tensor::uninitialized({1, 48, 1, 85995}), 6));   // the time branch
    EXPECT_FALSE(dconv_rows_fit(Tensor::uninitialized({1, 48, 336}), 6));        // not [B, C, R, W]
}

}  // namespace fastdemucs::cpu
