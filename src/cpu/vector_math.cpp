#include "cpu/vector_math.h"

#include <algorithm>
#include <cmath>

namespace fastdemucs::cpu {

void gelu_inplace(float* x, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
}

void glu_gate(const float* a, const float* g, float* out, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) out[i] = a[i] / (1.0f + expf(-g[i]));
}

float softmax_numerators(float* row, int64_t cols) {
    float mx = row[0];
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < cols; j++) mx = std::max(mx, row[j]);
    float total = 0.0f;
#pragma omp simd reduction(+ : total)
    for (int64_t j = 0; j < cols; j++) {
        row[j] = expf(row[j] - mx);
        total += row[j];
    }
    return total;
}

namespace {
constexpr int64_t kBlock = 1024;  // float partial sums stay exact enough over this many terms
}

double sum(const float* x, int64_t n) {
    double total = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
        const int64_t end = std::min(n, i0 + kBlock);
        float part = 0.0f;
#pragma omp simd reduction(+ : part)
        for (int64_t i = i0; i < end; i++) part += x[i];
        total += part;
    }
    return total;
}

double sum_squared_deviation(const float* x, int64_t n, double mean) {
    const float m = float(mean);
    double total = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
        const int64_t end = std::min(n, i0 + kBlock);
        float part = 0.0f;
#pragma omp simd reduction(+ : part)
        for (int64_t i = i0; i < end; i++) part += (x[i] - m) * (x[i] - m);
        total += part;
    }
    return total;
}

void scale_shift(const float* x, float* y, int64_t n, float scale, float shift) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * scale + shift;
}

}  // namespace fastdemucs::cpu
