#include "cuda/track.h"

#include <algorithm>
#include <limits>

#include "cuda/device_utils.cuh"
#include "engine/pcm.h"
#include "error.h"

namespace fastdemucs::cuda {
namespace {

constexpr int kStatBlocks = 1024;  // fixed: the reduction order does not depend on the device

// The element-wise kernels take kIlp positions a thread at a time and issue
// all their loads before any division or store: a division's slow path is a
// branch the compiler does not move loads across, and a store may alias the
// next position's load, so one position at a time left a single 4-byte load
// in flight per thread (~1-1.3 TB/s on an H200: the overlap-add of a batch
// of 8 chunks took 0.18 ms, 0.095 ms this way; the shift's finishing, bound
// by its divisions and double arithmetic, stays near 1 TB/s beside the next
// forward on the copy stream).
constexpr int kIlp = 4;

// Per block: the sum over its samples of the mono mix (mean == null) or of
// its squared deviation from *mean. mono[i] = (x[0, i] + ... + x[C-1, i]) / C
// in double, as the host computes it.
__global__ void mono_partial_kernel(const float* __restrict__ x, int C, int64_t L, int64_t pitch,
                                    const double* __restrict__ mean, double* __restrict__ partial) {
    __shared__ double shared[32];
    const double mu = mean ? *mean : 0.0;
    double acc = 0.0;
    const int64_t step = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i0 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i0 < L; i0 += kIlp * step) {
        // The sums (loads and adds only) before the divisions (see kIlp).
        double m[kIlp];
#pragma unroll
        for (int q = 0; q < kIlp; q++) {
            const int64_t i = i0 + q * step;
            m[q] = 0.0;
            if (i < L)
                for (int c = 0; c < C; c++) m[q] = __dadd_rn(m[q], double(x[c * pitch + i]));
        }
#pragma unroll
        for (int q = 0; q < kIlp; q++) {
            if (i0 + q * step >= L) break;
            // (/ 2 is exactly * 0.5, without a division's slow-path branch)
            const double mono = C == 2 ? __dmul_rn(m[q], 0.5) : __ddiv_rn(m[q], double(C));
            if (mean) {
                const double d = __dsub_rn(mono, mu);
                acc = __dadd_rn(acc, __dmul_rn(d, d));
            } else {
                acc = __dadd_rn(acc, mono);
            }
        }
    }
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// One block: stats[0] = sum / L (first pass) or stats[1] = sqrt(sum / (L - 1)) + 1e-8.
__global__ void mono_finish_kernel(const double* __restrict__ partial, int n, int64_t L, bool spread,
                                   double* __restrict__ stats) {
    __shared__ double shared[32];
    double acc = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) acc += partial[i];
    acc = block_sum(acc, shared);
    if (threadIdx.x != 0) return;
    if (!spread)
        stats[0] = acc / double(L);
    else
        stats[1] = (L > 1 ? sqrt(acc / double(L - 1)) : 0.0) + 1e-8;
}

// Channels on grid y, samples on grid x.
__global__ void normalize_track_kernel(float* x, int C, int64_t L, int64_t pitch, const double* __restrict__ stats) {
    const double mean = stats[0], scale = stats[1];
    const int64_t step = int64_t(gridDim.x) * blockDim.x;
    for (int64_t c = blockIdx.y; c < C; c += gridDim.y) {
        float* row = x + c * pitch;
        for (int64_t t0 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t0 < L; t0 += kIlp * step) {
            float v[kIlp];
#pragma unroll
            for (int q = 0; q < kIlp; q++) v[q] = t0 + q * step < L ? row[t0 + q * step] : 0.0f;
#pragma unroll
            for (int q = 0; q < kIlp; q++)
                if (t0 + q * step < L) row[t0 + q * step] = float(__ddiv_rn(__dsub_rn(double(v[q]), mean), scale));
        }
    }
}

__device__ __forceinline__ int64_t job_length(const ChunkGrid& g, int64_t k) {
    return min(g.view_length - k * g.stride, g.segment);
}

// Rows (chunk, channel) on grid y, samples on grid x: the row's chunk and
// source window found once per row, no division per sample (one thread a
// sample with three 64-bit divisions each took 0.17 ms for a batch of 8).
__global__ void gather_chunks_kernel(const float* __restrict__ track, int C, ChunkGrid g, int64_t first, int count,
                                     float* __restrict__ in) {
    const int64_t ML = g.model_length;
    // (32-bit row arithmetic: each block of the grid divides once a row.)
    for (int row = int(blockIdx.y); row < count * C; row += int(gridDim.y)) {
        const int64_t k = first + row / C, c = row % C;
        const int64_t len = job_length(g, k);
        const int64_t start = g.view_start + k * g.stride - (g.valid - len) / 2;
        const float* src = track + c * g.total;
        float* dst = in + row * ML;
        const int64_t step = int64_t(gridDim.x) * blockDim.x;
        for (int64_t t0 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t0 < ML; t0 += kIlp * step) {
            float v[kIlp];
#pragma unroll
            for (int q = 0; q < kIlp; q++) {  // the loads first (see kIlp)
                const int64_t t = t0 + q * step, p = start + t;
                v[q] = t < g.valid && p >= 0 && p < g.total ? src[p] : 0.0f;
            }
#pragma unroll
            for (int q = 0; q < kIlp; q++)
                if (t0 + q * step < ML) dst[t0 + q * step] = v[q];
        }
    }
}

// The first chunk whose segment reaches view position j (chunks are at most
// segment long); j / stride is the last that starts at or before it.
// Multiply-high divisions: positions < 2^32.
__device__ __forceinline__ int64_t first_cover(const ChunkGrid& g, Divisor<uint32_t> stride, int64_t j) {
    return j >= g.segment ? int64_t(stride.div(uint32_t(j - g.segment))) + 1 : 0;
}

// View positions lo + i on grid x, each thread all SC rows (stem, channel)
// of its position: the chunks covering position j (first_cover .. j /
// stride; every position of the view is covered) and their offsets are
// found once for the SC rows (per row, with a grid row each, the divisions
// and 64-bit offsets made the kernel issue-bound: ~1.4 TB/s). A position's
// first chunk writes it (0 + its term, as the host loop adds into zeros),
// later ones add to it: the view needs no clearing.
constexpr int kCoverCache = 4;  // chunks a position keeps offsets for (2 at the default overlap of 0.25)
__global__ void accumulate_chunks_kernel(const float* __restrict__ out, int SC, ChunkGrid g, int64_t first,
                                         int count, int64_t lo, int64_t span, Divisor<uint32_t> stride,
                                         const float* __restrict__ weight, float* __restrict__ view, int64_t pitch) {
    const int64_t ML = g.model_length;
    const int64_t last = first + count - 1;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < span; i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t j = lo + i;
        const int64_t cover = first_cover(g, stride, j);
        const int64_t k_lo = max(first, cover), k_hi = min(last, int64_t(stride.div(uint32_t(j))));
        // j's first chunk in this batch: nothing to add to (the view is never cleared).
        const bool fresh = cover >= first;
        // The covering chunks' row-0 samples and weights, in chunk order
        // (fixed indices, unrolled: the arrays stay in registers).
        const bool cached = k_hi - k_lo < kCoverCache;
        const float* src[kCoverCache];
        float wt[kCoverCache];
#pragma unroll
        for (int q = 0; q < kCoverCache; q++) {
            const int64_t k = k_lo + q, off = k * g.stride, len = job_length(g, k);
            const bool covers = cached && k <= k_hi && j < off + len;
            // (valid - len) / 2: the official center_trim's left cut.
            src[q] = covers ? out + (k - first) * SC * ML + (g.valid - len) / 2 + (j - off) : nullptr;
            wt[q] = covers && weight ? weight[j - off] : 1.0f;
        }
        if (!cached) {  // more chunks than the cache (overlaps over 0.75): found again for every row
            for (int sc = 0; sc < SC; sc++) {
                float* dst = view + sc * pitch + j;
                float acc = fresh ? 0.0f : *dst;
                for (int64_t k = k_lo; k <= k_hi; k++) {
                    const int64_t off = k * g.stride, len = job_length(g, k);
                    if (j >= off + len) continue;
                    const int64_t left = (g.valid - len) / 2;
                    const float r = out[((k - first) * SC + sc) * ML + left + (j - off)];
                    acc = weight ? __fadd_rn(acc, __fmul_rn(weight[j - off], r)) : r;
                }
                *dst = acc;
            }
            continue;
        }
        // kIlp rows at a time, their loads first (see kIlp).
        for (int sc0 = 0; sc0 < SC; sc0 += kIlp) {
            float prev[kIlp], r[kIlp][kCoverCache];
#pragma unroll
            for (int u = 0; u < kIlp; u++) {
                const int sc = sc0 + u;
                prev[u] = sc < SC && !fresh ? view[sc * pitch + j] : 0.0f;
#pragma unroll
                for (int q = 0; q < kCoverCache; q++) r[u][q] = sc < SC && src[q] ? src[q][sc * ML] : 0.0f;
            }
#pragma unroll
            for (int u = 0; u < kIlp; u++) {
                if (sc0 + u >= SC) break;
                float acc = prev[u];
#pragma unroll
                for (int q = 0; q < kCoverCache; q++)
                    if (src[q]) acc = weight ? __fadd_rn(acc, __fmul_rn(wt[q], r[u][q])) : r[u][q];
                view[(sc0 + u) * pitch + j] = acc;
            }
        }
    }
}

__global__ void sum_weights_kernel(ChunkGrid g, Divisor<uint32_t> stride, const float* __restrict__ weight,
                                   float* __restrict__ sum_weight) {
    const int64_t last = (g.view_length + g.stride - 1) / g.stride - 1;
    FD_GRID_STRIDE(j, g.view_length) {
        float s = 0.0f;
        for (int64_t k = first_cover(g, stride, j); k <= min(last, int64_t(stride.div(uint32_t(j)))); k++) {
            const int64_t off = k * g.stride;
            if (j < off + job_length(g, k)) s = __fadd_rn(s, weight[j - off]);
        }
        sum_weight[j] = s;
    }
}

// Rows (stem, channel) on grid y, samples on grid x.
__global__ void finish_shift_kernel(const float* view, int64_t view_pitch, int64_t skip,
                                    const float* __restrict__ sum_weight, int64_t SC, int64_t t0, int64_t width,
                                    ShiftStep step, const double* __restrict__ stats, float* dst,
                                    int64_t dst_pitch) {
    const bool adds = step.shifts > 0 && !step.first;  // reads dst
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t sc = blockIdx.y; sc < SC; sc += gridDim.y) {
        const float* src = view + sc * view_pitch + skip + t0;
        const float* weights = sum_weight ? sum_weight + skip + t0 : nullptr;
        float* d = dst + sc * dst_pitch + t0;
        for (int64_t i0 = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i0 < width; i0 += kIlp * stride) {
            float v[kIlp], w[kIlp], o[kIlp];
#pragma unroll
            for (int q = 0; q < kIlp; q++) {  // every load first (see kIlp)
                const int64_t i = i0 + q * stride;
                const bool in = i < width;
                v[q] = in ? src[i] : 0.0f;
                w[q] = in && weights ? weights[i] : 1.0f;
                o[q] = in && adds ? d[i] : 0.0f;
            }
#pragma unroll
            for (int q = 0; q < kIlp; q++) {
                const int64_t i = i0 + q * stride;
                if (i >= width) break;
                float r = v[q];
                if (weights) r = __fdiv_rn(r, w[q]);
                if (step.shifts > 0) {
                    r = __fadd_rn(step.first ? 0.0f : o[q], r);
                    if (step.last) r = __fdiv_rn(r, float(step.shifts));
                }
                if (step.last && stats) r = float(__dadd_rn(__dmul_rn(double(r), stats[1]), stats[0]));
                d[i] = r;
            }
        }
    }
}

// Grid (blocks along the row, rows): the largest |x| of each row's part,
// atomically maxed into its stem's slot as float bits (non-negative floats
// order as their bits do).
__global__ void stem_peaks_kernel(const float* __restrict__ x, int C, int64_t t0, int64_t frames, int64_t pitch,
                                  unsigned* __restrict__ peaks) {
    __shared__ float shared[32];
    const float* row = x + int64_t(blockIdx.y) * pitch + t0;
    float peak = 0.0f;
    for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < frames; t += int64_t(gridDim.x) * blockDim.x)
        peak = pcm::max_abs(peak, row[t]);
    peak = block_max(peak, shared);
    if (threadIdx.x == 0) atomicMax(peaks + blockIdx.y / C, __float_as_uint(peak));
}

// Grid (frames, stems): one thread per frame writes its C interleaved samples.
__global__ void stems_to_pcm16_kernel(const float* __restrict__ x, int C, int64_t pitch, int64_t t0, int64_t frames,
                                      ClipMode clip, const unsigned* __restrict__ peaks, int16_t* __restrict__ out,
                                      int64_t out_frames) {
    const int s = blockIdx.y;
    const float divisor =
        clip == ClipMode::Rescale && peaks ? pcm::rescale_divisor(__uint_as_float(peaks[s])) : 1.0f;
    const float* stem = x + int64_t(s) * C * pitch + t0;
    int16_t* dst = out + (int64_t(s) * out_frames + t0) * C;
    for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < frames;
         t += int64_t(gridDim.x) * blockDim.x)
        for (int c = 0; c < C; c++)
            dst[t * C + c] = int16_t(pcm::to_pcm<16>(pcm::clip(stem[c * pitch + t], clip, divisor)));
}

}  // namespace

int track_stats_partials() { return kStatBlocks; }

void track_stats(cudaStream_t stream, const float* x, int C, int64_t L, int64_t pitch, double* partial,
                 double* stats) {
    if (L <= 0) throw Error("track_stats: empty track");
    mono_partial_kernel<<<kStatBlocks, kThreads, 0, stream>>>(x, C, L, pitch, nullptr, partial);
    FD_LAUNCH_CHECK();
    mono_finish_kernel<<<1, 1024, 0, stream>>>(partial, kStatBlocks, L, false, stats);
    FD_LAUNCH_CHECK();
    mono_partial_kernel<<<kStatBlocks, kThreads, 0, stream>>>(x, C, L, pitch, stats, partial);
    FD_LAUNCH_CHECK();
    mono_finish_kernel<<<1, 1024, 0, stream>>>(partial, kStatBlocks, L, true, stats);
    FD_LAUNCH_CHECK();
}

void track_normalize(cudaStream_t stream, float* x, int C, int64_t L, int64_t pitch, const double* stats) {
    normalize_track_kernel<<<grid_2d(C, L), kThreads, 0, stream>>>(x, C, L, pitch, stats);
    FD_LAUNCH_CHECK();
}

void gather_chunks(cudaStream_t stream, const float* track, int C, const ChunkGrid& g, int64_t first, int count,
                   float* in) {
    if (count <= 0 || first < 0 || first + count > g.jobs() || g.valid > g.model_length || g.segment > g.valid)
        throw Error("internal error: gather_chunks arguments");
    // A grid row per (chunk, channel): grid_2d's single row of blocks left
    // each thread 16 rows one after the other (latency-bound, ~0.6 TB/s).
    const int64_t rows = int64_t(count) * C;
    const dim3 grid(grid_for((g.model_length + kIlp - 1) / kIlp), unsigned(std::min<int64_t>(rows, 65535)));
    gather_chunks_kernel<<<grid, kThreads, 0, stream>>>(track, C, g, first, count, in);
    FD_LAUNCH_CHECK();
}

void accumulate_chunks(cudaStream_t stream, const float* out, int64_t SC, const ChunkGrid& g, int64_t first,
                       int count, const float* weight, float* view, int64_t pitch) {
    if (count <= 0 || first < 0 || first + count > g.jobs() || pitch < g.view_length)
        throw Error("internal error: accumulate_chunks arguments");
    if (!weight && g.jobs() != 1) throw Error("internal error: unweighted overlap-add of several chunks");
    // Every view position must be covered by a chunk (the view is never cleared): no gaps between chunks.
    if (g.stride > g.segment) throw Error("internal error: accumulate_chunks: chunks further apart than they are long");
    const int64_t last = first + count - 1;
    const int64_t lo = first * g.stride;
    const int64_t hi = std::min(g.view_length, last * g.stride + g.segment);
    if (hi <= lo) return;
    const int64_t span = hi - lo;
    if (hi > int64_t(UINT32_MAX)) throw Error("accumulate_chunks: a view of 2^32 samples or more");
    if (SC > std::numeric_limits<int>::max()) throw Error("internal error: accumulate_chunks: too many rows");
    accumulate_chunks_kernel<<<grid_for(span), kThreads, 0, stream>>>(
        out, int(SC), g, first, count, lo, span, Divisor<uint32_t>(g.stride), weight, view, pitch);
    FD_LAUNCH_CHECK();
}

void sum_weights(cudaStream_t stream, const ChunkGrid& g, const float* weight, float* sum_weight) {
    if (g.view_length > int64_t(UINT32_MAX)) throw Error("sum_weights: a view of 2^32 samples or more");
    sum_weights_kernel<<<grid_for(g.view_length), kThreads, 0, stream>>>(g, Divisor<uint32_t>(g.stride), weight,
                                                                        sum_weight);
    FD_LAUNCH_CHECK();
}

void finish_shift(cudaStream_t stream, const float* view, int64_t view_pitch, int64_t skip, const float* sum_weight,
                  int64_t SC, int64_t t0, int64_t t1, const ShiftStep& step, const double* stats, float* dst,
                  int64_t dst_pitch) {
    if (t1 <= t0) return;
    // A grid row per (stem, channel), each thread kIlp samples: grid_2d's
    // single row of blocks left each thread the rows one after the other.
    const int64_t width = t1 - t0;
    const dim3 grid(grid_for((width + kIlp - 1) / kIlp), unsigned(std::min<int64_t>(SC, 65535)));
    finish_shift_kernel<<<grid, kThreads, 0, stream>>>(view, view_pitch, skip, sum_weight, SC, t0, width, step, stats,
                                                       dst, dst_pitch);
    FD_LAUNCH_CHECK();
}

void stem_peaks(cudaStream_t stream, const float* x, int S, int C, int64_t t0, int64_t frames, int64_t pitch,
                unsigned* peaks) {
    if (S <= 0 || C <= 0 || frames <= 0 || t0 < 0 || t0 + frames > pitch || S * C > 65535)
        throw Error("internal error: stem_peaks arguments");
    const unsigned blocks = std::max(1u, grid_for(frames) / unsigned(S * C));
    stem_peaks_kernel<<<dim3(blocks, unsigned(S * C)), kThreads, 0, stream>>>(x, C, t0, frames, pitch, peaks);
    FD_LAUNCH_CHECK();
}

void stems_to_pcm16(cudaStream_t stream, const float* x, int S, int C, int64_t pitch, int64_t t0, int64_t frames,
                    ClipMode clip, const unsigned* peaks, int16_t* out, int64_t out_frames) {
    if (S <= 0 || C <= 0 || frames <= 0 || t0 < 0 || t0 + frames > pitch || t0 + frames > out_frames || S > 65535)
        throw Error("internal error: stems_to_pcm16 arguments");
    const unsigned blocks = std::max(1u, grid_for(frames) / unsigned(S));
    stems_to_pcm16_kernel<<<dim3(blocks, unsigned(S)), kThreads, 0, stream>>>(x, C, pitch, t0, frames, clip, peaks,
                                                                              out, out_frames);
    FD_LAUNCH_CHECK();
}

}  // namespace fastdemucs::cuda
