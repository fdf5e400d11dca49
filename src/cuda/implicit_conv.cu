#include "cuda/implicit_conv.h"

#include <mma.h>

#include <limits>
#include <string>

#include "cuda/device_utils.cuh"
#include "cuda/profile.h"
#include "error.h"

namespace fastdemucs::cuda {
namespace {

// A block computes a [kTileM, kTileN] tile of one item's output, walking K
// in steps of kTileK: 8 warps, 4 along M x 2 along N, each 32 x 64 outputs
// (2 x 4 WMMA accumulators). A tile of 128 rows: every gathered column
// value serves 128 output channels (the gather, not the tensor cores, is
// what costs here).
constexpr int kTileM = 128, kTileN = 128, kTileK = 32;
constexpr int kConvThreads = 256;
constexpr int kWarpsN = 2;
constexpr int kWarpRows = kTileM / (kConvThreads / 32 / kWarpsN), kWarpCols = kTileN / kWarpsN;  // 32 x 64
constexpr int kFragM = kWarpRows / 16, kFragN = kWarpCols / 16;
// Shared-memory row strides: multiples of 8 halves / 4 floats (WMMA's
// rule), padded against bank conflicts; every fragment pointer stays on 32 bytes.
constexpr int kLdA = kTileK + 8, kLdB = kTileN + 8, kLdC = kTileN + 4;
// What each thread stages per K step: 16 weights (half a row of the A
// tile), and 16 column values of one k: n = n0 + lane8 + 8 e, so that the
// 8 threads of a k row read 8 consecutive positions per load.
constexpr int kAPerThread = kTileM * kTileK / kConvThreads;  // 16
constexpr int kBThreadsPerRow = kConvThreads / kTileK;       // 8
constexpr int kBPerThread = kTileN / kBThreadsPerRow;        // 16
// The output is staged through shared memory half a tile at a time.
constexpr int kStageRows = kTileM / 2;

template <typename T>
struct Tiles {
    T a[kTileM][kLdA];
    T b[kTileK][kLdB];
};
constexpr size_t kSharedBytes = sizeof(float) * kStageRows * kLdC;  // the staging, which the tiles alias
static_assert(sizeof(Tiles<__half>) <= kSharedBytes, "operand tiles must fit the staging buffer");

struct Geometry {
    int cin, H, W, Ho, Wo;
    int sh, sw, ph, pw, dh, dw;
    uint32_t M, K, N;
    Divisor<uint32_t> taps, kw, wo;
};

template <typename T>
__global__ void __launch_bounds__(kConvThreads) implicit_conv_kernel(const float* __restrict__ x,
                                                                     const T* __restrict__ w,
                                                                     const float* __restrict__ bias,
                                                                     float* __restrict__ out, Geometry g, Act act) {
    using namespace nvcuda;
    __shared__ __align__(128) unsigned char shared[kSharedBytes];
    Tiles<T>& tiles = *reinterpret_cast<Tiles<T>*>(shared);
    float(*staged)[kLdC] = reinterpret_cast<float(*)[kLdC]>(shared);

    const int tid = threadIdx.x, warp = tid >> 5;
    const int wm = warp / kWarpsN, wn = warp % kWarpsN;
    const uint32_t m0 = blockIdx.y * kTileM, n0 = blockIdx.x * kTileN;
    const float* xb = x + int64_t(blockIdx.z) * g.cin * g.H * g.W;

    // B: this thread's k row of the tile and its first output position.
    const int b_row = tid / kBThreadsPerRow, b_lane = tid % kBThreadsPerRow;
    const uint32_t n_first = n0 + b_lane;
    const uint32_t ho_first = g.wo.div(n_first);
    const int wo_first = int(n_first - ho_first * g.wo.value());
    // A: half a row of the tile.
    const int a_row = tid / (kTileK / kAPerThread), a_col0 = (tid % (kTileK / kAPerThread)) * kAPerThread;
    const uint32_t m_a = m0 + a_row;
    const bool a_vector = g.K % 8 == 0;  // rows of 16 bytes: whole uint4 runs are in or out

    float bv[kBPerThread];
    alignas(16) T av[kAPerThread];
    auto gather = [&](uint32_t k0) {
        const uint32_t k = k0 + b_row;
        const bool k_valid = k < g.K;
        int64_t plane = 0;
        int dy = 0, dx = 0;
        if (k_valid) {
            const uint32_t ci = g.taps.div(k), t = k - ci * g.taps.value();
            const uint32_t i = g.kw.div(t), j = t - i * g.kw.value();
            plane = int64_t(ci) * g.H * g.W;
            dy = int(i) * g.dh - g.ph, dx = int(j) * g.dw - g.pw;
        }
        int ho = int(ho_first), wo = wo_first;
        uint32_t n = n_first;
#pragma unroll
        for (int e = 0; e < kBPerThread; e++) {
            const int h = ho * g.sh + dy, ww = wo * g.sw + dx;
            float v = 0.0f;
            if (k_valid && n < g.N && h >= 0 && h < g.H && ww >= 0 && ww < g.W) v = xb[plane + int64_t(h) * g.W + ww];
            bv[e] = v;
            n += kBThreadsPerRow, wo += kBThreadsPerRow;
            while (wo >= g.Wo) wo -= g.Wo, ho++;
        }
        if (a_vector) {
#pragma unroll
            for (int e = 0; e < kAPerThread; e += 8) {
                const uint32_t kc = k0 + a_col0 + e;
                uint4 v = make_uint4(0, 0, 0, 0);
                if (m_a < g.M && kc < g.K) v = *reinterpret_cast<const uint4*>(w + int64_t(m_a) * g.K + kc);
                *reinterpret_cast<uint4*>(&av[e]) = v;
            }
        } else {
#pragma unroll
            for (int e = 0; e < kAPerThread; e++) {
                const uint32_t kc = k0 + a_col0 + e;
                av[e] = (m_a < g.M && kc < g.K) ? w[int64_t(m_a) * g.K + kc] : from_float<T>(0.0f);
            }
        }
    };

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kFragM][kFragN];
#pragma unroll
    for (int i = 0; i < kFragM; i++)
#pragma unroll
        for (int j = 0; j < kFragN; j++) wmma::fill_fragment(acc[i][j], 0.0f);

    gather(0);
    for (uint32_t k0 = 0; k0 < g.K; k0 += kTileK) {
#pragma unroll
        for (int e = 0; e < kBPerThread; e++) tiles.b[b_row][b_lane + e * kBThreadsPerRow] = from_float<T>(bv[e]);
#pragma unroll
        for (int e = 0; e < kAPerThread; e += 8)
            *reinterpret_cast<uint4*>(&tiles.a[a_row][a_col0 + e]) = *reinterpret_cast<const uint4*>(&av[e]);
        __syncthreads();
        if (k0 + kTileK < g.K) gather(k0 + kTileK);  // in flight while the tensor cores work
#pragma unroll
        for (int kk = 0; kk < kTileK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa[kFragM];
#pragma unroll
            for (int i = 0; i < kFragM; i++)
                wmma::load_matrix_sync(fa[i], &tiles.a[wm * kWarpRows + i * 16][kk], kLdA);
#pragma unroll
            for (int j = 0; j < kFragN; j++) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
                wmma::load_matrix_sync(fb, &tiles.b[kk][wn * kWarpCols + j * 16], kLdB);
#pragma unroll
                for (int i = 0; i < kFragM; i++) wmma::mma_sync(acc[i][j], fa[i], fb, acc[i][j]);
            }
        }
        __syncthreads();  // the tiles are consumed before the next store (and before the staging reuse)
    }

    float* ob = out + int64_t(blockIdx.z) * g.M * g.N;
    for (int half = 0; half < kTileM / kStageRows; half++) {
        const int first_warp_row = half * kStageRows / kWarpRows;
        if (wm >= first_warp_row && wm < first_warp_row + kStageRows / kWarpRows) {
#pragma unroll
            for (int i = 0; i < kFragM; i++)
#pragma unroll
                for (int j = 0; j < kFragN; j++)
                    wmma::store_matrix_sync(&staged[(wm - first_warp_row) * kWarpRows + i * 16][wn * kWarpCols + j * 16],
                                            acc[i][j], kLdC, wmma::mem_row_major);
        }
        __syncthreads();
        for (int e = tid; e < kStageRows * kTileN; e += kConvThreads) {
            const int r = e / kTileN, c = e % kTileN;
            const uint32_t m = m0 + half * kStageRows + r, nn = n0 + c;
            if (m < g.M && nn < g.N)
                ob[int64_t(m) * g.N + nn] = activate(staged[r][c] + (bias ? bias[m] : 0.0f), act);
        }
        __syncthreads();
    }
}

}  // namespace

void implicit_conv2d(const Ctx& ctx, DType dt, const float* x, int64_t B, int64_t cin, int64_t H, int64_t W,
                     const void* weight, const float* bias, int64_t cout, const ConvGeom& g, int64_t Ho, int64_t Wo,
                     float* out, Act act) {
    if (dt == DType::F32) throw Error("internal error: implicit_conv2d takes float16 / bfloat16 weights");
    const int64_t K = cin * g.kh * g.kw, N = Ho * Wo;
    constexpr int64_t kLimit = std::numeric_limits<int32_t>::max();
    if (K > kLimit || N > kLimit || cout > kLimit || cin * H * W > kLimit || cout * N > kLimit)
        throw Error("internal error: implicit_conv2d dimensions exceed 32-bit indexing");
    if (ctx.dry || B == 0 || cout == 0 || N == 0) return;
    if (B > 65535 || (cout + kTileM - 1) / kTileM > 65535)
        throw Error("internal error: implicit_conv2d grid too large");
    Geometry geo;
    geo.cin = int(cin), geo.H = int(H), geo.W = int(W), geo.Ho = int(Ho), geo.Wo = int(Wo);
    geo.sh = g.sh, geo.sw = g.sw, geo.ph = g.ph, geo.pw = g.pw, geo.dh = g.dh, geo.dw = g.dw;
    geo.M = uint32_t(cout), geo.K = uint32_t(K), geo.N = uint32_t(N);
    geo.taps = Divisor<uint32_t>(int64_t(g.kh) * g.kw);
    geo.kw = Divisor<uint32_t>(g.kw);
    geo.wo = Divisor<uint32_t>(Wo);
    const dim3 grid(unsigned((N + kTileN - 1) / kTileN), unsigned((cout + kTileM - 1) / kTileM), unsigned(B));
    ProfileSpan span(ctx, ProfKind::Gemm);
    if (dt == DType::F16)
        implicit_conv_kernel<__half><<<grid, kConvThreads, 0, ctx.stream>>>(x, static_cast<const __half*>(weight),
                                                                            bias, out, geo, act);
    else
        implicit_conv_kernel<__nv_bfloat16><<<grid, kConvThreads, 0, ctx.stream>>>(
            x, static_cast<const __nv_bfloat16*>(weight), bias, out, geo, act);
    FD_LAUNCH_CHECK();
}

}  // namespace fastdemucs::cuda
