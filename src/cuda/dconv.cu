#include "cuda/dconv.h"

#include <algorithm>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda/arena.h"
#include "cuda/dconv_internal.cuh"
#include "cuda/device_utils.cuh"
#include "cuda/kernels.h"
#include "error.h"

namespace fastdemucs::cuda {
namespace {

using namespace dconv_detail;

// A block covers kRowThreads consecutive positions w of one row (b, r), a
// thread each, so the row's coefficients sit in shared memory and the
// block's statistics are one partial of the row's segment.
constexpr int kRowThreads = 128;
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
// Shared memory per block of the three-pass kernels (every launch opts in to
// its size): past ~100 KB fewer than two blocks would fit an SM.
constexpr size_t kSmemLimit = 100 * 1024;

// The three-pass kernels' dynamic shared memory: the opt-in minus their
// static arrays, at most kSmemLimit.
size_t smem_limit() { return std::min(kSmemLimit, optin_smem() - 1024); }



struct Row {
    int64_t b, r;
    int w;
    bool valid;
    int count;  // valid positions of the block
};
__device__ __forceinline__ Row block_row(int64_t R, int W, int wblocks) {
    const int64_t row = blockIdx.x / wblocks;
    const int wb = int(blockIdx.x - row * wblocks);
    Row p;
    p.b = row / R, p.r = row - p.b * R;
    p.w = wb * kRowThreads + int(threadIdx.x);
    p.valid = p.w < W;
    p.count = min(kRowThreads, W - wb * kRowThreads);
    return p;
}

__device__ __forceinline__ void write_partial(double* partial, double n, double sum, double sq, double* red) {
    sum = block_sum(sum, red);
    sq = block_sum(sq, red);
    if (threadIdx.x == 0) {
        partial[3 * blockIdx.x] = n;
        partial[3 * blockIdx.x + 1] = sum;
        partial[3 * blockIdx.x + 2] = sq;
    }
}


// A row's GroupNorm(1, channels) {scale, shift} per channel from the
// `splits` partial sums its blocks wrote (row_partial [splits][3]), with
// group_norm_coef_kernel's arithmetic (x + offset[c] normalised), into coef
// (shared memory; the caller synchronises).
__device__ __forceinline__ void row_norm_coefficients(const double* __restrict__ row_partial, int splits,
                                                      int channels, const float* __restrict__ weight,
                                                      const float* __restrict__ bias,
                                                      const float* __restrict__ offset, float2* coef, double* red) {
    double n = 0.0, sum = 0.0, sq = 0.0;
    for (int sp = threadIdx.x; sp < splits; sp += blockDim.x) {
        const double* q = row_partial + 3 * sp;
        n += q[0], sum += q[1], sq += q[2];
    }
    n = block_sum(n, red);
    sum = block_sum(sum, red);
    sq = block_sum(sq, red);
    const double2 m = row_moments(n, sum, sq);
    for (int c = threadIdx.x; c < channels; c += blockDim.x)
        coef[c] = row_norm_coef(m.x, m.y, weight[c], bias[c], offset ? double(offset[c]) : 0.0);
}

// h [B, hidden, R, W] = conv3(x) without bias (the norm takes it), and the
// partial statistics of h + bias per block.
// `table` is dconv_in_table's [C * 3][MaxHidden] layout, copied to shared
// memory as it lies (gathered from [hidden, C, 3] per block, the load was
// uncoalesced).
template <int MaxHidden>
__global__ void __launch_bounds__(kRowThreads)
    dconv_in_kernel(const float* __restrict__ x, int C, int64_t R, int W, int dilation, int hidden,
                    const float* __restrict__ table, const float* __restrict__ bias, float* __restrict__ h,
                    double* __restrict__ partial, int wblocks) {
    extern __shared__ float4 smem4[];
    __shared__ double red[32];
    const float4* table4 = reinterpret_cast<const float4*>(table);
    for (int i = threadIdx.x; i < C * 3 * MaxHidden / 4; i += blockDim.x) smem4[i] = table4[i];
    __syncthreads();
    const float* ws = reinterpret_cast<const float*>(smem4);  // [C * 3][MaxHidden]: tap j of channel ci, output k
    const Row p = block_row(R, W, wblocks);
    const int64_t plane = R * W;
    float acc[MaxHidden];
#pragma unroll
    for (int k = 0; k < MaxHidden; k++) acc[k] = 0.0f;
    if (p.valid) {
        const float* xp = x + (p.b * C * R + p.r) * W + p.w;
        const bool left = p.w >= dilation, right = p.w + dilation < W;
        auto taps = [&](const float* q, float (&v)[3]) {
            v[0] = left ? q[-dilation] : 0.0f, v[1] = q[0], v[2] = right ? q[dilation] : 0.0f;
        };
        auto accumulate = [&](int ci, const float (&v)[3]) {
            const float* wc = ws + ci * 3 * MaxHidden;
#pragma unroll
            for (int k = 0; k < MaxHidden; k++)
                acc[k] = fmaf(wc[k], v[0], fmaf(wc[MaxHidden + k], v[1], fmaf(wc[2 * MaxHidden + k], v[2], acc[k])));
        };
        // kInputGroup input channels' loads are issued before their
        // multiply-adds: one load at a time per thread left the kernel
        // latency-bound at half the memory bandwidth.
        int ci = 0;
        for (; ci + kInputGroup <= C; ci += kInputGroup, xp += kInputGroup * plane) {
            float v[kInputGroup][3];
#pragma unroll
            for (int u = 0; u < kInputGroup; u++) taps(xp + u * plane, v[u]);
#pragma unroll
            for (int u = 0; u < kInputGroup; u++) accumulate(ci + u, v[u]);
        }
        for (; ci < C; ci++, xp += plane) {
            float v[3];
            taps(xp, v);
            accumulate(ci, v);
        }
    }
    double sum = 0.0, sq = 0.0;
    if (p.valid) {
        float* hp = h + (p.b * hidden * R + p.r) * W + p.w;
#pragma unroll
        for (int k = 0; k < MaxHidden; k++) {
            if (k < hidden) {
                hp[k * plane] = acc[k];
                const double v = acc[k] + bias[k];
                sum += v, sq += v * v;
            }
        }
    }
    write_partial(partial, double(p.count) * hidden, sum, sq, red);
}

// The block's row of h through its GroupNorm and GELU: hn[k] (zero past hidden).
template <int MaxHidden>
__device__ __forceinline__ void normalised_hidden(const float* __restrict__ h, const Row& p, int hidden, int64_t R,
                                                  int W, const float2* hc, float (&hn)[MaxHidden]) {
    const float* hp = h + (p.b * hidden * R + p.r) * W + p.w;
#pragma unroll
    for (int k = 0; k < MaxHidden; k++)
        hn[k] = (p.valid && k < hidden) ? gelu_exact(hp[k * R * W] * hc[k].x + hc[k].y) : 0.0f;
}

template <int MaxHidden>
__device__ __forceinline__ float out_value(const float* __restrict__ ws_row, float b, const float (&hn)[MaxHidden]) {
    float y = b;
#pragma unroll
    for (int k = 0; k < MaxHidden; k++) y = fmaf(ws_row[k], hn[k], y);
    return y;
}

// Loads the out-convolution's weights and bias and the row's h coefficients.
template <int MaxHidden>
__device__ __forceinline__ void load_out_weights(const float* __restrict__ weight, const float* __restrict__ bias,
                                                 const float2* __restrict__ hcoef, int hidden, int C2, const Row& p,
                                                 int64_t R, float* ws, float* bs, float2* hc) {
    for (int i = threadIdx.x; i < C2 * MaxHidden; i += blockDim.x) {
        const int k = i % MaxHidden, o = i / MaxHidden;
        ws[i] = k < hidden ? weight[int64_t(o) * hidden + k] : 0.0f;
    }
    for (int o = threadIdx.x; o < C2; o += blockDim.x) bs[o] = bias[o];
    for (int k = threadIdx.x; k < MaxHidden; k += blockDim.x)
        hc[k] = k < hidden ? hcoef[(p.b * hidden + k) * R + p.r] : make_float2(0.0f, 0.0f);
}


// Partial statistics of y = W_out hn + bias [B, 2C, R, W] per block, from
// gram (G then s). Up to hidden 12 a block takes 4 positions a thread (a
// whole 336-frame row of the frequency branch in one block): with one, the
// 12288 short blocks at hidden 6 spent their time in the fixed steps (the
// Gram form's load, two block reductions), at 0.6 TB/s (4 a thread: 0.32 ->
// 0.27 ms per forward of 8 at hidden 6, 0.21 -> 0.19 at 12). At hidden 24
// one (four: 0.19 -> 0.44 ms, the registers of 4 x 24 values and too few
// blocks for the time branch's 8 long rows). `wblocks`: this kernel's
// blocks per row (stats_wblocks), not the in-convolution's (in_splits, whose
// partial sums give h's GroupNorm coefficients here: a launch of its own
// per layer was 24 launches of ~7 us per forward of 8; the row's first
// block also stores them in hcoef for the apply pass).
__host__ __device__ constexpr int stats_per_thread(int max_hidden) { return max_hidden <= 12 ? 4 : 1; }
int stats_wblocks(int W, int max_hidden) {
    const int positions = kRowThreads * stats_per_thread(max_hidden);
    return (W + positions - 1) / positions;
}

template <int MaxHidden>
__global__ void __launch_bounds__(kRowThreads)
    dconv_out_stats_kernel(const float* __restrict__ h, int hidden, int C2, int64_t R, int W,
                           const double* __restrict__ in_partial, int in_splits,
                           const float* __restrict__ in_norm_weight, const float* __restrict__ in_norm_bias,
                           const float* __restrict__ in_bias, float2* __restrict__ hcoef,
                           const double* __restrict__ gram, double* __restrict__ partial, int wblocks) {
    constexpr int N1 = MaxHidden + 1;
    constexpr int kStatsPerThread = stats_per_thread(MaxHidden), kStatsPositions = kRowThreads * kStatsPerThread;
    __shared__ double g[N1 * N1 + N1];
    __shared__ float2 hc[MaxHidden];
    __shared__ double red[32];
    const int64_t row = blockIdx.x / wblocks;
    const int wb = int(blockIdx.x - row * wblocks);
    const int64_t b = row / R, r = row - b * R;
    const int n = hidden + 1;
    for (int e = threadIdx.x; e < n * n + n; e += blockDim.x) g[e] = gram[e];
    for (int k = hidden + int(threadIdx.x); k < MaxHidden; k += blockDim.x) hc[k] = make_float2(0.0f, 0.0f);
    row_norm_coefficients(in_partial + 3 * row * in_splits, in_splits, hidden, in_norm_weight, in_norm_bias, in_bias,
                          hc, red);
    __syncthreads();
    if (wb == 0)
        for (int k = threadIdx.x; k < hidden; k += blockDim.x) hcoef[(b * hidden + k) * R + r] = hc[k];
    const int first = wb * kStatsPositions + int(threadIdx.x);
    const float* hp = h + (b * hidden * R + r) * W;
    const int64_t plane = R * W;
    // Every position's h loaded before the first is used.
    float hv[kStatsPerThread][MaxHidden];
#pragma unroll
    for (int i = 0; i < kStatsPerThread; i++) {
        const int w = first + i * kRowThreads;
#pragma unroll
        for (int k = 0; k < MaxHidden; k++) hv[i][k] = w < W && k < hidden ? hp[k * plane + w] : 0.0f;
    }
    double sum = 0.0, sq = 0.0;
#pragma unroll
    for (int i = 0; i < kStatsPerThread; i++) {
        if (first + i * kRowThreads >= W) continue;
        float hn[MaxHidden];
#pragma unroll
        for (int k = 0; k < MaxHidden; k++) hn[k] = k < hidden ? gelu_exact(hv[i][k] * hc[k].x + hc[k].y) : 0.0f;
        y_moments<MaxHidden>(hn, hidden, g, sum, sq);
    }
    const int count = min(kStatsPositions, W - wb * kStatsPositions);
    write_partial(partial, double(count) * C2, sum, sq, red);
}

// x[c] += scale[c] * a * sigmoid(g), a and g the normalised y at channels c and C + c.
template <int MaxHidden>
__global__ void __launch_bounds__(kRowThreads)
    dconv_out_apply_kernel(const float* __restrict__ h, int hidden, int C, int64_t R, int W,
                           const float2* __restrict__ hcoef, const float* __restrict__ weight,
                           const float* __restrict__ bias, const float2* __restrict__ ycoef,
                           const float* __restrict__ scale, float* __restrict__ x, int wblocks) {
    extern __shared__ float smem[];
    const int C2 = 2 * C;
    const Row p = block_row(R, W, wblocks);
    float* ws = smem;
    float* bs = ws + C2 * MaxHidden;
    float2* yc = reinterpret_cast<float2*>(bs + C2);
    float2* hc = yc + C2;
    float* sc = reinterpret_cast<float*>(hc + MaxHidden);
    load_out_weights<MaxHidden>(weight, bias, hcoef, hidden, C2, p, R, ws, bs, hc);
    for (int o = threadIdx.x; o < C2; o += blockDim.x) yc[o] = ycoef[(p.b * C2 + o) * R + p.r];
    for (int c = threadIdx.x; c < C; c += blockDim.x) sc[c] = scale[c];
    __syncthreads();
    if (!p.valid) return;
    float hn[MaxHidden];
    normalised_hidden<MaxHidden>(h, p, hidden, R, W, hc, hn);
    const int64_t plane = R * W;
    float* xp = x + (p.b * C * R + p.r) * W + p.w;
    auto branch = [&](int c) {
        const float a = out_value<MaxHidden>(ws + c * MaxHidden, bs[c], hn) * yc[c].x + yc[c].y;
        const float g = out_value<MaxHidden>(ws + (C + c) * MaxHidden, bs[C + c], hn) * yc[C + c].x + yc[C + c].y;
        return sc[c] * glu_value(a, g);
    };
    // Channels go kOutputGroup at a time, the next group's loads issued
    // before this group is computed (software pipelining: with the loads
    // only at the top of each group the kernel was latency-bound at ~45% of
    // the memory bandwidth).
    const int groups = C / kOutputGroup;
    float cur[kOutputGroup], next[kOutputGroup];
    auto load = [&](int group, float (&v)[kOutputGroup]) {
#pragma unroll
        for (int u = 0; u < kOutputGroup; u++) v[u] = xp[int64_t(group * kOutputGroup + u) * plane];
    };
    if (groups > 0) load(0, cur);
    for (int group = 0; group < groups; group++) {
        if (group + 1 < groups) load(group + 1, next);
#pragma unroll
        for (int u = 0; u < kOutputGroup; u++) {
            const int c = group * kOutputGroup + u;
            xp[int64_t(c) * plane] = cur[u] + branch(c);
        }
        if (group + 1 < groups) {
#pragma unroll
            for (int u = 0; u < kOutputGroup; u++) cur[u] = next[u];
        }
    }
    for (int c = groups * kOutputGroup; c < C; c++) xp[int64_t(c) * plane] += branch(c);
}

// ---- The apply pass on the tensor cores (float16 / bfloat16 modes) ----
// y = W_out hn + bias as mma.sync.m16n8k16 tiles of 16 positions x 8 output
// channels (float16 operands whatever the mode: hn = GELU(norm(h)) and the
// weights sit well inside its range, with 3 more mantissa bits than
// bfloat16; float32 accumulation), then the GLU, LayerScale and residual on
// the accumulator fragments: with C a multiple of 8, channel c's a (tile
// c / 8) and g (tile C / 8 + c / 8) land in the same lane and register.
// A thread per position spent 2 * hidden multiply-adds and as many shared
// loads per output channel on CUDA cores (1.13 ms of a forward of 8 at
// hidden 24); here a warp issues 2 * hidden / 16 MMAs per 16 positions and
// 16 output channels. float32 keeps the CUDA-core kernel above (exact).

constexpr int kApplyWarps = 4;
// Positions per block, at most: a strip per warp. With 256 the time
// branch's hidden-24 layer (8 rows of 5375) had 168 blocks, 1.3 per SM, and
// ran at 1 TB/s.
constexpr int kApplyPositions = 128;
constexpr int kStrip = 32;            // positions a warp takes at once (two m-tiles)
constexpr int kOutPitch = kStrip + 4;  // floats per row of a warp's result tile (conflict-free fragment stores)
constexpr int kPairs = 2;              // tiles of 8 output channels (a and g) per round: 16 x rows in flight

// Dynamic shared memory: y's coefficients [2C] (LayerScale and -log2(e)
// folded in: glu_folded) and h's [16 KSteps] (float2), the bias [2C]; per warp hn [kStrip][16 KSteps + 8]
// (float16) and a result tile [8 kPairs][kOutPitch]. The B fragments
// (dconv_out_fragments) are read through L1: built per block in shared
// memory, their scattered loads and conversions held every block up (0.89
// -> 0.60 ms at hidden 24, ~2x the blocks per SM).
__host__ __device__ constexpr int hn_pitch(int ksteps) { return 16 * ksteps + 8; }  // halves: conflict-free A fragment loads
constexpr size_t apply_tc_smem_bytes(int C, int ksteps, int groups = 1) {
    return size_t(2 * C) * sizeof(float2) + size_t(16 * ksteps) * sizeof(float2) + size_t(2 * C) * sizeof(float) +
           groups * kApplyWarps *
               (size_t(kStrip) * hn_pitch(ksteps) * sizeof(__half) + 8 * kPairs * kOutPitch * sizeof(float));
}

// A warp takes kStrip positions at a time: hn loaded and normalised with
// coalesced row reads into shared memory, A fragments from there; per 8
// output channels (tiles j and C / 8 + j) the x rows are read whole (128-byte
// rows), the MMAs of both m-tiles share the B fragments, and the branch
// values go through the warp's result tile so that x is written back in
// whole rows too (written straight from the fragments, every access was a
// quarter of a row: 4x the memory transactions, slower than the CUDA cores).
// CopyT __half / __nv_bfloat16: the result also written to `copy` in that
// type, planes of copy_ld values (a GEMM operand for the layer that reads
// the DConv's output: no conversion pass of its own, see Planes). CopyT
// float: no copy (its own instance: the copy's code took 4 more registers).
// Groups > 1: that many warps share each strip, warp group q taking the
// pairs of tiles q, q + Groups, ... (each normalises the strip's hn for
// itself: h is 1/8 of x, and a second read of it comes from L2). At hidden
// 24 a warp per strip left the SMs short of warps: the time branch's rows
// (336 blocks, ~10 warps an SM) ran at a quarter of the bandwidth, the
// frequency branch's (768 blocks) were held to 5 an SM by 96 registers. Two
// groups (80 registers, 3 blocks an SM): 42 / 47 -> 32 / 35 us and 83 / 99
// -> 61 / 67 us (float / float16 copy) a forward of 8 on an H200.
// (Minimum blocks 0 for one group: see dconv_in_tc_kernel.)
template <int KSteps, int Groups, typename CopyT>
__global__ void __launch_bounds__(kApplyWarps * 32 * Groups, Groups == 1 ? 0 : 3)
    dconv_out_apply_tc_kernel(const float* __restrict__ h, int hidden, int C, int64_t R, int W, int span,
                              int wblocks, const float2* __restrict__ hcoef, const uint2* __restrict__ frag,
                              const float* __restrict__ bias, const float2* __restrict__ ycoef,
                              const float* __restrict__ scale, float* __restrict__ x, CopyT* __restrict__ copy,
                              int64_t copy_ld) {
    constexpr int K = 16 * KSteps, HP = hn_pitch(KSteps);
    extern __shared__ float2 yc[];  // [2C]
    const int C2 = 2 * C, half_tiles = C / 8;
    float2* hc = yc + C2;
    float* bs = reinterpret_cast<float*>(hc + K);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int strip = warp % kApplyWarps, group = warp / kApplyWarps;
    __half* hn = reinterpret_cast<__half*>(bs + C2) + warp * (kStrip * HP + 16 * kPairs * kOutPitch);  // [kStrip][HP]
    float* out = reinterpret_cast<float*>(hn + kStrip * HP);  // [8 kPairs][kOutPitch]
    const int64_t row = blockIdx.x / wblocks;
    const int wb = int(blockIdx.x - row * wblocks);
    const int64_t b = row / R, r = row - b * R;
    for (int o = threadIdx.x; o < C2; o += blockDim.x) {
        bs[o] = bias[o];
        yc[o] = fold_glu_coef(ycoef[(b * C2 + o) * R + r], o < C, o < C ? scale[o] : 0.0f);
    }
    for (int k = threadIdx.x; k < K; k += blockDim.x)
        hc[k] = k < hidden ? hcoef[(b * hidden + k) * R + r] : make_float2(0.0f, 0.0f);
    // The padding columns of hn (hidden .. K) stay zero.
    for (int i = lane; i < kStrip * K; i += 32) hn[(i / K) * HP + i % K] = __float2half_rn(0.0f);
    __syncthreads();
    const int64_t plane = R * W;
    const float* hrow = h + (b * hidden * R + r) * W;
    float* xrow = x + (b * C * R + r) * W;
    constexpr bool kCopy = !std::is_same_v<CopyT, float>;
    CopyT* copy_row = kCopy ? copy + b * C * copy_ld + r * W : nullptr;
    const int end = min(W, (wb + 1) * span);
    for (int w0 = wb * span + kStrip * strip; w0 < end; w0 += kStrip * kApplyWarps) {
        const int w = w0 + lane;
        const bool valid = w < end;
        // Every load of the strip's h issued before the first is used (a loop
        // over `hidden` would wait for each in turn).
        float hv[K];
#pragma unroll
        for (int k = 0; k < K; k++) hv[k] = valid && k < hidden ? hrow[k * plane + w] : 0.0f;
#pragma unroll
        for (int k = 0; k < K; k++)
            if (k < hidden) hn[lane * HP + k] = half_sat(valid ? gelu_exact(hv[k] * hc[k].x + hc[k].y) : 0.0f);
        __syncwarp();
        uint32_t a[2][KSteps][4];
#pragma unroll
        for (int mt = 0; mt < 2; mt++)
#pragma unroll
            for (int ks = 0; ks < KSteps; ks++)
#pragma unroll
                for (int q = 0; q < 4; q++)
                    a[mt][ks][q] = *reinterpret_cast<const uint32_t*>(
                        hn + (16 * mt + g + 8 * (q & 1)) * HP + 16 * ks + 2 * t + 8 * (q >> 1));
        // Output channels go kPairs tiles of 8 (a and g) at a time, the next
        // group's x rows loaded while this group is computed and stored.
        float xv[kPairs][8];
        auto load_x = [&](int j) {
#pragma unroll
            for (int p = 0; p < kPairs; p++)
#pragma unroll
                for (int u = 0; u < 8; u++)
                    xv[p][u] = valid && j + p < half_tiles ? xrow[(8 * (j + p) + u) * plane + w] : 0.0f;
        };
        constexpr int kStep = kPairs * Groups;  // tiles between a warp's rounds
        load_x(kPairs * group);
#pragma unroll 1
        for (int j = kPairs * group; j < half_tiles; j += kStep) {
#pragma unroll
            for (int p = 0; p < kPairs; p++) {
                if (j + p >= half_tiles) break;
                const int c0 = 8 * (j + p) + 2 * t;
                float ya[2][4], yg[2][4];
#pragma unroll
                for (int mt = 0; mt < 2; mt++) {
                    ya[mt][0] = ya[mt][2] = bs[c0], ya[mt][1] = ya[mt][3] = bs[c0 + 1];
                    yg[mt][0] = yg[mt][2] = bs[C + c0], yg[mt][1] = yg[mt][3] = bs[C + c0 + 1];
                }
#pragma unroll
                for (int ks = 0; ks < KSteps; ks++) {
                    const uint2 fa = __ldg(frag + ((j + p) * KSteps + ks) * 32 + lane);
                    const uint2 fg = __ldg(frag + ((half_tiles + j + p) * KSteps + ks) * 32 + lane);
#pragma unroll
                    for (int mt = 0; mt < 2; mt++) {
                        mma_m16n8k16<__half>(ya[mt], a[mt][ks], fa.x, fa.y);
                        mma_m16n8k16<__half>(yg[mt], a[mt][ks], fg.x, fg.y);
                    }
                }
#pragma unroll
                for (int mt = 0; mt < 2; mt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int c = c0 + (e & 1);
                        out[(8 * p + 2 * t + (e & 1)) * kOutPitch + 16 * mt + g + 8 * (e >> 1)] =
                            glu_folded(ya[mt][e] * yc[c].x + yc[c].y, yg[mt][e] * yc[C + c].x + yc[C + c].y);
                    }
            }
            __syncwarp();
            float xn[kPairs][8];
#pragma unroll
            for (int p = 0; p < kPairs; p++)
#pragma unroll
                for (int u = 0; u < 8; u++) xn[p][u] = xv[p][u] + out[(8 * p + u) * kOutPitch + lane];
            if (j + kStep < half_tiles) load_x(j + kStep);  // the next rows in flight while these are stored
            if (valid)
#pragma unroll
                for (int p = 0; p < kPairs; p++)
                    if (j + p < half_tiles)
#pragma unroll
                        for (int u = 0; u < 8; u++) {
                            xrow[(8 * (j + p) + u) * plane + w] = xn[p][u];
                            if constexpr (kCopy)
                                copy_row[(8 * (j + p) + u) * copy_ld + w] = from_float<CopyT>(xn[p][u]);
                        }
            __syncwarp();  // the result tile is rewritten by the next group
        }
    }
}

// ---- The in-convolution on the tensor cores (float16 / bfloat16 modes) ----
// h = conv3(x) as mma.sync.m16n8k16 tiles of 16 positions x 8 hidden
// channels, K running over (16 input channels, tap): a block takes
// dconv_in_kernel's 128 positions of a row (the same partials) in 4 strips of
// 32 (a warp each, or in_split's warps sharing the hidden tiles), the
// input channels 16 at a time staged in shared memory as float16
// [position][channel] with the dilation's margin on both sides, so that tap
// j's A fragments are the same rows shifted by j * d. The thread-per-position
// kernel spent 3 C multiply-adds and shared loads per hidden channel on CUDA
// cores (1.15 ms of a forward of 8 at hidden 24).
constexpr int kInChunk = 16;                 // input channels per staged chunk (one k-step per tap)
constexpr int kInPitch = kInChunk + 8;       // halves per staged position: conflict-free A fragment loads
constexpr int kInRows = kRowThreads + 2 * kInMaxDilation;  // staged positions
constexpr int kStrips = kRowThreads / 32;    // strips of 32 positions (two m-tiles) a block

// Warps a strip of 32 positions when a block splits its hidden tiles among
// warps (Ctx::dconv_split_warps): one tile each at 3, two each at 4 (the
// staging's 144 x 16 values divide among 128, 256 and 384 threads); at 2
// (hidden 12: 1344 blocks, warps enough) the split was slower, 32 -> 35 us.
// Why: with a warp taking every hidden tile of its strip, the layers with
// hidden 24 had a warp per 32 positions in all, ~10 warps an SM on the time
// branch's rows (8 x 5375 positions: 336 blocks, 13 % of the memory
// bandwidth) and 23 on the frequency branch's, each chunk waiting for its
// loads; split, a block stages a chunk with 3x the threads, and each warp
// keeps 8 accumulators instead of 24 (registers for 3 blocks an SM). A
// forward of 8 on an H200: 55 -> 24 us (time rows), 59 -> 42 us (frequency
// rows); the two stages alone (one barrier a chunk, not two) 55 -> 42, 59 -> 47.
constexpr int in_split(int ntiles) { return ntiles == 4 ? 2 : ntiles == 3 ? 3 : 1; }

// The launch bounds' minimum of blocks an SM: 0 leaves ptxas its own
// register budget (1 let it take up to 255: 80 -> 134 at 3 tiles).
template <int NTiles, int Split>
__global__ void __launch_bounds__(kRowThreads * Split, Split == 3 ? 3 : 0)
    dconv_in_tc_kernel(const float* __restrict__ x, int C, int64_t R, int W, int dilation, int hidden,
                       const uint2* __restrict__ frag, const float* __restrict__ bias, float* __restrict__ h,
                       double* __restrict__ partial, int wblocks) {
    constexpr int kThreads = kRowThreads * Split, kWarpTiles = NTiles / Split;
    constexpr int kLanesPerChannel = kThreads / kInChunk;    // threads staging one channel of a chunk
    constexpr int kStage = kInChunk * kInRows / kThreads;    // staged values per thread and chunk
    static_assert(NTiles % Split == 0 && kThreads % kInChunk == 0 && (kInChunk * kInRows) % kThreads == 0,
                  "whole tiles a warp, whole staging rounds");
    // Two stages, position p0 - kInMaxDilation + q at row q: a chunk is
    // written while the other's fragments may still be read (one barrier a chunk).
    __shared__ __align__(16) __half xs[2][kInRows * kInPitch];
    __shared__ double red[32];
    const int d = dilation, chunks = (C + kInChunk - 1) / kInChunk;
    const int64_t row = blockIdx.x / wblocks;
    const int wb = int(blockIdx.x - row * wblocks);
    const int64_t b = row / R, r = row - b * R;
    const int p0 = wb * kRowThreads;  // the block's first position
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int strip = warp % kStrips, ns = warp / kStrips;  // the warp's positions and first hidden tile
    const int64_t plane = R * W;
    const float* xrow = x + (b * C * R + r) * W;
    float acc[2][kWarpTiles][4] = {};
    // Channels [16 ch, 16 ch + 16) at positions p0 - 8 .. p0 + 136 (zero
    // outside the row): thread i stages channel i / kLanesPerChannel at
    // positions i % kLanesPerChannel + kLanesPerChannel e (one base address,
    // constant offsets). The next chunk's loads are issued before this
    // chunk's MMAs (loaded, converted and stored one at a time, the staging
    // waited on every load: 440 GB/s at hidden 24).
    const int cc = int(threadIdx.x) / kLanesPerChannel, q0 = int(threadIdx.x) % kLanesPerChannel;
    const int w_first = p0 - kInMaxDilation + q0;
    float staged[kStage];
    auto load_chunk = [&](int ch) {
        const int c = kInChunk * ch + cc;
        const float* src = xrow + int64_t(c) * plane + w_first;
#pragma unroll
        for (int e = 0; e < kStage; e++) {
            const int w = w_first + kLanesPerChannel * e;
            staged[e] = c < C && w >= 0 && w < W ? src[kLanesPerChannel * e] : 0.0f;
        }
    };
    load_chunk(0);
#pragma unroll 1
    for (int ch = 0; ch < chunks; ch++) {
        // Stage ch & 1 was last read by chunk ch - 2's fragments, before every warp passed chunk ch - 1's barrier.
        __half* stage = xs[ch & 1];
#pragma unroll
        for (int e = 0; e < kStage; e++)
            stage[(q0 + kLanesPerChannel * e) * kInPitch + cc] = half_sat(staged[e]);
        __syncthreads();
        if (ch + 1 < chunks) load_chunk(ch + 1);
#pragma unroll
        for (int j = 0; j < 3; j++) {
            uint32_t a[2][4];
#pragma unroll
            for (int mt = 0; mt < 2; mt++)
#pragma unroll
                for (int q = 0; q < 4; q++)
                    a[mt][q] = *reinterpret_cast<const uint32_t*>(
                        stage + (32 * strip + 16 * mt + g + 8 * (q & 1) + kInMaxDilation + (j - 1) * d) * kInPitch +
                        2 * t + 8 * (q >> 1));
#pragma unroll
            for (int i = 0; i < kWarpTiles; i++) {
                const int n = ns + Split * i;
                const uint2 bf = __ldg(frag + ((n * chunks + ch) * 3 + j) * 32 + lane);
#pragma unroll
                for (int mt = 0; mt < 2; mt++) mma_m16n8k16<__half>(acc[mt][i], a[mt], bf.x, bf.y);
            }
        }
    }
// h (without bias) from the fragments, and the block's partial statistics of h + bias.
    double sum = 0.0, sq = 0.0;
    float* hrow = h + (b * hidden * R + r) * W;
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int i = 0; i < kWarpTiles; i++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int k = 8 * (ns + Split * i) + 2 * t + (e & 1), w = p0 + 32 * strip + 16 * mt + g + 8 * (e >> 1);
                if (k < hidden && w < W) {
                    hrow[k * plane + w] = acc[mt][i][e];
                    const double v = acc[mt][i][e] + bias[k];
                    sum += v, sq += v * v;
                }
            }
    const int count = min(kRowThreads, W - p0);
    write_partial(partial, double(count) * hidden, sum, sq, red);
}

// Which layers the tensor-core passes take: float16 / bfloat16 mode with
// ctx.tensor_core_dconv, their fragment tables built, and these shapes.
bool in_tc_shape(int hidden, int dilation) { return hidden <= 32 && dilation <= kInMaxDilation; }
bool apply_tc_shape(int channels, int hidden) {
    return channels % 8 == 0 && hidden <= 32 && apply_tc_smem_bytes(channels, (hidden + 15) / 16) <= smem_limit();
}
bool in_tc_fits(const Ctx& ctx, const DConvLayerWeights& w) {
    return tensor_core_mode(ctx) && w.in_fragments && in_tc_shape(w.hidden, w.dilation);
}
bool apply_tc_fits(const Ctx& ctx, const DConvLayerWeights& w) {
    return tensor_core_mode(ctx) && w.out_fragments && apply_tc_shape(w.channels, w.hidden);
}

}  // namespace

bool dconv_tensor_cores_take(const Ctx& ctx, int channels, int hidden, int dilation) {
    return tensor_core_mode(ctx) && in_tc_shape(hidden, dilation) && apply_tc_shape(channels, hidden);
}

namespace {

template <int KSteps>
void launch_apply_tc(const Ctx& ctx, const DConvLayerWeights& w, float* x, int64_t B, int64_t R, int W,
                     const float* h, const float2* hcoef, const float2* ycoef, const Planes* copy) {
    const int wblocks = (W + kApplyPositions - 1) / kApplyPositions;
    const int span = ((W + wblocks - 1) / wblocks + 15) / 16 * 16;
    const int64_t blocks = B * R * wblocks;
    // Two warp groups at hidden > 16 (the launch bounds keep three 8-warp blocks an SM).
    const bool split = ctx.dconv_split_warps && KSteps == 2 && apply_tc_smem_bytes(w.channels, KSteps, 2) <= smem_limit();
    const auto run = [&](auto groups) {
        constexpr int G = decltype(groups)::value;
        const size_t bytes = apply_tc_smem_bytes(w.channels, KSteps, G);
        with_copy_type(copy, [&](auto* copy_p) {
            using CopyT = std::remove_pointer_t<decltype(copy_p)>;
            const auto kernel = dconv_out_apply_tc_kernel<KSteps, G, CopyT>;
            allow_shared(kernel, bytes);
            kernel<<<unsigned(blocks), kApplyWarps * 32 * G, bytes, ctx.stream>>>(
                h, w.hidden, w.channels, R, W, span, wblocks, hcoef, reinterpret_cast<const uint2*>(w.out_fragments),
                w.out_bias, ycoef, w.scale, x, copy_p, copy ? copy->ld : 0);
        });
    };
    if constexpr (KSteps == 2) {  // (no two-group instance at one k-step: it never runs)
        if (split) {
            run(std::integral_constant<int, 2>());
            FD_LAUNCH_CHECK();
            return;
        }
    }
    run(std::integral_constant<int, 1>());
    FD_LAUNCH_CHECK();
}

template <int MaxHidden>
void launch_layer(const Ctx& ctx, const DConvLayerWeights& w, float* x, int64_t B, int64_t R, int W, int wblocks,
                  float* h, double* partial, double* out_partial, float2* hcoef, float2* ycoef,
                  const Planes* copy) {
    const int64_t rows = B * R;
    const unsigned blocks = unsigned(rows * wblocks);
    const int C = w.channels, C2 = 2 * C;
    Segments out_seg;
    out_seg.B = B, out_seg.C = C2, out_seg.R = R, out_seg.W = W;

    if (in_tc_fits(ctx, w)) {
        const uint2* frag = reinterpret_cast<const uint2*>(w.in_fragments);
        const auto launch = [&](auto ntiles) {
            constexpr int NT = decltype(ntiles)::value;
            if (ctx.dconv_split_warps)
                dconv_in_tc_kernel<NT, in_split(NT)><<<blocks, kRowThreads * in_split(NT), 0, ctx.stream>>>(
                    x, C, R, W, w.dilation, w.hidden, frag, w.in_bias, h, partial, wblocks);
            else
                dconv_in_tc_kernel<NT, 1><<<blocks, kRowThreads, 0, ctx.stream>>>(x, C, R, W, w.dilation, w.hidden,
                                                                                  frag, w.in_bias, h, partial, wblocks);
        };
        switch ((w.hidden + 7) / 8) {
            case 1: launch(std::integral_constant<int, 1>()); break;
            case 2: launch(std::integral_constant<int, 2>()); break;
            case 3: launch(std::integral_constant<int, 3>()); break;
            default: launch(std::integral_constant<int, 4>());
        }
    } else {
        const size_t in_bytes = in_smem_floats(C, MaxHidden) * sizeof(float);
        allow_shared(dconv_in_kernel<MaxHidden>, in_bytes);
        dconv_in_kernel<MaxHidden><<<blocks, kRowThreads, in_bytes, ctx.stream>>>(
            x, C, R, W, w.dilation, w.hidden, w.in_table, w.in_bias, h, partial, wblocks);
    }
    FD_LAUNCH_CHECK();
    const int swb = stats_wblocks(W, MaxHidden);
    dconv_out_stats_kernel<MaxHidden><<<unsigned(rows * swb), kRowThreads, 0, ctx.stream>>>(
        h, w.hidden, C2, R, W, partial, wblocks, w.in_norm_weight, w.in_norm_bias, w.in_bias, hcoef, w.out_gram,
        out_partial, swb);
    FD_LAUNCH_CHECK();
    const size_t out_bytes = out_smem_floats(C, MaxHidden) * sizeof(float);
    allow_shared(dconv_out_apply_kernel<MaxHidden>, out_bytes);
    group_norm_coef(ctx, out_partial, swb, out_seg, w.out_norm_weight, w.out_norm_bias, nullptr, kNormEps, ycoef);

    if (apply_tc_fits(ctx, w)) {
        if (w.hidden <= 16)
            launch_apply_tc<1>(ctx, w, x, B, R, W, h, hcoef, ycoef, copy);
        else
            launch_apply_tc<2>(ctx, w, x, B, R, W, h, hcoef, ycoef, copy);
        return;
    }
    dconv_out_apply_kernel<MaxHidden><<<blocks, kRowThreads, out_bytes, ctx.stream>>>(
        h, w.hidden, C, R, W, hcoef, w.out_weight, w.out_bias, ycoef, w.scale, x, wblocks);
    FD_LAUNCH_CHECK();
    if (copy) convert_rows(ctx, x, copy->p, copy->type, B * C, R * W, copy->ld);
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

std::vector<float> dconv_in_table(const float* weight, int hidden, int channels) {
    const int mh = max_hidden_for(hidden);
    std::vector<float> table(size_t(channels) * 3 * mh, 0.0f);
    for (int k = 0; k < hidden; k++)
        for (int cj = 0; cj < channels * 3; cj++) table[size_t(cj) * mh + k] = weight[int64_t(k) * channels * 3 + cj];
    return table;
}

std::vector<uint32_t> dconv_out_fragments(const float* weight, int hidden, int channels2) {
    if (channels2 % 16 != 0 || hidden < 1 || hidden > 32) return {};
    const int ksteps = (hidden + 15) / 16;
    std::vector<uint32_t> frags(size_t(channels2 / 8) * ksteps * 32 * 2);
    for (int n = 0; n < channels2 / 8; n++)
        for (int s = 0; s < ksteps; s++)
            for (int lane = 0; lane < 32; lane++) {
                const float* row = weight + int64_t(8 * n + lane / 4) * hidden;
                auto w = [&](int k) { return k < hidden ? row[k] : 0.0f; };
                const int k0 = 16 * s + 2 * (lane % 4);
                uint32_t* at = frags.data() + ((size_t(n) * ksteps + s) * 32 + lane) * 2;
                at[0] = pack_half2(w(k0), w(k0 + 1));
                at[1] = pack_half2(w(k0 + 8), w(k0 + 9));
            }
    return frags;
}

std::vector<uint32_t> dconv_in_fragments(const float* weight, int hidden, int channels) {
    if (hidden < 1 || hidden > 32 || channels < 1) return {};
    const int ntiles = (hidden + 7) / 8, chunks = (channels + kInChunk - 1) / kInChunk;
    std::vector<uint32_t> frags(size_t(ntiles) * chunks * 3 * 32 * 2);
    for (int n = 0; n < ntiles; n++)
        for (int ch = 0; ch < chunks; ch++)
            for (int j = 0; j < 3; j++)
                for (int lane = 0; lane < 32; lane++) {
                    const int k = 8 * n + lane / 4;  // hidden channel: the B column
                    auto w = [&](int c) {
                        return k < hidden && c < channels ? weight[(int64_t(k) * channels + c) * 3 + j] : 0.0f;
                    };
                    const int c0 = kInChunk * ch + 2 * (lane % 4);
                    uint32_t* at = frags.data() + ((((size_t(n) * chunks + ch) * 3 + j) * 32) + lane) * 2;
                    at[0] = pack_half2(w(c0), w(c0 + 1));
                    at[1] = pack_half2(w(c0 + 8), w(c0 + 9));
                }
    return frags;
}

bool dconv_layer_thin_fits(int channels, int hidden) {
    if (channels < 1 || hidden < 1 || hidden > 32) return false;
    const int mh = max_hidden_for(hidden);
    const size_t limit = smem_limit();
    return in_smem_floats(channels, mh) * sizeof(float) <= limit &&
           out_smem_floats(channels, mh) * sizeof(float) <= limit;
}

void dconv_layer_thin(const Ctx& ctx, const DConvLayerWeights& w, float* x, int64_t B, int64_t R, int64_t W,
                      const Planes* copy) {
    if (copy && (copy->type == DType::F32 || copy->ld < R * W))
        throw Error("internal error: dconv_layer_thin: the operand copy");
    if (!dconv_layer_thin_fits(w.channels, w.hidden))
        throw Error("internal error: dconv_layer_thin: " + std::to_string(w.channels) + " channels, hidden " +
                    std::to_string(w.hidden));
    if (!w.out_gram || !w.in_table)
        throw Error("internal error: dconv_layer_thin needs the in-convolution's table and the Gram matrix");
    const int64_t wblocks = (W + kRowThreads - 1) / kRowThreads, rows = B * R, blocks = rows * wblocks;
    // gridDim.x, and 3 * blockIdx.x for the partials, stay within 32 bits.
    if (W > std::numeric_limits<int>::max() || blocks > std::numeric_limits<int>::max() / 3)
        throw Error("internal error: dconv_layer_thin: too many positions");
    ArenaScope scope(*ctx.arena);
    float* h = ctx.arena->alloc<float>(B * w.hidden * R * W);
    double* partial = ctx.arena->alloc<double>(3 * blocks);      // h's, per block of the in-convolution
    double* out_partial = ctx.arena->alloc<double>(3 * blocks);  // y's, per block of the statistics pass
    float2* hcoef = ctx.arena->alloc<float2>(B * w.hidden * R);
    float2* ycoef = ctx.arena->alloc<float2>(B * 2 * w.channels * R);
    if (ctx.dry || blocks == 0) return;
    const auto launch = [&](auto max_hidden) {
        launch_layer<decltype(max_hidden)::value>(ctx, w, x, B, R, int(W), int(wblocks), h, partial, out_partial,
                                                  hcoef, ycoef, copy);
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
