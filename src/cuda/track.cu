#include "cuda/track.h"

#include "cuda/device_utils.cuh"
#include "engine/pcm.h"
#include "error.h"

namespace fastdemucs::cuda {
namespace {

constexpr int kStatBlocks = 1024;  // fixed: the reduction order does not depend on the device

// Per block: the sum over its samples of the mono mix (mean == null) or of
// its squared deviation from *mean. mono[i] = (x[0, i] + ... + x[C-1, i]) / C
// in double, as the host computes it.
__global__ void mono_partial_kernel(const float* __restrict__ x, int C, int64_t L, int64_t pitch,
                                    const double* __restrict__ mean, double* __restrict__ partial) {
    __shared__ double shared[32];
    const double mu = mean ? *mean : 0.0;
    double acc = 0.0;
    FD_GRID_STRIDE(i, L) {
        double m = 0.0;
        for (int c = 0; c < C; c++) m = __dadd_rn(m, double(x[c * pitch + i]));
        m = __ddiv_rn(m, double(C));
        if (mean) {
            const double d = __dsub_rn(m, mu);
            acc = __dadd_rn(acc, __dmul_rn(d, d));
        } else {
            acc = __dadd_rn(acc, m);
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
    for (int64_t c = blockIdx.y; c < C; c += gridDim.y) {
        for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < L; t += int64_t(gridDim.x) * blockDim.x) {
            float& v = x[c * pitch + t];
            v = float(__ddiv_rn(__dsub_rn(double(v), mean), scale));
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
    for (int64_t row = blockIdx.y; row < int64_t(count) * C; row += gridDim.y) {
        const int64_t k = first + row / C, c = row % C;
        const int64_t len = job_length(g, k);
        const int64_t start = g.view_start + k * g.stride - (g.valid - len) / 2;
        const float* src = track + c * g.total;
        float* dst = in + row * ML;
        for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < ML; t += int64_t(gridDim.x) * blockDim.x) {
            const int64_t p = start + t;
            dst[t] = t < g.valid && p >= 0 && p < g.total ? src[p] : 0.0f;
        }
    }
}

// The first chunk whose segment reaches view position j (chunks are at most
// segment long); j / stride is the last that starts at or before it.
// Multiply-high divisions: positions < 2^32.
__device__ __forceinline__ int64_t first_cover(const ChunkGrid& g, Divisor<uint32_t> stride, int64_t j) {
    return j >= g.segment ? int64_t(stride.div(uint32_t(j - g.segment))) + 1 : 0;
}

// Rows (stem, channel) on grid y, view positions lo + i on grid x. The
// chunks covering position j are first_cover .. j / stride (every position
// of the view is covered). A position's first chunk writes it (0 + its
// term, as the host loop adds into zeros), later ones add to it: the view
// needs no clearing.
__global__ void accumulate_chunks_kernel(const float* __restrict__ out, int64_t SC, ChunkGrid g, int64_t first,
                                         int count, int64_t lo, int64_t span, Divisor<uint32_t> stride,
                                         const float* __restrict__ weight, float* __restrict__ view, int64_t pitch) {
    const int64_t ML = g.model_length;
    const int64_t last = first + count - 1;
    for (int64_t sc = blockIdx.y; sc < SC; sc += gridDim.y) {
        for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < span; i += int64_t(gridDim.x) * blockDim.x) {
            const int64_t j = lo + i;
            const int64_t cover = first_cover(g, stride, j);
            const int64_t k_lo = max(first, cover), k_hi = min(last, int64_t(stride.div(uint32_t(j))));
            float* dst = view + sc * pitch + j;
            // j's first chunk in this batch: nothing to add to (the view is never cleared).
            float acc = cover >= first ? 0.0f : *dst;
            for (int64_t k = k_lo; k <= k_hi; k++) {
                const int64_t off = k * g.stride, len = job_length(g, k);
                if (j >= off + len) continue;
                const int64_t left = (g.valid - len) / 2;  // official center_trim
                const float r = out[((k - first) * SC + sc) * ML + left + (j - off)];
                acc = weight ? __fadd_rn(acc, __fmul_rn(weight[j - off], r)) : r;
            }
            *dst = acc;
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
    for (int64_t sc = blockIdx.y; sc < SC; sc += gridDim.y) {
        for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < width; i += int64_t(gridDim.x) * blockDim.x) {
            const int64_t t = t0 + i, j = skip + t;
            float v = view[sc * view_pitch + j];
            if (sum_weight) v = __fdiv_rn(v, sum_weight[j]);
            float* d = dst + sc * dst_pitch + t;
            if (step.shifts > 0) {
                v = __fadd_rn(step.first ? 0.0f : *d, v);
                if (step.last) v = __fdiv_rn(v, float(step.shifts));
            }
            if (step.last && stats) v = float(__dadd_rn(__dmul_rn(double(v), stats[1]), stats[0]));
            *d = v;
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
    gather_chunks_kernel<<<grid_2d(int64_t(count) * C, g.model_length), kThreads, 0, stream>>>(track, C, g, first,
                                                                                                count, in);
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
    accumulate_chunks_kernel<<<grid_2d(SC, span), kThreads, 0, stream>>>(
        out, SC, g, first, count, lo, span, Divisor<uint32_t>(g.stride), weight, view, pitch);
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
    finish_shift_kernel<<<grid_2d(SC, t1 - t0), kThreads, 0, stream>>>(view, view_pitch, skip, sum_weight, SC, t0,
                                                                        t1 - t0, step, stats, dst, dst_pitch);
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
