#include "cuda/dconv.h"

#include <algorithm>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda/arena.h"
#include "cuda/device_utils.cuh"
#include "cuda/kernels.h"
#include "error.h"

namespace fastdemucs::cuda {
namespace {

// A block covers kRowThreads consecutive positions w of one row (b, r), a
// thread each, so the row's coefficients sit in shared memory and the
// block's statistics are one partial of the row's segment.
constexpr int kRowThreads = 128;
constexpr float kNormEps = 1e-5f;  // the DConv's GroupNorms (PyTorch's default)
constexpr int kInputGroup = 4;     // input channels whose loads are in flight together
constexpr int kOutputGroup = 8;    // output channels read, updated and written together

// Shared memory of each kernel in floats (hidden padded to MaxHidden, whose
// padding weights are zero so the inner loops need no bounds).
constexpr size_t in_smem_floats(int channels, int max_hidden) { return size_t(channels) * 3 * max_hidden; }
// weights [2C][MaxHidden], bias [2C], the row's coefficients of y [2C] and h
// [MaxHidden] (float2 each), LayerScale [C].
constexpr size_t out_smem_floats(int channels, int max_hidden) {
    const size_t c2 = size_t(2 * channels);
    return c2 * max_hidden + c2 + 2 * c2 + 2 * size_t(max_hidden) + size_t(channels);
}
// Shared memory per block: above the 48 KB default each launch opts in;
// past ~100 KB fewer than two blocks would fit an SM.
constexpr size_t kSmemDefault = 48 * 1024, kSmemLimit = 100 * 1024;

// What a block may opt in to on the current device (less on some GPUs:
// sm_75 64 KB), minus the kernels' static shared memory; kSmemLimit when
// no device answers (CPU-only builds and tests ask only whether a shape fits).
size_t smem_limit() {
    int device = 0, optin = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
        cudaGetLastError();
        return kSmemLimit;
    }
    return std::min(kSmemLimit, size_t(optin) - 1024);
}

// The hidden size a kernel is compiled for: the next of 8, 12, 16, 24, 32
// (multiples of 4: weight rows stay 16-byte vectors; padding costs its share
// of the multiply-adds, 25% when hidden 12 and 24 ran as 16 and 32).
int max_hidden_for(int hidden) {
    for (int mh : {8, 12, 16, 24}) {
        if (hidden <= mh) return mh;
    }
    return 32;
}

// Launch configuration of a kernel with `bytes` of dynamic shared memory
// (set on every launch: the attribute belongs to the context, which
// release_gpus() may have replaced).
template <typename Kernel>
void allow_shared(Kernel kernel, size_t bytes) {
    if (bytes > kSmemDefault)
        FD_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

// A block covers kRowThreads * P consecutive positions of one row (b, r);
// thread t takes positions w + e * kRowThreads (e < P: coalesced along the
// row), so the weights in shared memory serve P positions per load.
struct Row {
    int64_t b, r;
    int w;      // the thread's first position
    int count;  // valid positions of the block
};
template <int P>
__device__ __forceinline__ Row block_row(int64_t R, int W, int wblocks) {
    const int64_t row = blockIdx.x / wblocks;
    const int wb = int(blockIdx.x - row * wblocks);
    Row p;
    p.b = row / R, p.r = row - p.b * R;
    p.w = wb * kRowThreads * P + int(threadIdx.x);
    p.count = min(kRowThreads * P, W - wb * kRowThreads * P);
    return p;
}
__device__ __forceinline__ int position(const Row& p, int e) { return p.w + e * kRowThreads; }

__device__ __forceinline__ void write_partial(double* partial, double n, double sum, double sq, double* red) {
    sum = block_sum(sum, red);
    sq = block_sum(sq, red);
    if (threadIdx.x == 0) {
        partial[3 * blockIdx.x] = n;
        partial[3 * blockIdx.x + 1] = sum;
        partial[3 * blockIdx.x + 2] = sq;
    }
}

// h [B, hidden, R, W] = conv3(x) without bias (the norm takes it), and the
// partial statistics of h + bias per block. `table` is dconv_in_table's
// [C * 3][MaxHidden] layout, copied to shared memory as it lies.
template <int MaxHidden, int P>
__global__ void __launch_bounds__(kRowThreads)
    dconv_in_kernel(const float* __restrict__ x, int C, int64_t R, int W, int dilation, int hidden,
                    const float* __restrict__ table, const float* __restrict__ bias, float* __restrict__ h,
                    double* __restrict__ partial, int wblocks) {
    extern __shared__ float4 smem4[];
    __shared__ double red[32];
    const float4* table4 = reinterpret_cast<const float4*>(table);
    for (int i = threadIdx.x; i < C * 3 * MaxHidden / 4; i += blockDim.x) smem4[i] = table4[i];
    __syncthreads();
    const float* ws = reinterpret_cast<const float*>(smem4);  // [C * 3][MaxHidden]
    const Row p = block_row<P>(R, W, wblocks);
    const int64_t plane = R * W;
    float acc[P][MaxHidden];
#pragma unroll
    for (int e = 0; e < P; e++)
#pragma unroll
        for (int k = 0; k < MaxHidden; k++) acc[e][k] = 0.0f;
    const float* xp = x + (p.b * C * R + p.r) * W;
    // Taps of position e of input channel plane q (zero outside the row).
    auto taps = [&](const float* q, float (&v)[P][3]) {
#pragma unroll
        for (int e = 0; e < P; e++) {
            const int w = position(p, e);
            const bool in = w < W;
            v[e][0] = in && w >= dilation ? q[w - dilation] : 0.0f;
            v[e][1] = in ? q[w] : 0.0f;
            v[e][2] = in && w + dilation < W ? q[w + dilation] : 0.0f;
        }
    };
    auto accumulate = [&](int ci, const float (&v)[P][3]) {
        const float* wc = ws + ci * 3 * MaxHidden;
#pragma unroll
        for (int k = 0; k < MaxHidden; k++) {
            const float w0 = wc[k], w1 = wc[MaxHidden + k], w2 = wc[2 * MaxHidden + k];
#pragma unroll
            for (int e = 0; e < P; e++) acc[e][k] = fmaf(w0, v[e][0], fmaf(w1, v[e][1], fmaf(w2, v[e][2], acc[e][k])));
        }
    };
    // Several input channels' loads are issued before their multiply-adds:
    // one load at a time per thread left the kernel latency-bound at half
    // the memory bandwidth.
    constexpr int G = (kInputGroup + P - 1) / P;
    int ci = 0;
    for (; ci + G <= C; ci += G, xp += G * plane) {
        float v[G][P][3];
#pragma unroll
        for (int u = 0; u < G; u++) taps(xp + u * plane, v[u]);
#pragma unroll
        for (int u = 0; u < G; u++) accumulate(ci + u, v[u]);
    }
    for (; ci < C; ci++, xp += plane) {
        float v[P][3];
        taps(xp, v);
        accumulate(ci, v);
    }
    double sum = 0.0, sq = 0.0;
    float* hp = h + (p.b * hidden * R + p.r) * W;
#pragma unroll
    for (int e = 0; e < P; e++) {
        const int w = position(p, e);
        if (w >= W) continue;
#pragma unroll
        for (int k = 0; k < MaxHidden; k++) {
            if (k < hidden) {
                hp[k * plane + w] = acc[e][k];
                const double v = acc[e][k] + bias[k];
                sum += v, sq += v * v;
            }
        }
    }
    write_partial(partial, double(p.count) * hidden, sum, sq, red);
}

// The block's rows of h through its GroupNorm and GELU: hn[e][k] for the
// thread's positions (zero past hidden and past the row).
template <int MaxHidden, int P>
__device__ __forceinline__ void normalised_hidden(const float* __restrict__ h, const Row& p, int hidden, int64_t R,
                                                  int W, const float2* hc, float (&hn)[P][MaxHidden]) {
    const float* hp = h + (p.b * hidden * R + p.r) * W;
#pragma unroll
    for (int e = 0; e < P; e++) {
        const int w = position(p, e);
#pragma unroll
        for (int k = 0; k < MaxHidden; k++)
            hn[e][k] = (w < W && k < hidden) ? gelu_exact(hp[k * R * W + w] * hc[k].x + hc[k].y) : 0.0f;
    }
}

// y[e] = b + ws_row . hn[e] for the thread's P positions (each weight read once).
template <int MaxHidden, int P>
__device__ __forceinline__ void out_values(const float* __restrict__ ws_row, float b,
                                           const float (&hn)[P][MaxHidden], float (&y)[P]) {
#pragma unroll
    for (int e = 0; e < P; e++) y[e] = b;
#pragma unroll
    for (int k = 0; k < MaxHidden; k++) {
        const float wk = ws_row[k];
#pragma unroll
        for (int e = 0; e < P; e++) y[e] = fmaf(wk, hn[e][k], y[e]);
    }
}

// Loads the out-convolution's rows of channels [c0, c0 + cs) (their a rows
// then their gate rows, zero past C), their biases and the row's h coefficients.
template <int MaxHidden>
__device__ __forceinline__ void load_out_weights(const float* __restrict__ weight, const float* __restrict__ bias,
                                                 const float2* __restrict__ hcoef, int hidden, int C, int c0, int cs,
                                                 const Row& p, int64_t R, float* ws, float* bs, float2* hc) {
    auto global_row = [&](int o) {  // -1 past C
        const int j = o < cs ? o : o - cs, c = c0 + j;
        return c < C ? (o < cs ? c : C + c) : -1;
    };
    for (int i = threadIdx.x; i < 2 * cs * MaxHidden; i += blockDim.x) {
        const int k = i % MaxHidden, o = global_row(i / MaxHidden);
        ws[i] = k < hidden && o >= 0 ? weight[int64_t(o) * hidden + k] : 0.0f;
    }
    for (int i = threadIdx.x; i < 2 * cs; i += blockDim.x) {
        const int o = global_row(i);
        bs[i] = o >= 0 ? bias[o] : 0.0f;
    }
    for (int k = threadIdx.x; k < MaxHidden; k += blockDim.x)
        hc[k] = k < hidden ? hcoef[(p.b * hidden + k) * R + p.r] : make_float2(0.0f, 0.0f);
}

// The out-convolution's statistics per position need no y: with
// W' = [W_out | bias] ([2C, hidden + 1]) and h' = [hn, 1],
//   sum_o y_o = s . h' (s: the column sums of W'),
//   sum_o y_o^2 = h'^T G h' (G = W'^T W'),
// in double: (hidden + 1)^2 / 2 multiply-adds per position instead of
// 2C * hidden (the direct form made the kernel compute-bound at ~75% of
// the SM's issue rate).
// Partial statistics of y = W_out hn + bias [B, 2C, R, W] per block, from gram (G then s).
template <int MaxHidden, int P>
__global__ void __launch_bounds__(kRowThreads)
    dconv_out_stats_kernel(const float* __restrict__ h, int hidden, int C2, int64_t R, int W,
                           const float2* __restrict__ hcoef, const double* __restrict__ gram,
                           double* __restrict__ partial, int wblocks) {
    constexpr int N1 = MaxHidden + 1;
    __shared__ double g[N1 * N1 + N1];
    __shared__ float2 hc[MaxHidden];
    __shared__ double red[32];
    const Row p = block_row<P>(R, W, wblocks);
    const int n = hidden + 1;
    for (int e = threadIdx.x; e < n * n + n; e += blockDim.x) g[e] = gram[e];
    for (int k = threadIdx.x; k < MaxHidden; k += blockDim.x)
        hc[k] = k < hidden ? hcoef[(p.b * hidden + k) * R + p.r] : make_float2(0.0f, 0.0f);
    __syncthreads();
    float hn[P][MaxHidden];
    normalised_hidden<MaxHidden, P>(h, p, hidden, R, W, hc, hn);
    double sum = 0.0, sq = 0.0;
#pragma unroll
    for (int e = 0; e < P; e++) {
        if (position(p, e) >= W) continue;
        double hp[N1];
#pragma unroll
        for (int k = 0; k < N1; k++)
            hp[k] = k < hidden ? double(hn[e][k < MaxHidden ? k : 0]) : (k == hidden ? 1.0 : 0.0);
        const double* G = g;
        const double* s = g + n * n;
#pragma unroll
        for (int k = 0; k < N1; k++) {
            if (k < n) {
                sum += s[k] * hp[k];
                double row = 0.5 * G[k * n + k] * hp[k];
#pragma unroll
                for (int l = k + 1; l < N1; l++)
                    if (l < n) row += G[k * n + l] * hp[l];
                sq += 2.0 * row * hp[k];
            }
        }
    }
    write_partial(partial, double(p.count) * C2, sum, sq, red);
}

// x[c] += scale[c] * a * sigmoid(g), a and g the normalised y at channels c
// and C + c, for the channels [c0, c0 + cs) of blockIdx.y (c0 = blockIdx.y *
// cs): a short row gives few blocks, so its channels are split among
// several (each recomputes hn, 1/8 of x's bytes at hidden = C / 8).
template <int MaxHidden, int P>
__global__ void __launch_bounds__(kRowThreads)
    dconv_out_apply_kernel(const float* __restrict__ h, int hidden, int C, int cs, int64_t R, int W,
                           const float2* __restrict__ hcoef, const float* __restrict__ weight,
                           const float* __restrict__ bias, const float2* __restrict__ ycoef,
                           const float* __restrict__ scale, float* __restrict__ x, int wblocks) {
    extern __shared__ float smem[];
    const int C2 = 2 * C, c0 = int(blockIdx.y) * cs, cn = min(cs, C - c0);
    const Row p = block_row<P>(R, W, wblocks);
    float* ws = smem;                 // [2 * cs][MaxHidden]: a rows, then gate rows
    float* bs = ws + 2 * cs * MaxHidden;  // [2 * cs]
    float2* yc = reinterpret_cast<float2*>(bs + 2 * cs);  // [2 * cs]
    float2* hc = yc + 2 * cs;                             // [MaxHidden]
    float* sc = reinterpret_cast<float*>(hc + MaxHidden);  // [cs]
    load_out_weights<MaxHidden>(weight, bias, hcoef, hidden, C, c0, cs, p, R, ws, bs, hc);
    for (int j = threadIdx.x; j < cn; j += blockDim.x) {
        yc[j] = ycoef[(p.b * C2 + c0 + j) * R + p.r];
        yc[cs + j] = ycoef[(p.b * C2 + C + c0 + j) * R + p.r];
        sc[j] = scale[c0 + j];
    }
    __syncthreads();
    if (p.w >= W) return;
    float hn[P][MaxHidden];
    normalised_hidden<MaxHidden, P>(h, p, hidden, R, W, hc, hn);
    const int64_t plane = R * W;
    float* xp = x + ((p.b * C + c0) * R + p.r) * W;  // channel c0
    bool inside[P];
#pragma unroll
    for (int e = 0; e < P; e++) inside[e] = position(p, e) < W;
    // The branch at the thread's positions for local channel j.
    auto branch = [&](int j, float (&out)[P]) {
        float a[P], g[P];
        out_values<MaxHidden, P>(ws + j * MaxHidden, bs[j], hn, a);
        out_values<MaxHidden, P>(ws + (cs + j) * MaxHidden, bs[cs + j], hn, g);
#pragma unroll
        for (int e = 0; e < P; e++) {
            const float an = a[e] * yc[j].x + yc[j].y, gn = g[e] * yc[cs + j].x + yc[cs + j].y;
            out[e] = sc[j] * glu_value(an, gn);
        }
    };
    // Channels go in groups, the next group's loads issued before this
    // group is computed (software pipelining: with the loads only at the
    // top of each group the kernel was latency-bound at ~45% of the memory
    // bandwidth); the group shrinks as P grows (registers).
    constexpr int U = kOutputGroup / P > 1 ? kOutputGroup / P : 1;
    const int groups = cn / U;
    float cur[U][P], next[U][P];
    auto load = [&](int j, float (&v)[P]) {
#pragma unroll
        for (int e = 0; e < P; e++) v[e] = inside[e] ? xp[int64_t(j) * plane + position(p, e)] : 0.0f;
    };
    auto update = [&](int j, const float (&v)[P]) {
        float add[P];
        branch(j, add);
#pragma unroll
        for (int e = 0; e < P; e++)
            if (inside[e]) xp[int64_t(j) * plane + position(p, e)] = v[e] + add[e];
    };
    if (groups > 0) {
#pragma unroll
        for (int u = 0; u < U; u++) load(u, cur[u]);
    }
    for (int group = 0; group < groups; group++) {
        if (group + 1 < groups) {
#pragma unroll
            for (int u = 0; u < U; u++) load((group + 1) * U + u, next[u]);
        }
#pragma unroll
        for (int u = 0; u < U; u++) update(group * U + u, cur[u]);
        if (group + 1 < groups) {
#pragma unroll
            for (int u = 0; u < U; u++)
#pragma unroll
                for (int e = 0; e < P; e++) cur[u][e] = next[u][e];
        }
    }
    for (int j = groups * U; j < cn; j++) {
        float v[P];
        load(j, v);
        update(j, v);
    }
}

// How a layer's kernels split the work: P positions per thread,
// wblocks blocks per row, the apply kernel's channels in `splits` groups of cs.
struct LayerLaunch {
    int positions = 1, wblocks = 1, splits = 1, cs = 1;
};

template <int MaxHidden, int P>
void launch_layer(const Ctx& ctx, const DConvLayerWeights& w, const LayerLaunch& l, float* x, int64_t B, int64_t R,
                  int W, float* h, double* partial, double* mean, double* var, float2* hcoef, float2* ycoef) {
    const int64_t rows = B * R;
    const unsigned blocks = unsigned(rows * l.wblocks);
    const int C = w.channels, C2 = 2 * C;
    Segments hidden_seg, out_seg;
    hidden_seg.B = B, hidden_seg.C = w.hidden, hidden_seg.R = R, hidden_seg.W = W;
    out_seg.B = B, out_seg.C = C2, out_seg.R = R, out_seg.W = W;

    const size_t in_bytes = in_smem_floats(C, MaxHidden) * sizeof(float);
    allow_shared(dconv_in_kernel<MaxHidden, P>, in_bytes);
    dconv_in_kernel<MaxHidden, P><<<blocks, kRowThreads, in_bytes, ctx.stream>>>(
        x, C, R, W, w.dilation, w.hidden, w.in_table, w.in_bias, h, partial, l.wblocks);
    FD_LAUNCH_CHECK();
    segment_finalize(ctx, partial, rows, l.wblocks, Spread::Variance, mean, var);
    group_norm_coef(ctx, hidden_seg, mean, var, w.in_norm_weight, w.in_norm_bias, w.in_bias, kNormEps, hcoef);

    dconv_out_stats_kernel<MaxHidden, P><<<blocks, kRowThreads, 0, ctx.stream>>>(h, w.hidden, C2, R, W, hcoef,
                                                                                 w.out_gram, partial, l.wblocks);
    FD_LAUNCH_CHECK();
    const size_t out_bytes = out_smem_floats(l.cs, MaxHidden) * sizeof(float);
    allow_shared(dconv_out_apply_kernel<MaxHidden, P>, out_bytes);
    segment_finalize(ctx, partial, rows, l.wblocks, Spread::Variance, mean, var);
    group_norm_coef(ctx, out_seg, mean, var, w.out_norm_weight, w.out_norm_bias, nullptr, kNormEps, ycoef);

    dconv_out_apply_kernel<MaxHidden, P><<<dim3(blocks, unsigned(l.splits)), kRowThreads, out_bytes, ctx.stream>>>(
        h, w.hidden, C, l.cs, R, W, hcoef, w.out_weight, w.out_bias, ycoef, w.scale, x, l.wblocks);
    FD_LAUNCH_CHECK();
}

template <int MaxHidden>
void launch_layer_p(const Ctx& ctx, const DConvLayerWeights& w, const LayerLaunch& l, float* x, int64_t B,
                    int64_t R, int W, float* h, double* partial, double* mean, double* var, float2* hcoef,
                    float2* ycoef) {
    switch (l.positions) {
        case 1: return launch_layer<MaxHidden, 1>(ctx, w, l, x, B, R, W, h, partial, mean, var, hcoef, ycoef);
        case 2: return launch_layer<MaxHidden, 2>(ctx, w, l, x, B, R, W, h, partial, mean, var, hcoef, ycoef);
        default: return launch_layer<MaxHidden, 3>(ctx, w, l, x, B, R, W, h, partial, mean, var, hcoef, ycoef);
    }
}

// Blocks wanted per launch: enough to keep every SM busy with several
// blocks (the kernels are latency-bound below that).
int64_t target_blocks() {
    int device = 0, sms = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
        cudaGetLastError();
        sms = 132;
    }
    return int64_t(4) * sms;
}

// The most positions per thread (up to 3: fewer weight loads per
// multiply-add) that still leaves target_blocks(), then as many channel
// splits of the apply kernel as it takes to reach it (at least 8 channels each).
LayerLaunch plan_launch(const DConvLayerWeights& w, int64_t rows, int64_t W, int positions, int splits) {
    const int64_t target = target_blocks();
    auto wblocks = [&](int p) { return (W + int64_t(kRowThreads) * p - 1) / (int64_t(kRowThreads) * p); };
    LayerLaunch l;
    l.positions = positions;
    if (l.positions <= 0) {
        l.positions = 1;
        for (int p : {3, 2})
            if (rows * wblocks(p) >= target) {
                l.positions = p;
                break;
            }
    }
    l.positions = std::min(3, l.positions);
    l.wblocks = int(wblocks(l.positions));
    l.splits = splits;
    if (l.splits <= 0) {
        const int64_t blocks = std::max<int64_t>(1, rows * l.wblocks);
        l.splits = int(std::min<int64_t>(std::max(1, w.channels / 8), (target + blocks - 1) / blocks));
    }
    l.splits = std::max(1, std::min(l.splits, w.channels));
    l.cs = (w.channels + l.splits - 1) / l.splits;
    l.splits = (w.channels + l.cs - 1) / l.cs;  // no empty group
    return l;
}

}  // namespace

std::vector<double> dconv_out_gram(const float* weight, const float* bias, int hidden, int channels2) {
    const int n = hidden + 1;
    auto w = [&](int o, int k) { return double(k < hidden ? weight[int64_t(o) * hidden + k] : bias[o]); };
    std::vector<double> gram(size_t(n * n + n), 0.0);
    for (int o = 0; o < channels2; o++)
        for (int k = 0; k < n; k++) {
            gram[size_t(n * n + k)] += w(o, k);
            for (int l = 0; l < n; l++) gram[size_t(k * n + l)] += w(o, k) * w(o, l);
        }
    return gram;
}

bool dconv_layer_thin_fits(int channels, int hidden) {
    if (channels < 1 || hidden < 1 || hidden > 32) return false;
    const int mh = max_hidden_for(hidden);
    const size_t limit = smem_limit();
    return in_smem_floats(channels, mh) * sizeof(float) <= limit &&
           out_smem_floats(channels, mh) * sizeof(float) <= limit;
}

std::vector<float> dconv_in_table(const float* weight, int hidden, int channels) {
    const int mh = max_hidden_for(hidden);
    std::vector<float> table(size_t(channels) * 3 * mh, 0.0f);
    for (int k = 0; k < hidden; k++)
        for (int cj = 0; cj < channels * 3; cj++) table[size_t(cj) * mh + k] = weight[int64_t(k) * channels * 3 + cj];
    return table;
}

void dconv_layer_thin(const Ctx& ctx, const DConvLayerWeights& w, float* x, int64_t B, int64_t R, int64_t W,
                      int positions, int splits) {
    if (!dconv_layer_thin_fits(w.channels, w.hidden))
        throw Error("internal error: dconv_layer_thin: " + std::to_string(w.channels) + " channels, hidden " +
                    std::to_string(w.hidden));
    if (!w.out_gram || !w.in_table)
        throw Error("internal error: dconv_layer_thin needs the in-convolution's table and the Gram matrix");
    static const int env_positions = std::atoi(env_string("FASTDEMUCS_DCONV_POSITIONS").c_str());
    static const int env_splits = std::atoi(env_string("FASTDEMUCS_DCONV_SPLITS").c_str());
    const int64_t rows = B * R;
    // One block per kRowThreads positions at most (P = 1): gridDim.x and the partials' indices.
    if (W > std::numeric_limits<int>::max() ||
        rows * ((W + kRowThreads - 1) / kRowThreads) > std::numeric_limits<int>::max() / 3)
        throw Error("internal error: dconv_layer_thin: too many positions");
    const LayerLaunch l = plan_launch(w, rows, W, positions > 0 ? positions : env_positions,
                                      splits > 0 ? splits : env_splits);
    const int64_t blocks = rows * l.wblocks;
    ArenaScope scope(*ctx.arena);
    float* h = ctx.arena->alloc<float>(B * w.hidden * R * W);
    double* partial = ctx.arena->alloc<double>(3 * rows * ((W + kRowThreads - 1) / kRowThreads));  // any P
    double* mean = ctx.arena->alloc<double>(rows);
    double* var = ctx.arena->alloc<double>(rows);
    float2* hcoef = ctx.arena->alloc<float2>(B * w.hidden * R);
    float2* ycoef = ctx.arena->alloc<float2>(B * 2 * w.channels * R);
    if (ctx.dry || blocks == 0) return;
    const auto launch = [&](auto max_hidden) {
        launch_layer_p<decltype(max_hidden)::value>(ctx, w, l, x, B, R, int(W), h, partial, mean, var, hcoef, ycoef);
    };
    switch (max_hidden_for(w.hidden)) {
        case 8: launch(std::integral_constant<int, 8>()); break;
        case 12: launch(std::integral_constant<int, 12>()); break;
        case 16: launch(std::integral_constant<int, 16>()); break;
        case 24: launch(std::integral_constant<int, 24>()); break;
        default: launch(std::integral_constant<int, 32>());
    }
}

}  // namespace fastdemucs::cuda
