#include "cuda/kernels.h"

#include <algorithm>
#include <type_traits>

#include "cuda/arena.h"
#include "cuda/device_utils.cuh"
#include "error.h"

namespace fastdemucs::cuda {
namespace {


// ------------------------------------------------------------------ statistics

constexpr int64_t kStatChunk = 8192;  // values per partial-statistics block

// One block per (segment, chunk): count, sum and sum of squares of the
// chunk, accumulated in double. One pass: with float32 inputs and double
// sums, E[x^2] - E[x]^2 loses nothing that matters unless |mean| / std
// exceeds ~1e6, and it reads each value once instead of twice.
// offset (optional) is a per-channel value added to x first (a convolution's
// bias folded into the norm that follows it).
// Vec4 (rows of a multiple of 4 floats, 16-byte aligned): 16-byte loads and
// one index division per 4 values (W is then the row length in float4s);
// the 28 launches of a forward of 8 chunks 0.81 -> 0.38 ms on the H200
// (scalar: ~1 TB/s).
template <typename I, bool Vec4>
__global__ void segment_partial_kernel(const float* __restrict__ x, Segments seg, int64_t splits, int64_t chunk,
                                       Divisor<I> W, const float* __restrict__ offset, double* __restrict__ partial) {
    constexpr int kVec = Vec4 ? 4 : 1;
    __shared__ double shared[32];
    const int64_t blk = blockIdx.x;
    const int64_t s = blk / splits, sp = blk % splits;
    const int64_t cg = seg.C / seg.G, size = cg * seg.W;
    const int64_t b = s / (seg.G * seg.R), g = (s / seg.R) % seg.G, r = s % seg.R;
    const float* base = x + ((b * seg.C + g * cg) * seg.R + r) * seg.W;
    const I lo = I(sp * chunk), hi = I(min(size, sp * chunk + chunk));
    const int64_t n = hi > lo ? int64_t(hi - lo) : 0;

    double sum = 0.0, sq = 0.0;
    const float* channel_offset = offset ? offset + g * cg : nullptr;
    auto add = [&](float f) {
        const double v = f;
        sum += v, sq += v * v;
    };
    if (seg.R == 1 && !offset) {  // the segment is contiguous
#pragma unroll 4
        for (I e = lo / kVec + I(threadIdx.x); e < hi / kVec; e += I(blockDim.x)) {
            if constexpr (Vec4) {
                const float4 f = reinterpret_cast<const float4*>(base)[e];
                add(f.x), add(f.y), add(f.z), add(f.w);
            } else {
                add(base[e]);
            }
        }
    } else {
        const int64_t row_stride = seg.R * seg.W;
#pragma unroll 4
        for (I e = lo / kVec + I(threadIdx.x); e < hi / kVec; e += I(blockDim.x)) {
            const I k = W.div(e), w = e - k * W.value();  // k: the channel within the group
            const float off = channel_offset ? channel_offset[k] : 0.0f;
            if constexpr (Vec4) {
                const float4 f = *reinterpret_cast<const float4*>(base + int64_t(k) * row_stride + int64_t(w) * 4);
                add(f.x + off), add(f.y + off), add(f.z + off), add(f.w + off);
            } else {
                add(base[int64_t(k) * row_stride + w] + off);
            }
        }
    }
    sum = block_sum(sum, shared);
    sq = block_sum(sq, shared);
    if (threadIdx.x == 0) {
        partial[3 * blk] = double(n);
        partial[3 * blk + 1] = sum;
        partial[3 * blk + 2] = sq;
    }
}

__device__ __forceinline__ void finish_segment(double n, double sum, double sq, Spread spread, double* mean_out,
                                               double* out) {
    const double mean = sum / n;
    const double var = fmax(sq / n - mean * mean, 0.0);
    *mean_out = mean;
    *out = spread == Spread::Variance ? var : sqrt(var * (n / (n - 1.0)));
}

// Segments of one chunk: a thread each.
__global__ void segment_finalize_single_kernel(const double* __restrict__ partial, int64_t segments, Spread spread,
                                               double* __restrict__ mean_out, double* __restrict__ out) {
    FD_GRID_STRIDE(s, segments) {
        const double* p = partial + 3 * s;
        finish_segment(p[0], p[1], p[2], spread, mean_out + s, out + s);
    }
}

// Segments of several chunks: a block each, the chunks' sums added in a
// fixed order (deterministic).
// Segment s's (count, sum, sum of squares) from its `splits` partial
// triples, added by the block in a fixed order; every thread gets them.
__device__ __forceinline__ double3 segment_sums(const double* __restrict__ partial, int64_t splits, int64_t s,
                                                double* shared32) {
    double n = 0.0, sum = 0.0, sq = 0.0;
    for (int64_t sp = threadIdx.x; sp < splits; sp += blockDim.x) {
        const double* p = partial + 3 * (s * splits + sp);
        n += p[0], sum += p[1], sq += p[2];
    }
    n = block_sum(n, shared32);
    sum = block_sum(sum, shared32);
    sq = block_sum(sq, shared32);
    return make_double3(n, sum, sq);
}

__global__ void segment_finalize_kernel(const double* __restrict__ partial, int64_t splits, Spread spread,
                                        double* __restrict__ mean_out, double* __restrict__ out) {
    __shared__ double shared[32];
    const int64_t s = blockIdx.x;
    const double3 t = segment_sums(partial, splits, s, shared);
    if (threadIdx.x == 0) finish_segment(t.x, t.y, t.z, spread, mean_out + s, out + s);
}

// inv[b] = 1 / (1e-5 + std[b]), once per item instead of once per value.
__global__ void inv_std_kernel(const double* __restrict__ std, int64_t B, double* __restrict__ inv) {
    FD_GRID_STRIDE(b, B) inv[b] = 1.0 / (1e-5 + std[b]);
}

// The input normalisation's arithmetic (normalize_kernel, and im2col's as it reads).
__device__ __forceinline__ float normalized(float v, double mean, double inv) { return float((double(v) - mean) * inv); }

template <typename I>
__global__ void normalize_kernel(float* x, I total, Divisor<I> n, const double* __restrict__ mean,
                                 const double* __restrict__ inv) {
    FD_GRID_STRIDE_I(I, i, total) {
        const I b = n.div(i);
        x[i] = normalized(x[i], mean[b], inv[b]);
    }
}

// A GroupNorm's affine map {scale, shift} per (item, channel, row)
// q = (b * C + c) * R + r, one block per segment: its partial sums added in
// a fixed order (segment_finalize_kernel's arithmetic), then the map of each
// of its channels in double, once per row instead of once per value. With
// an input offset (x + offset[c] is normalised) the shift absorbs it. One
// launch for what were two (~4 us each for 32 segments or 4096 alike: the
// DConv ran 64 such launches per forward of 8 chunks).
__global__ void group_norm_coef_kernel(const double* __restrict__ partial, int64_t splits, Segments seg,
                                       const float* __restrict__ weight, const float* __restrict__ bias,
                                       const float* __restrict__ offset, float eps, float2* __restrict__ coef) {
    __shared__ double shared[32];
    const int64_t s = blockIdx.x;
    const double3 t = segment_sums(partial, splits, s, shared);
    double mean = 0.0, var = 0.0;  // every thread finishes the same sums alike
    finish_segment(t.x, t.y, t.z, Spread::Variance, &mean, &var);
    const double inv = 1.0 / sqrt(var + double(eps));
    // s = (b * G + g) * R + r
    const int64_t cg = seg.C / seg.G, r = s % seg.R, g = (s / seg.R) % seg.G, b = s / (seg.R * seg.G);
    for (int64_t k = threadIdx.x; k < cg; k += blockDim.x) {
        const int64_t c = g * cg + k;
        const float scale = float(inv * weight[c]);
        const double centre = offset ? mean - double(offset[c]) : mean;
        const float shift = float(bias[c] - centre * inv * weight[c]);
        coef[(b * seg.C + c) * seg.R + r] = make_float2(scale, shift);
    }
}

template <typename I>
__global__ void group_norm_apply_kernel(float* x, I total, Divisor<I> W, const float2* __restrict__ coef, Act act) {
    grid_stride_batched<kUnroll>(
        total, [&](I i) { return x[i]; },
        [&](I i, float v) {
            const float2 k = coef[W.div(i)];
            x[i] = activate(v * k.x + k.y, act);
        });
}

template <typename I>
__global__ void group_norm_tokens_apply_kernel(float* x, I total, Divisor<I> NC, Divisor<I> C,
                                               const double* __restrict__ mean, const double* __restrict__ inv,
                                               const float* __restrict__ weight, const float* __restrict__ bias) {
    FD_GRID_STRIDE_I(I, i, total) {
        const I b = NC.div(i), c = C.mod(i);
        x[i] = float((double(x[i]) - mean[b]) * inv[b]) * weight[c] + bias[c];
    }
}

// One warp per row. y may alias x (each value is read before it is written, by the same lane).
template <typename T>
__global__ void layer_norm_kernel(const float* x, T* y, int64_t rows, int64_t C, const float* __restrict__ weight,
                                  const float* __restrict__ bias, float eps) {
    const int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;  // whole warps leave together
    const float* xr = x + row * C;
    double sum = 0.0;
    for (int64_t c = lane; c < C; c += 32) sum += xr[c];
    const double mean = warp_sum(sum) / double(C);
    double var = 0.0;
    for (int64_t c = lane; c < C; c += 32) {
        const double d = double(xr[c]) - mean;
        var += d * d;
    }
    const double inv = 1.0 / sqrt(warp_sum(var) / double(C) + double(eps));
    T* yr = y + row * C;
    for (int64_t c = lane; c < C; c += 32)
        yr[c] = from_float<T>(float((double(xr[c]) - mean) * inv) * weight[c] + bias[c]);
}

// VEC consecutive values as one access (VEC * sizeof(T) bytes, aligned).
template <typename T, int VEC>
struct alignas(VEC * sizeof(T)) Run {
    T e[VEC];
};

// x_out [rows, C] = x + gamma[c] * (y + bias[c]) where y is given (x_out may
// be x), then out = LayerNorm of that (or of x alone) in type T (out may be
// x in float32): a warp per row, each lane holding PER runs of VEC values in
// registers (C <= 32 PER VEC; VEC = 4 where C % 4 == 0: 16-byte loads), all
// of a row's loads issued before the first is used. x is read once; the separate passes read it once for the
// residual and three times for the norm (layer_norm_kernel, still used past
// 1024 values a row). Statistics in double as there; each lane adds its runs
// in another order than that kernel's lane stride (float32 outputs equal in
// practice: the fixture dumps were byte-identical).
template <typename T, int VEC, int PER>
__global__ void layer_norm_regs_kernel(const float* x, float* x_out, const float* __restrict__ y,
                                       const float* __restrict__ bias, const float* __restrict__ gamma, T* out,
                                       int64_t rows, int C, const float* __restrict__ weight,
                                       const float* __restrict__ norm_bias, float eps) {
    const int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;  // whole warps leave together
    using F = Run<float, VEC>;
    const float* xr = x + row * C;
    F v[PER];
#pragma unroll
    for (int j = 0; j < PER; j++) {
        const int c = VEC * (lane + 32 * j);
        if (c < C) v[j] = *reinterpret_cast<const F*>(xr + c);
    }
    if (y) {
        F r[PER];
#pragma unroll
        for (int j = 0; j < PER; j++) {
            const int c = VEC * (lane + 32 * j);
            if (c < C) r[j] = *reinterpret_cast<const F*>(y + row * C + c);
        }
#pragma unroll
        for (int j = 0; j < PER; j++) {
            const int c = VEC * (lane + 32 * j);
            if (c >= C) continue;
#pragma unroll
            for (int e = 0; e < VEC; e++) {
                const float b = r[j].e[e] + (bias ? bias[c + e] : 0.0f);
                v[j].e[e] += gamma ? gamma[c + e] * b : b;
            }
            *reinterpret_cast<F*>(x_out + row * C + c) = v[j];
        }
    }
    double sum = 0.0;
#pragma unroll
    for (int j = 0; j < PER; j++)
        if (VEC * (lane + 32 * j) < C)
#pragma unroll
            for (int e = 0; e < VEC; e++) sum += v[j].e[e];
    const double mean = warp_sum(sum) / double(C);
    double var = 0.0;
#pragma unroll
    for (int j = 0; j < PER; j++)
        if (VEC * (lane + 32 * j) < C)
#pragma unroll
            for (int e = 0; e < VEC; e++) {
                const double d = double(v[j].e[e]) - mean;
                var += d * d;
            }
    const double inv = 1.0 / sqrt(warp_sum(var) / double(C) + double(eps));
#pragma unroll
    for (int j = 0; j < PER; j++) {
        const int c = VEC * (lane + 32 * j);
        if (c >= C) continue;
        Run<T, VEC> o;
#pragma unroll
        for (int e = 0; e < VEC; e++)
            o.e[e] = from_float<T>(float((double(v[j].e[e]) - mean) * inv) * weight[c + e] + norm_bias[c + e]);
        *reinterpret_cast<Run<T, VEC>*>(out + row * C + c) = o;
    }
}

// ---------------------------------------------------------------- element-wise

__global__ void gelu_kernel(float* x, int64_t n) {
    FD_GRID_STRIDE(i, n) x[i] = gelu_exact(x[i]);
}

template <typename T, typename I>
__global__ void bias_act_kernel(const float* in, T* out, const float* __restrict__ bias, I total, Divisor<I> C,
                                Divisor<I> inner, Act act) {
    grid_stride_batched<kUnroll>(
        total, [&](I i) { return in[i]; },
        [&](I i, float v) {
            if (bias) v += bias[C.mod(inner.div(i))];
            out[i] = from_float<T>(activate(v, act));
        });
}

template <typename T, typename I>
__global__ void bias_act_inplace_kernel(T* x, const float* __restrict__ bias, I total, Divisor<I> C,
                                        Divisor<I> inner, Act act) {
    grid_stride_batched<kUnroll>(
        total, [&](I i) { return to_float(x[i]); },
        [&](I i, float v) {
            if (bias) v += bias[C.mod(inner.div(i))];
            x[i] = from_float<T>(activate(v, act));
        });
}

// The same over rows of C values (inner = 1), kVec values per thread (C % kVec == 0).
template <typename T, typename I>
__global__ void bias_act_rows_vec_kernel(T* x, const float* __restrict__ bias, I slots, Divisor<I> C_vec, Act act) {
    for (I s = I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x); s < slots; s += I(gridDim.x) * I(blockDim.x)) {
        const I c0 = C_vec.mod(s) * I(kVec);
        float v[kVec];
        load8(x + int64_t(s) * kVec, v);
#pragma unroll
        for (int e = 0; e < kVec; e++) v[e] = activate(bias ? v[e] + bias[c0 + I(e)] : v[e], act);
        store8(x + int64_t(s) * kVec, v);
    }
}

template <typename T>
__global__ void convert_kernel(const float* __restrict__ in, T* __restrict__ out, int64_t n) {
    grid_stride_batched<kUnroll>(
        n, [&](int64_t i) { return in[i]; }, [&](int64_t i, float v) { out[i] = from_float<T>(v); });
}

template <typename T>
__global__ void conv_weight_taps_kernel(const float* __restrict__ in, T* __restrict__ out, int64_t cout, int64_t cin,
                                        int64_t taps) {
    const int64_t n = cout * cin * taps;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t t = i / (cout * cin), oc = i - t * cout * cin;  // oc = co * cin + ci
        out[i] = from_float<T>(in[oc * taps + t]);
    }
}

template <typename T, typename I>
__global__ void convert_rows_kernel(const float* __restrict__ in, T* __restrict__ out, I total, Divisor<I> n, I ld) {
    grid_stride_batched<kUnroll>(
        total, [&](I i) { return in[i]; },
        [&](I i, float v) {
            const I r = n.div(i), j = i - r * n.value();
            out[int64_t(r) * ld + j] = from_float<T>(v);
        });
}

// x [B, 2C, ld] (rows of inner values) -> the a (first C) and gate (last C)
// values of output i of [B, C, inner]. Also gives c.
template <typename I>
__device__ __forceinline__ I glu_index(I i, Divisor<I> C, Divisor<I> inner, I ld, I* c) {
    const I bc = inner.div(i), k = i - bc * inner.value(), b = C.div(bc);
    *c = bc - b * C.value();
    return (bc + b * C.value()) * ld + k;  // (b * 2C + c) * ld + k
}

template <typename T, typename I>
__global__ void glu_kernel(const T* __restrict__ x, float* __restrict__ y, I total, Divisor<I> C,
                           Divisor<I> inner, I ld, const float* __restrict__ bias) {
    const I half = C.value() * ld;
    grid_stride_batched<kUnroll>(
        total,
        [&](I i) {
            I c;
            const I at = glu_index(i, C, inner, ld, &c);
            float2 ag = make_float2(to_float(x[at]), to_float(x[at + half]));
            if (bias) ag.x += bias[c], ag.y += bias[c + C.value()];
            return ag;
        },
        [&](I i, float2 ag) { y[i] = glu_value(ag.x, ag.y); });
}

// The same with kVec consecutive outputs per thread (inner % kVec == 0, ld % kVec == 0).
// kEmbed: then the frequency embedding (table [F, C], row_vecs = T / kVec,
// T % kVec == 0) is added as freq_embedding_vec_kernel adds it (its own
// pass took 0.17 ms of a float16 forward of 8, as long as the GLU's).
template <typename T, typename I, bool kEmbed>
__global__ void glu_vec_kernel(const T* __restrict__ x, float* __restrict__ y, I slots, Divisor<I> C,
                               Divisor<I> inner_vec, I ld, const float* __restrict__ bias,
                               const float* __restrict__ table, Divisor<I> row_vecs, float k_emb, float s_emb) {
    const I half = C.value() * ld;
    for (I s = I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x); s < slots; s += I(gridDim.x) * I(blockDim.x)) {
        const I bc = inner_vec.div(s), kv = s - bc * inner_vec.value(), k = kv * I(kVec), b = C.div(bc);
        const I c = bc - b * C.value(), at = (bc + b * C.value()) * ld + k;
        float a[kVec], g[kVec], out[kVec];
        load8(x + at, a);
        load8(x + at + half, g);
        const float ba = bias ? bias[c] : 0.0f, bg = bias ? bias[c + C.value()] : 0.0f;
#pragma unroll
        for (int e = 0; e < kVec; e++) out[e] = glu_value(a[e] + ba, g[e] + bg);
        if constexpr (kEmbed) {
            const float add = __fmul_rn(k_emb, __fmul_rn(table[row_vecs.div(kv) * C.value() + c], s_emb));
#pragma unroll
            for (int e = 0; e < kVec; e++) out[e] = __fadd_rn(out[e], add);
        }
        store8(y + int64_t(s) * kVec, out);
    }
}

// x [B, C, R, W] += scale[c] * a * sigmoid(g), where a and g are y [B, 2C, R, W]
// at channels c and C + c through their GroupNorm affine maps coef[(b * 2C + ch) * R + r].
template <typename I>
__global__ void glu_norm_residual_kernel(const float* __restrict__ y, float* __restrict__ x,
                                         const float* __restrict__ scale, const float2* __restrict__ coef, I total,
                                         Divisor<I> C, Divisor<I> R, Divisor<I> W) {
    const I half = C.value() * R.value() * W.value();  // offset of the gate half within an item of y
    auto locate = [&](I i, I* at, I* row_a, I* c) {
        const I q = W.div(i), w = i - q * W.value();  // q = (b * C + c) * R + r
        const I bc = R.div(q), r = q - bc * R.value();
        const I b = C.div(bc);
        *c = bc - b * C.value();
        *row_a = (bc + b * C.value()) * R.value() + r;  // (b * 2C + c) * R + r
        *at = *row_a * W.value() + w;
    };
    grid_stride_batched<kUnroll>(
        total,
        [&](I i) {
            I at, row_a, c;
            locate(i, &at, &row_a, &c);
            return make_float3(y[at], y[at + half], x[i]);
        },
        [&](I i, float3 v) {
            I at, row_a, c;
            locate(i, &at, &row_a, &c);
            const float2 ka = coef[row_a], kg = coef[row_a + C.value() * R.value()];
            const float a = v.x * ka.x + ka.y, g = v.y * kg.x + kg.y;
            x[i] = v.z + scale[c] * glu_value(a, g);
        });
}

__global__ void add_kernel(float* x, const float* y, int64_t n) {  // x may be y
    grid_stride_batched<kUnroll>(
        n, [&](int64_t i) { return x[i] + y[i]; }, [&](int64_t i, float v) { x[i] = v; });
}

template <typename I>
__global__ void add_rows_kernel(float* __restrict__ y, const float* __restrict__ inject, I total, Divisor<I> HW,
                                Divisor<I> W) {
    grid_stride_batched<kUnroll>(
        total, [&](I i) { return y[i] + inject[HW.div(i) * W.value() + W.mod(i)]; },
        [&](I i, float v) { y[i] = v; });
}

// x + k * (table * s) as the official code rounds it: a product, then a sum
// (explicitly rounded: a contracted FMA would round once, and the GLU pass
// that adds the embedding itself (glu_vec_kernel) must give the same floats).
template <typename I>
__global__ void freq_embedding_kernel(float* x, const float* __restrict__ table, I B, I C, I F, I T, float k,
                                      float s) {
    FD_GRID_STRIDE_I(I, i, B * C * F * T) {
        const I ft = i / T, f = ft % F, c = (ft / F) % C;
        x[i] = __fadd_rn(x[i], __fmul_rn(k, __fmul_rn(table[f * C + c], s)));
    }
}

// The same, eight frames of a row a thread (T a multiple of 8): the row's
// table value found once for eight (one output a thread spent the pass on
// its divisions: 0.19 ms of a float16 forward of 8 at 2.7 TB/s).
template <typename I>
__global__ void freq_embedding_vec_kernel(float* x, const float* __restrict__ table, I C, Divisor<I> F,
                                          Divisor<I> row_vecs, I slots, float k, float s) {
    for (I v = I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x); v < slots; v += I(gridDim.x) * I(blockDim.x)) {
        const I ft = row_vecs.div(v), bc = F.div(ft), f = ft - bc * F.value(), c = bc % C;
        const float e = __fmul_rn(k, __fmul_rn(table[f * C + c], s));
        float row[kVec];
        load8(x + int64_t(v) * kVec, row);
#pragma unroll
        for (int i = 0; i < kVec; i++) row[i] = __fadd_rn(row[i], e);
        store8(x + int64_t(v) * kVec, row);
    }
}

// x + gamma[c] * (y + bias[c]), bias and gamma optional (residual and residual_group_norm_tokens).
__device__ __forceinline__ float residual_value(float x, float y, const float* bias, const float* gamma, int64_t c) {
    const float v = y + (bias ? bias[c] : 0.0f);
    return x + (gamma ? gamma[c] * v : v);
}

template <typename I>
__global__ void residual_kernel(float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ bias,
                                const float* __restrict__ gamma, I total, Divisor<I> C) {
    grid_stride_batched<kUnroll>(
        total, [&](I i) { return make_float2(x[i], y[i]); },
        [&](I i, float2 xy) { x[i] = residual_value(xy.x, xy.y, bias, gamma, int64_t(C.mod(i))); });
}

// residual_kernel's update of item b's values [lo, hi) of x [B, N * C]
// (token-major, C a multiple of 4; chunk sp of kStatChunk values), with the
// (count, sum, sum of squares) of the new values as segment_partial_kernel
// leaves them: the GroupNorm that follows (the transformer's norm_out)
// needs no pass of its own for its statistics.
__global__ void residual_stats_kernel(float* __restrict__ x, const float* __restrict__ y,
                                      const float* __restrict__ bias, const float* __restrict__ gamma, int64_t size,
                                      int64_t splits, int C, double* __restrict__ partial) {
    __shared__ double shared[32];
    const int64_t blk = blockIdx.x, b = blk / splits, sp = blk % splits;
    const int64_t lo = sp * kStatChunk, hi = min(size, lo + kStatChunk);
    float4* x4 = reinterpret_cast<float4*>(x + b * size);
    const float4* y4 = reinterpret_cast<const float4*>(y + b * size);
    double sum = 0.0, sq = 0.0;
    for (int64_t e = lo / 4 + threadIdx.x; e < hi / 4; e += blockDim.x) {
        const int c = int((4 * e) % C);
        float4 xv = x4[e];
        const float4 yv = y4[e];
        float* xs = reinterpret_cast<float*>(&xv);
        const float* ys = reinterpret_cast<const float*>(&yv);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            xs[k] = residual_value(xs[k], ys[k], bias, gamma, c + k);
            const double d = xs[k];
            sum += d, sq += d * d;
        }
        x4[e] = xv;
    }
    sum = block_sum(sum, shared);
    sq = block_sum(sq, shared);
    if (threadIdx.x == 0) {
        partial[3 * blk] = double(hi > lo ? hi - lo : 0);
        partial[3 * blk + 1] = sum;
        partial[3 * blk + 2] = sq;
    }
}

// Per item: mean and 1 / sqrt(variance + eps) from its partial triples
// (segment_finalize_kernel's sums and variance).
__global__ void mean_inv_sqrt_kernel(const double* __restrict__ partial, int64_t splits, float eps,
                                     double* __restrict__ mean, double* __restrict__ inv) {
    __shared__ double shared[32];
    const int64_t s = blockIdx.x;
    const double3 t = segment_sums(partial, splits, s, shared);
    if (threadIdx.x == 0) {
        double var = 0.0;
        finish_segment(t.x, t.y, t.z, Spread::Variance, mean + s, &var);
        inv[s] = 1.0 / sqrt(var + double(eps));
    }
}

template <typename I>
__global__ void add_broadcast_kernel(float* __restrict__ x, const float* __restrict__ table, float weight, I total,
                                     I n) {
    FD_GRID_STRIDE_I(I, i, total) x[i] += weight * table[i % n];
}

// ---------------------------------------------------------------------- layout

// Batched transpose through shared memory: for each z < Z, the matrix
// in(z) [R, S] (element (r, s) at in + in_z(z) + r * in_r + s) goes to
// out(z) [S, R] (element (s, r) at out + out_z(z) + s * out_s + r), with
// z = (z1, z2) and base offsets z1 * a1 + z2 * a2. Reads and writes are
// coalesced (a plain gather reads with a stride of R elements).
struct TransposeMap {
    int64_t Z2 = 1;                 // z = z1 * Z2 + z2
    int64_t in_a1 = 0, in_a2 = 0, in_r = 0;
    int64_t out_a1 = 0, out_a2 = 0, out_s = 0;
    int64_t R = 0, S = 0;
};

constexpr int kTile = 32;

__global__ void transpose_kernel(const float* __restrict__ in, float* __restrict__ out, TransposeMap m) {
    __shared__ float tile[kTile][kTile + 1];
    const int64_t z = blockIdx.z, z1 = z / m.Z2, z2 = z % m.Z2;
    const float* ib = in + z1 * m.in_a1 + z2 * m.in_a2;
    float* ob = out + z1 * m.out_a1 + z2 * m.out_a2;
    const int64_t r0 = int64_t(blockIdx.y) * kTile, s0 = int64_t(blockIdx.x) * kTile;
    for (int dy = threadIdx.y; dy < kTile; dy += blockDim.y) {
        const int64_t r = r0 + dy, s = s0 + threadIdx.x;
        if (r < m.R && s < m.S) tile[dy][threadIdx.x] = ib[r * m.in_r + s];
    }
    __syncthreads();
    for (int dy = threadIdx.y; dy < kTile; dy += blockDim.y) {
        const int64_t s = s0 + dy, r = r0 + threadIdx.x;
        if (r < m.R && s < m.S) ob[s * m.out_s + r] = tile[threadIdx.x][dy];
    }
}

bool launch_transpose(const Ctx& ctx, const float* in, float* out, int64_t Z, const TransposeMap& m) {
    const int64_t gx = (m.S + kTile - 1) / kTile, gy = (m.R + kTile - 1) / kTile;
    if (Z > 65535 || gy > 65535 || gx > int64_t(0x7fffffff)) return false;
    transpose_kernel<<<dim3(unsigned(gx), unsigned(gy), unsigned(Z)), dim3(kTile, 8), 0, ctx.stream>>>(in, out, m);
    FD_LAUNCH_CHECK();
    return true;
}

template <typename I>
__global__ void to_tokens_kernel(const float* __restrict__ x, float* __restrict__ tok, I B, I C, I Fr, I T) {
    FD_GRID_STRIDE_I(I, i, B * C * Fr * T) {
        const I c = i % C, n = (i / C) % (T * Fr), b = i / (C * T * Fr);
        const I t = n / Fr, f = n % Fr;
        tok[i] = x[((b * C + c) * Fr + f) * T + t];
    }
}

template <typename I>
__global__ void from_tokens_kernel(const float* __restrict__ tok, float* __restrict__ x, I B, I C, I Fr, I T) {
    FD_GRID_STRIDE_I(I, i, B * C * Fr * T) {
        const I t = i % T, f = (i / T) % Fr, c = (i / (T * Fr)) % C, b = i / (T * Fr * C);
        x[i] = tok[(b * T * Fr + t * Fr + f) * C + c];
    }
}

// One block per row; p may alias s when T is float (each value is read before it is written by the same thread).
template <typename T>
__global__ void softmax_rows_kernel(const float* s, T* p, int64_t cols) {
    __shared__ float smax[32];
    __shared__ double ssum[32];
    const int64_t row = blockIdx.x;
    const float* sr = s + row * cols;
    float mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) mx = fmaxf(mx, sr[j]);
    mx = block_max(mx, smax);
    double sum = 0.0;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) sum += expf(sr[j] - mx);
    const float inv = float(1.0 / block_sum(sum, ssum));
    T* pr = p + row * cols;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) pr[j] = from_float<T>(expf(sr[j] - mx) * inv);
}

// --------------------------------------------------------- convolution helpers

// Row q = (b * Cin + ci) * kh * kw + ki * kw + kj of the column matrix: its
// input plane, its output row (item b's rows start item_rows rows apart) and
// its tap's offsets (padding included).
template <typename T>
struct Im2colRow {
    const float* plane;
    T* out;
    int h_off, w_off;
    double mean, inv;  // the item's input normalisation (0, 1: none)
};
template <typename T, typename I>
__device__ __forceinline__ Im2colRow<T> im2col_row(I q, const float* x, T* cols, const Divisor<I>& K,
                                                   const Divisor<I>& taps, const Divisor<I>& kw, I Cin, int H, int W,
                                                   const ConvGeom& g, int64_t ld, int64_t item_rows,
                                                   const InputNorm& norm) {
    const I b = K.div(q), r = q - b * K.value();
    const I ci = taps.div(r), t = r - ci * taps.value();
    const I ki = kw.div(t), kj = t - ki * kw.value();
    return {x + (int64_t(b) * Cin + ci) * int64_t(H) * W, cols + (int64_t(b) * item_rows + r) * ld,
            int(ki) * g.dh - g.ph, int(kj) * g.dw - g.pw, norm.mean ? norm.mean[b] : 0.0,
            norm.inv ? norm.inv[b] : 1.0};
}
// A column value: the input at (h, w) of the row's plane, normalised where
// the row's item is (norm), zero outside the plane (padding stays zero).
template <typename T>
__device__ __forceinline__ float im2col_value(const Im2colRow<T>& row, bool inside, int h, int w, int W,
                                              bool norm) {
    if (!inside) return 0.0f;
    const float v = row.plane[int64_t(h) * W + w];
    return norm ? normalized(v, row.mean, row.inv) : v;
}

// Grid y walks the rows q = b * K + r of the column matrix, kUnroll rows at
// a time with their (b, ci, ki, kj) decoded once; grid x and the threads
// walk the Ho * Wo outputs (one division each, shared by the rows), so reads
// along wo and writes are both coalesced and kUnroll loads are in flight.
template <typename T, typename I>
__global__ void im2col_kernel(const float* __restrict__ x, T* __restrict__ cols, I rows, Divisor<I> K,
                              Divisor<I> taps, Divisor<I> kw, I Cin, int H, int W, ConvGeom g, Divisor<I> Wo, I N,
                              int64_t ld, int64_t item_rows, InputNorm norm) {
    const bool normed = norm.mean != nullptr;
    constexpr int U = kUnroll;
    for (I q0 = I(blockIdx.y); q0 < rows; q0 += I(U) * I(gridDim.y)) {
        Im2colRow<T> row[U];
#pragma unroll
        for (int u = 0; u < U; u++)  // rows past the end repeat the last one
            row[u] = im2col_row(min(q0 + I(u) * I(gridDim.y), rows - 1), x, cols, K, taps, kw, Cin, H, W, g, ld,
                                item_rows, norm);
        for (I n = I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x); n < N; n += I(gridDim.x) * I(blockDim.x)) {
            const I ho = Wo.div(n), wo = n - ho * Wo.value();
            float v[U];
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int h = int(ho) * g.sh + row[u].h_off, w = int(wo) * g.sw + row[u].w_off;
                v[u] = im2col_value(row[u], h >= 0 && h < H && w >= 0 && w < W, h, w, W, normed);
            }
#pragma unroll
            for (int u = 0; u < U; u++) row[u].out[n] = from_float<T>(v[u]);
        }
    }
}

// The same with kIm2colRun consecutive output positions per thread and row:
// their column values leave as one 16-byte store (two in float32) instead
// of one 2-byte store each, and the thread has kIm2colRows * kIm2colRun
// loads in flight. Needs rows of a multiple of kIm2colRun values (ld); the values
// past N in a row's last run are written as zeros.
constexpr int kIm2colRun = 8;
constexpr int kIm2colRows = 2;  // rows per thread (4 took 80 registers: a third of the SM's threads)
template <typename T>
struct alignas(16) Im2colRun {
    T v[kIm2colRun];
};
// v[e] = row[w + e] for w + e in [0, W), else 0. Inside the row it reads the
// 16-byte-aligned window of 12 floats around the 8 (three vector loads, then
// a shift by the misalignment) instead of 8 scalar loads.
__device__ __forceinline__ void load_row8(const float* row, int w, int W, float (&v)[kIm2colRun]) {
    const int s = int((reinterpret_cast<uintptr_t>(row + w) >> 2) & 3);  // floats past a 16-byte boundary
    const int a = w - s;
    if (a >= 0 && a + 12 <= W) {
        const float4* p = reinterpret_cast<const float4*>(row + a);
        const float4 q0 = p[0], q1 = p[1], q2 = p[2];
        const float win[12] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w, q2.x, q2.y, q2.z, q2.w};
#pragma unroll
        for (int e = 0; e < kIm2colRun; e++)
            v[e] = s == 0 ? win[e] : s == 1 ? win[e + 1] : s == 2 ? win[e + 2] : win[e + 3];
        return;
    }
#pragma unroll
    for (int e = 0; e < kIm2colRun; e++) v[e] = (w + e >= 0 && w + e < W) ? row[w + e] : 0.0f;
}

// UnitStride: stride 1 along W and runs that never wrap to the next output
// row (Wo % kIm2colRun == 0, or one output row): a run's 8 inputs of a
// column row are consecutive in one input row (load_row8).
template <typename T, typename I, bool UnitStride>
__global__ void im2col_runs_kernel(const float* __restrict__ x, T* __restrict__ cols, I rows, Divisor<I> K,
                                   Divisor<I> taps, Divisor<I> kw, I Cin, int H, int W, ConvGeom g, Divisor<I> Wo,
                                   I N, int64_t ld, int64_t item_rows, InputNorm norm) {
    constexpr int U = kIm2colRows, V = kIm2colRun;
    const bool normed = norm.mean != nullptr;
    const I runs = (N + I(V) - 1) / I(V);
    for (I q0 = I(blockIdx.y); q0 < rows; q0 += I(U) * I(gridDim.y)) {
        Im2colRow<T> row[U];
        bool row_valid[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            row_valid[u] = q0 + I(u) * I(gridDim.y) < rows;
            row[u] = im2col_row(min(q0 + I(u) * I(gridDim.y), rows - 1), x, cols, K, taps, kw, Cin, H, W, g, ld,
                                item_rows, norm);
        }
        for (I run = I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x); run < runs;
             run += I(gridDim.x) * I(blockDim.x)) {
            const I n0 = run * I(V);
            // The run's output positions: (ho, wo) advance along the row and wrap.
            I ho = Wo.div(n0), wo = n0 - ho * Wo.value();
            int hs[V], ws[V];
            bool inside[V];
#pragma unroll
            for (int e = 0; e < V; e++) {
                hs[e] = int(ho) * g.sh, ws[e] = int(wo) * g.sw, inside[e] = n0 + I(e) < N;
                if (++wo == Wo.value()) wo = 0, ++ho;
            }
#pragma unroll
            for (int u = 0; u < U; u++) {
                Im2colRun<T> pack;
                if constexpr (UnitStride) {
                    const int h = hs[0] + row[u].h_off;
                    float v[V];
                    if (h >= 0 && h < H) {
                        load_row8(row[u].plane + int64_t(h) * W, ws[0] + row[u].w_off, W, v);
                        if (normed) {
#pragma unroll
                            for (int e = 0; e < V; e++) {
                                const int w = ws[0] + row[u].w_off + e;
                                v[e] = w >= 0 && w < W ? normalized(v[e], row[u].mean, row[u].inv) : 0.0f;
                            }
                        }
                    } else {
#pragma unroll
                        for (int e = 0; e < V; e++) v[e] = 0.0f;
                    }
#pragma unroll
                    for (int e = 0; e < V; e++) pack.v[e] = from_float<T>(inside[e] ? v[e] : 0.0f);
                } else {
#pragma unroll
                    for (int e = 0; e < V; e++) {
                        const int h = hs[e] + row[u].h_off, w = ws[e] + row[u].w_off;
                        const bool ok = inside[e] && h >= 0 && h < H && w >= 0 && w < W;
                        pack.v[e] = from_float<T>(im2col_value(row[u], ok, h, w, W, normed));
                    }
                }
                if (row_valid[u]) *reinterpret_cast<Im2colRun<T>*>(row[u].out + n0) = pack;
            }
        }
    }
}

// The 3x3 convolutions with padding 1 and stride 1 (the frequency decoders'
// rewrites through im2col): a thread takes a run of 8 output positions of
// one input channel and writes all nine of its column rows from the three
// input rows' 16-float windows around the run (12 aligned vector loads in
// all), where the runs kernel gathered each column row's window anew (nine
// times the loads, and a select chain per value for the window's shift).
// Needs W % 8 == 0 (runs never wrap a row, windows aligned) and x's planes
// 16-byte aligned (H * W % 4 == 0).
template <typename T, typename I>
__global__ void im2col_3x3_kernel(const float* __restrict__ x, T* __restrict__ cols, I runs, Divisor<I> per_plane,
                                  Divisor<I> runs_w, Divisor<I> C, int H, int W, int64_t ld, int64_t item_rows) {
    for (I q = I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x); q < runs; q += I(gridDim.x) * I(blockDim.x)) {
        // q = ((b * C + c) * H + h) * (W / 8) + r
        const I plane_index = per_plane.div(q), rest = q - plane_index * per_plane.value();  // b * C + c
        const I h_ = runs_w.div(rest);
        const int h = int(h_), w0 = int(rest - h_ * runs_w.value()) * kIm2colRun;
        const I b = C.div(plane_index);
        const int c = int(plane_index - b * C.value());
        const float* plane = x + int64_t(plane_index) * H * W;
        float win[3][16];  // input rows h - 1 .. h + 1, positions w0 - 4 .. w0 + 11 (zeros outside)
#pragma unroll
        for (int i = 0; i < 3; i++) {
            const int hh = h - 1 + i;
#pragma unroll
            for (int v = 0; v < 4; v++) {
                const int w = w0 - 4 + 4 * v;
                const float4 f = hh >= 0 && hh < H && w >= 0 && w < W
                                     ? __ldg(reinterpret_cast<const float4*>(plane + int64_t(hh) * W + w))
                                     : make_float4(0.f, 0.f, 0.f, 0.f);
                win[i][4 * v] = f.x, win[i][4 * v + 1] = f.y, win[i][4 * v + 2] = f.z, win[i][4 * v + 3] = f.w;
            }
        }
        T* out = cols + (int64_t(b) * item_rows + int64_t(c) * 9) * ld + int64_t(h) * W + w0;
#pragma unroll
        for (int i = 0; i < 3; i++)
#pragma unroll
            for (int j = 0; j < 3; j++) {  // column row (c, i, j): input (h - 1 + i, w0 - 1 + j + e)
                Im2colRun<T> pack;
#pragma unroll
                for (int e = 0; e < kIm2colRun; e++) pack.v[e] = from_float<T>(win[i][3 + j + e]);
                *reinterpret_cast<Im2colRun<T>*>(out + (i * 3 + j) * ld) = pack;
            }
    }
}

// Strided 1-D convolutions (the time branch's encoders: kernel 8, stride 4)
// in the runs kernel read a run's 8 inputs `sw` apart: each load of a warp
// touched 32 cache lines (~0.75 TB/s). Here a block stages the input span of
// kStridedOutputs outputs of one input row in shared memory (coalesced
// loads; a padding float every 32 against bank conflicts) and writes every
// tap's column row from it, a 16-byte run of 8 outputs per lane (the four
// launches of a forward of 8 chunks: 0.59 -> 0.20 ms on the H200).
constexpr int kStridedOutputs = 32 * kIm2colRun;  // outputs per block
constexpr int kStridedSpan = 4096;                 // staged input floats at most
__host__ __device__ constexpr int strided_span(int sw, int kw, int dw) {
    return (kStridedOutputs - 1) * sw + (kw - 1) * dw + 1;
}
template <typename T, typename I>
__global__ void im2col_strided_kernel(const float* __restrict__ x, T* __restrict__ cols, int W, int kw, int sw, int dw,
                                      int pw, I N, int64_t ld, int Cin, int64_t item_rows, InputNorm norm) {
    __shared__ float staged[kStridedSpan + kStridedSpan / 32];
    const int64_t plane = blockIdx.y;  // b * Cin + ci: column rows b * item_rows + ci * kw + tap
    const int64_t item = plane / Cin, first_row = item * item_rows + (plane % Cin) * kw;
    const bool normed = norm.mean != nullptr;
    const double mean = normed ? norm.mean[item] : 0.0, inv = normed ? norm.inv[item] : 1.0;
    const I n0 = I(blockIdx.x) * I(kStridedOutputs);
    const float* row = x + plane * W;
    const int64_t p0 = int64_t(n0) * sw - pw;  // the input position of staged[0]
    const int span = strided_span(sw, kw, dw);
    for (int i = threadIdx.x; i < span; i += blockDim.x) {
        const int64_t p = p0 + i;
        staged[i + i / 32] = p >= 0 && p < W ? (normed ? normalized(row[p], mean, inv) : row[p]) : 0.0f;
    }
    __syncthreads();
    const int lane = threadIdx.x % 32;
    const I n = n0 + I(lane * kIm2colRun);
    if (n >= N) return;
    for (int t = threadIdx.x / 32; t < kw; t += blockDim.x / 32) {
        Im2colRun<T> pack;
#pragma unroll
        for (int e = 0; e < kIm2colRun; e++) {
            const int i = (lane * kIm2colRun + e) * sw + t * dw;
            pack.v[e] = from_float<T>(n + I(e) < N ? staged[i + i / 32] : 0.0f);
        }
        *reinterpret_cast<Im2colRun<T>*>(cols + (first_row + t) * ld + int64_t(n)) = pack;
    }
}

// base[item * pitch + j] = value for j < width: a block of rows per item.
template <typename T, typename I>
__global__ void fill_rows_kernel(T* __restrict__ base, Divisor<I> width, int64_t pitch, I total, float value) {
    const T v = from_float<T>(value);
    FD_GRID_STRIDE_I(I, i, total) {
        const I item = width.div(i);
        base[int64_t(item) * pitch + (i - item * width.value())] = v;
    }
}

template <typename T, typename I>
__global__ void pad_planes_kernel(const float* __restrict__ x, T* __restrict__ out, I BC, I H, I W, int ph, int pw,
                                  I plane) {
    const I Hp = H + 2 * I(ph), Wp = W + 2 * I(pw);
    FD_GRID_STRIDE_I(I, i, BC * plane) {
        const I bc = i / plane, p = i - bc * plane;
        const I hp = p / Wp, wp = p - hp * Wp;
        const int64_t h = int64_t(hp) - ph, w = int64_t(wp) - pw;
        const float v = (hp < Hp && h >= 0 && h < H && w >= 0 && w < W) ? x[(int64_t(bc) * H + h) * W + w] : 0.0f;
        out[i] = from_float<T>(v);
    }
}

template <typename I>
__global__ void crop_bias_act_kernel(const float* __restrict__ full, float* __restrict__ out,
                                     const float* __restrict__ bias, Divisor<I> C, Divisor<I> H, I Wfull,
                                     Divisor<I> W, I total, Act act) {
    grid_stride_batched<kUnroll>(
        total,
        [&](I i) {
            const I row = W.div(i), w = i - row * W.value();  // row = bc * H + h
            float v = full[int64_t(row) * Wfull + w];
            if (bias) v += bias[C.mod(H.div(row))];
            return v;
        },
        [&](I i, float v) { out[i] = activate(v, act); });
}

// A block per (output row, run of `per` * kCol2imThreads positions): the
// taps along H that land on the row are found once per block (for stride s,
// kernel k: k / s of them), so each output position only walks its taps
// along W, in the same increasing tap order as a plain loop; `per` (up to
// kCol2imPerThread) positions per thread, their loads in flight together.
// A short row (the frequency decoders' 336 positions) takes a run of its
// own length rounded to the block (a fixed run of 1024 left 2/3 of the
// threads idle there).
constexpr int kCol2imThreads = 128, kCol2imPerThread = 8;
constexpr int kCol2imMaxRowTaps = 8;
template <typename T, typename I>
__global__ void __launch_bounds__(kCol2imThreads)
    col2im_kernel(const T* __restrict__ cols, float* __restrict__ out, const float* __restrict__ bias, I C, I H,
                  I W, int kh, int kw, int sh, Divisor<I> sw, I h0, I Hc, I w0, I Wc, I runs, int per, int64_t ld,
                  Act act) {
    const int64_t row = blockIdx.x / runs;  // bc * Hc + (ho - h0)
    const I run = I(blockIdx.x - row * runs);
    const int64_t bc = row / Hc;
    const I ho = I(row - bc * Hc) + h0;
    // This row's taps along H: input row h = (ho - ki) / sh for ki = ho mod sh, + sh, ...
    __shared__ int64_t tap_rows[kCol2imMaxRowTaps];  // offsets in cols
    __shared__ int row_taps;
    if (threadIdx.x == 0) {
        int taps = 0;
        for (I ki = ho % I(sh), h = ho / I(sh); ki < I(kh) && ki <= ho; ki += I(sh), h--)
            if (h < H && taps < kCol2imMaxRowTaps)
                tap_rows[taps++] = bc * kh * kw * ld + int64_t(ki) * kw * ld + int64_t(h) * W;
        row_taps = taps;
    }
    __syncthreads();
    const int taps = row_taps;
    const float b = bias ? bias[bc % C] : 0.0f;
    float* orow = out + row * Wc;
    const I first = run * I(per * kCol2imThreads) + I(threadIdx.x);
    float acc[kCol2imPerThread];
#pragma unroll
    for (int e = 0; e < kCol2imPerThread; e++) {
        const I j = first + I(e * kCol2imThreads);
        acc[e] = b;
        if (e >= per || j >= Wc) continue;
        const I wo = j + w0, w_top = sw.div(wo), kj0 = wo - w_top * sw.value();
        for (int t = 0; t < taps; t++)
            for (I kj = kj0, w = w_top; kj < I(kw) && kj <= wo; kj += sw.value(), w--)
                if (w < W) acc[e] += to_float(cols[tap_rows[t] + int64_t(kj) * ld + w]);
    }
#pragma unroll
    for (int e = 0; e < kCol2imPerThread; e++) {
        const I j = first + I(e * kCol2imThreads);
        if (e < per && j < Wc) orow[j] = activate(acc[e], act);
    }
}

// Taps along H only (kw = sw = 1: the frequency decoders' [8, 1] kernels):
// a thread takes kVec consecutive positions of an output row, one vector
// load per tap row, in the same tap order as col2im_kernel (so the same
// sums). Needs W, Wc, w0 and ld multiples of kVec.
template <typename T, typename I>
__global__ void col2im_rows_vec_kernel(const T* __restrict__ cols, float* __restrict__ out,
                                       const float* __restrict__ bias, Divisor<I> C, I H, I W, int kh, int sh, I h0,
                                       Divisor<I> Hc, I w0, I Wc, Divisor<I> row_vecs, I slots, int64_t ld, Act act) {
    for (I s = I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x); s < slots; s += I(gridDim.x) * I(blockDim.x)) {
        const I row = row_vecs.div(s), j = (s - row * row_vecs.value()) * I(kVec);  // row = bc * Hc + ho - h0
        const I bc = Hc.div(row), ho = row - bc * Hc.value() + h0;
        const float b = bias ? bias[C.mod(bc)] : 0.0f;
        float acc[kVec];
#pragma unroll
        for (int e = 0; e < kVec; e++) acc[e] = b;
        for (I ki = ho % I(sh), h = ho / I(sh); ki < I(kh) && ki <= ho; ki += I(sh), h--) {
            if (h >= H) continue;
            float v[kVec];
            load8(cols + (int64_t(bc) * kh + ki) * ld + int64_t(h) * W + w0 + j, v);
#pragma unroll
            for (int e = 0; e < kVec; e++) acc[e] += v[e];
        }
#pragma unroll
        for (int e = 0; e < kVec; e++) acc[e] = activate(acc[e], act);
        store8(out + int64_t(row) * Wc + j, acc);
    }
}

// Taps along W only, two per output (kh = sh = 1, kw = 2 sw, sw = 4: the
// time decoders' [1, 8] kernels): a thread takes 8 input columns q0 ..
// q0 + 7, the 32 outputs u = 4 q0 .. 4 q0 + 31 of the uncropped row, and
// reads each of the 8 tap rows once in 16-byte loads (col2im_kernel, a
// value a thread with its taps found by divisions, ran at 1.2 TB/s). The
// same sums in the same order: bias, tap u mod 4 at column u / 4, tap
// u mod 4 + 4 at column u / 4 - 1. The block's outputs go through shared
// memory so that the cropped row (any alignment) is written in whole runs.
constexpr int kCol2imWThreads = 128, kCol2imWStride = 4, kCol2imWCols = 8;
constexpr int kCol2imWOut = kCol2imWCols * kCol2imWStride;  // outputs a thread
template <typename T>
__global__ void __launch_bounds__(kCol2imWThreads)
    col2im_w_pairs_kernel(const T* __restrict__ cols, float* __restrict__ out, const float* __restrict__ bias, int C,
                          int W, int w0, int Wc, int64_t ld, Act act) {
    __shared__ float tile[kCol2imWThreads * (kCol2imWOut + 1)];  // a padded row per thread: no bank conflicts
    const int64_t row = blockIdx.y;                               // b * C + c
    const int q0 = (int(blockIdx.x) * kCol2imWThreads + int(threadIdx.x)) * kCol2imWCols;
    const T* taps = cols + row * (2 * kCol2imWStride) * ld;
    const float b = bias ? bias[row % C] : 0.0f;
    float first[kCol2imWStride][kVec], second[kCol2imWStride][kVec], before[kCol2imWStride];
    const bool inside = q0 < W;  // (then q0 + 8 <= ld: ld and q0 are multiples of 8)
#pragma unroll
    for (int j = 0; j < kCol2imWStride; j++) {
        if (inside) {
            load8(taps + j * ld + q0, first[j]);
            load8(taps + (j + kCol2imWStride) * ld + q0, second[j]);
        }
        before[j] = q0 >= 1 && q0 - 1 < W ? to_float(taps[(j + kCol2imWStride) * ld + q0 - 1]) : 0.0f;
    }
    float* mine = tile + threadIdx.x * (kCol2imWOut + 1);
#pragma unroll
    for (int e = 0; e < kCol2imWCols; e++) {
        const int q = q0 + e;
#pragma unroll
        for (int j = 0; j < kCol2imWStride; j++) {
            float acc = b;
            if (q < W) acc += first[j][e];
            if (q >= 1 && q - 1 < W) acc += e == 0 ? before[j] : second[j][e - 1];
            mine[e * kCol2imWStride + j] = activate(acc, act);
        }
    }
    __syncthreads();
    constexpr int kBlockOut = kCol2imWThreads * kCol2imWOut;
    const int u0 = int(blockIdx.x) * kBlockOut;
    float* orow = out + row * Wc;
    for (int i = int(threadIdx.x); i < kBlockOut; i += kCol2imWThreads) {
        const int j = u0 + i - w0;
        if (j >= 0 && j < Wc) orow[j] = tile[(i / kCol2imWOut) * (kCol2imWOut + 1) + i % kCol2imWOut];
    }
}

template <typename I>
__global__ void crop_act_kernel(const float* __restrict__ in, float* __restrict__ out, I Hin, I Win, I h0,
                                Divisor<I> Hc, I w0, Divisor<I> Wc, I total, Act act) {
    grid_stride_batched<kUnroll>(
        total,
        [&](I i) {
            const I row = Wc.div(i), w = i - row * Wc.value(), bc = Hc.div(row), h = row - bc * Hc.value();
            return in[(int64_t(bc) * Hin + h + h0) * Win + w + w0];
        },
        [&](I i, float v) { out[i] = activate(v, act); });
}

}  // namespace

// ------------------------------------------------------------------ host side

namespace {

// Mean and spread per segment from its `splits` partial triples.
void segment_finalize(const Ctx& ctx, const double* partial, int64_t count, int64_t splits, Spread spread,
                      double* mean, double* out) {
    if (ctx.dry || count == 0) return;
    if (splits == 1)
        segment_finalize_single_kernel<<<grid_for(count), kThreads, 0, ctx.stream>>>(partial, count, spread, mean,
                                                                                    out);
    else
        segment_finalize_kernel<<<unsigned(count), kThreads, 0, ctx.stream>>>(partial, splits, spread, mean, out);
    FD_LAUNCH_CHECK();
}

// The (count, sum, sum of squares) triples of every segment's chunks, from
// the arena (the caller's scope); *splits chunks per segment.
double* segment_partials(const Ctx& ctx, const float* x, const Segments& seg, const float* offset, int64_t* splits) {
    const int64_t size = seg.size(), count = seg.count();
    *splits = std::max<int64_t>(1, (size + kStatChunk - 1) / kStatChunk);
    double* partial = ctx.arena->alloc<double>(3 * count * *splits);
    if (ctx.dry || count == 0) return partial;
    if (count * *splits > int64_t(0x7fffffff)) throw Error("segment_stats: too many segments");
    // Chunks are multiples of 4 values, so with whole float4 rows no float4 straddles two blocks.
    const bool vec4 = seg.W % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 && kStatChunk % 4 == 0;
    FD_INDEX_DISPATCH(size, I, {
        const unsigned blocks = unsigned(count * *splits);
        if (vec4)
            segment_partial_kernel<I, true><<<blocks, kThreads, 0, ctx.stream>>>(x, seg, *splits, kStatChunk,
                                                                                Divisor<I>(seg.W / 4), offset, partial);
        else
            segment_partial_kernel<I, false><<<blocks, kThreads, 0, ctx.stream>>>(x, seg, *splits, kStatChunk,
                                                                                 Divisor<I>(seg.W), offset, partial);
    });
    FD_LAUNCH_CHECK();
    return partial;
}

}  // namespace

void segment_stats(const Ctx& ctx, const float* x, const Segments& seg, Spread spread, double* mean, double* out,
                   const float* offset) {
    int64_t splits = 1;
    const double* partial = segment_partials(ctx, x, seg, offset, &splits);
    segment_finalize(ctx, partial, seg.count(), splits, spread, mean, out);
}

void group_norm_coef(const Ctx& ctx, const double* partial, int64_t splits, const Segments& seg, const float* weight,
                     const float* bias, const float* offset, float eps, float2* coef) {
    const int64_t count = seg.count();
    if (ctx.dry || count == 0) return;
    if (seg.C % seg.G != 0) throw Error("group_norm: channels not divisible by groups");
    if (count > int64_t(0x7fffffff)) throw Error("group_norm: too many segments");
    // kThreads, as segment_finalize_kernel: the same order of additions for any number of splits.
    group_norm_coef_kernel<<<unsigned(count), kThreads, 0, ctx.stream>>>(partial, splits, seg, weight, bias, offset,
                                                                         eps, coef);
    FD_LAUNCH_CHECK();
}

void inverse_std(const Ctx& ctx, const double* std, int64_t B, double* inv) {
    if (ctx.dry || B == 0) return;
    inv_std_kernel<<<grid_for(B), kThreads, 0, ctx.stream>>>(std, B, inv);
    FD_LAUNCH_CHECK();
}

void normalize_items(const Ctx& ctx, float* x, int64_t B, int64_t n, const InputNorm& norm) {
    if (ctx.dry || B * n == 0) return;
    FD_INDEX_DISPATCH(B * n, I,
                      normalize_kernel<I><<<grid_for(B * n), kThreads, 0, ctx.stream>>>(x, I(B * n), Divisor<I>(n),
                                                                                         norm.mean, norm.inv));
    FD_LAUNCH_CHECK();
}

namespace {

// The GroupNorm's affine map per (item, channel, row), from the arena (the caller's scope).
float2* group_norm_coefficients(const Ctx& ctx, const float* x, const Segments& seg, const float* weight,
                                const float* bias, float eps, const float* input_bias) {
    if (seg.C % seg.G != 0) throw Error("group_norm: channels not divisible by groups");
    const int64_t rows = seg.B * seg.C * seg.R;
    float2* coef = ctx.arena->alloc<float2>(rows);
    ArenaScope scope(*ctx.arena);
    int64_t splits = 1;
    const double* partial = segment_partials(ctx, x, seg, input_bias, &splits);
    group_norm_coef(ctx, partial, splits, seg, weight, bias, input_bias, eps, coef);
    return coef;
}

}  // namespace

void group_norm(const Ctx& ctx, float* x, const Segments& seg, const float* weight, const float* bias, float eps,
                Act act, const float* input_bias) {
    ArenaScope scope(*ctx.arena);
    const float2* coef = group_norm_coefficients(ctx, x, seg, weight, bias, eps, input_bias);
    if (ctx.dry || seg.numel() == 0) return;
    const int64_t total = seg.numel();
    FD_INDEX_DISPATCH(total, I,
                      group_norm_apply_kernel<I><<<grid_for(total), kThreads, 0, ctx.stream>>>(
                          x, I(total), Divisor<I>(seg.W), coef, act));
    FD_LAUNCH_CHECK();
}

namespace {

// GroupNorm(1, C) of token-major x [B, N, C] in place from its items'
// partial triples (`splits` an item): their mean and inverse deviation,
// then the affine map.
void group_norm_tokens_from_partials(const Ctx& ctx, float* x, int64_t B, int64_t N, int64_t C,
                                     const double* partial, int64_t splits, const float* weight, const float* bias,
                                     float eps) {
    ArenaScope scope(*ctx.arena);
    double* mean = ctx.arena->alloc<double>(B);
    double* inv = ctx.arena->alloc<double>(B);
    if (ctx.dry || B * N * C == 0) return;
    mean_inv_sqrt_kernel<<<unsigned(B), kThreads, 0, ctx.stream>>>(partial, splits, eps, mean, inv);
    FD_LAUNCH_CHECK();
    FD_INDEX_DISPATCH(B * N * C, I,
                      group_norm_tokens_apply_kernel<I><<<grid_for(B * N * C), kThreads, 0, ctx.stream>>>(
                          x, I(B * N * C), Divisor<I>(N * C), Divisor<I>(C), mean, inv, weight, bias));
    FD_LAUNCH_CHECK();
}

}  // namespace

void group_norm_tokens(const Ctx& ctx, float* x, int64_t B, int64_t N, int64_t C, const float* weight,
                       const float* bias, float eps) {
    ArenaScope scope(*ctx.arena);
    Segments seg;
    seg.B = B, seg.W = N * C;
    int64_t splits = 1;
    const double* partial = segment_partials(ctx, x, seg, nullptr, &splits);
    group_norm_tokens_from_partials(ctx, x, B, N, C, partial, splits, weight, bias, eps);
}

namespace {

// The register kernel for rows of up to kRegisterRow values (y null: the LayerNorm alone).
constexpr int64_t kRegisterRow = 32 * 32;

void layer_norm_regs(const Ctx& ctx, const float* x, float* x_out, const float* y, const float* bias,
                     const float* gamma, void* out, DType dt, int64_t rows, int64_t C, const float* weight,
                     const float* norm_bias, float eps) {
    const int warps = kThreads / 32;
    const unsigned blocks = unsigned((rows + warps - 1) / warps);
    auto launch = [&](auto vec, auto per) {
        constexpr int VEC = decltype(vec)::value, PER = decltype(per)::value;
        FD_DISPATCH(dt, T,
                    layer_norm_regs_kernel<T, VEC, PER><<<blocks, kThreads, 0, ctx.stream>>>(
                        x, x_out, y, bias, gamma, static_cast<T*>(out), rows, int(C), weight, norm_bias, eps));
    };
    using std::integral_constant;
    const bool runs = C % 4 == 0 && aligned16(x) && (!y || aligned16(y)) && aligned16(out);
    if (runs && C <= 32 * 4 * 4)
        launch(integral_constant<int, 4>(), integral_constant<int, 4>());
    else if (runs)
        launch(integral_constant<int, 4>(), integral_constant<int, 8>());
    else
        launch(integral_constant<int, 1>(), integral_constant<int, 32>());
    FD_LAUNCH_CHECK();
}

}  // namespace

void layer_norm(const Ctx& ctx, const float* x, void* y, DType dt, int64_t rows, int64_t C, const float* weight,
                const float* bias, float eps) {
    if (ctx.dry || rows == 0) return;
    if (C <= kRegisterRow)
        return layer_norm_regs(ctx, x, nullptr, nullptr, nullptr, nullptr, y, dt, rows, C, weight, bias, eps);
    const int warps = kThreads / 32;
    const unsigned blocks = unsigned((rows + warps - 1) / warps);
    FD_DISPATCH(dt, T,
                layer_norm_kernel<T><<<blocks, kThreads, 0, ctx.stream>>>(x, static_cast<T*>(y), rows, C, weight,
                                                                          bias, eps));
    FD_LAUNCH_CHECK();
}

void residual_layer_norm(const Ctx& ctx, float* x, const float* y, const float* bias, const float* gamma, void* out,
                         DType dt, int64_t rows, int64_t C, const float* weight, const float* norm_bias, float eps) {
    if (C > kRegisterRow) {
        residual(ctx, x, y, bias, gamma, rows, C);
        return layer_norm(ctx, x, out, dt, rows, C, weight, norm_bias, eps);
    }
    if (ctx.dry || rows == 0) return;
    layer_norm_regs(ctx, x, x, y, bias, gamma, out, dt, rows, C, weight, norm_bias, eps);
}

void gelu(const Ctx& ctx, float* x, int64_t n) {
    if (ctx.dry || n == 0) return;
    gelu_kernel<<<grid_for(n), kThreads, 0, ctx.stream>>>(x, n);
    FD_LAUNCH_CHECK();
}

void bias_act(const Ctx& ctx, const float* in, void* out, DType dt, const float* bias, int64_t outer, int64_t C,
              int64_t inner, Act act) {
    const int64_t n = outer * C * inner;
    if (ctx.dry || n == 0) return;
    if (dt == DType::F32 && out == in && !bias && act == Act::None) return;
    FD_DISPATCH(dt, T,
                FD_INDEX_DISPATCH(n, I,
                                  bias_act_kernel<T, I><<<grid_for(n), kThreads, 0, ctx.stream>>>(
                                      in, static_cast<T*>(out), bias, I(n), Divisor<I>(C), Divisor<I>(inner), act)));
    FD_LAUNCH_CHECK();
}

void bias_act_inplace(const Ctx& ctx, void* x, DType t, const float* bias, int64_t outer, int64_t C, int64_t inner,
                      Act act) {
    const int64_t n = outer * C * inner;
    if (ctx.dry || n == 0 || (!bias && act == Act::None)) return;
    if (inner == 1 && C % kVec == 0 && aligned16(x)) {
        const int64_t slots = n / kVec;
        FD_DISPATCH(t, T,
                    FD_INDEX_DISPATCH(n, I,
                                      bias_act_rows_vec_kernel<T, I><<<grid_for(slots), kThreads, 0, ctx.stream>>>(
                                          static_cast<T*>(x), bias, I(slots), Divisor<I>(C / kVec), act)));
        FD_LAUNCH_CHECK();
        return;
    }
    FD_DISPATCH(t, T,
                FD_INDEX_DISPATCH(n, I,
                                  bias_act_inplace_kernel<T, I><<<grid_for(n), kThreads, 0, ctx.stream>>>(
                                      static_cast<T*>(x), bias, I(n), Divisor<I>(C), Divisor<I>(inner), act)));
    FD_LAUNCH_CHECK();
}

void convert(const Ctx& ctx, const float* in, void* out, DType dt, int64_t n) {
    if (ctx.dry || n == 0) return;
    if (dt == DType::F32) {
        if (out != in) FD_CUDA(cudaMemcpyAsync(out, in, n * sizeof(float), cudaMemcpyDeviceToDevice, ctx.stream));
        return;
    }
    FD_DISPATCH(dt, T,
                convert_kernel<T><<<grid_for(n), kThreads, 0, ctx.stream>>>(in, static_cast<T*>(out), n));
    FD_LAUNCH_CHECK();
}

void conv_weight_taps(const Ctx& ctx, const float* in, void* out, DType dt, int64_t cout, int64_t cin, int64_t taps) {
    const int64_t n = cout * cin * taps;
    if (ctx.dry || n == 0) return;
    FD_DISPATCH(dt, T,
                conv_weight_taps_kernel<T><<<grid_for(n), kThreads, 0, ctx.stream>>>(in, static_cast<T*>(out), cout,
                                                                                      cin, taps));
    FD_LAUNCH_CHECK();
}

void convert_rows(const Ctx& ctx, const float* in, void* out, DType dt, int64_t rows, int64_t n, int64_t ld) {
    if (ld < n) throw Error("internal error: convert_rows stride");
    if (ld == n) return convert(ctx, in, out, dt, rows * n);
    if (ctx.dry || rows * n == 0) return;
    FD_DISPATCH(dt, T,
                FD_INDEX_DISPATCH(rows * n, I,
                                  convert_rows_kernel<T, I><<<grid_for(rows * n), kThreads, 0, ctx.stream>>>(
                                      in, static_cast<T*>(out), I(rows * n), Divisor<I>(n), I(ld))));
    FD_LAUNCH_CHECK();
}

void glu(const Ctx& ctx, const void* x, DType xt, int64_t ld, float* y, int64_t B, int64_t C, int64_t inner,
         const float* bias, const FreqEmbedding* emb) {
    const int64_t n = B * C * inner;
    if (ld == 0) ld = inner;
    if (ld < inner) throw Error("internal error: glu stride");
    if (emb && emb->F * emb->T != inner) throw Error("internal error: glu: frequency embedding shape");
    if (ctx.dry || n == 0) return;
    const bool vec = inner % kVec == 0 && ld % kVec == 0 && aligned16(x) && aligned16(y);
    if (vec && emb && emb->T % kVec != 0) {  // the embedding's rows not whole vectors: a pass of its own
        glu(ctx, x, xt, ld, y, B, C, inner, bias);
        add_freq_embedding(ctx, y, B, C, *emb);
        return;
    }
    // The gate half sits at (b * 2C + C + c) * ld + k < 2 B C ld.
    if (vec) {
        const int64_t slots = n / kVec;
        const int64_t row_vecs = emb ? emb->T / kVec : 1;
        const float* table = emb ? emb->table : nullptr;
        const float k = emb ? emb->k : 0.0f, s = emb ? emb->s : 0.0f;
        FD_DISPATCH(xt, T,
                    FD_INDEX_DISPATCH(2 * B * C * ld, I, {
                        if (emb)
                            glu_vec_kernel<T, I, true><<<grid_for(slots), kThreads, 0, ctx.stream>>>(
                                static_cast<const T*>(x), y, I(slots), Divisor<I>(C), Divisor<I>(inner / kVec), I(ld),
                                bias, table, Divisor<I>(row_vecs), k, s);
                        else
                            glu_vec_kernel<T, I, false><<<grid_for(slots), kThreads, 0, ctx.stream>>>(
                                static_cast<const T*>(x), y, I(slots), Divisor<I>(C), Divisor<I>(inner / kVec), I(ld),
                                bias, table, Divisor<I>(row_vecs), k, s);
                    }));
        FD_LAUNCH_CHECK();
        return;
    }
    FD_DISPATCH(xt, T,
                FD_INDEX_DISPATCH(2 * B * C * ld, I,
                                  glu_kernel<T, I><<<grid_for(n), kThreads, 0, ctx.stream>>>(
                                      static_cast<const T*>(x), y, I(n), Divisor<I>(C), Divisor<I>(inner), I(ld),
                                      bias)));
    FD_LAUNCH_CHECK();
    if (emb) add_freq_embedding(ctx, y, B, C, *emb);
}

void group_norm_glu_residual(const Ctx& ctx, const float* y, float* x, int64_t B, int64_t C, int64_t R, int64_t W,
                             const float* weight, const float* bias, float eps, const float* input_bias,
                             const float* scale) {
    ArenaScope scope(*ctx.arena);
    Segments seg;
    seg.B = B, seg.C = 2 * C, seg.G = 1, seg.R = R, seg.W = W;
    const float2* coef = group_norm_coefficients(ctx, y, seg, weight, bias, eps, input_bias);
    const int64_t n = B * C * R * W;
    if (ctx.dry || n == 0) return;
    FD_INDEX_DISPATCH(2 * n, I,
                      glu_norm_residual_kernel<I><<<grid_for(n), kThreads, 0, ctx.stream>>>(
                          y, x, scale, coef, I(n), Divisor<I>(C), Divisor<I>(R), Divisor<I>(W)));
    FD_LAUNCH_CHECK();
}

void add(const Ctx& ctx, float* x, const float* y, int64_t n) {
    if (ctx.dry || n == 0) return;
    add_kernel<<<grid_for(n), kThreads, 0, ctx.stream>>>(x, y, n);
    FD_LAUNCH_CHECK();
}

void add_rows(const Ctx& ctx, float* y, const float* inject, int64_t BC, int64_t H, int64_t W) {
    const int64_t n = BC * H * W;
    if (ctx.dry || n == 0) return;
    FD_INDEX_DISPATCH(n, I,
                      add_rows_kernel<I><<<grid_for(n), kThreads, 0, ctx.stream>>>(y, inject, I(n), Divisor<I>(H * W),
                                                                                    Divisor<I>(W)));
    FD_LAUNCH_CHECK();
}

void add_freq_embedding(const Ctx& ctx, float* x, int64_t B, int64_t C, const FreqEmbedding& emb) {
    const float* table = emb.table;
    const int64_t F = emb.F, T = emb.T;
    const float k = emb.k, s = emb.s;
    const int64_t n = B * C * F * T;
    if (ctx.dry || n == 0) return;
    if (T % kVec == 0 && aligned16(x)) {
        FD_INDEX_DISPATCH(n, I,
                          freq_embedding_vec_kernel<I><<<grid_for(n / kVec), kThreads, 0, ctx.stream>>>(
                              x, table, I(C), Divisor<I>(F), Divisor<I>(T / kVec), I(n / kVec), k, s));
    } else {
        FD_INDEX_DISPATCH(n, I,
                          freq_embedding_kernel<I><<<grid_for(n), kThreads, 0, ctx.stream>>>(x, table, I(B), I(C),
                                                                                             I(F), I(T), k, s));
    }
    FD_LAUNCH_CHECK();
}

void residual(const Ctx& ctx, float* x, const float* y, const float* bias, const float* gamma, int64_t rows,
              int64_t C) {
    const int64_t n = rows * C;
    if (ctx.dry || n == 0) return;
    FD_INDEX_DISPATCH(n, I,
                      residual_kernel<I><<<grid_for(n), kThreads, 0, ctx.stream>>>(x, y, bias, gamma, I(n),
                                                                                    Divisor<I>(C)));
    FD_LAUNCH_CHECK();
}

void residual_group_norm_tokens(const Ctx& ctx, float* x, const float* y, const float* bias, const float* gamma,
                                int64_t B, int64_t N, int64_t C, const float* weight, const float* norm_bias,
                                float eps) {
    const int64_t size = N * C, splits = std::max<int64_t>(1, (size + kStatChunk - 1) / kStatChunk);
    if (C % 4 != 0 || !aligned16(x) || !aligned16(y) || B * splits > int64_t(0x7fffffff) ||
        C > int64_t(0x7fffffff)) {
        residual(ctx, x, y, bias, gamma, B * N, C);
        group_norm_tokens(ctx, x, B, N, C, weight, norm_bias, eps);
        return;
    }
    ArenaScope scope(*ctx.arena);
    double* partial = ctx.arena->alloc<double>(3 * B * splits);
    if (!ctx.dry && B * size > 0) {
        residual_stats_kernel<<<unsigned(B * splits), kThreads, 0, ctx.stream>>>(x, y, bias, gamma, size, splits,
                                                                                  int(C), partial);
        FD_LAUNCH_CHECK();
    }
    group_norm_tokens_from_partials(ctx, x, B, N, C, partial, splits, weight, norm_bias, eps);
}

void add_broadcast(const Ctx& ctx, float* x, const float* table, float weight, int64_t B, int64_t n) {
    if (ctx.dry || B * n == 0) return;
    FD_INDEX_DISPATCH(B * n, I,
                      add_broadcast_kernel<I><<<grid_for(B * n), kThreads, 0, ctx.stream>>>(x, table, weight,
                                                                                             I(B * n), I(n)));
    FD_LAUNCH_CHECK();
}

void copy(const Ctx& ctx, float* dst, const float* src, int64_t n) {
    if (ctx.dry || n == 0) return;
    FD_CUDA(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, ctx.stream));
}

void to_tokens(const Ctx& ctx, const float* x, float* tok, int64_t B, int64_t C, int64_t Fr, int64_t T) {
    const int64_t n = B * C * Fr * T;
    if (ctx.dry || n == 0) return;
    // For each (b, f): x[b, :, f, :] [C, T] (row stride Fr * T) -> tok[b, t * Fr + f, :] [T, C] (row stride Fr * C).
    TransposeMap m;
    m.Z2 = Fr;
    m.in_a1 = C * Fr * T, m.in_a2 = T, m.in_r = Fr * T;
    m.out_a1 = T * Fr * C, m.out_a2 = C, m.out_s = Fr * C;
    m.R = C, m.S = T;
    if (launch_transpose(ctx, x, tok, B * Fr, m)) return;
    FD_INDEX_DISPATCH(n, I,
                      to_tokens_kernel<I><<<grid_for(n), kThreads, 0, ctx.stream>>>(x, tok, I(B), I(C), I(Fr), I(T)));
    FD_LAUNCH_CHECK();
}

void from_tokens(const Ctx& ctx, const float* tok, float* x, int64_t B, int64_t C, int64_t Fr, int64_t T) {
    const int64_t n = B * C * Fr * T;
    if (ctx.dry || n == 0) return;
    // For each (b, f): tok[b, t * Fr + f, :] [T, C] -> x[b, :, f, :] [C, T].
    TransposeMap m;
    m.Z2 = Fr;
    m.in_a1 = T * Fr * C, m.in_a2 = C, m.in_r = Fr * C;
    m.out_a1 = C * Fr * T, m.out_a2 = T, m.out_s = Fr * T;
    m.R = T, m.S = C;
    if (launch_transpose(ctx, tok, x, B * Fr, m)) return;
    FD_INDEX_DISPATCH(n, I,
                      from_tokens_kernel<I><<<grid_for(n), kThreads, 0, ctx.stream>>>(tok, x, I(B), I(C), I(Fr),
                                                                                      I(T)));
    FD_LAUNCH_CHECK();
}

void softmax_rows(const Ctx& ctx, const float* s, void* p, DType dt, int64_t rows, int64_t cols) {
    if (ctx.dry || rows == 0) return;
    if (rows > int64_t(0x7fffffff)) throw Error("softmax_rows: too many rows");
    FD_DISPATCH(dt, T,
                softmax_rows_kernel<T><<<unsigned(rows), kThreads, 0, ctx.stream>>>(s, static_cast<T*>(p), cols));
    FD_LAUNCH_CHECK();
}

void im2col(const Ctx& ctx, const float* x, void* cols, DType dt, int64_t B, int64_t Cin, int64_t H, int64_t W,
            const ConvGeom& g, int64_t Ho, int64_t Wo, int64_t ld, int64_t item_rows, const InputNorm* norm) {
    const InputNorm nm = norm ? *norm : InputNorm{};
    if ((nm.mean == nullptr) != (nm.inv == nullptr)) throw Error("internal error: im2col: half an input norm");
    const int64_t K = Cin * g.kh * g.kw, N = Ho * Wo, rows = B * K;
    if (ld == 0) ld = N;
    if (item_rows == 0) item_rows = K;
    if (ld < N || item_rows < K) throw Error("internal error: im2col stride");
    if (ctx.dry || rows * N == 0) return;
    if (item_rows > K) fill_rows(ctx, offset(cols, K * ld, dt), dt, B, item_rows - K, ld, item_rows * ld, 1.0f);
    if (H * W >= (int64_t(1) << 31)) throw Error("im2col: input plane too large");
    if (ld % kIm2colRun == 0 && H == 1 && Ho == 1 && g.kh == 1 && g.ph == 0 && g.sw > 1 &&
        strided_span(g.sw, g.kw, g.dw) <= kStridedSpan && B * Cin <= 65535 && aligned16(cols)) {
        const dim3 grid(unsigned((N + kStridedOutputs - 1) / kStridedOutputs), unsigned(B * Cin));
        FD_DISPATCH(dt, T,
                    FD_INDEX_DISPATCH(N, I,
                                      im2col_strided_kernel<T, I><<<grid, kThreads, 0, ctx.stream>>>(
                                          x, static_cast<T*>(cols), int(W), g.kw, g.sw, g.dw, g.pw, I(N), ld,
                                          int(Cin), item_rows, nm)));
        FD_LAUNCH_CHECK();
        return;
    }
    const bool square3 = g.kh == 3 && g.kw == 3 && g.sh == 1 && g.sw == 1 && g.ph == 1 && g.pw == 1 && g.dh == 1 &&
                         g.dw == 1 && Ho == H && Wo == W;
    if (ctx.im2col_3x3 && square3 && W % kIm2colRun == 0 && ld % kIm2colRun == 0 && !nm.mean && aligned16(x) &&
        aligned16(cols)) {
        const int64_t runs = B * Cin * H * (W / kIm2colRun);
        FD_DISPATCH(dt, T,
                    FD_INDEX_DISPATCH(std::max(B * item_rows * ld, B * Cin * H * W), I,
                                      im2col_3x3_kernel<T, I><<<grid_for(runs), kThreads, 0, ctx.stream>>>(
                                          x, static_cast<T*>(cols), I(runs), Divisor<I>(H * (W / kIm2colRun)),
                                          Divisor<I>(W / kIm2colRun), Divisor<I>(Cin), int(H), int(W), ld,
                                          item_rows)));
        FD_LAUNCH_CHECK();
        return;
    }
    if (ld % kIm2colRun == 0) {
        const dim3 grid = grid_2d(rows, (N + kIm2colRun - 1) / kIm2colRun);
        const auto launch = [&](auto unit_stride) {
            FD_DISPATCH(dt, T,
                        FD_INDEX_DISPATCH(B * item_rows * ld, I,
                                          im2col_runs_kernel<T, I, decltype(unit_stride)::value>
                                          <<<grid, kThreads, 0, ctx.stream>>>(
                                              x, static_cast<T*>(cols), I(rows), Divisor<I>(K),
                                              Divisor<I>(g.kh * g.kw), Divisor<I>(g.kw), I(Cin), int(H), int(W), g,
                                              Divisor<I>(Wo), I(N), ld, item_rows, nm)));
        };
        if (g.sw == 1 && (Wo % kIm2colRun == 0 || Ho == 1))
            launch(std::true_type());
        else
            launch(std::false_type());
        FD_LAUNCH_CHECK();
        return;
    }
    const dim3 grid = grid_2d(rows, N);
    FD_DISPATCH(dt, T,
                FD_INDEX_DISPATCH(B * item_rows * ld, I,
                                  im2col_kernel<T, I><<<grid, kThreads, 0, ctx.stream>>>(
                                      x, static_cast<T*>(cols), I(rows), Divisor<I>(K), Divisor<I>(g.kh * g.kw),
                                      Divisor<I>(g.kw), I(Cin), int(H), int(W), g, Divisor<I>(Wo), I(N), ld,
                                      item_rows, nm)));
    FD_LAUNCH_CHECK();
}

void fill_rows(const Ctx& ctx, void* base, DType dt, int64_t items, int64_t rows, int64_t ld, int64_t pitch,
               float value) {
    const int64_t width = rows * ld, total = items * width;
    if (ctx.dry || total == 0) return;
    FD_DISPATCH(dt, T,
                FD_INDEX_DISPATCH(total, I,
                                  fill_rows_kernel<T, I><<<grid_for(total), kThreads, 0, ctx.stream>>>(
                                      static_cast<T*>(base), Divisor<I>(I(width)), pitch, I(total), value)));
    FD_LAUNCH_CHECK();
}

void pad_planes(const Ctx& ctx, const float* x, void* out, DType dt, int64_t BC, int64_t H, int64_t W, int ph, int pw,
                int64_t plane) {
    if (plane < (H + 2 * ph) * (W + 2 * pw)) throw Error("pad_planes: plane too small");
    if (ctx.dry || BC * plane == 0) return;
    FD_DISPATCH(dt, T,
                FD_INDEX_DISPATCH(BC * plane, I,
                                  pad_planes_kernel<T, I><<<grid_for(BC * plane), kThreads, 0, ctx.stream>>>(
                                      x, static_cast<T*>(out), I(BC), I(H), I(W), ph, pw, I(plane))));
    FD_LAUNCH_CHECK();
}

void crop_bias_act(const Ctx& ctx, const float* full, float* out, const float* bias, int64_t B, int64_t C, int64_t H,
                   int64_t Wfull, int64_t W, Act act) {
    if (W > Wfull) throw Error("crop_bias_act: crop wider than the input");
    const int64_t n = B * C * H * W;
    if (ctx.dry || n == 0) return;
    FD_INDEX_DISPATCH(B * C * H * Wfull, I,
                      crop_bias_act_kernel<I><<<grid_for(n), kThreads, 0, ctx.stream>>>(
                          full, out, bias, Divisor<I>(C), Divisor<I>(H), I(Wfull), Divisor<I>(W), I(n), act));
    FD_LAUNCH_CHECK();
}

void col2im(const Ctx& ctx, const void* cols, DType ct, float* out, const float* bias, int64_t B, int64_t C, int64_t H,
            int64_t W, int kh, int kw, int sh, int sw, int64_t h0, int64_t Hc, int64_t w0, int64_t Wc, Act act,
            int64_t ld) {
    const int64_t Hf = (H - 1) * sh + kh, Wf = (W - 1) * sw + kw;
    if (ld == 0) ld = H * W;
    if (ld < H * W) throw Error("internal error: col2im stride");
    if (h0 < 0 || w0 < 0 || h0 + Hc > Hf || w0 + Wc > Wf) throw Error("col2im: crop outside the output");
    if ((kh + sh - 1) / sh > kCol2imMaxRowTaps) throw Error("internal error: col2im: kernel taller than 8 strides");
    const int per =
        int(std::clamp<int64_t>((Wc + kCol2imThreads - 1) / kCol2imThreads, 1, kCol2imPerThread));
    const int64_t n = B * C * Hc * Wc, run = int64_t(per) * kCol2imThreads, runs = (Wc + run - 1) / run,
                  blocks = B * C * Hc * runs;
    if (ctx.dry || n == 0) return;
    if (kw == 1 && sw == 1 && W % kVec == 0 && Wc % kVec == 0 && w0 % kVec == 0 && ld % kVec == 0 &&
        aligned16(cols) && aligned16(out)) {
        const int64_t slots = n / kVec;
        FD_DISPATCH(ct, T,
                    FD_INDEX_DISPATCH(std::max(n, B * C * Hf * Wf), I,
                                      col2im_rows_vec_kernel<T, I><<<grid_for(slots), kThreads, 0, ctx.stream>>>(
                                          static_cast<const T*>(cols), out, bias, Divisor<I>(C), I(H), I(W), kh, sh,
                                          I(h0), Divisor<I>(Hc), I(w0), I(Wc), Divisor<I>(Wc / kVec), I(slots), ld,
                                          act)));
        FD_LAUNCH_CHECK();
        return;
    }
    // The time decoders' [1, 8] kernels of stride 4, rows of int32 positions.
    const int64_t int_room = int64_t(0x7fffffff) - int64_t(kCol2imWThreads) * kCol2imWOut;
    if (kh == 1 && sh == 1 && H == 1 && Hc == 1 && h0 == 0 && kw == 2 * kCol2imWStride && sw == kCol2imWStride &&
        ld % kVec == 0 && aligned16(cols) && B * C <= 65535 && w0 + Wc <= int_room && ld <= int_room) {
        const int64_t per_block = int64_t(kCol2imWThreads) * kCol2imWOut;
        const dim3 grid(unsigned((w0 + Wc + per_block - 1) / per_block), unsigned(B * C));
        FD_DISPATCH(ct, T,
                    col2im_w_pairs_kernel<T><<<grid, kCol2imWThreads, 0, ctx.stream>>>(
                        static_cast<const T*>(cols), out, bias, int(C), int(W), int(w0), int(Wc), ld, act));
        FD_LAUNCH_CHECK();
        return;
    }
    if (blocks > int64_t(0x7fffffff)) throw Error("col2im: output too large");
    FD_DISPATCH(ct, T,
                FD_INDEX_DISPATCH(std::max(n, B * C * Hf * Wf), I,
                                  col2im_kernel<T, I><<<unsigned(blocks), kCol2imThreads, 0, ctx.stream>>>(
                                      static_cast<const T*>(cols), out, bias, I(C), I(H), I(W), kh, kw, sh,
                                      Divisor<I>(sw), I(h0), I(Hc), I(w0), I(Wc), I(runs), per, ld, act)));
    FD_LAUNCH_CHECK();
}

void crop_act(const Ctx& ctx, const float* in, float* out, int64_t BC, int64_t Hin, int64_t Win, int64_t h0,
              int64_t Hc, int64_t w0, int64_t Wc, Act act) {
    if (h0 < 0 || w0 < 0 || h0 + Hc > Hin || w0 + Wc > Win) throw Error("crop_act: crop outside the input");
    const int64_t n = BC * Hc * Wc;
    if (ctx.dry || n == 0) return;
    FD_INDEX_DISPATCH(BC * Hin * Win, I,
                      crop_act_kernel<I><<<grid_for(n), kThreads, 0, ctx.stream>>>(
                          in, out, I(Hin), I(Win), I(h0), Divisor<I>(Hc), I(w0), Divisor<I>(Wc), I(n), act));
    FD_LAUNCH_CHECK();
}

}  // namespace fastdemucs::cuda
