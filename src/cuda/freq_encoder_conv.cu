// The second frequency encoder's convolution on mma.sync (see freq_encoder_conv.h).
#include "cuda/freq_encoder_conv.h"

#include <algorithm>
#include <limits>

#include "cuda/device_utils.cuh"
#include "cuda/profile.h"
#include "error.h"

namespace fastdemucs::cuda {
namespace {

constexpr int kTaps = 8;    // along H
constexpr int kStride = 4;  // along H
constexpr int kWarps = 8;
constexpr int kBlock = 32 * kWarps;
// A tile: kTileRows output rows x kTileCols positions along W (128 outputs
// a channel), which read 4 kTileRows + 4 input rows a channel where tiles of
// one row read 8 a row: the input's bytes ~1.1x through L2 instead of 2x.
constexpr int kTileRows = 8, kTileCols = 16, kTileN = kTileRows * kTileCols;
constexpr int kRowsIn = kStride * kTileRows + kTaps - kStride;  // 36
constexpr int kKc = 32;                 // weight columns a step: 4 input channels x 8 taps
constexpr int kChannels = kKc / kTaps;  // 4
constexpr int kStages = 3;              // cp.async ring: the step being converted and two in flight
// A step's inputs [kChannels][kRowsIn][kTileCols]: float32 as copied (16-byte
// copy i at float 4 i), then in the operand type for ldmatrix, each row's two
// 16-byte halves swapped in rows 4..7 mod 8 (the eight rows of a fragment
// tile on distinct banks without padding).
constexpr int kStageValues = kChannels * kRowsIn * kTileCols;
constexpr int kStageCopies = kStageValues / 4;  // 16-byte copies a step
constexpr int kWarpRows = 48;           // output channels a warp's accumulators cover (three m16 tiles)
constexpr int kOutputs = 2 * kWarpRows;  // a block's: every output channel of the convolutions it takes

struct FreqEncoderArgs {
    const float* x;
    const void* weight;  // [cout, K] operand type
    const float* bias;   // [cout] or null
    float* out;
    int cin, H, W, Ho, K;  // K = cin * 8
    int ph;
    int row_tiles, col_tiles, tiles;  // tiles an item: row_tiles x col_tiles
    Act act;
};

// Shared memory of a block: its weights [kOutputs][K + 8] in the operand
// type, kStages x a step's inputs in float32, two in the operand type, the bias.
size_t shared_bytes(int64_t K) {
    return size_t(kOutputs) * size_t(K + 8) * 2 + size_t(kStages) * kStageValues * 4 + size_t(2) * kStageValues * 2 +
           size_t(kOutputs) * 4;
}

// Where value (row, 8 half + e) of a channel's operand rows sits (halves
// swapped in rows 4..7 mod 8).
__device__ __forceinline__ int operand_index(int c, int row, int half) {
    return (c * kRowsIn + row) * kTileCols + ((half ^ ((row >> 2) & 1)) << 3);
}

// Block b takes the tiles b, b + gridDim.x, ... (tile = (item, row tile,
// column tile), column tiles fastest) for every output channel, whose
// weights stay in its shared memory. Step s of the block is chunk s % (K /
// 32) of its (s / (K / 32))-th tile: 4 input channels x the tile's 36 input
// rows x 16 positions, copied into a ring of kStages with cp.async
// (zero-filled outside the input); once they land, each thread rounds the
// values it copied to the operand type into one of two operand buffers,
// where the operand value of GEMM row 8 c + k (the weight's column order)
// and tile position (r, j) is channel c's input row 4 r + k, column j:
// ldmatrix takes the B fragments' tiles from those rows.
// The ring runs across tiles, so a tile's first steps load while the last
// one's epilogue writes. Warps split the tile 96 x 128 as 2 x 4.
template <typename T>
__global__ void __launch_bounds__(kBlock, 2) freq_encoder_kernel(FreqEncoderArgs a) {
    constexpr int MT = kOutputs, WN = kWarps / 2, NT = kTileN / (8 * WN);
    constexpr int kCopies = (kStageCopies + kBlock - 1) / kBlock;  // a thread's copies a step
    static_assert(NT % 2 == 0 && (8 * NT) % kTileCols == 0, "a warp's n8 tiles in pairs of one tile row");
    extern __shared__ __align__(16) unsigned char smem[];
    const int pitch_a = a.K + 8;
    T* ws = reinterpret_cast<T*>(smem);                                    // [MT][pitch_a]
    float* bs = reinterpret_cast<float*>(smem + size_t(MT) * pitch_a * 2);  // [kStages][kStageValues] float32
    T* ops = reinterpret_cast<T*>(bs + kStages * kStageValues);            // [2][kStageValues] operand type
    float* bias = reinterpret_cast<float*>(ops + 2 * kStageValues);         // [MT]
    const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
    const int slot = int(blockIdx.x), slots = int(gridDim.x);
    const int tiles = slot < a.tiles ? (a.tiles - 1 - slot) / slots + 1 : 0;
    const int chunks = a.K / kKc, steps = tiles * chunks;
    if (steps == 0) return;
    {
        const int vecs = a.K / 8;  // 16-byte vectors a weight row
        const T* wg = static_cast<const T*>(a.weight);
        for (int i = tid; i < MT * vecs; i += kBlock) {
            const int r = i / vecs, c = i - r * vecs;
            cp_async16(ws + r * pitch_a + c * 8, wg + int64_t(i) * 8, true);
        }
        cp_async_commit();
        for (int i = tid; i < MT; i += kBlock) bias[i] = a.bias ? a.bias[i] : 0.0f;
    }
    const int plane = a.H * a.W;
    // This thread's copies of every step: copy i = tid + kBlock u is
    // (channel, input row, quad) = (i / 144, i / 4 % 36, i % 4), at float
    // 4 i of a ring slot and value index op_at[u] of an operand buffer.
    int row_of[kCopies], q_of[kCopies], src_at[kCopies], op_at[kCopies];
#pragma unroll
    for (int u = 0; u < kCopies; u++) {
        const int i = tid + kBlock * u, c = i / (kRowsIn * 4), rest = i - c * (kRowsIn * 4);
        row_of[u] = rest >> 2, q_of[u] = rest & 3;
        src_at[u] = c * plane + row_of[u] * a.W + 4 * q_of[u];
        op_at[u] = operand_index(c, row_of[u], q_of[u] >> 1) + 4 * (q_of[u] & 1);
    }
    const int per_item = a.row_tiles * a.col_tiles;
    // A walk over the block's steps: tile (item b, first output row ho0,
    // first position w0) and chunk, advanced without divisions within a
    // tile; base: where the step's first channel's rows would start in x,
    // inside: bit u set where this thread's copy u is inside the input.
    struct Cursor {
        int k, chunk, b, ho0, w0;
        int64_t base;
        unsigned inside;
    };
    auto at_tile = [&](Cursor& c) {
        const int t = slot + c.k * slots;
        const int b = t / per_item, rest = t - b * per_item, rt = rest / a.col_tiles;
        c.b = b, c.ho0 = rt * kTileRows, c.w0 = (rest - rt * a.col_tiles) * kTileCols;
        const int h0 = c.ho0 * kStride - a.ph;
        c.base = int64_t(b) * a.cin * plane + int64_t(h0) * a.W + c.w0;
        c.inside = 0;
#pragma unroll
        for (int u = 0; u < kCopies; u++) {
            const int h = h0 + row_of[u];
            if (h >= 0 && h < a.H && c.w0 + 4 * q_of[u] < a.W && tid + kBlock * u < kStageCopies) c.inside |= 1u << u;
        }
    };
    auto advance = [&](Cursor& c) {
        c.base += int64_t(kChannels) * plane;
        if (++c.chunk == chunks) {
            c.chunk = 0, c.k++;
            if (c.k < tiles) at_tile(c);
        }
    };
    auto issue = [&](const Cursor& c, int s) {
        float* stage = bs + (s % kStages) * kStageValues + 4 * tid;
#pragma unroll
        for (int u = 0; u < kCopies; u++) {
            if (tid + kBlock * u >= kStageCopies) break;
            const bool ok = (c.inside >> u) & 1u;
            cp_async16(stage + 4 * kBlock * u, ok ? a.x + (c.base + src_at[u]) : a.x, ok);
        }
    };
    // This thread's copies of step s, landed, into operand buffer s & 1.
    auto convert = [&](int s) {
        const float* stage = bs + (s % kStages) * kStageValues + 4 * tid;
        T* op = ops + (s & 1) * kStageValues;
#pragma unroll
        for (int u = 0; u < kCopies; u++) {
            if (tid + kBlock * u >= kStageCopies) break;
            store4<T>(op + op_at[u], *reinterpret_cast<const float4*>(stage + 4 * kBlock * u));
        }
    };

    const int wm = warp / WN, wn = warp - wm * WN;  // the warp's 48 outputs and 32 positions
    const int g = lane >> 2, tl = lane & 3;
    // ldmatrix's rows for this lane. A: row lane % 16, columns 8 (lane / 16)..
    // of each m16 tile. B: tile lane / 8 of a pair of n8 tiles (0, 1: input
    // channel 2 ks, 2 ks + 1 of the first n8 tile; 2, 3: of the second), row
    // lane % 8 of it (tap k): operand row 4 r + k of the pair's tile row r.
    const T* a_row = ws + (wm * kWarpRows + (lane & 15)) * pitch_a + (lane >> 4) * 8;
    int b_at[NT / 2][kKc / 16];
#pragma unroll
    for (int jp = 0; jp < NT / 2; jp++)
#pragma unroll
        for (int ks = 0; ks < kKc / 16; ks++) {
            const int n0 = (wn * NT + 2 * jp) * 8;
            b_at[jp][ks] = operand_index(2 * ks + ((lane >> 3) & 1), kStride * (n0 / kTileCols) + (lane & 7),
                                         (n0 % kTileCols) / 8 + (lane >> 4));
        }
    float acc[3][NT][4] = {};
    Cursor in{}, now{};
    at_tile(in), at_tile(now);
#pragma unroll
    for (int s = 0; s < kStages - 1; s++) {
        if (s < steps) issue(in, s), advance(in);
        cp_async_commit();
    }
    for (int s = 0; s < steps; s++) {
        cp_async_wait<kStages - 2>();
        convert(s);
        // Step s's operands (and the weights, the bias) ready for all. The ring
        // slot issued next, (s - 1) % kStages, was read only by its own
        // copier's convert(s - 1); the operand buffer convert(s + 1) writes
        // was last read by the MMAs of step s - 1, before this barrier.
        __syncthreads();
        if (s + kStages - 1 < steps) issue(in, s + kStages - 1), advance(in);
        cp_async_commit();
        const T* op = ops + (s & 1) * kStageValues;
        const T* aw = a_row + now.chunk * kKc;
#pragma unroll
        for (int ks = 0; ks < kKc / 16; ks++) {  // input channels 2 ks (rows 0-7) and 2 ks + 1 (rows 8-15)
            uint32_t af[3][4];
#pragma unroll
            for (int mi = 0; mi < 3; mi++)
                ldmatrix_x4(af[mi][0], af[mi][1], af[mi][2], af[mi][3], aw + mi * 16 * pitch_a + ks * 16);
#pragma unroll
            for (int jp = 0; jp < NT / 2; jp++) {
                uint32_t b[4];
                ldmatrix_x4_trans(b[0], b[1], b[2], b[3], op + b_at[jp][ks]);
#pragma unroll
                for (int mi = 0; mi < 3; mi++) {
                    mma_m16n8k16<T>(acc[mi][2 * jp], af[mi], b[0], b[1]);
                    mma_m16n8k16<T>(acc[mi][2 * jp + 1], af[mi], b[2], b[3]);
                }
            }
        }
        if (now.chunk == chunks - 1) {  // the tile out: rows g, g + 8 of each m16, columns 2 tl, 2 tl + 1 of each n8
            const int64_t HoW = int64_t(a.Ho) * a.W;
            float* ob = a.out + (int64_t(now.b) * MT + wm * kWarpRows + g) * HoW;
#pragma unroll
            for (int j = 0; j < NT; j++) {
                const int n = (wn * NT + j) * 8 + 2 * tl, ho = now.ho0 + n / kTileCols, w = now.w0 + n % kTileCols;
                const bool ok = ho < a.Ho && w < a.W;  // W is even: w + 1 too
                float* o = ob + (ok ? int64_t(ho) * a.W + w : 0);
#pragma unroll
                for (int mi = 0; mi < 3; mi++)
#pragma unroll
                    for (int hh = 0; hh < 2; hh++) {
                        const int row = mi * 16 + 8 * hh;
                        const float bv = bias[wm * kWarpRows + g + row];
                        if (ok)
                            *reinterpret_cast<float2*>(o + row * HoW) =
                                make_float2(activate(acc[mi][j][2 * hh] + bv, a.act),
                                            activate(acc[mi][j][2 * hh + 1] + bv, a.act));
                        acc[mi][j][2 * hh] = acc[mi][j][2 * hh + 1] = 0.0f;
                    }
            }
        }
        advance(now);
    }
    cp_async_wait<0>();
}

template <typename T>
void launch(const Ctx& ctx, const FreqEncoderArgs& a) {
    const auto kernel = freq_encoder_kernel<T>;
    const size_t bytes = shared_bytes(a.K);
    allow_shared(kernel, bytes);
    int per_sm = 0;
    FD_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kBlock, bytes));
    // Resident blocks only (each loads its weights once), no more than the tiles.
    const int64_t grid = std::max<int64_t>(1, std::min<int64_t>(a.tiles, multiprocessors() * std::max(1, per_sm)));
    kernel<<<unsigned(grid), kBlock, bytes, ctx.stream>>>(a);
    FD_LAUNCH_CHECK();
}

}  // namespace

bool freq_encoder_conv_takes(DType t, int64_t cin, int64_t cout, int kh, int kw, const ConvGeom& g, int64_t W,
                             int64_t Wl) {
    if ((t != DType::F16 && t != DType::BF16) || kh != kTaps || kw != 1 || g.sh != kStride || g.sw != 1 ||
        g.pw != 0 || g.dh != 1 || g.dw != 1 || g.ph < 0 || g.ph > kTaps - kStride)
        return false;
    // 96 outputs only: blocks that split the outputs each read the whole
    // input, and larger weights leave one block an SM. Measured on an H200
    // (forward of 8 chunks; results/h200-2026-11-29-session23-ab.log): the
    // second encoder (48 -> 96) 0.186 ms here against 0.29 ms for im2col +
    // GEMM; the first (4 -> 48, 48 outputs a block) 0.182 against 0.183; the
    // third (96 -> 192, two groups of 96, before the last tuning of this
    // kernel) 0.27 against 0.16.
    return cout == kOutputs && cin >= kChannels && cin % kChannels == 0 && W % 4 == 0 && Wl == W &&
           cin <= (int64_t(1) << 16) && shared_bytes(cin * kTaps) <= optin_smem();
}

void freq_encoder_conv2d(const Ctx& ctx, const float* x, int64_t B, int64_t cin, int64_t H, int64_t W,
                         const void* weight, const float* bias, int64_t cout, const ConvGeom& g, int64_t Ho,
                         float* out, Act act) {
    if (!freq_encoder_conv_takes(ctx.gemm, cin, cout, g.kh, g.kw, g, W, W))
        throw Error("internal error: freq_encoder_conv2d: a convolution it does not take");
    const int64_t row_tiles = (Ho + kTileRows - 1) / kTileRows, col_tiles = (W + kTileCols - 1) / kTileCols;
    // (Each thread's copy offsets within a step, int: below kChannels planes + kRowsIn rows.)
    if (B * cin * H * W >= (int64_t(1) << 31) || B * cout * Ho * W >= (int64_t(1) << 31) ||
        (kChannels * H + kRowsIn) * W >= (int64_t(1) << 31) ||
        B * row_tiles * col_tiles > (int64_t(1) << 30) || Ho > (H + 2 * g.ph - kTaps) / kStride + 1)
        throw Error("internal error: freq_encoder_conv2d dimensions");
    if (ctx.dry || B * Ho * W == 0) return;
    if (!aligned16(x) || !aligned16(out) || !aligned16(weight))
        throw Error("internal error: freq_encoder_conv2d: operands not 16-byte aligned");
    ProfileSpan span(ctx, ProfKind::Gemm);
    FreqEncoderArgs a;
    a.x = x, a.weight = weight, a.bias = bias, a.out = out;
    a.cin = int(cin), a.H = int(H), a.W = int(W), a.Ho = int(Ho), a.K = int(cin * kTaps), a.ph = g.ph;
    a.row_tiles = int(row_tiles), a.col_tiles = int(col_tiles), a.tiles = int(B * row_tiles * col_tiles);
    a.act = act;
    if (ctx.gemm == DType::F16)
        launch<__half>(ctx, a);
    else
        launch<__nv_bfloat16>(ctx, a);
}

}  // namespace fastdemucs::cuda
