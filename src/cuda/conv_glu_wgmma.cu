// The rewrites on wgmma (see cuda/conv_glu_wgmma.h). Built for sm_90a in
// an object library of its own (CMakeLists.txt, FASTDEMUCS_WGMMA); built
// without it, the kernels trap and conv_glu_wgmma_available() is false.
//
// conv_glu_wgmma_kernel: a block takes one GLU tile of 48 output channels
// (96 conv rows: the 48 values c0.. and their gates C + c0..) and keeps all
// of its weights in shared memory, every 16-channel chunk and tap, loaded
// once. Its warpgroups then work independently, each on tiles of its own:
// 128 output positions (2 rows x 64 for the 3x3 rewrites, one row for the
// 1x3) x the 96 conv rows, in 2 x 48 float32 accumulators a thread. K runs
// over the input's 16-channel chunks; a warpgroup's input tile (its
// positions with the halo) goes through three stages of its own, filled
// with cp.async two steps ahead, and each tap's A operand is that tile read
// from a shifted start. With no block-wide barrier, one warpgroup's
// epilogue (GLU, bias, stores) runs while the others' MMAs keep the tensor
// cores busy: a first version with the stages shared by the block (weights
// streamed per chunk, every warpgroup in step) was slower than the mma.sync
// kernel (NOTES.md, nineteenth session).
//
// Both operands are K-major without swizzle: "core matrices" of 8 rows x
// 16 bytes (8 channels), the chunk's two 8-channel halves in two planes
// (measured: the 32-byte swizzle and padded planes ran no faster).
//
// conv1x1_glu_wgmma_kernel: the encoders' pointwise rewrites, the same
// scheme with the DConv's operand copy (planes of positions) as an M-major
// A and the outputs leaving through shared memory as whole rows.
#include "cuda/conv_glu_wgmma.h"

#include <algorithm>
#include <limits>
#include <type_traits>

#include "cuda/device_utils.cuh"
#include "error.h"

// The host pass (and a build without sm_90a) discards the kernels' bodies,
// which leaves their helpers unreferenced there: not worth a warning each.
#pragma nv_diag_suppress 177

namespace fastdemucs::cuda {
namespace {

constexpr int kN = 96, kGluTile = 48;  // conv rows of a block: 48 values, then their 48 gates
constexpr int kChunk = 16;             // input channels a step
constexpr int kMTiles = 2;             // m64 tiles a warpgroup
constexpr int kStages = 3;             // a warpgroup's input stages: computing, two loading
constexpr int kMaxShared = 227 * 1024;

// A shared-memory matrix descriptor without swizzle: start, the byte offset
// between core matrices along K (leading) and along M / N (stride).
__device__ __forceinline__ uint64_t smem_desc(const void* p, uint32_t k_bytes, uint32_t mn_bytes) {
    const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
    return uint64_t((a & 0x3FFFF) >> 4) | (uint64_t((k_bytes >> 4) & 0x3FFF) << 16) |
           (uint64_t((mn_bytes >> 4) & 0x3FFF) << 32);
}

// Shared memory: the weights [chunk][tap][half][n][8 channels], then per
// warpgroup kStages stages of its input tile [half][row][column][8 channels].
// A warpgroup's tile: 2 rows x 64 positions for the 3x3 rewrites (an input
// tile of 4 x 66 positions, where one row of 128 takes 3 x 130), one row of
// 128 for the 1x3 ones; its m-tile i is row i / kMPerRow, from column 64 (i % kMPerRow).
template <int KH, int KW>
struct WTile {
    static constexpr int kTaps = KH * KW;
    static constexpr int kRows = KH == 3 ? 2 : 1, kCols = 64 * kMTiles / kRows, kMPerRow = kCols / 64;
    static constexpr int kInRows = kRows + KH - 1, kInCols = kCols + KW - 1;
    static constexpr int kPlaneBytes = kInRows * kInCols * 16;
    static constexpr int kStageBytes = (2 * kPlaneBytes + 127) / 128 * 128;
    static constexpr int kHalfBytes = kN * 16, kTapBytes = 2 * kHalfBytes;
    static constexpr int kChunkBytes = kTaps * kTapBytes;
    static constexpr int kICopies = (kInRows * kInCols * 2 + 127) / 128;  // a thread's per stage
    static constexpr size_t shared_bytes(int chunks, int wgs) {
        return size_t(chunks) * kChunkBytes + size_t(wgs) * kStages * kStageBytes;
    }
};

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int Pending>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(Pending) : "memory");
}
// cp.async's writes (generic proxy) made visible to wgmma's reads (async proxy).
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// A barrier of one warpgroup's 128 threads (ids 1.., 0 is __syncthreads).
__device__ __forceinline__ void warpgroup_barrier(int id) {
    asm volatile("bar.sync %0, 128;\n" ::"r"(id) : "memory");
}

// d[64 x 96] += A[64 x 16] B[16 x 96] from shared memory, B K-major, A
// K-major or (TransA) M-major. scale_d false: d = A B (the accumulators'
// old values ignored).
#define FD_WGMMA_M64N96K16(TYPE, TRANS_A)                                                                         \
    asm volatile(                                                                                                 \
        "{\n"                                                                                                     \
        ".reg .pred p;\n"                                                                                         \
        "setp.ne.b32 p, %50, 0;\n"                                                                                \
        "wgmma.mma_async.sync.aligned.m64n96k16.f32." TYPE "." TYPE                                               \
        " {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,"  \
        "%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47}, %48, %49, p, 1, 1, "       \
        TRANS_A ", 0;\n"                                                                                          \
        "}\n"                                                                                                     \
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),         \
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),   \
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47])  \
        : "l"(a), "l"(b), "r"(int(scale_d)))

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
constexpr bool kHasWgmma = true;
#else
constexpr bool kHasWgmma = false;
#endif
template <typename T, bool TransA = false>
__device__ __forceinline__ void wgmma_m64n96k16(float (&d)[48], uint64_t a, uint64_t b, bool scale_d) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
    if constexpr (std::is_same_v<T, __half> && !TransA)
        FD_WGMMA_M64N96K16("f16", "0");
    else if constexpr (std::is_same_v<T, __half>)
        FD_WGMMA_M64N96K16("f16", "1");
    else if constexpr (!TransA)
        FD_WGMMA_M64N96K16("bf16", "0");
    else
        FD_WGMMA_M64N96K16("bf16", "1");
#endif
}
#undef FD_WGMMA_M64N96K16
// The bias of lane (g, t)'s conv rows of GLU tile c0: values 8 j + 2 t + e
// (j < 6, e < 2) in bv, their gates in bg (zero past C or without a bias).
__device__ __forceinline__ void load_glu_bias(const float* __restrict__ bias, int C, int c0, int t, float (&bv)[12],
                                              float (&bg)[12]) {
#pragma unroll
    for (int j = 0; j < 6; j++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int c = c0 + 8 * j + 2 * t + e;
            const bool has = bias && c < C;
            bv[2 * j + e] = has ? bias[c] : 0.0f;
            bg[2 * j + e] = has ? bias[C + c] : 0.0f;
        }
}

// A GLU tile's resident weights, every chunk and tap: [chunk][tap][half][n]
// [8 channels], copy u (chunk, tap, half, n) at u * 16, from w [taps][2C]
// [row] (rows of `row` channels): value row c0 + n or gate row C + c0 + n - 48.
template <typename T>
__device__ __forceinline__ void load_resident_weights(unsigned char* dst, const T* __restrict__ w, int C, int c0,
                                                      int row, int taps, int chunks) {
    const int copies = chunks * taps * 2 * kN;
    for (int u = int(threadIdx.x); u < copies; u += int(blockDim.x)) {
        const int n = u % kN, half = (u / kN) & 1, ct = u / (2 * kN), tap = ct % taps, ci = ct / taps;
        const int gate = n >= kGluTile, m = n - gate * kGluTile;
        const bool valid = c0 + m < C;
        cp_async16(dst + size_t(u) * 16,
                   valid ? w + (int64_t(tap) * 2 * C + gate * C + c0 + m) * row + ci * kChunk + half * 8 : w, valid);
    }
    cp_async_commit();
}

// A kernel's start: the first two stages' loads (after the weights'), and
// the weights and the first stage landed for the whole block.
template <typename Load>
__device__ __forceinline__ void prime_stages(Load& load_next) {
    load_next(0);
    load_next(1);
    cp_async_wait<1>();
    fence_proxy_async();
    __syncthreads();
}

struct KernelArgs {
    ConvGluWgmmaArgs a;
    int tiles_w, tiles_h, tiles;  // a GLU tile's: along W, along H, in all (W fastest, then H, then items)
};

// Block (x, y): GLU tile y; its warpgroup g is worker x * WG + g of the
// tile's gridDim.x * WG and takes tiles worker, worker + workers, ...
template <typename T, int KH, int KW, int WG>
__global__ void __launch_bounds__(128 * WG, 1) conv_glu_wgmma_kernel(KernelArgs ka) {
    if constexpr (!kHasWgmma) {
        __trap();
    } else {
        using Tile = WTile<KH, KW>;
        extern __shared__ __align__(128) unsigned char shared_raw[];
        const ConvGluWgmmaArgs& a = ka.a;
        const T* __restrict__ xp = static_cast<const T*>(a.xp);
        const T* __restrict__ wt = static_cast<const T*>(a.weight);
        const float* __restrict__ bias = a.bias;
        float* __restrict__ out = a.out;
        const int C = a.C, H = a.H, W = a.W;
        const int tid = threadIdx.x, wg = tid >> 7, wtid = tid & 127;
        const int chunks = C / kChunk;
        const int c0 = int(blockIdx.y) * kGluTile;

        load_resident_weights(shared_raw, wt, C, c0, C, Tile::kTaps, chunks);
        const unsigned char* weights = shared_raw;
        unsigned char* stages =
            shared_raw + size_t(chunks) * Tile::kChunkBytes + size_t(wg) * kStages * Tile::kStageBytes;

        const int worker = int(blockIdx.x) * WG + wg, workers = int(gridDim.x) * WG;
        const int my_tiles = (ka.tiles - worker + workers - 1) / workers;
        struct Origin {
            int b, h0, w0;
        };
        auto origin = [&](int k) {
            int t = worker + k * workers;
            Origin o;
            const int x = t % ka.tiles_w;
            t /= ka.tiles_w;
            const int y = t % ka.tiles_h;
            o.b = t / ka.tiles_h, o.h0 = y * Tile::kRows, o.w0 = x * Tile::kCols;
            return o;
        };
        // Input copies: u = wtid + k * 128 is (record, half) of the tile with its halo.
        int i_rc[Tile::kICopies];
#pragma unroll
        for (int k = 0; k < Tile::kICopies; k++) {
            const int u = wtid + k * 128, record = u >> 1;
            const int r = record / Tile::kInCols, col = record - r * Tile::kInCols;
            i_rc[k] = record < Tile::kInRows * Tile::kInCols ? (r << 16) | col : -1;
        }
        auto load_stage = [&](const Origin& o, int ci, unsigned char* in) {
            const int h_first = o.h0 - KH / 2, w_first = o.w0 - KW / 2;
            const T* xi = xp + int64_t(o.b) * H * W * C + ci;
#pragma unroll
            for (int k = 0; k < Tile::kICopies; k++) {
                if (i_rc[k] < 0) continue;
                const int r = i_rc[k] >> 16, col = i_rc[k] & 0xffff, half = wtid & 1;
                const int h = h_first + r, w = w_first + col;
                const bool valid = unsigned(h) < unsigned(H) && unsigned(w) < unsigned(W);
                cp_async16(in + half * Tile::kPlaneBytes + (r * Tile::kInCols + col) * 16,
                           valid ? xi + (int64_t(h) * W + w) * C + half * 8 : xp, valid);
            }
        };
        int load_k = 0, load_chunk = 0;
        Origin load_o = origin(0);
        auto load_next = [&](int step) {
            if (load_k < my_tiles) {
                load_stage(load_o, load_chunk * kChunk, stages + (step % kStages) * Tile::kStageBytes);
                if (++load_chunk == chunks) {
                    load_chunk = 0;
                    if (++load_k < my_tiles) load_o = origin(load_k);
                }
            }
            cp_async_commit();
        };

        const int warp = wtid >> 5, g = (tid & 31) >> 2, t = tid & 3;
        float bv[12], bg[12];
        load_glu_bias(bias, C, c0, t, bv, bg);

        prime_stages(load_next);
        // Descriptors move by a constant per tap and m-tile: the start address
        // is the low field, in 16-byte units (shared memory < 256 KB: no carry).
        const uint64_t a_first = smem_desc(stages, Tile::kPlaneBytes, 128);
        const uint64_t b_first = smem_desc(weights, Tile::kHalfBytes, 128);
        float acc[kMTiles][48];
        int step = 0;
        for (int tile_k = 0; tile_k < my_tiles; tile_k++) {
            for (int chunk = 0; chunk < chunks; chunk++, step++) {
                if (step > 0) {
                    cp_async_wait<1>();
                    fence_proxy_async();
                    warpgroup_barrier(1 + wg);  // this step's stage has landed for the whole warpgroup
                }
                const uint64_t a_stage = a_first + uint64_t((step % kStages) * Tile::kStageBytes / 16);
                const uint64_t b_chunk = b_first + uint64_t(chunk * (Tile::kChunkBytes / 16));
                wgmma_fence();
#pragma unroll
                for (int tap = 0; tap < Tile::kTaps; tap++) {
                    const int dy = tap / KW, dx = tap % KW;
#pragma unroll
                    for (int i = 0; i < kMTiles; i++) {
                        const int pos = (i / Tile::kMPerRow + dy) * Tile::kInCols + (i % Tile::kMPerRow) * 64 + dx;
                        // The tile's first product overwrites the accumulators (scale-d 0).
                        wgmma_m64n96k16<T>(acc[i], a_stage + uint64_t(pos), b_chunk + uint64_t(tap * Tile::kTapBytes / 16),
                                           chunk > 0 || tap > 0);
                    }
                }
                wgmma_commit();
                // The previous step's products are done: its stage takes the input two steps on.
                wgmma_wait<1>();
                load_next(step + 2);
            }
            wgmma_wait<0>();

            // The tile is complete: GLU on the accumulators. Lane (g, t) of
            // warp w holds positions 16 w + g (+ 8) of each m-tile and conv rows
            // 8 j + 2 t (+ 1): values at j < 6, their gates at j + 6.
            const Origin o = origin(tile_k);
            const int64_t plane = int64_t(H) * W;
#pragma unroll
            for (int i = 0; i < kMTiles; i++) {
                const int h = o.h0 + i / Tile::kMPerRow;
                if (h >= H) continue;
                float* row = out + (int64_t(o.b) * C * H + h) * W;
#pragma unroll
                for (int e2 = 0; e2 < 2; e2++) {
                    const int w = o.w0 + (i % Tile::kMPerRow) * 64 + 16 * warp + g + e2 * 8;
                    if (w >= W) continue;
#pragma unroll
                    for (int j = 0; j < 6; j++)
#pragma unroll
                        for (int e = 0; e < 2; e++) {
                            const int c = c0 + 8 * j + 2 * t + e;
                            if (c < C)
                                row[c * plane + w] = glu_value(acc[i][4 * j + 2 * e2 + e] + bv[2 * j + e],
                                                               acc[i][4 * (j + 6) + 2 * e2 + e] + bg[2 * j + e]);
                        }
                }
            }
        }
        cp_async_wait<0>();
    }
}

// Launches a kernel of `wgs` warpgroups a block over `tiles` tiles of each
// of `glu_tiles` GLU tiles (grid y): one block a multiprocessor in all, no
// more blocks than a GLU tile's tiles keep busy.
template <typename Kernel, typename Args>
void launch_resident(Kernel kernel, const Args& args, int wgs, int glu_tiles, int64_t tiles, size_t shared,
                     cudaStream_t stream) {
    allow_shared(kernel, shared);
    const int64_t per_tile =
        std::max<int64_t>(1, std::min<int64_t>(multiprocessors() / glu_tiles, (tiles + wgs - 1) / wgs));
    kernel<<<dim3(unsigned(per_tile), unsigned(glu_tiles)), 128 * wgs, shared, stream>>>(args);
    FD_LAUNCH_CHECK();
}

template <typename T, int KH, int KW, int WG>
void launch(cudaStream_t stream, const ConvGluWgmmaArgs& a, size_t shared) {
    KernelArgs ka;
    ka.a = a;
    using Tile = WTile<KH, KW>;
    ka.tiles_w = (a.W + Tile::kCols - 1) / Tile::kCols;
    ka.tiles_h = (a.H + Tile::kRows - 1) / Tile::kRows;
    const int glu_tiles = (a.C + kGluTile - 1) / kGluTile;
    const int64_t tiles = int64_t(ka.tiles_w) * ka.tiles_h * a.B;
    if (tiles > std::numeric_limits<int32_t>::max() || int64_t(4) * (a.W + 2) * a.C > std::numeric_limits<int32_t>::max())
        throw Error("internal error: conv_glu_wgmma dimensions");
    ka.tiles = int(tiles);
    launch_resident(conv_glu_wgmma_kernel<T, KH, KW, WG>, ka, WG, glu_tiles, tiles, shared, stream);
}

// Three warpgroups where their stages fit beside the weights, else two
// (H200, forward of 8: C = 48 3x3 376 against 412 us with two, 1x3 90 / 99;
// C = 96 1x3 146 / 140; C = 96 3x3 fits two only).
template <typename T, int KH, int KW>
void launch_fitting(cudaStream_t stream, const ConvGluWgmmaArgs& a) {
    using Tile = WTile<KH, KW>;
    const int chunks = a.C / kChunk;
    if (Tile::shared_bytes(chunks, 3) <= size_t(kMaxShared))
        launch<T, KH, KW, 3>(stream, a, Tile::shared_bytes(chunks, 3));
    else if (Tile::shared_bytes(chunks, 2) <= size_t(kMaxShared))
        launch<T, KH, KW, 2>(stream, a, Tile::shared_bytes(chunks, 2));
    else
        throw Error("internal error: conv_glu_wgmma weights past shared memory");
}


// ------------------------------------------------------------ 1x1 rewrites
// The encoders' pointwise rewrites read the DConv's operand copy, planes of
// positions per channel ([B, Cin, ld]): A is then M-major (wgmma's
// transposed A), each 16-byte run 8 positions of one channel. A
// warpgroup's tile is 128 positions of one item with every input channel
// in one stage, [position group of 8][channel][8 positions]; the weights of
// the block's GLU tile stay resident as in the 3x3 kernel.
constexpr int k1x1Stages = 3;
constexpr int k1x1Positions = 64 * kMTiles;

// The GLU's outputs go out through shared memory, [48 channels][128
// positions + 4] floats per warpgroup, so that each channel's run leaves as
// whole 512-byte rows (written from the fragments directly, each warp store
// touched 4 channels x 32 bytes: the kernel ran at ~1.5 TB/s).
constexpr int k1x1OutPitch = k1x1Positions + 4;
constexpr size_t k1x1OutBytes = size_t(kGluTile) * k1x1OutPitch * 4;
__host__ __device__ constexpr size_t conv1x1_stage_bytes(int cin) { return size_t(k1x1Positions) * cin * 2; }
__host__ __device__ constexpr size_t conv1x1_shared_bytes(int cin, int wgs) {
    return size_t(cin) * kN * 2 + size_t(wgs) * (k1x1Stages * conv1x1_stage_bytes(cin) + k1x1OutBytes);
}

struct Conv1x1KernelArgs {
    Conv1x1GluArgs a;
    bool vec_out;  // float4 stores: rows of a multiple of 4 floats from a 16-byte-aligned out
    bool emb_rows;  // the embedding's rows at least a tile long: a tile's two rows loaded ahead
    int tiles_p, tiles;  // a GLU tile's: along the positions, in all (positions fastest, then items)
};

// CH = Cin / 16 (unrolled: no accumulator access between the MMAs).
constexpr int k1x1MaxChunks = 6;
constexpr int conv1x1_warpgroups(int ch) { return conv1x1_shared_bytes(ch * kChunk, 3) <= size_t(kMaxShared) ? 3 : 2; }
template <typename T, int CH, int WG = conv1x1_warpgroups(CH)>
__global__ void __launch_bounds__(128 * WG, 1) conv1x1_glu_wgmma_kernel(Conv1x1KernelArgs ka) {
    if constexpr (!kHasWgmma) {
        __trap();
    } else {
        extern __shared__ __align__(128) unsigned char shared_raw[];
        const Conv1x1GluArgs& a = ka.a;
        const T* __restrict__ x = static_cast<const T*>(a.x);
        const T* __restrict__ wt = static_cast<const T*>(a.weight);
        const float* __restrict__ bias = a.bias;
        float* __restrict__ out = a.out;
        constexpr int Cin = CH * kChunk;
        const int C = a.C;
        const int64_t P = a.P, ld = a.ld;
        const int tid = threadIdx.x, wg = tid >> 7, wtid = tid & 127;
        constexpr int chunks = CH;
        const int c0 = int(blockIdx.y) * kGluTile;
        constexpr size_t stage_bytes = conv1x1_stage_bytes(Cin);

        load_resident_weights(shared_raw, wt, C, c0, Cin, 1, chunks);
        unsigned char* stages =
            shared_raw + size_t(Cin) * kN * 2 + size_t(wg) * (k1x1Stages * stage_bytes + k1x1OutBytes);
        float* staged_out = reinterpret_cast<float*>(stages + k1x1Stages * stage_bytes);

        const int worker = int(blockIdx.x) * WG + wg, workers = int(gridDim.x) * WG;
        const int my_tiles = (ka.tiles - worker + workers - 1) / workers;
        auto tile_origin = [&](int k, int& b, int64_t& p0) {
            const int t = worker + k * workers;
            b = t / ka.tiles_p;
            p0 = int64_t(t - b * ka.tiles_p) * k1x1Positions;
        };
        // A stage: Cin x 16 runs of 8 positions; run u is channel u / 16, group u % 16.
        int load_k = 0;
        auto load_next = [&](int k) {
            if (load_k < my_tiles) {
                int b;
                int64_t p0;
                tile_origin(load_k, b, p0);
                unsigned char* in = stages + (k % k1x1Stages) * stage_bytes;
                const T* xb = x + int64_t(b) * Cin * ld + p0;
                for (int u = wtid; u < Cin * 16; u += 128) {
                    const int c = u >> 4, grp = u & 15;
                    const bool valid = p0 + grp * 8 < ld;
                    cp_async16(in + (grp * Cin + c) * 16, valid ? xb + int64_t(c) * ld + grp * 8 : x, valid);
                }
                load_k++;
            }
            cp_async_commit();
        };

        const int warp = wtid >> 5, g = (tid & 31) >> 2, t = tid & 3;
        float bv[12], bg[12];
        load_glu_bias(bias, C, c0, t, bv, bg);

        prime_stages(load_next);
        // M-major A: core matrices (8 channels x 8 positions, 128 bytes) are
        // 128 bytes apart along K (the leading offset, as for K-major; the
        // other way round fails the test) and Cin x 16 bytes along M.
        const uint64_t a_first = smem_desc(stages, 128, uint32_t(Cin) * 16);
        const uint64_t b_first = smem_desc(shared_raw, kN * 16, 128);
        float acc[kMTiles][48];
        for (int tile_k = 0; tile_k < my_tiles; tile_k++) {
            if (tile_k > 0) {
                cp_async_wait<1>();
                fence_proxy_async();
                warpgroup_barrier(1 + wg);
            }
            const uint64_t a_stage = a_first + uint64_t((tile_k % k1x1Stages) * stage_bytes / 16);
            wgmma_fence();
#pragma unroll
            for (int ci = 0; ci < chunks; ci++) {
#pragma unroll
                for (int i = 0; i < kMTiles; i++)
                    wgmma_m64n96k16<T, true>(acc[i], a_stage + uint64_t(i * 8 * Cin + ci * kChunk),
                                             b_first + uint64_t(ci * 2 * kN), ci > 0);
            }
            wgmma_commit();
            int b;
            int64_t p0;
            tile_origin(tile_k, b, p0);
            // The frequency embedding's values of this thread's 12 channels in
            // the tile's first row f0 and the next (rows of emb_T >= 128
            // positions: a tile spans at most two), loaded while the MMAs run.
            // Loaded per value in the epilogue, each behind a 64-bit division,
            // the first encoder's rewrite waited on them: 211 -> 191 us a
            // forward of 8 on an H200 (the 3-warpgroup variants now spill ~40
            // bytes at their 168 registers).
            const bool emb_rows = ka.emb_rows;
            int64_t emb_next = 0;  // the first position of row f0 + 1
            float emb_lo[12], emb_hi[12];
            if (emb_rows) {
                const int64_t f0 = p0 / a.emb_T;
                emb_next = (f0 + 1) * a.emb_T;
                const float* lo = a.emb_table + f0 * C;
                const bool hi = emb_next < P;
#pragma unroll
                for (int q = 0; q < 12; q++) {
                    const int c = c0 + 8 * (q >> 1) + 2 * t + (q & 1);
                    emb_lo[q] = c < C ? lo[c] : 0.0f;
                    emb_hi[q] = c < C && hi ? lo[C + c] : 0.0f;
                }
            }
            wgmma_wait<0>();
            load_next(tile_k + 2);  // this tile's stage is free: the input two tiles on

#pragma unroll
            for (int i = 0; i < kMTiles; i++)
#pragma unroll
                for (int e2 = 0; e2 < 2; e2++) {
                    const int pp = i * 64 + 16 * warp + g + e2 * 8;
                    const int64_t p = p0 + pp;
                    // Shorter rows (small models): the row's values read as they are used.
                    const float* emb_row =
                        a.emb_table && !emb_rows && p < P ? a.emb_table + (p / a.emb_T) * C : nullptr;
                    const bool upper = p >= emb_next;
#pragma unroll
                    for (int j = 0; j < 6; j++)
#pragma unroll
                        for (int e = 0; e < 2; e++) {
                            const int cl = 8 * j + 2 * t + e, c = c0 + cl;
                            float v = glu_value(acc[i][4 * j + 2 * e2 + e] + bv[2 * j + e],
                                                acc[i][4 * (j + 6) + 2 * e2 + e] + bg[2 * j + e]);
                            // As the GLU pass adds the embedding (glu_vec_kernel), rounding each step.
                            if (c < C && (emb_rows || emb_row)) {
                                const float emb =
                                    emb_rows ? (upper ? emb_hi[2 * j + e] : emb_lo[2 * j + e]) : emb_row[c];
                                v = __fadd_rn(v, __fmul_rn(a.emb_k, __fmul_rn(emb, a.emb_s)));
                            }
                            staged_out[cl * k1x1OutPitch + pp] = v;  // lanes (g, t) in 32 banks
                        }
                }
            warpgroup_barrier(1 + wg);
            // A warp per channel row: 128 positions, whole 16-byte runs where the rows allow.
            const int lane = tid & 31;
            const int64_t valid = P - p0 < k1x1Positions ? P - p0 : k1x1Positions;
            const bool vec = ka.vec_out;
            for (int cl = warp; cl < kGluTile && c0 + cl < C; cl += 4) {
                const float* src = staged_out + cl * k1x1OutPitch;
                float* dst = out + (int64_t(b) * C + c0 + cl) * P + p0;
                if (vec && 4 * lane < valid) {
                    *reinterpret_cast<float4*>(dst + 4 * lane) = *reinterpret_cast<const float4*>(src + 4 * lane);
                } else if (!vec) {
#pragma unroll
                    for (int q = 0; q < 4; q++)
                        if (q * 32 + lane < valid) dst[q * 32 + lane] = src[q * 32 + lane];
                }
            }
        }
        cp_async_wait<0>();
    }
}

template <typename T, int CH>
void launch_1x1(cudaStream_t stream, const Conv1x1GluArgs& a) {
    constexpr int wgs = conv1x1_warpgroups(CH);
    Conv1x1KernelArgs ka;
    ka.a = a;
    const int64_t tiles_p = (a.P + k1x1Positions - 1) / k1x1Positions, tiles = tiles_p * a.B;
    if (tiles > std::numeric_limits<int32_t>::max()) throw Error("internal error: conv1x1_glu_wgmma dimensions");
    ka.tiles_p = int(tiles_p), ka.tiles = int(tiles);
    ka.vec_out = a.P % 4 == 0 && aligned16(a.out);
    ka.emb_rows = a.emb_table && a.emb_T >= k1x1Positions;
    launch_resident(conv1x1_glu_wgmma_kernel<T, CH>, ka, wgs, (a.C + kGluTile - 1) / kGluTile, tiles,
                    conv1x1_shared_bytes(CH * kChunk, wgs), stream);
}

template <typename T>
void launch_1x1_chunks(cudaStream_t stream, const Conv1x1GluArgs& a) {
    switch (a.Cin / kChunk) {
        case 1: return launch_1x1<T, 1>(stream, a);
        case 2: return launch_1x1<T, 2>(stream, a);
        case 3: return launch_1x1<T, 3>(stream, a);
        case 4: return launch_1x1<T, 4>(stream, a);
        case 5: return launch_1x1<T, 5>(stream, a);
        default: return launch_1x1<T, 6>(stream, a);
    }
}

}  // namespace

bool conv_glu_wgmma_fits(int64_t C) {
    return C > 0 && C % kChunk == 0 && WTile<3, 3>::shared_bytes(int(C / kChunk), 2) <= size_t(kMaxShared);
}

bool conv_glu_wgmma_available(int device) {
#ifdef FASTDEMUCS_NO_WGMMA
    (void)device;
    return false;  // built without the sm_90a image (CMakeLists.txt: FASTDEMUCS_WGMMA)
#else
    // Two attributes, not cudaGetDeviceProperties (a slow call at start-up).
    int major = 0, minor = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    if (major != 9 || minor != 0) return false;
    // The sm_90a image must be the one `device` loads (asked on it, the caller's device restored).
    int current = 0;
    if (cudaGetDevice(&current) != cudaSuccess || cudaSetDevice(device) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    cudaFuncAttributes attr{};
    const bool loaded = cudaFuncGetAttributes(&attr, conv_glu_wgmma_kernel<__half, 3, 3, 2>) == cudaSuccess;
    cudaGetLastError();
    cudaSetDevice(current);
    return loaded && attr.binaryVersion == 90;
#endif
}

void conv_glu_wgmma(cudaStream_t stream, DType t, int kh, const ConvGluWgmmaArgs& a) {
    if (!conv_glu_wgmma_fits(a.C)) throw Error("internal error: conv_glu_wgmma channels");
    if (a.B == 0 || a.H == 0 || a.W == 0) return;
    if (t == DType::F16) {
        if (kh == 3)
            launch_fitting<__half, 3, 3>(stream, a);
        else
            launch_fitting<__half, 1, 3>(stream, a);
    } else {
        if (kh == 3)
            launch_fitting<__nv_bfloat16, 3, 3>(stream, a);
        else
            launch_fitting<__nv_bfloat16, 1, 3>(stream, a);
    }
}

bool conv1x1_glu_wgmma_fits(int64_t cin, int64_t C) {
    return cin % kChunk == 0 && cin > 0 && cin <= k1x1MaxChunks * kChunk && C > 0;
}

void conv1x1_glu_wgmma(cudaStream_t stream, DType t, const Conv1x1GluArgs& a) {
    if (!conv1x1_glu_wgmma_fits(a.Cin, a.C) || a.ld % 8 != 0 || a.ld < a.P)
        throw Error("internal error: conv1x1_glu_wgmma shapes");
    if (a.B == 0 || a.P == 0) return;
    if (t == DType::F16)
        launch_1x1_chunks<__half>(stream, a);
    else
        launch_1x1_chunks<__nv_bfloat16>(stream, a);
}

}  // namespace fastdemucs::cuda
