#include "cuda/conv_glu.h"

#include <algorithm>
#include <limits>

#include "cuda/arena.h"
#include "cuda/conv_glu_wgmma.h"
#include "cuda/device_utils.cuh"
#include "cuda/profile.h"
#include "error.h"

namespace fastdemucs::cuda {
namespace {

// ------------------------------------------------------------------ packing
// xp [B, P, C] (operand type) = x [B, C, P] + skip: a tile of 64 channels x
// 32 positions through shared memory, read along P and written as 16-byte
// runs of 8 channels.
constexpr int kPackChannels = 64, kPackPositions = 32;

// A pack's tile [channels c0 ..][positions] out, 256 threads: each writes
// the 8 channels of a group at one position as one 16-byte record run;
// `first` is the tile's first position's record, `valid` its positions.
template <typename T>
__device__ __forceinline__ void store_packed_tile(const float (*tile)[kPackPositions + 1], T* __restrict__ first,
                                                  int valid, int c0, int C) {
    const int p = threadIdx.x >> 3, group = threadIdx.x & 7;
    const int c = c0 + group * kVec;
    if (p < valid && c < C) {
        float v[kVec];
#pragma unroll
        for (int e = 0; e < kVec; e++) v[e] = tile[group * kVec + e][p];
        store8(first + int64_t(p) * C + c, v);
    }
}

template <typename T>
__global__ void __launch_bounds__(256) pack_channels_last_kernel(const float* __restrict__ x,
                                                                 const float* __restrict__ skip, T* __restrict__ xp,
                                                                 int C, int P) {
    __shared__ float tile[kPackChannels][kPackPositions + 1];
    const int p0 = blockIdx.x * kPackPositions, c0 = blockIdx.y * kPackChannels;
    const int64_t item = int64_t(blockIdx.z) * C * P;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int r = warp; r < kPackChannels; r += 8) {
        const int c = c0 + r, p = p0 + lane;
        float v = 0.0f;
        if (c < C && p < P) {
            const int64_t i = item + int64_t(c) * P + p;
            v = x[i];
            if (skip) v += skip[i];
        }
        tile[r][lane] = v;
    }
    __syncthreads();
    store_packed_tile(tile, xp + item + int64_t(p0) * C, P - p0, c0, C);
}

// The same packed input made from a frequency transposed convolution's
// columns instead of its output x: x = act(bias + its taps
// along H) summed as col2im_rows_vec_kernel sums it (bias first, then taps
// ho % sh, ho % sh + sh, ...), + skip, then packed as above: the same floats,
// without x's float32 round trip through memory (the previous decoder's
// col2im and this pack in one pass). A block takes 64 channels x 32
// positions of one output row ho; a thread reads 8 positions of a channel
// per tap in one 16-byte access. cols [nb, C * kh, ld] (kw = 1), rows of W.
template <typename CT, typename T>
__global__ void __launch_bounds__(256)
    pack_columns_kernel(const CT* __restrict__ cols, int64_t ld, const float* __restrict__ bias, Act act,
                        const float* __restrict__ skip, T* __restrict__ xp, int C, int H, int W, int kh, int sh,
                        int h0, int Hc, int64_t b0) {
    __shared__ float tile[kPackChannels][kPackPositions + 1];
    const int w0 = int(blockIdx.x) * kPackPositions;
    const int channel_tiles = (C + kPackChannels - 1) / kPackChannels;
    const int hr = int(blockIdx.y) / channel_tiles, c0 = (int(blockIdx.y) - hr * channel_tiles) * kPackChannels;
    const int64_t bl = blockIdx.z, b = b0 + bl;
    const int ho = hr + h0;
    {
        const int r = int(threadIdx.x) >> 2, run = (int(threadIdx.x) & 3) * kVec;  // 64 channels x 4 runs of 8
        const int c = c0 + r, w = w0 + run;
        float acc[kVec];
#pragma unroll
        for (int e = 0; e < kVec; e++) acc[e] = 0.0f;
        if (c < C && w < W) {
            const float bv = bias ? bias[c] : 0.0f;
#pragma unroll
            for (int e = 0; e < kVec; e++) acc[e] = bv;
            for (int ki = ho % sh, h = ho / sh; ki < kh && ki <= ho; ki += sh, h--) {
                if (h >= H) continue;
                float v[kVec];
                load8(cols + (bl * C + c) * kh * ld + int64_t(ki) * ld + int64_t(h) * W + w, v);
#pragma unroll
                for (int e = 0; e < kVec; e++) acc[e] += v[e];
            }
            float sk[kVec];
            load8(skip + ((b * C + c) * Hc + hr) * int64_t(W) + w, sk);
#pragma unroll
            for (int e = 0; e < kVec; e++) acc[e] = __fadd_rn(activate(acc[e], act), sk[e]);  // never an FMA with it
        }
#pragma unroll
        for (int e = 0; e < kVec; e++) tile[r][run + e] = acc[e];
    }
    __syncthreads();
    store_packed_tile(tile, xp + (b * Hc * W + int64_t(hr) * W + w0) * C, W - w0, c0, C);
}

// The same from a time decoder's columns (kernel [1, 8], stride 4: the
// taps along W, two an output): output u of the uncropped row sums the bias,
// tap u % 4 at input column u / 4 and tap u % 4 + 4 at column u / 4 - 1, in
// col2im_w_pairs_kernel's order, then act, + skip, packed. A block takes 64
// channels x 32 input columns (128 uncropped outputs u0 = 128 blockIdx.x ..)
// of one item; a thread reads 8 columns of a channel per tap in one 16-byte
// access (4 lanes a 64-byte run of a tap row), and its 32 outputs go to the
// block's tile; the records leave as pack_channels_last's do, at output
// positions j = u - w0 inside [0, Wc).
constexpr int kPackWCols = 32, kPackWOut = 4 * kPackWCols;
template <typename CT, typename T>
__global__ void __launch_bounds__(256)
    pack_columns_w_kernel(const CT* __restrict__ cols, int64_t ld, const float* __restrict__ bias, Act act,
                          const float* __restrict__ skip, T* __restrict__ xp, int C, int W, int w0, int Wc,
                          int64_t b0) {
    __shared__ float tile[kPackChannels][kPackWOut + 1];
    const int u0 = int(blockIdx.x) * kPackWOut, c0 = int(blockIdx.y) * kPackChannels;
    const int64_t bl = blockIdx.z, b = b0 + bl;
    {
        const int r = int(threadIdx.x) >> 2, run = int(threadIdx.x) & 3;
        const int c = c0 + r, q0 = u0 / 4 + kVec * run;  // input columns q0 .. q0 + 7
        // first[j][k]: tap j at column q0 + k; second[j][k]: tap j + 4 at column q0 + k - 1.
        float first[4][kVec], second[4][kVec];
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int k = 0; k < kVec; k++) first[j][k] = second[j][k] = 0.0f;
        float bv = 0.0f;
        if (c < C) {
            bv = bias ? bias[c] : 0.0f;
            const CT* taps = cols + (bl * C + c) * 8 * ld;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                if (q0 < W) {  // (q0 + 8 <= ld: both multiples of 8)
                    float v[kVec];
                    load8(taps + j * ld + q0, first[j]);
                    load8(taps + (j + 4) * ld + q0, v);
#pragma unroll
                    for (int k = 1; k < kVec; k++) second[j][k] = v[k - 1];
                }
                if (q0 >= 1 && q0 - 1 < W) second[j][0] = to_float(taps[(j + 4) * ld + q0 - 1]);
            }
        }
#pragma unroll
        for (int k = 0; k < kVec; k++)
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int q = q0 + k;
                float acc = bv;
                if (q < W) acc += first[j][k];
                if (q >= 1 && q - 1 < W) acc += second[j][k];
                tile[r][4 * (kVec * run + k) + j] = activate(acc, act);
            }
    }
    __syncthreads();
    // A record (8 channels of one position) a thread at a time, lanes along the positions.
    for (int i = int(threadIdx.x); i < kPackWOut * (kPackChannels / kVec); i += 256) {
        const int p = i % kPackWOut, group = i / kPackWOut;
        const int j = u0 + p - w0, c = c0 + group * kVec;
        if (j < 0 || j >= Wc || c >= C) continue;
        float v[kVec];
#pragma unroll
        for (int e = 0; e < kVec; e++)
            v[e] = __fadd_rn(tile[group * kVec + e][p], skip[(b * C + c + e) * int64_t(Wc) + j]);  // never an FMA
        store8(xp + (b * Wc + j) * C + c, v);
    }
}

// ------------------------------------------------------------- convolution
// A block: 48 GLU outputs (96 conv rows: the values c0.. and their gates
// C + c0..) x 256 positions (ROWS output rows of 256 / ROWS), 8 warps, each
// all 96 rows x 32 positions (6 x 4 m16n8k16 accumulators). K runs over
// chunks of 16 input channels: a stage holds the chunk's weights for every
// tap [taps][96][16] and its input tile with the halo [ROWS + KH - 1][cols +
// KW - 1][16]; each tap is then 16 of K, read from the same tile shifted.
// Records of 16 channels are 32 bytes; the two 16-byte halves swap where
// bit 2 of the record index is set, so that ldmatrix's 8 rows (8 consecutive
// records) hit 8 different bank groups.
constexpr int kChunk = 16;
constexpr int kGluTile = 48, kRowsM = 2 * kGluTile, kMTiles = kRowsM / 16;
constexpr int kWarps = 8, kBlockThreads = 32 * kWarps;
constexpr int kWarpCols = 32, kNTiles = kWarpCols / 8;
// Rewrites of more channels stay on im2col + cuBLAS: they are bound by the
// tensor cores, and cuBLAS's wgmma kernels run them ~2x faster than this
// kernel's mma.sync (H200, forward of 8 chunks: C = 384 158 vs 358 us,
// C = 192 ~equal, C = 96 730 vs 520 us, C = 48 1366 vs 685 us with the
// skip add, im2col and GLU passes counted; the 1x1 encoder rewrites lost
// too, 0.17 ms in all, as im2col never ran for them).
constexpr int kMaxChannels = 96;

template <int KH, int KW, int ROWS>
struct Tile {
    static constexpr int kTaps = KH * KW;
    static constexpr int kWarpsPerRow = kWarps / ROWS;
    static constexpr int kCols = kWarpsPerRow * kWarpCols;  // output positions per row
    static constexpr int kInRows = ROWS + KH - 1, kInCols = kCols + KW - 1;
    // Input rows in shared memory are kPitch records apart, a multiple of 8:
    // a record's swizzle then depends only on its column.
    static constexpr int kPitch = (kInCols + 7) / 8 * 8;
    static constexpr int kARecords = kTaps * kRowsM, kBRecords = kInRows * kPitch;
    static constexpr int kStageBytes = (kARecords + kBRecords) * 32;
    static constexpr int kStages = kTaps >= 9 ? 3 : 4;  // 3 x 45 KB for 3x3, 4 x 18 KB for 1x3
    // Copies (16 bytes each) a thread issues per stage, the last round partial.
    static constexpr int kACopies = (kARecords * 2 + kBlockThreads - 1) / kBlockThreads;
    static constexpr int kBCopies = (kInRows * kInCols * 2 + kBlockThreads - 1) / kBlockThreads;
    static constexpr int kSharedBytes = kStages * kStageBytes;
};

__device__ __forceinline__ int swizzled(int record, int half) { return record * 32 + ((half ^ ((record >> 2) & 1)) << 4); }

struct ConvGluArgs {
    const void* xp;      // [B, H, W, C] operand type
    const void* weight;  // [taps][2C][C] operand type
    const float* bias;   // [2C] or null
    float* out;          // [B, C, H, W]
    int C, H, W, B;
    int tiles_w, tiles_h, glu_tiles, tiles;  // output tiles: along W, along H, of channels; all of them
};

// A persistent kernel: block k takes tiles k, k + gridDim.x, ... and walks
// their (tile, chunk) steps as one pipeline, the next tile's first chunks
// loading while this one finishes and writes its outputs (one block per SM
// at ~220 registers). Measured: persistence alone was slower than a block
// per tile (1.78 -> 2.04 ms for the four 3x3 rewrites of a forward of 8);
// with no divisions per step, the weight copies interleaved with the taps'
// MMAs and the fragments loaded one MMA group ahead it takes 1.63 ms (a
// block per tile was not re-measured with those).
template <typename T, int KH, int KW, int ROWS>
__global__ void __launch_bounds__(kBlockThreads, 1) conv_glu_kernel(ConvGluArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    __trap();  // cp.async and bfloat16 mma.sync need sm_80; conv_glu_takes never picks it before that
#else
    using TileT = Tile<KH, KW, ROWS>;
    extern __shared__ __align__(128) unsigned char shared_raw[];
    const T* __restrict__ xp = static_cast<const T*>(a.xp);
    const T* __restrict__ wt = static_cast<const T*>(a.weight);
    const int C = a.C, H = a.H, W = a.W;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int chunks = C / kChunk;
    const int my_tiles = (a.tiles - int(blockIdx.x) + int(gridDim.x) - 1) / int(gridDim.x);

    struct Origin {
        int b, c0, h0, w0;
    };
    // Tiles run along W fastest, then H, then the items and channel tiles.
    auto origin = [&](int k) {
        int t = int(blockIdx.x) + k * int(gridDim.x);
        Origin o;
        const int x = t % a.tiles_w;
        t /= a.tiles_w;
        const int y = t % a.tiles_h;
        t /= a.tiles_h;
        o.b = t / a.glu_tiles, o.c0 = (t - o.b * a.glu_tiles) * kGluTile;
        o.h0 = y * ROWS, o.w0 = x * TileT::kCols;
        return o;
    };

    // The stage copies, decoded once: a thread's copies are the same records
    // at every step, only the tile's origin and the chunk move them.
    // Weights: copy k is record tid / 2 + 128 k (half tid % 2), so its
    // swizzle is the same for every k; source offset and GLU row per copy.
    int a_src[TileT::kACopies], a_row_of[TileT::kACopies];
#pragma unroll
    for (int k = 0; k < TileT::kACopies; k++) {
        const int record = (tid >> 1) + k * (kBlockThreads / 2), half = tid & 1;
        const int tap = record / kRowsM, m = record - tap * kRowsM;
        const int gate = m >= kGluTile, mg = m - gate * kGluTile;
        a_src[k] = (tap * 2 * C + gate * C + mg) * C + half * 8;
        a_row_of[k] = record < TileT::kARecords ? mg : -1;  // -1: past the tile, no copy
    }
    const int a_dst = swizzled(tid >> 1, tid & 1);
    // Input: copy k is (row r, column col, half) of the tile with its halo.
    int b_src[TileT::kBCopies], b_dst[TileT::kBCopies], b_rc[TileT::kBCopies];
#pragma unroll
    for (int k = 0; k < TileT::kBCopies; k++) {
        const int u = tid + k * kBlockThreads, record = u >> 1, half = u & 1;
        const int r = record / TileT::kInCols, col = record - r * TileT::kInCols;
        b_src[k] = (r * W + col) * C + half * 8;
        b_dst[k] = swizzled(r * TileT::kPitch + col, half);
        b_rc[k] = record < TileT::kInRows * TileT::kInCols ? (r << 16) | col : -1;
    }

    // A stage's copies for chunk ci of the tile at o: the weights' copy k
    // (interleaved with the taps' MMAs, which cannot be reordered around
    // these asm statements) and the whole input tile.
    auto copy_weights = [&](const Origin& o, int ci, unsigned char* stage, int k) {
        if (a_row_of[k] < 0) return;
        const bool valid = o.c0 + a_row_of[k] < C;
        cp_async16(stage + a_dst + k * (kBlockThreads / 2) * 32, valid ? wt + (o.c0 * C + ci + a_src[k]) : wt, valid);
    };
    auto copy_input = [&](const Origin& o, int ci, unsigned char* stage) {
        unsigned char* tile = stage + TileT::kARecords * 32;
        const int h_first = o.h0 - KH / 2, w_first = o.w0 - KW / 2;
        const T* xc = xp + int64_t(o.b) * H * W * C + (int64_t(h_first) * W + w_first) * C + ci;
#pragma unroll
        for (int k = 0; k < TileT::kBCopies; k++) {
            if (b_rc[k] < 0) continue;
            const int h = h_first + (b_rc[k] >> 16), w = w_first + (b_rc[k] & 0xffff);
            const bool valid = unsigned(h) < unsigned(H) && unsigned(w) < unsigned(W);
            cp_async16(tile + b_dst[k], valid ? xc + b_src[k] : xp, valid);
        }
    };
    // The next stage to load: its tile and chunk (counters, no divisions per step).
    int load_k = 0, load_chunk = 0;
    Origin load_o = origin(0);
    auto advance_load = [&]() {
        if (++load_chunk == chunks) {
            load_chunk = 0;
            if (++load_k < my_tiles) load_o = origin(load_k);
        }
    };

    float acc[kMTiles][kNTiles][4];
    auto clear = [&]() {
#pragma unroll
        for (int i = 0; i < kMTiles; i++)
#pragma unroll
            for (int j = 0; j < kNTiles; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;
    };
    clear();

    // ldmatrix lanes: matrix lane / 8, its row lane % 8. Records a multiple
    // of 8 apart share their swizzle, so each fragment's address is a
    // per-thread base plus a constant.
    const int matrix = lane >> 3, mrow = lane & 7;
    const int warp_row = warp / TileT::kWarpsPerRow, warp_col = (warp % TileT::kWarpsPerRow) * kWarpCols;
    // A (x4): rows +8 for matrices 1 and 3, channels 8.. for 2 and 3.
    const int a_base = swizzled(mrow + (matrix & 1) * 8, matrix >> 1);
    // B (x4, two n8 tiles): channels 8.. for matrices 1 and 3, positions +8 for 2 and 3; per column shift dx.
    int b_base[KW];
#pragma unroll
    for (int dx = 0; dx < KW; dx++)
        b_base[dx] = warp_row * TileT::kPitch * 32 + swizzled(warp_col + mrow + (matrix >> 1) * 8 + dx, matrix & 1);
    const int g = lane >> 2, t = lane & 3;
    const bool pairs = W % 2 == 0;  // float2 stores stay aligned

    for (int s = 0; s < TileT::kStages - 1; s++) {
        if (load_k < my_tiles) {
            unsigned char* stage = shared_raw + s * TileT::kStageBytes;
            copy_input(load_o, load_chunk * kChunk, stage);
#pragma unroll
            for (int k = 0; k < TileT::kACopies; k++) copy_weights(load_o, load_chunk * kChunk, stage, k);
            advance_load();
        }
        cp_async_commit();
    }
    int chunk = 0, tile_k = 0, stage_index = 0, load_stage_index = TileT::kStages - 1;
    for (int step = 0; step < my_tiles * chunks; step++) {
        cp_async_wait<TileT::kStages - 2>();
        __syncthreads();  // the step has landed; every warp is done with the stage refilled next
        const bool loads = load_k < my_tiles;
        unsigned char* load_stage = shared_raw + load_stage_index * TileT::kStageBytes;
        const int load_ci = load_chunk * kChunk;
        if (loads) copy_input(load_o, load_ci, load_stage);
        const unsigned char* stage = shared_raw + stage_index * TileT::kStageBytes;
        const unsigned char* tile = stage + TileT::kARecords * 32;
        // Fragments one step ahead of the MMAs that use them (ldmatrix latency).
        uint32_t bf[2][kNTiles][2], af[2][4];
        auto load_b = [&](uint32_t(&f)[kNTiles][2], int tap) {
            const int dy = tap / KW, dx = tap % KW;
#pragma unroll
            for (int jj = 0; jj < kNTiles / 2; jj++)
                ldmatrix_x4(f[2 * jj][0], f[2 * jj][1], f[2 * jj + 1][0], f[2 * jj + 1][1],
                            tile + b_base[dx] + (dy * TileT::kPitch + jj * 16) * 32);
        };
        auto load_a = [&](uint32_t(&f)[4], int tap, int i) {
            ldmatrix_x4(f[0], f[1], f[2], f[3], stage + a_base + (tap * kRowsM + i * 16) * 32);
        };
        load_b(bf[0], 0);
        load_a(af[0], 0, 0);
#pragma unroll
        for (int tap = 0; tap < TileT::kTaps; tap++) {
            if (tap + 1 < TileT::kTaps) load_b(bf[(tap + 1) & 1], tap + 1);
#pragma unroll
            for (int i = 0; i < kMTiles; i++) {
                const int n = tap * kMTiles + i + 1;  // the next A fragment
                if (n < TileT::kTaps * kMTiles) load_a(af[n & 1], n / kMTiles, n % kMTiles);
#pragma unroll
                for (int j = 0; j < kNTiles; j++)
                    mma_m16n8k16<T>(acc[i][j], af[(n - 1) & 1], bf[tap & 1][j][0], bf[tap & 1][j][1]);
            }
            if (loads && tap < TileT::kACopies) copy_weights(load_o, load_ci, load_stage, tap);
        }
        if (loads) {
#pragma unroll
            for (int k = TileT::kTaps; k < TileT::kACopies; k++) copy_weights(load_o, load_ci, load_stage, k);
            advance_load();
        }
        cp_async_commit();
        stage_index = stage_index + 1 == TileT::kStages ? 0 : stage_index + 1;
        load_stage_index = load_stage_index + 1 == TileT::kStages ? 0 : load_stage_index + 1;
        if (++chunk < chunks) continue;
        chunk = 0;

        // The tile is complete: GLU on the accumulators (tile i < 3 holds values, i + 3 their gates).
        const Origin o = origin(tile_k++);
        const int h = o.h0 + warp_row;
#pragma unroll
        for (int i = 0; i < kMTiles / 2; i++)
#pragma unroll
            for (int e2 = 0; e2 < 2; e2++) {
                const int c = o.c0 + i * 16 + g + e2 * 8;
                if (c >= C || h >= H) continue;
                const float bv = a.bias ? a.bias[c] : 0.0f, bg = a.bias ? a.bias[C + c] : 0.0f;
                float* row = a.out + ((int64_t(o.b) * C + c) * H + h) * W;
#pragma unroll
                for (int j = 0; j < kNTiles; j++) {
                    const int w = o.w0 + warp_col + j * 8 + 2 * t;
                    const float v0 = glu_value(acc[i][j][2 * e2] + bv, acc[i + kMTiles / 2][j][2 * e2] + bg);
                    const float v1 = glu_value(acc[i][j][2 * e2 + 1] + bv, acc[i + kMTiles / 2][j][2 * e2 + 1] + bg);
                    if (pairs && w + 1 < W) {
                        *reinterpret_cast<float2*>(row + w) = make_float2(v0, v1);
                    } else {
                        if (w < W) row[w] = v0;
                        if (w + 1 < W) row[w + 1] = v1;
                    }
                }
            }
        clear();
    }
    cp_async_wait<0>();
#endif
}

template <typename T, int KH, int KW, int ROWS>
void launch(const Ctx& ctx, ConvGluArgs a) {
    using TileT = Tile<KH, KW, ROWS>;
    const auto kernel = conv_glu_kernel<T, KH, KW, ROWS>;
    // Set on every launch: the attribute belongs to the context (release_gpus() may have made a new one).
    FD_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, TileT::kSharedBytes));
    int device = 0, sms = 0, per_sm = 0;
    FD_CUDA(cudaGetDevice(&device));
    FD_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    FD_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kBlockThreads, TileT::kSharedBytes));
    a.tiles_w = (a.W + TileT::kCols - 1) / TileT::kCols;
    a.tiles_h = (a.H + ROWS - 1) / ROWS;
    const int64_t tiles = int64_t(a.tiles_w) * a.tiles_h * a.glu_tiles * a.B;
    if (tiles > std::numeric_limits<int32_t>::max()) throw Error("internal error: conv_glu tile count");
    a.tiles = int(tiles);
    const int grid = int(std::min<int64_t>(tiles, int64_t(sms) * std::max(1, per_sm)));
    kernel<<<grid, kBlockThreads, TileT::kSharedBytes, ctx.stream>>>(a);
}

// The convolution over a.xp (packed): on wgmma where the device runs it
// (H200, forward of 8: the four rewrites 1.20 -> 0.94 ms), else mma.sync.
template <typename T>
void launch_packed(const Ctx& ctx, const ConvGluArgs& a, int kh) {
    if (ctx.conv_glu_wgmma && conv_glu_wgmma_fits(a.C)) {
        ConvGluWgmmaArgs w;
        w.xp = a.xp, w.weight = a.weight, w.bias = a.bias, w.out = a.out;
        w.C = a.C, w.H = a.H, w.W = a.W, w.B = a.B;
        conv_glu_wgmma(ctx.stream, ctx.gemm, kh, w);
        return;
    }
    if (kh == 3)
        launch<T, 3, 3, 2>(ctx, a);
    else
        launch<T, 1, 3, 1>(ctx, a);
    FD_LAUNCH_CHECK();
}

// x + skip packed channels-last into a.xp, then the convolution.
template <typename T>
void pack_and_launch(const Ctx& ctx, const float* x, const float* skip, int P, T* xp, ConvGluArgs a, int kh) {
    const dim3 pack_grid(unsigned((P + kPackPositions - 1) / kPackPositions),
                         unsigned((a.C + kPackChannels - 1) / kPackChannels), unsigned(a.B));
    pack_channels_last_kernel<T><<<pack_grid, 256, 0, ctx.stream>>>(x, skip, xp, a.C, P);
    FD_LAUNCH_CHECK();
    a.xp = xp;
    launch_packed<T>(ctx, a, kh);
}

// The arguments of a convolution of x's shape (its input set by the caller).
ConvGluArgs conv_glu_args(const DTensor& x, const ConvWeight& w, const DTensor& out) {
    if (out.b != x.b || out.c != x.c || out.h != x.h || out.w != x.w || w.cin != x.c || w.cout != 2 * x.c)
        throw Error("internal error: conv_glu shapes");
    // Offsets within an item's input tile rows are 32-bit (b_src: a few rows of W positions of C
    // channels); everything else indexes in 64 bits. The pack's grid takes an item per z.
    if (int64_t(4) * (x.w + 2) * x.c > std::numeric_limits<int32_t>::max() || x.b > 65535)
        throw Error("internal error: conv_glu dimensions");
    ConvGluArgs a;
    a.weight = w.taps, a.bias = w.bias, a.out = out.p;
    a.C = int(x.c), a.H = int(x.h), a.W = int(x.w), a.B = int(x.b);
    a.glu_tiles = int((x.c + kGluTile - 1) / kGluTile);
    return a;
}

}  // namespace

bool conv_glu_channels_fit(int64_t cin) { return cin % kChunk == 0 && cin <= kMaxChannels; }

bool conv_glu_takes(const Ctx& ctx, const ConvWeight& w, const ConvGeom& g) {
    if (ctx.gemm == DType::F32 || !ctx.conv_glu) return false;
    const bool kernel = (w.kh == 1 && w.kw == 3) || (w.kh == 3 && w.kw == 3);
    return kernel && g.sh == 1 && g.sw == 1 && g.dh == 1 && g.dw == 1 && g.ph == w.kh / 2 && g.pw == w.kw / 2 &&
           conv_glu_channels_fit(w.cin) && w.cout == 2 * w.cin && w.taps;
}

void conv_glu(const Ctx& ctx, const DTensor& x, const float* skip, const ConvWeight& w, const DTensor& out) {
    ConvGluArgs a = conv_glu_args(x, w, out);
    const int64_t B = x.b, C = x.c, P = x.h * x.w;
    ArenaScope scope(*ctx.arena);
    void* xp = ctx.arena->alloc_bytes(size_t(conv_glu_packed_bytes(ctx, B, C, P)));
    if (ctx.dry || B * P == 0) return;
    ProfileSpan span(ctx, ProfKind::Gemm);
    if (ctx.gemm == DType::F16)
        pack_and_launch(ctx, x.p, skip, int(P), static_cast<__half*>(xp), a, w.kh);
    else
        pack_and_launch(ctx, x.p, skip, int(P), static_cast<__nv_bfloat16*>(xp), a, w.kh);
}

}  // namespace fastdemucs::cuda

namespace fastdemucs::cuda {

size_t conv_glu_packed_bytes(const Ctx& ctx, int64_t B, int64_t C, int64_t P) {
    return size_t(B * P * C) * dtype_bytes(ctx.gemm);
}

void conv_glu_packed(const Ctx& ctx, const void* xp, const DTensor& x, const ConvWeight& w, const DTensor& out) {
    ConvGluArgs a = conv_glu_args(x, w, out);
    if (ctx.dry || x.b * x.h * x.w == 0) return;
    ProfileSpan span(ctx, ProfKind::Gemm);
    a.xp = xp;
    if (ctx.gemm == DType::F16)
        launch_packed<__half>(ctx, a, w.kh);
    else
        launch_packed<__nv_bfloat16>(ctx, a, w.kh);
}

bool pack_columns_fits(const Ctx& ctx, int64_t C, int64_t W) {
    return ctx.gemm != DType::F32 && C % kVec == 0 && W % kVec == 0;
}

void pack_columns(const Ctx& ctx, const void* cols, DType ct, int64_t ld, const float* bias, Act act, int64_t b0,
                  int64_t nb, int64_t C, int64_t H, int64_t W, int kh, int sh, int64_t h0, int64_t Hc,
                  const float* skip, void* xp) {
    if (!pack_columns_fits(ctx, C, W) || ld % kVec != 0 || !aligned16(cols) || !aligned16(skip) || !aligned16(xp) || ld < H * W ||
        h0 < 0 || h0 + Hc > (H - 1) * sh + kh || nb > 65535 ||
        Hc * ((C + kPackChannels - 1) / kPackChannels) > 65535 || (H + 1) * W > std::numeric_limits<int32_t>::max())
        throw Error("internal error: pack_columns geometry");
    if (ctx.dry || nb == 0) return;
    const dim3 grid(unsigned((W + kPackPositions - 1) / kPackPositions),
                    unsigned(Hc * ((C + kPackChannels - 1) / kPackChannels)), unsigned(nb));
    auto launch = [&](auto* out) {
        using T = std::remove_pointer_t<decltype(out)>;
        FD_DISPATCH(ct, CT,
                    pack_columns_kernel<CT, T><<<grid, 256, 0, ctx.stream>>>(
                        static_cast<const CT*>(cols), ld, bias, act, skip, out, int(C), int(H), int(W), kh, sh,
                        int(h0), int(Hc), b0));
    };
    if (ctx.gemm == DType::F16)
        launch(static_cast<__half*>(xp));
    else
        launch(static_cast<__nv_bfloat16*>(xp));
    FD_LAUNCH_CHECK();
}

bool pack_columns_w_fits(const Ctx& ctx, int64_t C) { return ctx.gemm != DType::F32 && C % kVec == 0; }

void pack_columns_w(const Ctx& ctx, const void* cols, DType ct, int64_t ld, const float* bias, Act act, int64_t b0,
                    int64_t nb, int64_t C, int64_t W, int64_t w0, int64_t Wc, const float* skip, void* xp) {
    const int64_t tiles = (w0 + Wc + kPackWOut - 1) / kPackWOut;
    if (!pack_columns_w_fits(ctx, C) || W < 1 || Wc < 0 || !skip || ld % kVec != 0 || ld < W || !aligned16(cols) ||
        !aligned16(xp) || w0 < 0 ||
        w0 + Wc > 4 * (W - 1) + 8 || nb > 65535 || (C + kPackChannels - 1) / kPackChannels > 65535 ||
        tiles * kPackWOut > std::numeric_limits<int32_t>::max())
        throw Error("internal error: pack_columns_w geometry");
    if (ctx.dry || nb == 0 || Wc == 0) return;
    const dim3 grid(unsigned(tiles), unsigned((C + kPackChannels - 1) / kPackChannels), unsigned(nb));
    auto launch = [&](auto* out) {
        using T = std::remove_pointer_t<decltype(out)>;
        FD_DISPATCH(ct, CT,
                    pack_columns_w_kernel<CT, T><<<grid, 256, 0, ctx.stream>>>(static_cast<const CT*>(cols), ld, bias,
                                                                                act, skip, out, int(C), int(W),
                                                                                int(w0), int(Wc), b0));
    };
    if (ctx.gemm == DType::F16)
        launch(static_cast<__half*>(xp));
    else
        launch(static_cast<__nv_bfloat16*>(xp));
    FD_LAUNCH_CHECK();
}

}  // namespace fastdemucs::cuda
