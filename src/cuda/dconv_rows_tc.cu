// Every residual layer of a DConv on the tensor cores with the row in shared
// memory (float16 / bfloat16 modes): see dconv_rows_tc in cuda/dconv.h.
//
// Why: the three tensor-core passes per layer (cuda/dconv.cu) read and write
// x in float32 from global memory ~3.5 times a layer, ~28 bytes a value for
// a two-layer DConv; the frequency branch's outer DConvs (C = 48 / 96, rows
// of 336 frames) are ~half of the DConv's 10.7 GB a forward of 8 chunks.
// With the row resident, x is read once and written once (and its float16
// copy for the next GEMM): ~10 bytes a value.
//
// The row lives twice in shared memory: float32 [C][row pitch] (the residual
// stream, exact as in the other kernels) and float16 [position][channel]
// (the in-convolution's A operand through ldmatrix, with zero margins for
// the taps: each value converted once per layer, by the pass that wrote it).
// A warp keeps its m-tiles of 16 positions from the in-convolution to the
// apply: h's accumulators become the out-convolution's A fragments in
// registers (the m16n8 accumulator layout of two hidden tiles is the m16k16
// A layout). y is computed twice, for its row statistics and for the GLU
// (2C / 8 MMAs a tile each time; storing it would be 2C floats a position).
#include <limits>
#include <string>
#include <type_traits>

#include "cuda/dconv_internal.cuh"
#include "cuda/device_utils.cuh"
#include "error.h"

namespace fastdemucs::cuda {
namespace {

using namespace dconv_detail;

constexpr int kMargin = kInMaxDilation;  // zero positions each side of the float16 row
constexpr int kMaxHidden = 16;  // one k-step for the out-convolution, at most two hidden tiles

__host__ __device__ constexpr int padded_positions(int W) { return (W + 15) / 16 * 16; }
// Floats per channel of the float32 row: every position of the m-tiles (the
// apply writes the partial last tile's positions past W there, never read
// back), 4 more: a multiple of 4 (16-byte copies) and an odd one (4 mod 8),
// so that the apply's fragment accesses, lanes (g, t) at channel 2t and
// position g, fall in 32 different banks.
__host__ __device__ constexpr int row_pitch(int W) { return padded_positions(W) + 4; }
// Halves per position of the float16 row: the channels rounded to 16 (one
// k-step of the in-convolution) plus 8, an odd number of 16-byte units, so
// that ldmatrix's eight row addresses and the apply's pair stores are free
// of bank conflicts.
__host__ __device__ constexpr int half_pitch(int C) { return (C + 15) / 16 * 16 + 8; }
// Rows of the float16 row: the margins, the m-tiles' positions, and one
// more that takes the apply's writes for positions past W (those of the
// padded row must stay zero: they are the taps' padding).
__host__ __device__ constexpr int half_rows(int W) { return padded_positions(W) + 2 * kMargin + 1; }
__host__ __device__ constexpr int in_fragment_count(int C, int nt) { return nt * ((C + 15) / 16) * 3 * 32; }
__host__ __device__ constexpr int out_fragment_count(int C) { return 2 * C / 8 * 32; }

// Dynamic shared memory in bytes, in this order: the float32 row, the
// float16 row, both fragment tables of the current layer (uint2), h's
// coefficients [16] and y's [2C] (float2), the in-bias [16], the out-bias
// [2C].
constexpr size_t rows_tc_smem_bytes(int C, int W, int nt) {
    return size_t(C) * row_pitch(W) * sizeof(float) + size_t(half_rows(W)) * half_pitch(C) * sizeof(__half) +
           size_t(in_fragment_count(C, nt) + out_fragment_count(C)) * sizeof(uint2) +
           size_t(kMaxHidden + 2 * C) * sizeof(float2) + size_t(kMaxHidden + 2 * C) * sizeof(float);
}

// Launch bounds per m-tiles a warp keeps: one tile, up to 24 warps (85
// registers) and one block an SM (rows whose two copies take most of the
// shared memory); two or three, up to 12 warps and, with one hidden tile,
// registers for two blocks an SM (two hidden tiles need more than 80).
constexpr int max_threads(int tpw) { return tpw == 1 ? 768 : 384; }
constexpr int min_blocks(int tpw, int nt) { return tpw == 2 && nt == 1 ? 2 : 1; }
// The longest row: its m-tiles at three a warp within 384 threads.
constexpr int kRowsTcMaxW = 512;
static_assert(kRowsTcMaxW <= 16 * 3 * max_threads(3) / 32, "the longest row's warps within the launch bounds");

// A block per row (b, r); warp w takes m-tiles w, w + warps, ... (at most
// TPW). NT: hidden tiles of 8 (1 or 2). CopyT __half /
// __nv_bfloat16: the result also written to `copy` (planes of copy_ld
// values), float: no copy.
template <int NT, int TPW, typename CopyT>
__global__ void __launch_bounds__(max_threads(TPW), min_blocks(TPW, NT))
    dconv_rows_tc_kernel(const RowLayers layers, float* __restrict__ x, int C, int64_t R, int W, bool vec,
                         CopyT* __restrict__ copy, int64_t copy_ld, bool vec_copy) {
    extern __shared__ float4 rows_tc_smem[];
    __shared__ double red[32];
    const int WP = row_pitch(W), HP = half_pitch(C), C2 = 2 * C;
    const int mtiles = padded_positions(W) / 16, chunks = (C + 15) / 16;
    const int in_frags = in_fragment_count(C, NT), out_frags = out_fragment_count(C);
    float* xs = reinterpret_cast<float*>(rows_tc_smem);                  // [C][WP]
    __half* xh = reinterpret_cast<__half*>(xs + size_t(C) * WP);         // [kMargin + position][HP]
    uint2* in_frag = reinterpret_cast<uint2*>(xh + size_t(half_rows(W)) * HP);  // dconv_in_fragments' layout
    uint2* out_frag = in_frag + in_frags;                                // dconv_out_fragments' layout
    float2* hc = reinterpret_cast<float2*>(out_frag + out_frags);        // [kMaxHidden]
    float2* yc = hc + kMaxHidden;  // [2C]: a's {scale, shift} times LayerScale, g's times -log2(e)
    float* hb = reinterpret_cast<float*>(yc + C2);  // [kMaxHidden]
    float* bo = hb + kMaxHidden;                    // [2C]
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int64_t b = blockIdx.x / R, r = blockIdx.x - b * R;
    const int64_t plane = R * W;
    float* xrow = x + (b * C * R + r) * W;  // channel c at xrow + c * plane

    // The float32 row in asynchronously while the float16 row is zeroed
    // (margins, positions past W and channels past C stay zero).
    load_row_async(xs, WP, xrow, plane, C, W, vec);
    cp_async_commit();
    {
        // Zero where the float16 row is read but never written: the margins,
        // the rows past W (and the sink), the channels past C.
        const int q8 = HP / 8, tail = half_rows(W) - kMargin - W;
        for (int i = threadIdx.x; i < (kMargin + tail) * q8; i += blockDim.x) {
            const int row = i / q8;
            reinterpret_cast<uint4*>(xh + (row < kMargin ? row : row + W) * HP)[i - row * q8] = uint4{};
        }
        for (int w = threadIdx.x; w < W; w += blockDim.x)
            for (int c = C; c < HP; c += 8) *reinterpret_cast<uint4*>(xh + (kMargin + w) * HP + c) = uint4{};
    }
    cp_async_wait<0>();
    __syncthreads();
    // The float16 row from the float32 one: a warp takes 8 positions x 4
    // channel pairs (conflict-free on both sides).
    for (int w = 8 * warp + (lane >> 2); w - (lane >> 2) < W; w += 8 * warps) {
        if (w < W)
            for (int c = 2 * t; c < C; c += 8)
                *reinterpret_cast<uint32_t*>(xh + (kMargin + w) * HP + c) = half2_sat(xs[c * WP + w], xs[(c + 1) * WP + w]);
    }

    // Per tile and half (rows g and g + 8 of the fragments): whether the
    // position is within the row (a factor for the statistics) and where
    // the apply writes its float16 value (the sink row past W).
    float inside[TPW][2];
    int xh_row[TPW][2];
#pragma unroll
    for (int i = 0; i < TPW; i++)
#pragma unroll
        for (int hlf = 0; hlf < 2; hlf++) {
            const int w = 16 * (warp + i * warps) + g + 8 * hlf;
            inside[i][hlf] = w < W ? 1.0f : 0.0f;
            xh_row[i][hlf] = (w < W ? kMargin + w : half_rows(W) - 1) * HP;
        }

    for (int l = 0; l < layers.count; l++) {
        const DConvLayerWeights& lw = layers.layer[l];
        const int hidden = lw.hidden, d = lw.dilation;
        {
            const uint4* src_in = reinterpret_cast<const uint4*>(lw.in_fragments);
            const uint4* src_out = reinterpret_cast<const uint4*>(lw.out_fragments);
            for (int i = threadIdx.x; i < in_frags / 2; i += blockDim.x) cp_async16(in_frag + 2 * i, src_in + i, true);
            for (int i = threadIdx.x; i < out_frags / 2; i += blockDim.x) cp_async16(out_frag + 2 * i, src_out + i, true);
            cp_async_commit();
        }
        for (int k = threadIdx.x; k < kMaxHidden; k += blockDim.x) hb[k] = k < hidden ? lw.in_bias[k] : 0.0f;
        for (int o = threadIdx.x; o < C2; o += blockDim.x) bo[o] = lw.out_bias[o];
        cp_async_wait<0>();
        __syncthreads();  // the float16 row (written by the previous layer or the load), the tables, the constants

        // h = conv3(x) without its bias: K runs over (16 channels, tap), the
        // tap's A fragments the same rows shifted by (j - 1) * d.
        float acc[TPW][NT][4] = {};
        for (int ch = 0; ch < chunks; ch++)
#pragma unroll
            for (int j = 0; j < 3; j++) {
                uint2 bf[NT];
#pragma unroll
                for (int n = 0; n < NT; n++) bf[n] = in_frag[((n * chunks + ch) * 3 + j) * 32 + lane];
#pragma unroll
                for (int i = 0; i < TPW; i++) {
                    const int tile = warp + i * warps;
                    if (tile >= mtiles) break;
                    uint32_t a[4];
                    ldmatrix_x4(a[0], a[1], a[2], a[3],
                                xh + (kMargin + 16 * tile + (j - 1) * d + (lane & 15)) * HP + 16 * ch + (lane >> 4) * 8);
#pragma unroll
                    for (int n = 0; n < NT; n++) mma_m16n8k16<__half>(acc[i][n], a, bf[n].x, bf[n].y);
                }
            }
        // h's row statistics (h + bias over hidden x W; past hidden both are
        // zero), then its {scale, shift}. Float sums per thread (at most 3 x
        // 2 x 4 values), double across the row.
        float hsum = 0.0f, hsq = 0.0f;
#pragma unroll
        for (int i = 0; i < TPW; i++)
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const float v = (acc[i][n][e] + hb[8 * n + 2 * t + (e & 1)]) * inside[i][e >> 1];
                    hsum += v, hsq = fmaf(v, v, hsq);
                }
        double sum = block_sum(double(hsum), red), sq = block_sum(double(hsq), red);
        {
            const double2 m = row_moments(double(W) * hidden, sum, sq);
            for (int k = threadIdx.x; k < kMaxHidden; k += blockDim.x)
                hc[k] = k < hidden ? row_norm_coef(m.x, m.y, lw.in_norm_weight[k], lw.in_norm_bias[k], double(hb[k]))
                                   : make_float2(0.0f, 0.0f);
        }
        __syncthreads();
        // hn = GELU(GroupNorm(h)) as the out-convolution's A fragments (rows:
        // positions, columns: hidden; zero past hidden, where hc is zero).
        uint32_t a[TPW][4];
#pragma unroll
        for (int i = 0; i < TPW; i++) {
#pragma unroll
            for (int n = 0; n < NT; n++) {
                const int k = 8 * n + 2 * t;
                const float2 c0 = hc[k], c1 = hc[k + 1];
                a[i][2 * n] = half2_sat(gelu_exact(acc[i][n][0] * c0.x + c0.y), gelu_exact(acc[i][n][1] * c1.x + c1.y));
                a[i][2 * n + 1] = half2_sat(gelu_exact(acc[i][n][2] * c0.x + c0.y), gelu_exact(acc[i][n][3] * c1.x + c1.y));
            }
            if constexpr (NT == 1) a[i][2] = a[i][3] = 0u;
        }

        // y = W_out hn + bias: its row statistics over 2C x W. (The Gram form,
        // a quad's hn gathered by shuffles, a quarter of these instructions,
        // was no faster: 0.49 -> 0.50 ms a launch at C = 48.)
        // Float sums a thread (2C / 8 x TPW x 4 values, 192 at C = 48 and at
        // C = 96: relative rounding ~1e-6, far below the float16 operands'
        // 1e-3), double across the row. (Each MMA's values added to double
        // sums instead: the kernel 4 % slower.)
        float ysum = 0.0f, ysq = 0.0f;
#pragma unroll 2
        for (int o = 0; o < C2 / 8; o++) {
            const uint2 fr = out_frag[o * 32 + lane];
            const float b0 = bo[8 * o + 2 * t], b1 = bo[8 * o + 2 * t + 1];
#pragma unroll
            for (int i = 0; i < TPW; i++) {
                if (warp + i * warps >= mtiles) break;
                float y[4] = {b0, b1, b0, b1};
                mma_m16n8k16<__half>(y, a[i], fr.x, fr.y);
                ysum += (y[0] + y[1]) * inside[i][0] + (y[2] + y[3]) * inside[i][1];
                ysq += (y[0] * y[0] + y[1] * y[1]) * inside[i][0] + (y[2] * y[2] + y[3] * y[3]) * inside[i][1];
            }
        }
        sum = block_sum(double(ysum), red), sq = block_sum(double(ysq), red);
        {
            const double2 m = row_moments(double(W) * C2, sum, sq);
            for (int o = threadIdx.x; o < C2; o += blockDim.x) {
                const float2 k = row_norm_coef(m.x, m.y, lw.out_norm_weight[o], lw.out_norm_bias[o], 0.0);
                yc[o] = fold_glu_coef(k, o < C, o < C ? lw.scale[o] : 0.0f);
            }
        }
        __syncthreads();

        // x += LayerScale * a * sigmoid(g) = a' / (1 + 2^g') with a' and g'
        // from the folded coefficients: channel c's a (tile c / 8) and g
        // (tile C / 8 + c / 8) land in the same lane and register; both rows
        // are updated (the float16 one for the next layer's taps).
        for (int jt = 0; jt < C / 8; jt++) {
            const uint2 fa = out_frag[jt * 32 + lane], fg = out_frag[(C / 8 + jt) * 32 + lane];
            const int c0 = 8 * jt + 2 * t;
            const float2 ka0 = yc[c0], ka1 = yc[c0 + 1], kg0 = yc[C + c0], kg1 = yc[C + c0 + 1];
            const float ba0 = bo[c0], ba1 = bo[c0 + 1], bg0 = bo[C + c0], bg1 = bo[C + c0 + 1];
#pragma unroll
            for (int i = 0; i < TPW; i++) {
                const int tile = warp + i * warps;
                if (tile >= mtiles) break;
                float ya[4] = {ba0, ba1, ba0, ba1};
                float yg[4] = {bg0, bg1, bg0, bg1};
                mma_m16n8k16<__half>(ya, a[i], fa.x, fa.y);
                mma_m16n8k16<__half>(yg, a[i], fg.x, fg.y);
#pragma unroll
                for (int hlf = 0; hlf < 2; hlf++) {
                    float* at = xs + c0 * WP + 16 * tile + g + 8 * hlf;  // positions past W: the pitch's padding
                    const float v0 =
                        fmaf(ya[2 * hlf] * ka0.x + ka0.y, rcp_ftz(1.0f + ex2_ftz(yg[2 * hlf] * kg0.x + kg0.y)), at[0]);
                    const float v1 = fmaf(ya[2 * hlf + 1] * ka1.x + ka1.y,
                                          rcp_ftz(1.0f + ex2_ftz(yg[2 * hlf + 1] * kg1.x + kg1.y)), at[WP]);
                    at[0] = v0, at[WP] = v1;
                    *reinterpret_cast<uint32_t*>(xh + xh_row[i][hlf] + c0) = half2_sat(v0, v1);
                }
            }
        }
        __syncthreads();  // the next layer's taps read the neighbours; its tables and constants replace these
    }

    // The row back, and its copy as the next GEMM's operand.
    constexpr bool kCopy = !std::is_same_v<CopyT, float>;
    CopyT* copy_row = kCopy ? copy + b * C * copy_ld + r * W : nullptr;
    for (int c = warp; c < C; c += warps) {
        float* dst = xrow + c * plane;
        const float* src = xs + c * WP;
        CopyT* copy_dst = kCopy ? copy_row + c * copy_ld : nullptr;
        if (vec) {
            for (int q = lane; q < W / 4; q += 32) {
                const float4 v = *reinterpret_cast<const float4*>(src + 4 * q);
                *reinterpret_cast<float4*>(dst + 4 * q) = v;
                if constexpr (kCopy) {
                    if (vec_copy) {
                        store4(copy_dst + 4 * q, v);
                    } else {
                        copy_dst[4 * q] = from_float<CopyT>(v.x), copy_dst[4 * q + 1] = from_float<CopyT>(v.y);
                        copy_dst[4 * q + 2] = from_float<CopyT>(v.z), copy_dst[4 * q + 3] = from_float<CopyT>(v.w);
                    }
                }
            }
        } else {
            for (int w = lane; w < W; w += 32) {
                dst[w] = src[w];
                if constexpr (kCopy) copy_dst[w] = from_float<CopyT>(src[w]);
            }
        }
    }
}

}  // namespace

bool dconv_rows_tc_fit(const Ctx& ctx, const DConvLayerWeights* layers, int count, int64_t W) {
    if (!tensor_core_mode(ctx) || count < 1 || count > kDConvRowsMaxLayers || W < 1 || W > kRowsTcMaxW)
        return false;
    const int C = layers[0].channels;
    for (int l = 0; l < count; l++) {
        const DConvLayerWeights& w = layers[l];
        if (w.channels != C || w.hidden != layers[0].hidden || w.hidden < 1 || w.hidden > kMaxHidden || w.dilation < 1 || w.dilation > kMargin ||
            !w.in_fragments || !w.out_fragments || !aligned16(w.in_fragments) || !aligned16(w.out_fragments))
            return false;
    }
    const int nt = (layers[0].hidden + 7) / 8;
    return C % 8 == 0 && rows_tc_smem_bytes(C, int(W), nt) + 32 * sizeof(double) <= optin_smem();
}

void dconv_rows_tc(const Ctx& ctx, const DConvLayerWeights* layers, int count, float* x, int64_t B, int64_t R,
                   int64_t W, const Planes* copy) {
    if (!dconv_rows_tc_fit(ctx, layers, count, W))
        throw Error("internal error: dconv_rows_tc: " + std::to_string(count) + " layers, " +
                    std::to_string(count > 0 ? layers[0].channels : 0) + " channels, W " + std::to_string(W));
    if (copy && (copy->type == DType::F32 || copy->ld < R * W))
        throw Error("internal error: dconv_rows_tc: the operand copy");
    if (B * R > std::numeric_limits<int>::max()) throw Error("internal error: dconv_rows_tc: too many rows");
    if (ctx.dry || B * R == 0) return;
    RowLayers p;
    p.count = count;
    for (int l = 0; l < count; l++) p.layer[l] = layers[l];
    const int C = layers[0].channels, hidden = layers[0].hidden;
    const int mtiles = padded_positions(int(W)) / 16;
    const size_t bytes = rows_tc_smem_bytes(C, int(W), (hidden + 7) / 8);
    // Two blocks an SM where their shared memory and (one hidden tile)
    // registers fit (C = 48: 109 KiB): two tiles a warp, 22 warps an SM (a
    // tile a warp, 64 registers: one block, 0.81 vs 0.72 ms a launch). Else
    // one block (C = 96: 217 KiB): a tile a warp, 21 warps (two tiles, 11
    // warps: 0.54 vs 0.43 ms). Rows past 24 tiles: three a warp.
    const bool two_blocks = hidden <= 8 && 2 * (bytes + 32 * sizeof(double) + 1024) <= optin_smem();
    const int tpw = mtiles > 24 ? 3 : two_blocks ? 2 : 1;
    const int warps = (mtiles + tpw - 1) / tpw;
    const bool vec = W % 4 == 0 && aligned16(x);
    const auto launch = [&](auto nt, auto* copy_p) {
        using CopyT = std::remove_pointer_t<decltype(copy_p)>;
        constexpr int NT = decltype(nt)::value;
        // (two tiles a warp only with two blocks an SM, hence one hidden tile)
        const auto kernel = tpw == 1   ? dconv_rows_tc_kernel<NT, 1, CopyT>
                            : tpw == 3 ? dconv_rows_tc_kernel<NT, 3, CopyT>
                                       : dconv_rows_tc_kernel<1, 2, CopyT>;
        allow_shared(kernel, bytes);
        const bool vec_copy = copy && copy->ld % 4 == 0 && reinterpret_cast<uintptr_t>(copy->p) % 8 == 0;
        kernel<<<unsigned(B * R), warps * 32, bytes, ctx.stream>>>(p, x, C, R, int(W), vec, copy_p,
                                                                    copy ? copy->ld : 0, vec_copy);
        FD_LAUNCH_CHECK();
    };
    const auto with_copy = [&](auto nt) { with_copy_type(copy, [&](auto* copy_p) { launch(nt, copy_p); }); };
    if (hidden <= 8)
        with_copy(std::integral_constant<int, 1>());
    else
        with_copy(std::integral_constant<int, 2>());
}

}  // namespace fastdemucs::cuda
