#include "cuda/implicit_conv.h"

#include <mma.h>

#include <limits>
#include <string>

#include "cuda/arena.h"
#include "cuda/device_utils.cuh"
#include "cuda/profile.h"
#include "error.h"

namespace fastdemucs::cuda {
namespace {

// A block computes a [kTileM, kTileN] tile of one item's output, walking K
// in steps of kTileK: 8 warps, 4 along M x 2 along N, each 32 x 64 outputs
// (2 x 4 WMMA accumulators). A tile of 128 rows: every gathered column
// value serves 128 output channels.
//
// Pipeline: kStages K steps are in flight as cp.async copies — the column
// values as float32 (4-byte copies, zero-filled outside the input), the
// weights as 16-byte copies — so that the gather's memory latency hides
// behind the tensor cores; each step's float32 tile is rounded once into the
// operand tile the WMMA fragments load. Two blocks fit an SM (registers
// capped at 128, ~90 KB of shared memory each).
constexpr int kTileM = 128, kTileN = 128, kTileK = 32, kStages = 3;
constexpr int kConvThreads = 256;
constexpr int kWarpsN = 2;
constexpr int kWarpRows = kTileM / (kConvThreads / 32 / kWarpsN), kWarpCols = kTileN / kWarpsN;  // 32 x 64
constexpr int kFragM = kWarpRows / 16, kFragN = kWarpCols / 16;
// Shared-memory row strides (elements): multiples of 8 halves / 4 floats
// (WMMA's rule) and of 16 bytes (cp.async), padded against bank conflicts.
constexpr int kLdA = kTileK + 8, kLdB = kTileN + 8, kLdF = kTileN + 8, kLdC = kTileN + 4;
// Per thread and K step: 16 column values of one output position n (rows
// k0 + r + 2 e: a warp copies 32 consecutive positions of one k at a time),
// and 16 weights (half a row of the A tile).
constexpr int kBRowsPerPass = kConvThreads / kTileN;  // 2
constexpr int kBPerThread = kTileK / kBRowsPerPass;   // 16
constexpr int kAPerThread = kTileM * kTileK / kConvThreads;  // 16
// The output is staged through shared memory half a tile at a time.
constexpr int kStageRows = kTileM / 2;

template <typename T>
struct Stage {
    float b[kTileK][kLdF];  // gathered column values, as read
    T a[kTileM][kLdA];      // weights
};
template <typename T>
struct Shared {
    Stage<T> stage[kStages];
    T b[kTileK][kLdB];  // the current step's column values in the operand type
};
static_assert(sizeof(float) * kStageRows * kLdC <= sizeof(Stage<__half>) * kStages,
              "the output staging must fit the stages it aliases");

struct Geometry {
    int cin, H, W, Ho, Wo;
    int sh, sw, ph, pw, dh, dw;
    uint32_t M, K, N;
    Divisor<uint32_t> taps, kw, wo;
};

// Row k of the column matrix, decoded once per convolution: x offset
// ci * H * W + dy * W + dx of the tap, and dy, dx (input row / column
// relative to the output position's, padding included) packed as 16 bits each.
__global__ void column_rows_kernel(int2* __restrict__ rows, Geometry g) {
    for (uint32_t k = blockIdx.x * blockDim.x + threadIdx.x; k < g.K; k += gridDim.x * blockDim.x) {
        const uint32_t ci = g.taps.div(k), t = k - ci * g.taps.value();
        const uint32_t i = g.kw.div(t), j = t - i * g.kw.value();
        const int dy = int(i) * g.dh - g.ph, dx = int(j) * g.dw - g.pw;
        rows[k] = make_int2(int(ci) * g.H * g.W + dy * g.W + dx, int((uint32_t(dy) << 16) | (uint32_t(dx) & 0xffffu)));
    }
}

template <typename T>
__global__ void __launch_bounds__(kConvThreads, 2)
    implicit_conv_kernel(const float* __restrict__ x, const T* __restrict__ w, const int2* __restrict__ column_rows,
                         const float* __restrict__ bias, float* __restrict__ out, Geometry g, Act act) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    __trap();  // cp.async and bfloat16 WMMA need sm_80; the backend never launches it before that
#else
    using namespace nvcuda;
    extern __shared__ __align__(128) unsigned char shared_raw[];
    Shared<T>& sh = *reinterpret_cast<Shared<T>*>(shared_raw);
    float(*staged)[kLdC] = reinterpret_cast<float(*)[kLdC]>(shared_raw);  // after the K walk

    const int tid = threadIdx.x, warp = tid >> 5;
    const int wm = warp / kWarpsN, wn = warp % kWarpsN;
    const uint32_t m0 = blockIdx.y * kTileM, n0 = blockIdx.x * kTileN;
    const float* xb = x + int64_t(blockIdx.z) * g.cin * g.H * g.W;

    // B: this thread's output position (one column of every step's tile).
    const int b_col = tid % kTileN, b_row0 = tid / kTileN;
    const uint32_t n = n0 + b_col;
    const bool n_valid = n < g.N;
    const uint32_t ho = g.wo.div(n_valid ? n : 0), wo = (n_valid ? n : 0) - ho * g.wo.value();
    const int h_base = int(ho) * g.sh, w_base = int(wo) * g.sw;
    const int position = h_base * g.W + w_base;
    // A: half a row of the weight tile.
    const int a_row = tid / (kTileK / kAPerThread), a_col0 = (tid % (kTileK / kAPerThread)) * kAPerThread;
    const uint32_t m_a = m0 + a_row;
    const bool a_async = g.K % 8 == 0;  // rows of 16 bytes: whole 8-weight runs are in or out

    auto issue = [&](uint32_t k0, Stage<T>& st) {
#pragma unroll
        for (int e = 0; e < kBPerThread; e++) {
            const int r = b_row0 + e * kBRowsPerPass;
            const uint32_t k = k0 + r;
            bool valid = n_valid && k < g.K;
            int offset = 0;
            if (valid) {
                const int2 row = column_rows[k];
                const int h = h_base + (row.y >> 16), ww = w_base + int(int16_t(row.y & 0xffff));
                valid = unsigned(h) < unsigned(g.H) && unsigned(ww) < unsigned(g.W);
                offset = position + row.x;
            }
            cp_async4(&st.b[r][b_col], valid ? xb + offset : xb, valid);
        }
        if (a_async) {
#pragma unroll
            for (int e = 0; e < kAPerThread; e += 8) {
                const uint32_t kc = k0 + a_col0 + e;
                const bool valid = m_a < g.M && kc < g.K;
                cp_async16(&st.a[a_row][a_col0 + e], valid ? w + int64_t(m_a) * g.K + kc : w, valid);
            }
        } else {
#pragma unroll
            for (int e = 0; e < kAPerThread; e++) {
                const uint32_t kc = k0 + a_col0 + e;
                st.a[a_row][a_col0 + e] = (m_a < g.M && kc < g.K) ? w[int64_t(m_a) * g.K + kc] : from_float<T>(0.0f);
            }
        }
    };

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kFragM][kFragN];
#pragma unroll
    for (int i = 0; i < kFragM; i++)
#pragma unroll
        for (int j = 0; j < kFragN; j++) wmma::fill_fragment(acc[i][j], 0.0f);

    const uint32_t steps = (g.K + kTileK - 1) / kTileK;
#pragma unroll
    for (int s = 0; s < kStages - 1; s++) {
        if (uint32_t(s) < steps) issue(uint32_t(s) * kTileK, sh.stage[s]);
        cp_async_commit();  // (empty groups keep the count uniform)
    }
    // The rounding pass: row r of the float32 tile, 16 values per thread.
    const int c_row = tid / (kTileN / 16), c_col0 = (tid % (kTileN / 16)) * 16;
    for (uint32_t step = 0; step < steps; step++) {
        cp_async_wait<kStages - 2>();  // this thread's copies of `step` have landed
        __syncthreads();               // everyone's have; the previous step's MMA is done
        Stage<T>& st = sh.stage[step % kStages];
#pragma unroll
        for (int e = 0; e < 16; e += 4) {
            const float4 v = *reinterpret_cast<const float4*>(&st.b[c_row][c_col0 + e]);
            sh.b[c_row][c_col0 + e] = from_float<T>(v.x);
            sh.b[c_row][c_col0 + e + 1] = from_float<T>(v.y);
            sh.b[c_row][c_col0 + e + 2] = from_float<T>(v.z);
            sh.b[c_row][c_col0 + e + 3] = from_float<T>(v.w);
        }
        // The stage consumed one step ago is free: refill it.
        const uint32_t next = step + kStages - 1;
        if (next < steps) issue(next * kTileK, sh.stage[next % kStages]);
        cp_async_commit();
        __syncthreads();  // the operand tile is complete
#pragma unroll
        for (int kk = 0; kk < kTileK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa[kFragM];
#pragma unroll
            for (int i = 0; i < kFragM; i++)
                wmma::load_matrix_sync(fa[i], &st.a[wm * kWarpRows + i * 16][kk], kLdA);
#pragma unroll
            for (int j = 0; j < kFragN; j++) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
                wmma::load_matrix_sync(fb, &sh.b[kk][wn * kWarpCols + j * 16], kLdB);
#pragma unroll
                for (int i = 0; i < kFragM; i++) wmma::mma_sync(acc[i][j], fa[i], fb, acc[i][j]);
            }
        }
    }
    cp_async_wait<0>();
    __syncthreads();  // every stage is free: the output staging aliases them

    float* ob = out + int64_t(blockIdx.z) * g.M * g.N;
    for (int half = 0; half < kTileM / kStageRows; half++) {
        const int first_warp_row = half * kStageRows / kWarpRows;
        if (wm >= first_warp_row && wm < first_warp_row + kStageRows / kWarpRows) {
#pragma unroll
            for (int i = 0; i < kFragM; i++)
#pragma unroll
                for (int j = 0; j < kFragN; j++)
                    wmma::store_matrix_sync(
                        &staged[(wm - first_warp_row) * kWarpRows + i * 16][wn * kWarpCols + j * 16], acc[i][j], kLdC,
                        wmma::mem_row_major);
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
#endif
}

// Launches the kernel for operand type T (its shared memory is past the 48 KB default).
template <typename T>
void launch(const dim3& grid, cudaStream_t stream, const float* x, const void* weight, const int2* column_rows,
            const float* bias, float* out, const Geometry& geo, Act act) {
    // Set on every launch: the attribute belongs to the context (release_gpus() may have made a new one).
    FD_CUDA(cudaFuncSetAttribute(implicit_conv_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 int(sizeof(Shared<T>))));
    implicit_conv_kernel<T><<<grid, kConvThreads, sizeof(Shared<T>), stream>>>(
        x, static_cast<const T*>(weight), column_rows, bias, out, geo, act);
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
    if (int64_t(g.kh - 1) * g.dh + g.ph >= 32768 || int64_t(g.kw - 1) * g.dw + g.pw >= 32768)
        throw Error("internal error: implicit_conv2d tap offsets exceed 16 bits");
    ArenaScope scope(*ctx.arena);
    int2* column_rows = ctx.arena->alloc<int2>(K);
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
    column_rows_kernel<<<grid_for(K), kThreads, 0, ctx.stream>>>(column_rows, geo);
    FD_LAUNCH_CHECK();
    if (dt == DType::F16)
        launch<__half>(grid, ctx.stream, x, weight, column_rows, bias, out, geo, act);
    else
        launch<__nv_bfloat16>(grid, ctx.stream, x, weight, column_rows, bias, out, geo, act);
    FD_LAUNCH_CHECK();
}

}  // namespace fastdemucs::cuda
