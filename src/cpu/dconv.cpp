#include "cpu/dconv.h"

#include <omp.h>

#include <algorithm>

#include "cpu/ops.h"
#include "cpu/vector_math.h"

namespace fastdemucs::cpu {
namespace {

constexpr float kNormEps = 1e-5f;  // the DConv's GroupNorms (PyTorch's default)
// A row's working set (x, h, y: C + hidden + 2C floats a position) within a
// core's L2 (512 KB-1 MB on the machines we know).
constexpr int64_t kMaxRowBytes = 512 * 1024;

// One layer on a row: x [C][W] += its residual branch; h [hidden][W] and
// y [2C][W] are scratch.
void layer_on_row(const DConvLayerWeights& l, float* x, float* h, float* y, int64_t C, int64_t hidden, int64_t W) {
    const int64_t d = l.dilation, lo = std::min(d, W), hi = std::max<int64_t>(W - d, 0);
    // h = conv3(x) + bias: tap j reads x[w + (j - 1) d], zero outside the row.
    for (int64_t o = 0; o < hidden; o++) {
        float* ho = h + o * W;
        std::fill(ho, ho + W, l.in_bias[o]);
        for (int64_t c = 0; c < C; c++) {
            const float* xc = x + c * W;
            const float* wk = l.in_weight + (o * C + c) * 3;
            const float w0 = wk[0], w1 = wk[1], w2 = wk[2];
            for (int64_t w = 0; w < W; w++) ho[w] += w1 * xc[w];
            for (int64_t w = lo; w < W; w++) ho[w] += w0 * xc[w - d];
            for (int64_t w = 0; w < hi; w++) ho[w] += w2 * xc[w + d];
        }
    }
    normalize_channels(h, hidden, W, W, l.in_norm_weight, l.in_norm_bias, kNormEps);
    gelu_inplace(h, hidden * W);
    // y = W_out h + bias.
    for (int64_t o = 0; o < 2 * C; o++) {
        float* yo = y + o * W;
        std::fill(yo, yo + W, l.out_bias[o]);
        for (int64_t k = 0; k < hidden; k++) {
            const float wk = l.out_weight[o * hidden + k];
            const float* hk = h + k * W;
            for (int64_t w = 0; w < W; w++) yo[w] += wk * hk[w];
        }
    }
    normalize_channels(y, 2 * C, W, W, l.out_norm_weight, l.out_norm_bias, kNormEps);
    // x += scale * a * sigmoid(g), the gate written over a.
    for (int64_t c = 0; c < C; c++) {
        float* a = y + c * W;
        glu_gate(a, y + (C + c) * W, a, W);
        float* xc = x + c * W;
        const float s = l.scale[c];
        for (int64_t w = 0; w < W; w++) xc[w] += s * a[w];
    }
}

}  // namespace

void dconv_layer_by_layer(Tensor& x, int hidden, const std::vector<DConvLayerWeights>& layers) {
    const int channels = int(x.dim(1));
    for (const DConvLayerWeights& l : layers) {
        Conv2dParams k;
        k.kw = 3, k.dw = l.dilation, k.pw = l.dilation;
        Tensor y = conv2d(x, l.in_weight, l.in_bias, hidden, k);
        group_norm(y, 1, l.in_norm_weight, l.in_norm_bias, /*per_row=*/true);
        gelu(y);
        y = conv2d(y, l.out_weight, l.out_bias, 2 * channels, Conv2dParams{});
        group_norm(y, 1, l.out_norm_weight, l.out_norm_bias, /*per_row=*/true);
        y = glu(y);
        add_scaled_channels(x, y, l.scale);
    }
}

bool dconv_rows_fit(const Tensor& x, int hidden) {
    if (x.rank() != 4) return false;
    const int64_t B = x.dim(0), C = x.dim(1), R = x.dim(2), W = x.dim(3);
    return B * R >= 4 * int64_t(omp_get_max_threads()) && (3 * C + hidden) * W * int64_t(sizeof(float)) <= kMaxRowBytes;
}

void dconv_rows(Tensor& x, int hidden, const std::vector<DConvLayerWeights>& layers) {
    const int64_t B = x.dim(0), C = x.dim(1), R = x.dim(2), W = x.dim(3);
    float* data = x.ptr();
#pragma omp parallel
    {
        // Thread-local: the row, h and y.
        std::vector<float> buffer(size_t((C + hidden + 2 * C) * W));
        float* xr = buffer.data();
        float* h = xr + C * W;
        float* y = h + hidden * W;
#pragma omp for collapse(2) schedule(static)
        for (int64_t b = 0; b < B; b++)
            for (int64_t r = 0; r < R; r++) {
                float* row = data + (b * C * R + r) * W;  // channel c at row + c * R * W
                for (int64_t c = 0; c < C; c++) std::copy(row + c * R * W, row + c * R * W + W, xr + c * W);
                for (const DConvLayerWeights& l : layers) layer_on_row(l, xr, h, y, C, hidden, W);
                for (int64_t c = 0; c < C; c++) std::copy(xr + c * W, xr + c * W + W, row + c * R * W);
            }
    }
}

}  // namespace fastdemucs::cpu
