// The frequency decoders' transposed convolutions on the tensor cores,
// written into their consumers' layouts: see cuda/freq_transposed.h.
//
// A tile is one item's 8 input rows hi x 16 frames t (128 positions, M) by
// all sh * Cout outputs (phase p, channel c: N), K = 2 Cin (tap 0: row hi,
// weight rows p; tap 1: row hi - 1, weight rows p + sh). Its outputs are
// the 32 output rows [32 bf - h0, 32 bf - h0 + 32) of 16 frames of every
// channel, staged in shared memory and written as contiguous runs: rows of
// 32 bins of the C2R input, or rows of 16 frames x Cout channels of the
// packed operand. Warp w takes the m-tile of input row w % 8 (16 frames)
// and 1 / WN of the n-tiles: A through ldmatrix.trans from the staged input
// [ci][9 rows][16 frames] (frames are contiguous in x: the tile is
// M-major), B through ldmatrix from the weights staged once per block as
// [n][k]. Blocks are persistent and load the next tile's input while they
// compute this one.
#include "cuda/freq_transposed.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <string>
#include <type_traits>

#include "cuda/device_utils.cuh"
#include "cuda/profile.h"
#include "error.h"

namespace fastdemucs::cuda {
namespace {

constexpr int kSh = 4, kKh = 2 * kSh;
constexpr int kRows = 8, kFrames = 16;  // input rows x frames a tile
constexpr int kOutRows = kRows * kSh;   // output rows a tile
constexpr int kInRows = kRows + 1;      // with row hi - 1 of the first
// Input stage: channel ci at ci * kInPitch bytes, rows of 16 frames (32
// bytes); the pitch is 16 bytes more than 9 rows so that ldmatrix's eight
// channel rows fall in eight different 16-byte bank groups.
constexpr int kInPitch = kInRows * kFrames * 2 + 16;

template <int CIN, int COUT, int WN>
struct Shape {
    static constexpr int kK = 2 * CIN, kKSteps = kK / 16, kKStepsPerTap = CIN / 16;
    static constexpr int kN = kSh * COUT, kWarpNTiles = kN / 8 / WN;
    static constexpr int kWarps = kRows * WN, kThreads = 32 * kWarps;
    static constexpr int kInBytes = CIN * kInPitch;
    // Weight stage [n][k]: K halves a row plus 8 (an odd count of 16 bytes).
    static constexpr int kBPitch = (kK + 8) * 2;
    // The input (two buffers), the weights, the bias [Cout] (float).
    static constexpr size_t kOperandBytes = size_t(2 * kInBytes) + size_t(kN) * kBPitch + size_t(COUT) * 4;
    static_assert(CIN % 16 == 0 && COUT % 8 == 0 && kWarpNTiles % 2 == 0, "n-tiles in pairs, none across phases");
};

// The spectrum's stage [n][t][row] of float2: a row of 32 bins plus one
// (frames apart by 33 float2 = 2 banks), complex channels apart by 536
// float2 (16 banks): a warp's 32 stores fill 2 wavefronts.
constexpr int kSpecT = kOutRows + 1, kSpecN = kFrames * kSpecT + 8;
struct SpectrumOut {
    const double* stats;  // {mean[B], std[B]}
    cufftComplex* spec;
    template <int COUT>
    static constexpr size_t stage_bytes() {
        return size_t(COUT / 2) * kSpecN * sizeof(float2);
    }
};
// The packed operand's stage [row][t][c] in the operand type, frames Cout
// + 8 values apart (an odd count of 16 bytes: a warp's stores, 8 frames x
// 4 channel pairs, fall in 32 banks).
struct PackedOut {
    const float* skip;  // [B, Cout, rows, T]
    void* xp;           // [B, rows, T, Cout]
    template <int COUT>
    __host__ __device__ static constexpr int pitch() {
        return COUT + 8;
    }
    template <int COUT>
    static constexpr size_t stage_bytes() {
        return size_t(kOutRows) * kFrames * pitch<COUT>() * 2;
    }
};

template <typename T, int CIN, int COUT, int WN, typename Out>
__global__ void __launch_bounds__(Shape<CIN, COUT, WN>::kThreads, WN == 1 ? 2 : 1)
    freq_transposed_kernel(const T* __restrict__ x, int64_t ld, const T* __restrict__ weight,
                           const float* __restrict__ bias, int B, int H, int frames, int rows, int h0, Out out) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    __trap();  // cp.async, ldmatrix and bfloat16 mma.sync: sm_80 on (the host never launches it below)
#else
    using S = Shape<CIN, COUT, WN>;
    constexpr bool kSpectrum = std::is_same_v<Out, SpectrumOut>;
    static_assert(!kSpectrum || WN == 1, "the spectrum's write-out takes eight warps, a frame and the one 8 on each");
    extern __shared__ float4 freq_transposed_smem[];
    unsigned char* in_stage = reinterpret_cast<unsigned char*>(freq_transposed_smem);  // [2][kInBytes]
    unsigned char* w_stage = in_stage + 2 * S::kInBytes;                                // [kN][kBPitch]
    float* bias_s = reinterpret_cast<float*>(w_stage + S::kN * S::kBPitch);  // [Cout]
    unsigned char* out_stage = reinterpret_cast<unsigned char*>(bias_s + COUT);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wm = warp % kRows, wn = warp / kRows;
    const int g = lane >> 2, t4 = lane & 3;
    // Output rows [0, rows) (the spectrum: and its Nyquist row, zero).
    const int out_rows = kSpectrum ? rows + 1 : rows;
    const int ftiles = (out_rows - 1 + h0) / kOutRows + 1, ttiles = frames / kFrames;
    const int tiles = B * ftiles * ttiles;

    // Weights [n = p Cout + c][k = j Cin + ci] = w[ci][c][p + sh j], once per block.
    for (int i = threadIdx.x; i < S::kN * S::kK; i += S::kThreads) {
        const int n = i / S::kK, k = i - n * S::kK;
        const int p = n / COUT, c = n - p * COUT, j = k / CIN, ci = k - j * CIN;
        reinterpret_cast<T*>(w_stage + n * S::kBPitch)[k] = weight[(ci * COUT + c) * kKh + p + kSh * j];
    }
    for (int c = threadIdx.x; c < COUT; c += S::kThreads) bias_s[c] = bias ? bias[c] : 0.0f;

    // The input rows [8 bf - 1, 8 bf + 8) x frames [16 tt, + 16) of every channel, zero outside [0, H).
    const auto load = [&](int tile, int buf) {
        const int tt = tile % ttiles, rest = tile / ttiles, bf = rest % ftiles, b = rest / ftiles;
        unsigned char* dst = in_stage + buf * S::kInBytes;
        for (int i = threadIdx.x; i < CIN * kInRows * 2; i += S::kThreads) {
            const int ci = i / (kInRows * 2), r = i - ci * (kInRows * 2), s = r >> 1, half = r & 1;
            const int hi = kRows * bf - 1 + s;
            const bool valid = hi >= 0 && hi < H;
            const T* src = x + (int64_t(b) * CIN + ci) * ld + int64_t(valid ? hi : 0) * frames + kFrames * tt + 8 * half;
            cp_async16(dst + ci * kInPitch + s * (kFrames * 2) + 16 * half, src, valid);
        }
        cp_async_commit();
    };

    int tile = blockIdx.x, buf = 0;
    if (tile < tiles) load(tile, 0);
    for (; tile < tiles; tile += gridDim.x, buf ^= 1) {
        const int next = tile + gridDim.x;
        if (next < tiles) {
            load(next, buf ^ 1);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();  // this tile's input (and on the first, the weights); the stage's last reads done
        const int tt = tile % ttiles, rest = tile / ttiles, bf = rest % ftiles, b = rest / ftiles;
        // The spectrum's statistics loaded before the products, which hide their latency.
        float mean = 0.0f, sd = 0.0f;
        if constexpr (kSpectrum) mean = float(out.stats[b]), sd = float(out.stats[B + b]);

        // acc: rows g, g + 8 = frames; columns 2 t4, 2 t4 + 1 of the warp's n-tiles.
        float acc[S::kWarpNTiles][4] = {};
        const unsigned char* in = in_stage + buf * S::kInBytes;
        const int q = lane >> 3, i8 = lane & 7;
#pragma unroll
        for (int ks = 0; ks < S::kKSteps; ks++) {
            const int j = ks / S::kKStepsPerTap, ci0 = 16 * (ks - j * S::kKStepsPerTap);
            uint32_t a[4];
            ldmatrix_x4_trans(a[0], a[1], a[2], a[3],
                              in + (ci0 + i8 + 8 * (q >> 1)) * kInPitch + (wm + 1 - j) * (kFrames * 2) + 16 * (q & 1));
#pragma unroll
            for (int nt = 0; nt < S::kWarpNTiles; nt += 2) {
                const int n0 = 8 * (wn * S::kWarpNTiles + nt + (q >> 1)) + i8;
                uint32_t bf4[4];
                ldmatrix_x4(bf4[0], bf4[1], bf4[2], bf4[3], w_stage + n0 * S::kBPitch + (16 * ks + 8 * (q & 1)) * 2);
                mma_m16n8k16<T>(acc[nt], a, bf4[0], bf4[1]);
                mma_m16n8k16<T>(acc[nt + 1], a, bf4[2], bf4[3]);
            }
        }

        const int row0 = kOutRows * bf - h0;  // the stage's first output row
        // The warp's n-tile nt: phase p = 2 wn + nt / kPhaseTiles with WN = 2 (nt / kPhaseTiles alone with
        // WN = 1), channels c = 8 (nt % kPhaseTiles) + 2 t4 and c + 1: kept compile-time where they can be.
        constexpr int kPhaseTiles = COUT / 8;
        static_assert(S::kWarpNTiles % kPhaseTiles == 0, "a warp's n-tiles cover whole phases");
        const int p0 = wn * (S::kWarpNTiles / kPhaseTiles);
        if constexpr (kSpectrum) {
            float2* stage = reinterpret_cast<float2*>(out_stage);
            // This lane's slot: complex channel 4 (nt % kPhaseTiles) + t4, frame g (+ 8), row 4 wm + p.
            float2* lane_stage = stage + t4 * kSpecN + g * kSpecT + kSh * wm + p0;
            const int dc_row = -row0 - kSh * wm - p0;  // the row p - p0 holding bin 0, if any
#pragma unroll
            for (int nt = 0; nt < S::kWarpNTiles; nt++) {
                const int pp = nt / kPhaseTiles, c = 8 * (nt % kPhaseTiles) + 2 * t4;  // c even: (re, im)
                const float br = bias_s[c], bi = bias_s[c + 1];
                const bool dc = pp == dc_row;
#pragma unroll
                for (int hlf = 0; hlf < 2; hlf++) {
                    const float re = (acc[nt][2 * hlf] + br) * sd + mean;
                    const float im = dc ? 0.0f : (acc[nt][2 * hlf + 1] + bi) * sd + mean;  // Im(DC) dropped
                    lane_stage[4 * (nt % kPhaseTiles) * kSpecN + 8 * hlf * kSpecT + pp] = make_float2(re, im);
                }
            }
            __syncthreads();
            // Rows of 32 bins, a warp a (channel, frame) row at a time: channel i / 2, frame warp + 8 (i % 2).
            const int k = row0 + lane;
            if (k >= 0 && k <= rows) {
                const int64_t pitch = rows + 1, channel = int64_t(frames) * pitch;
                float2* dst = reinterpret_cast<float2*>(out.spec) +
                              ((int64_t(b) * (COUT / 2)) * frames + kFrames * tt + warp) * pitch + k;
                const float2* src = stage + warp * kSpecT + lane;
#pragma unroll 4
                for (int i = 0; i < COUT / 2 * kFrames / S::kWarps; i++) {
                    const float2 v = k == rows ? make_float2(0.0f, 0.0f) : src[(i >> 1) * kSpecN + (i & 1) * 8 * kSpecT];
                    dst[(i >> 1) * channel + (i & 1) * 8 * pitch] = v;
                }
            }
        } else {
            constexpr int P = PackedOut::pitch<COUT>();
            T* stage = reinterpret_cast<T*>(out_stage);
            const int64_t plane = int64_t(rows) * frames;
            // This lane's first value: channel 2 t4, output row row0 + 4 wm + p0, frame 16 tt + g.
            const int row_l = kSh * wm + p0, ho_l = row0 + row_l;
            const float* __restrict__ skip_l =
                out.skip + (int64_t(b) * COUT + 2 * t4) * plane + int64_t(ho_l) * frames + kFrames * tt + g;
            T* lane_stage = stage + (row_l * kFrames + g) * P + 2 * t4;
            // A third of the warp's n-tiles at a time: their skip values loaded first (predicated), then used.
            constexpr int kBatch = S::kWarpNTiles / 3;
            static_assert(S::kWarpNTiles % 3 == 0, "n-tiles in thirds");
#pragma unroll
            for (int h = 0; h < 3; h++) {
                float sk[kBatch][4];
#pragma unroll
                for (int u = 0; u < kBatch; u++) {
                    const int nt = h * kBatch + u, pp = nt / kPhaseTiles, cc = 8 * (nt % kPhaseTiles);
                    const bool inside = ho_l + pp >= 0 && ho_l + pp < rows;
                    const float* at = skip_l + cc * plane + pp * frames;
#pragma unroll
                    for (int hlf = 0; hlf < 2; hlf++) {
                        sk[u][2 * hlf] = inside ? __ldg(at + 8 * hlf) : 0.0f;
                        sk[u][2 * hlf + 1] = inside ? __ldg(at + plane + 8 * hlf) : 0.0f;
                    }
                }
#pragma unroll
                for (int u = 0; u < kBatch; u++) {
                    const int nt = h * kBatch + u, pp = nt / kPhaseTiles, cc = 8 * (nt % kPhaseTiles);
                    const float b0 = bias_s[cc + 2 * t4], b1 = bias_s[cc + 2 * t4 + 1];
#pragma unroll
                    for (int hlf = 0; hlf < 2; hlf++) {
                        // GELU, then the skip (never an FMA with it), as pack_columns; rows outside are
                        // staged too but never written out.
                        const float v0 = __fadd_rn(gelu_exact(acc[nt][2 * hlf] + b0), sk[u][2 * hlf]);
                        const float v1 = __fadd_rn(gelu_exact(acc[nt][2 * hlf + 1] + b1), sk[u][2 * hlf + 1]);
                        T* at = lane_stage + (pp * kFrames + 8 * hlf) * P + cc;
                        at[0] = from_float<T>(v0), at[1] = from_float<T>(v1);
                    }
                }
            }
            __syncthreads();
            // Rows of 16 frames x Cout channels, contiguous in xp: 16-byte runs.
            constexpr int kRuns = kFrames * COUT / 8;
            T* xp = static_cast<T*>(out.xp) + ((int64_t(b) * rows + row0) * frames + kFrames * tt) * COUT;
#pragma unroll 2
            for (int i = threadIdx.x; i < kOutRows * kRuns; i += S::kThreads) {
                const int row = i / kRuns, run = i - row * kRuns, t = run / (COUT / 8), c8 = run - t * (COUT / 8);
                const int ho = row0 + row;
                if (ho < 0 || ho >= rows) continue;
                *reinterpret_cast<uint4*>(xp + (int64_t(row) * frames + t) * COUT + 8 * c8) =
                    *reinterpret_cast<const uint4*>(stage + (row * kFrames + t) * P + 8 * c8);
            }
        }
    }
#endif
}

// Tiles of a launch writing out_rows output rows (rows, and the spectrum's Nyquist row).
int64_t tile_count(const FreqTransposedArgs& a, int64_t out_rows) {
    return a.B * ((out_rows - 1 + a.h0) / kOutRows + 1) * (a.T / kFrames);
}

// A variant's dynamic shared memory.
template <int CIN, int COUT, int WN, typename Out>
constexpr size_t variant_bytes() {
    return Shape<CIN, COUT, WN>::kOperandBytes + Out::template stage_bytes<COUT>();
}

// What both take: kernel 2 sh = 8, T a multiple of 16, the output window
// inside the uncropped output, float16 / bfloat16 operands, the variant's
// shared memory within what the device lets a block opt in to (the packed
// one's 188 KB: not on sm_86 / sm_89, nor on an A100).
bool common_fits(const Ctx& ctx, const FreqTransposedArgs& a, int64_t out_rows, size_t smem) {
    return (ctx.gemm == DType::F16 || ctx.gemm == DType::BF16) && a.kh == kKh && a.sh == kSh && a.T > 0 &&
           a.T % kFrames == 0 && a.H > 0 && a.rows > 0 && a.ld % 8 == 0 && a.ld >= a.H * a.T && a.h0 >= 0 &&
           a.h0 + a.rows <= (a.H - 1) * a.sh + a.kh && tile_count(a, out_rows) < (int64_t(1) << 31) &&
           (a.H + 1) * a.T < (int64_t(1) << 31) && (a.rows + 1) * a.T < (int64_t(1) << 31) && smem <= optin_smem();
}

template <int CIN, int COUT, int WN, typename Out>
void launch(const Ctx& ctx, const FreqTransposedArgs& a, Out out, int64_t out_rows) {
    using S = Shape<CIN, COUT, WN>;
    constexpr size_t bytes = variant_bytes<CIN, COUT, WN, Out>();
    const int64_t tiles = tile_count(a, out_rows);
    // Persistent blocks: as many as are resident.
    const unsigned blocks = unsigned(std::min<int64_t>(tiles, int64_t(WN == 1 ? 2 : 1) * multiprocessors()));
    const auto run = [&](auto* t) {
        using T = std::remove_pointer_t<decltype(t)>;
        const auto kernel = freq_transposed_kernel<T, CIN, COUT, WN, Out>;
        allow_shared(kernel, bytes);
        kernel<<<blocks, S::kThreads, bytes, ctx.stream>>>(static_cast<const T*>(a.x), a.ld,
                                                           static_cast<const T*>(a.weight), a.bias, int(a.B),
                                                           int(a.H), int(a.T), int(a.rows), a.h0, out);
        FD_LAUNCH_CHECK();
    };
    if (ctx.gemm == DType::F16)
        run(static_cast<__half*>(nullptr));
    else
        run(static_cast<__nv_bfloat16*>(nullptr));
}

}  // namespace

bool decoder_spectrum_fits(const Ctx& ctx, const FreqTransposedArgs& a) {
    return a.cin == 48 && (a.cout == 16 || a.cout == 24) &&
           common_fits(ctx, a, a.rows + 1,
                       a.cout == 16 ? variant_bytes<48, 16, 1, SpectrumOut>() : variant_bytes<48, 24, 1, SpectrumOut>());
}

void decoder_spectrum(const Ctx& ctx, const FreqTransposedArgs& a, const double* stats, cufftComplex* spec) {
    if (!decoder_spectrum_fits(ctx, a) || !aligned16(a.x))
        throw Error("internal error: decoder_spectrum geometry (Cin " + std::to_string(a.cin) + ", Cout " +
                    std::to_string(a.cout) + ", T " + std::to_string(a.T) + ")");
    if (ctx.dry || a.B == 0) return;
    ProfileSpan span(ctx, ProfKind::Gemm);
    const SpectrumOut out{stats, spec};
    if (a.cout == 16)
        launch<48, 16, 1>(ctx, a, out, a.rows + 1);
    else
        launch<48, 24, 1>(ctx, a, out, a.rows + 1);
}

bool decoder_packed_fits(const Ctx& ctx, const FreqTransposedArgs& a) {
    return a.cin == 96 && a.cout == 48 && common_fits(ctx, a, a.rows, variant_bytes<96, 48, 2, PackedOut>());
}

void decoder_packed(const Ctx& ctx, const FreqTransposedArgs& a, const float* skip, void* xp) {
    if (!decoder_packed_fits(ctx, a) || !aligned16(a.x) || !aligned16(xp))
        throw Error("internal error: decoder_packed geometry (Cin " + std::to_string(a.cin) + ", Cout " +
                    std::to_string(a.cout) + ", T " + std::to_string(a.T) + ")");
    if (ctx.dry || a.B == 0) return;
    ProfileSpan span(ctx, ProfKind::Gemm);
    launch<96, 48, 2>(ctx, a, PackedOut{skip, xp}, a.rows);
}

}  // namespace fastdemucs::cuda
