#include "cpu/ops.h"

#include "cpu/vector_math.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace fastdemucs::cpu {

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, m, n, k,
                alpha, a, lda, b, ldb, beta, c, ldc);
}

void set_threads(int threads) {
    if (threads <= 0) threads = omp_get_num_procs();
    openblas_set_num_threads(threads);
    omp_set_num_threads(threads);
}

namespace {

// Stride-1 convolution as a sum of kh*kw shifted GEMMs over a zero-padded
// copy of the input: no im2col buffer. The output is computed on the padded
// width Wp (columns past Wo are discarded), which lets each shift be a plain
// pointer offset into the padded plane.
Tensor conv2d_shifted(const Tensor& x, const float* weight, const float* bias, int cout, const Conv2dParams& p) {
    const int64_t B = x.dim(0), cin = x.dim(1), H = x.dim(2), W = x.dim(3);
    const int64_t Hp = H + 2 * p.ph, Wp = W + 2 * p.pw;
    const int64_t Ho = Hp - int64_t(p.dh) * (p.kh - 1), Wo = Wp - int64_t(p.dw) * (p.kw - 1);
    const int64_t taps = int64_t(p.kh) * p.kw;
    Tensor out = Tensor::uninitialized({B, cout, Ho, Wo});

    // Weights per tap: [kh*kw][Cout][Cin].
    std::vector<float> wk(taps * cout * cin);
    for (int64_t co = 0; co < cout; co++)
        for (int64_t ci = 0; ci < cin; ci++)
            for (int64_t t = 0; t < taps; t++) wk[(t * cout + co) * cin + ci] = weight[(co * cin + ci) * taps + t];

    const bool direct = taps == 1 && p.ph == 0 && p.pw == 0;
    const int64_t plane = Hp * Wp + int64_t(p.dw) * (p.kw - 1);  // tail read by the last shifts
    Storage padded(direct ? 0 : cin * plane);
    Storage full(direct ? 0 : cout * Ho * Wp);

    for (int64_t b = 0; b < B; b++) {
        const float* xb = x.ptr() + b * cin * H * W;
        float* ob = out.ptr() + b * cout * Ho * Wo;
        if (direct) {
            gemm(false, false, cout, H * W, cin, 1.0f, wk.data(), cin, xb, H * W, 0.0f, ob, H * W);
        } else {
            std::memset(padded.data(), 0, padded.size() * sizeof(float));
#pragma omp parallel for collapse(2) schedule(static)
            for (int64_t c = 0; c < cin; c++)
                for (int64_t h = 0; h < H; h++)
                    std::memcpy(padded.data() + c * plane + (h + p.ph) * Wp + p.pw, xb + (c * H + h) * W, W * sizeof(float));
            for (int64_t t = 0; t < taps; t++) {
                const int64_t i = t / p.kw, j = t % p.kw;
                const float* shifted = padded.data() + i * p.dh * Wp + j * p.dw;
                gemm(false, false, cout, Ho * Wp, cin, 1.0f, wk.data() + t * cout * cin, cin, shifted, plane,
                     t == 0 ? 0.0f : 1.0f, full.data(), Ho * Wp);
            }
#pragma omp parallel for collapse(2) schedule(static)
            for (int64_t co = 0; co < cout; co++)
                for (int64_t h = 0; h < Ho; h++)
                    std::memcpy(ob + (co * Ho + h) * Wo, full.data() + (co * Ho + h) * Wp, Wo * sizeof(float));
        }
        if (bias) {
#pragma omp parallel for schedule(static)
            for (int64_t co = 0; co < cout; co++) {
                float* o = ob + co * Ho * Wo;
                for (int64_t i = 0; i < Ho * Wo; i++) o[i] += bias[co];
            }
        }
    }
    return out;
}

// Strided convolution through an im2col buffer [Cin*kh*kw, Ho*Wo].
Tensor conv2d_im2col(const Tensor& x, const float* weight, const float* bias, int cout, const Conv2dParams& p) {
    const int64_t B = x.dim(0), cin = x.dim(1), H = x.dim(2), W = x.dim(3);
    const int64_t Ho = (H + 2 * p.ph - int64_t(p.dh) * (p.kh - 1) - 1) / p.sh + 1;
    const int64_t Wo = (W + 2 * p.pw - int64_t(p.dw) * (p.kw - 1) - 1) / p.sw + 1;
    const int64_t rows = cin * p.kh * p.kw;
    Tensor out = Tensor::uninitialized({B, cout, Ho, Wo});
    Storage cols(rows * Ho * Wo);
    for (int64_t b = 0; b < B; b++) {
        const float* xb = x.ptr() + b * cin * H * W;
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const int64_t ci = r / (p.kh * p.kw), i = (r / p.kw) % p.kh, j = r % p.kw;
            float* dst = cols.data() + r * Ho * Wo;
            for (int64_t ho = 0; ho < Ho; ho++) {
                const int64_t h = ho * p.sh + i * p.dh - p.ph;
                for (int64_t wo = 0; wo < Wo; wo++) {
                    const int64_t w = wo * p.sw + j * p.dw - p.pw;
                    dst[ho * Wo + wo] = (h >= 0 && h < H && w >= 0 && w < W) ? xb[(ci * H + h) * W + w] : 0.0f;
                }
            }
        }
        float* ob = out.ptr() + b * cout * Ho * Wo;
        gemm(false, false, cout, Ho * Wo, rows, 1.0f, weight, rows, cols.data(), Ho * Wo, 0.0f, ob, Ho * Wo);
        if (bias) {
#pragma omp parallel for schedule(static)
            for (int64_t co = 0; co < cout; co++)
                for (int64_t i = 0; i < Ho * Wo; i++) ob[co * Ho * Wo + i] += bias[co];
        }
    }
    return out;
}

}  // namespace

Tensor conv2d(const Tensor& x, const float* weight, const float* bias, int cout, const Conv2dParams& p) {
    if (p.sh == 1 && p.sw == 1) return conv2d_shifted(x, weight, bias, cout, p);
    return conv2d_im2col(x, weight, bias, cout, p);
}

Tensor conv_transpose2d(const Tensor& x, const float* weight, const float* bias, int cout, int kh, int kw, int sh,
                        int sw) {
    const int64_t B = x.dim(0), cin = x.dim(1), H = x.dim(2), W = x.dim(3);
    const int64_t Ho = (H - 1) * sh + kh, Wo = (W - 1) * sw + kw;
    const int64_t rows = int64_t(cout) * kh * kw;
    // Input positions go through in tiles, so the column buffer stays small
    // (the outermost decoder's would be 132 MB in one piece).
    const int64_t positions = H * W, tile = std::min<int64_t>(positions, 1 << 15);
    Tensor out = Tensor::uninitialized({B, cout, Ho, Wo});
    Storage cols(rows * tile);
    for (int64_t b = 0; b < B; b++) {
        float* ob = out.ptr() + b * cout * Ho * Wo;
#pragma omp parallel for schedule(static)
        for (int64_t co = 0; co < cout; co++) std::fill_n(ob + co * Ho * Wo, Ho * Wo, bias ? bias[co] : 0.0f);
        for (int64_t p0 = 0; p0 < positions; p0 += tile) {
            const int64_t n = std::min(tile, positions - p0);
            // cols[(co, i, j), p] = sum_ci weight[ci, (co, i, j)] * x[ci, p0 + p]
            gemm(true, false, rows, n, cin, 1.0f, weight, rows, x.ptr() + b * cin * positions + p0, positions, 0.0f,
                 cols.data(), n);
            // Overlap-add; parallel over output channels so no two threads write the same cell.
#pragma omp parallel for schedule(static)
            for (int64_t co = 0; co < cout; co++) {
                float* o = ob + co * Ho * Wo;
                for (int64_t i = 0; i < kh; i++)
                    for (int64_t j = 0; j < kw; j++) {
                        const float* c = cols.data() + ((co * kh + i) * kw + j) * n;
                        // A run of input positions per input row (a division
                        // per value made this loop integer-bound).
                        int64_t h = p0 / W, w = p0 % W;
                        for (int64_t p = 0; p < n; h++, w = 0) {
                            const int64_t run = std::min(n - p, W - w);
                            float* dst = o + (h * sh + i) * Wo + w * sw + j;
                            for (int64_t q = 0; q < run; q++) dst[q * sw] += c[p + q];
                            p += run;
                        }
                    }
            }
        }
    }
    return out;
}

void normalize_channels(float* first, int64_t channels, int64_t channel_stride, int64_t W, const float* weight,
                        const float* bias, float eps) {
    auto row = [&](int64_t c) { return first + c * channel_stride; };
    // Two passes: the mean first, then the centred variance.
    double total = 0.0;
    for (int64_t c = 0; c < channels; c++) total += sum(row(c), W);
    const double n = double(channels * W), mean = total / n;
    double var = 0.0;
    for (int64_t c = 0; c < channels; c++) var += sum_squared_deviation(row(c), W, mean);
    const double inv = 1.0 / std::sqrt(var / n + eps);
    for (int64_t c = 0; c < channels; c++)
        scale_shift(row(c), row(c), W, float(inv * weight[c]), float(bias[c] - mean * inv * weight[c]));
}

void group_norm(Tensor& x, int groups, const float* weight, const float* bias, bool per_row, float eps) {
    const int64_t B = x.dim(0), C = x.dim(1);
    const int64_t R = per_row ? x.dim(2) : 1;
    const int64_t W = x.numel() / (B * C * R);
    const int64_t cg = C / groups;
    float* d = x.ptr();
#pragma omp parallel for collapse(3) schedule(static)
    for (int64_t b = 0; b < B; b++)
        for (int64_t g = 0; g < groups; g++)
            for (int64_t r = 0; r < R; r++)
                normalize_channels(d + ((b * C + g * cg) * R + r) * W, cg, R * W, W, weight + g * cg, bias + g * cg,
                                   eps);
}

void layer_norm(const float* x, float* y, int64_t rows, int64_t channels, const float* weight, const float* bias,
                float eps) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float* xr = x + r * channels;
        float* yr = y + r * channels;
        const double mean = sum(xr, channels) / channels;
        const double inv = 1.0 / std::sqrt(sum_squared_deviation(xr, channels, mean) / channels + eps);
        const float m = float(mean), k = float(inv);
        for (int64_t c = 0; c < channels; c++) yr[c] = (xr[c] - m) * k * weight[c] + bias[c];
    }
}

void gelu(float* x, int64_t n) {
    constexpr int64_t kChunk = 1 << 14;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i += kChunk) gelu_inplace(x + i, std::min(kChunk, n - i));
}

void gelu(Tensor& x) { gelu(x.ptr(), x.numel()); }

Tensor glu(const Tensor& x) {
    std::vector<int64_t> shape = x.shape;
    const int64_t B = shape[0], C = shape[1] / 2;
    shape[1] = C;
    Tensor out = Tensor::uninitialized(shape);
    const int64_t inner = x.numel() / (B * 2 * C);
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; b++)
        for (int64_t c = 0; c < C; c++) {
            const float* a = x.ptr() + (b * 2 * C + c) * inner;
            const float* g = a + C * inner;
            glu_gate(a, g, out.ptr() + (b * C + c) * inner, inner);
        }
    return out;
}

void add_scaled_channels(Tensor& x, const Tensor& y, const float* scale) {
    const int64_t B = x.dim(0), C = x.dim(1), inner = x.numel() / (B * C);
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; b++)
        for (int64_t c = 0; c < C; c++) {
            float* xo = x.ptr() + (b * C + c) * inner;
            const float* yo = y.ptr() + (b * C + c) * inner;
            for (int64_t i = 0; i < inner; i++) xo[i] += scale[c] * yo[i];
        }
}

void add_inplace(Tensor& x, const Tensor& y) {
    float* a = x.ptr();
    const float* b = y.ptr();
    const int64_t n = x.numel();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) a[i] += b[i];
}

Tensor crop(const Tensor& x, int axis, int64_t start, int64_t length) {
    std::vector<int64_t> shape = x.shape;
    int64_t outer = 1, inner = 1;
    for (int i = 0; i < axis; i++) outer *= shape[i];
    for (int i = axis + 1; i < x.rank(); i++) inner *= shape[i];
    const int64_t n = shape[axis];
    shape[axis] = length;
    Tensor out = Tensor::uninitialized(shape);
#pragma omp parallel for schedule(static)
    for (int64_t o = 0; o < outer; o++)
        std::memcpy(out.ptr() + o * length * inner, x.ptr() + (o * n + start) * inner, length * inner * sizeof(float));
    return out;
}

Tensor pad_right(const Tensor& x, int64_t length) {
    std::vector<int64_t> shape = x.shape;
    const int64_t n = shape.back(), outer = x.numel() / n;
    shape.back() = length;
    Tensor out(shape);
    for (int64_t o = 0; o < outer; o++) std::memcpy(out.ptr() + o * length, x.ptr() + o * n, n * sizeof(float));
    return out;
}

}  // namespace fastdemucs::cpu
