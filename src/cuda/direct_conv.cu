// The time encoder's first convolution on mma.sync (see direct_conv.h).
#include "cuda/direct_conv.h"

#include <algorithm>

#include "cuda/device_utils.cuh"
#include "cuda/profile.h"
#include "error.h"

namespace fastdemucs::cuda {
namespace {

constexpr int kTaps = 8;
constexpr int kCout = 48;       // the output channels it is built for (HTDemucs's first layers)
constexpr int kMTiles = kCout / 16;
constexpr int kNTiles = 4;      // n8 tiles of positions a warp takes at a time: 32 positions
constexpr int kWarps = 4;
constexpr int kBlock = 32 * kWarps;
constexpr int kTilePitch = 8 * kNTiles + 1;  // a warp's staged output row (32 positions), padded
constexpr int kPositions = kWarps * 8 * kNTiles;  // a block's positions at a time

struct DirectConvArgs {
    const float* x;
    const float* weight;  // [kCout, cin * 8] float32
    const float* bias;    // [kCout] or null
    float* out;
    InputNorm norm;
    int H, W, Wo, N;  // N = Ho * Wo
    int sh, sw, ph, pw;
    Act act;
};

// Block (x, y): positions of item y. A warp holds every weight as A
// fragments (rows: the 48 outputs; K: two input channels x 8 taps a step,
// channel 2s in columns 0-7 and 2s + 1 in 8-15) and takes 32 positions at
// a time: lane (g, t) gathers, for position g of each n8 tile, taps 2t and
// 2t + 1 of both channels of a step straight from x (normalised, rounded to
// the operand type) as its B fragment. The accumulators get the bias and
// the activation in float32 on their way out through shared memory.
template <typename T, int CIN>
__global__ void __launch_bounds__(kBlock) direct_conv_kernel(DirectConvArgs a) {
    constexpr int K = CIN * kTaps, KS = (CIN + 1) / 2;
    const int lane = int(threadIdx.x) & 31, g = lane >> 2, tl = lane & 3, warp = int(threadIdx.x) >> 5;
    uint32_t af[kMTiles][KS][4];
#pragma unroll
    for (int mt = 0; mt < kMTiles; mt++)
#pragma unroll
        for (int s = 0; s < KS; s++)
#pragma unroll
            for (int r = 0; r < 4; r++) {
                const int row = mt * 16 + g + (r & 1) * 8, col = s * 16 + 2 * tl + (r >> 1) * 8;
                const float w0 = col < K ? a.weight[row * K + col] : 0.0f;
                const float w1 = col + 1 < K ? a.weight[row * K + col + 1] : 0.0f;
                af[mt][s][r] = pack16(bits16(from_float<T>(w0)), bits16(from_float<T>(w1)));
            }
    __shared__ float bias[kCout];
    __shared__ float tiles[kWarps][kCout * kTilePitch];
    float* tile = tiles[warp];
    for (int co = int(threadIdx.x); co < kCout; co += kBlock) bias[co] = a.bias ? a.bias[co] : 0.0f;
    __syncthreads();

    const int b = int(blockIdx.y);
    const float* __restrict__ xb = a.x + int64_t(b) * CIN * a.H * a.W;
    float* __restrict__ ob = a.out + int64_t(b) * kCout * a.N;
    const bool normed = a.norm.mean != nullptr;
    const double mean = normed ? a.norm.mean[b] : 0.0, inv = normed ? a.norm.inv[b] : 1.0;
    constexpr int kPerWarp = 8 * kNTiles;
    for (int base = (int(blockIdx.x) * kWarps + warp) * kPerWarp; base < a.N; base += int(gridDim.x) * kPositions) {
        float acc[kMTiles][kNTiles][4] = {};
#pragma unroll
        for (int j = 0; j < kNTiles; j++) {
            const int p = base + 8 * j + g;
            const bool ok = p < a.N;
            const int ho = ok ? p / a.Wo : 0, wo = ok ? p - ho * a.Wo : 0;
#pragma unroll
            for (int s = 0; s < KS; s++) {
                uint32_t bf[2];
#pragma unroll
                for (int hh = 0; hh < 2; hh++) {
                    const int ci = 2 * s + hh;
                    float v[2];
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const int tap = 2 * tl + e;
                        const int h = ho * a.sh - a.ph, w = wo * a.sw - a.pw + tap;
                        const bool inside = ci < CIN && ok && h >= 0 && h < a.H && w >= 0 && w < a.W;
                        float r = inside ? xb[(int64_t(ci) * a.H + h) * a.W + w] : 0.0f;
                        if (normed && inside) r = float((double(r) - mean) * inv);
                        v[e] = r;
                    }
                    bf[hh] = pack16(bits16(from_float<T>(v[0])), bits16(from_float<T>(v[1])));
                }
#pragma unroll
                for (int mt = 0; mt < kMTiles; mt++) mma_m16n8k16<T>(acc[mt][j], af[mt][s], bf[0], bf[1]);
            }
        }
        // The tile [48 outputs][32 positions] through shared memory, so that
        // each output row leaves as one warp store of 32 consecutive floats
        // (from the fragments, every store touched 8 rows: the L2 busy with
        // partial sectors).
#pragma unroll
        for (int j = 0; j < kNTiles; j++)
#pragma unroll
            for (int mt = 0; mt < kMTiles; mt++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    tile[(mt * 16 + g + 8 * (e >> 1)) * kTilePitch + 8 * j + 2 * tl + (e & 1)] = acc[mt][j][e];
        __syncwarp();
        const int p = base + lane;
        if (p < a.N)
            for (int co = 0; co < kCout; co++)
                ob[int64_t(co) * a.N + p] = activate(tile[co * kTilePitch + lane] + bias[co], a.act);
        __syncwarp();
    }
}

template <typename T, int CIN>
void launch(const Ctx& ctx, const DirectConvArgs& a, int64_t B) {
    // Enough blocks to fill the GPU a few times over, each looping over its
    // item's positions (its weight fragments are loaded once).
    const int64_t groups = (int64_t(a.N) + kPositions - 1) / kPositions;
    const int64_t gx = std::max<int64_t>(1, std::min<int64_t>(groups, max_blocks() / std::max<int64_t>(1, B)));
    const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(B));
    direct_conv_kernel<T, CIN><<<grid, kBlock, 0, ctx.stream>>>(a);
    FD_LAUNCH_CHECK();
}

template <typename T>
void launch_typed(const Ctx& ctx, const DirectConvArgs& a, int64_t B, int64_t cin) {
    if (cin == 1)
        launch<T, 1>(ctx, a, B);
    else
        launch<T, 2>(ctx, a, B);
}

}  // namespace

bool direct_conv_takes(DType t, int64_t cin, int64_t cout, int kh, int kw, const ConvGeom& g) {
    return (t == DType::F16 || t == DType::BF16) && kh == 1 && kw == kTaps && g.dw == 1 && (cin == 1 || cin == 2) &&
           cout == kCout;
}

void direct_conv2d(const Ctx& ctx, const float* x, int64_t B, int64_t cin, int64_t H, int64_t W,
                   const float* weight, const float* bias, int64_t cout, const ConvGeom& g, int64_t Ho, int64_t Wo,
                   float* out, Act act, const InputNorm* norm) {
    if (!direct_conv_takes(ctx.gemm, cin, cout, g.kh, g.kw, g) || !weight)
        throw Error("internal error: direct_conv2d: a convolution it does not take");
    // (Positions below 2^30: a warp's int position stays clear of overflow past N by a grid's stride.)
    if (B > 65535 || cin * H * W >= (int64_t(1) << 31) || Ho * Wo > (int64_t(1) << 30))
        throw Error("internal error: direct_conv2d dimensions");
    if (norm && ((norm->mean == nullptr) != (norm->inv == nullptr)))
        throw Error("internal error: direct_conv2d: half an input norm");
    if (ctx.dry || B * Ho * Wo == 0) return;
    ProfileSpan span(ctx, ProfKind::Gemm);
    DirectConvArgs a;
    a.x = x, a.weight = weight, a.bias = bias, a.out = out, a.norm = norm ? *norm : InputNorm{};
    a.H = int(H), a.W = int(W), a.Wo = int(Wo), a.N = int(Ho * Wo);
    a.sh = g.sh, a.sw = g.sw, a.ph = g.ph, a.pw = g.pw, a.act = act;
    if (ctx.gemm == DType::F16)
        launch_typed<__half>(ctx, a, B, cin);
    else
        launch_typed<__nv_bfloat16>(ctx, a, B, cin);
}

}  // namespace fastdemucs::cuda
