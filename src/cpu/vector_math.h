// The element-wise and row-wise kernels of the CPU backend that are bound by
// transcendental functions (exp, erf) or reductions. They live in their own
// file, compiled with -ffast-math so that GCC maps expf/erff onto glibc's
// vector math library (libmvec, <= 4 ulp) and vectorises the reductions;
// nothing else in the engine is built that way.
#pragma once

#include <cstdint>

namespace fastdemucs::cpu {

// x = 0.5 x (1 + erf(x / sqrt 2)), the exact GELU.
void gelu_inplace(float* x, int64_t n);
// out = a * sigmoid(g), the second half of GLU.
void glu_gate(const float* a, const float* g, float* out, int64_t n);
// A row replaced by softmax's numerators exp(x - max); returns their sum
// (the caller divides by it: attention scales its output rows instead of
// every probability, a pass over the scores fewer).
float softmax_numerators(float* row, int64_t cols);
// Sum and sum of squared deviations from `mean`, accumulated in double over
// float partial sums (the rows here hold at most a few thousand values).
double sum(const float* x, int64_t n);
double sum_squared_deviation(const float* x, int64_t n, double mean);
// y = x * scale + shift.
void scale_shift(const float* x, float* y, int64_t n, float scale, float shift);

}  // namespace fastdemucs::cpu
