// The whole-track side of apply_model on the GPU (engine/apply's host path,
// kernel for kernel): the mono-mix normalisation, the chunk gather with
// ChunkView::padded semantics, the weighted overlap-add and the shift
// average. Every float operation that the host path performs in float is
// done here with explicitly rounded intrinsics in the same order (no FMA
// contraction), so the GPU path reproduces the host path's arithmetic around
// the forward; the only difference is the order of the double-precision sums
// of the normalisation statistics (a parallel reduction).
//
// Coordinates. The track lives in a buffer [C, total] with total = L + 2 *
// max_shift, the samples at [max_shift, max_shift + L) and zeros around them:
// the official shift padding. A view (the whole track, or one shifted cut of
// the padded track) starts at buffer index `view_start` and has `view_length`
// samples; its chunks start every `stride` samples.
#pragma once

#include <cstdint>

#include "cuda/common.h"
#include "fastdemucs/fastdemucs.h"

namespace fastdemucs::cuda {

struct ChunkGrid {
    int64_t total = 0;         // samples per channel of the underlying buffer (its row pitch)
    int64_t view_start = 0;    // buffer index of the view's first sample
    int64_t view_length = 0;   // n
    int64_t stride = 1;        // chunk k starts at k * stride in the view
    int64_t segment = 1;       // samples kept per chunk: min(n - k * stride, segment)
    int64_t valid = 1;         // samples the model sees, centred on the chunk (>= segment)
    int64_t model_length = 1;  // row length of the forward's input / output (>= valid; zeros beyond valid)
    int64_t jobs() const { return (view_length + stride - 1) / stride; }
};

// Statistics of the mono mix of x [C, L] (row pitch `pitch`): stats[0] =
// mean, stats[1] = unbiased std + 1e-8, accumulated in double. `partial`
// holds track_stats_partials() doubles.
int track_stats_partials();
void track_stats(cudaStream_t stream, const float* x, int C, int64_t L, int64_t pitch, double* partial,
                 double* stats);
// x = float((x - stats[0]) / stats[1]) over [C, L] (row pitch `pitch`).
void track_normalize(cudaStream_t stream, float* x, int C, int64_t L, int64_t pitch, const double* stats);

// in [count, C, model_length] = chunks first .. first + count - 1 of the
// view over track [C, g.total], each padded to g.valid samples around it
// (reading zeros beyond the buffer) and zero from g.valid to g.model_length.
void gather_chunks(cudaStream_t stream, const float* track, int C, const ChunkGrid& g, int64_t first, int count,
                   float* in);
// Adds the centre-trimmed outputs out [count, SC, model_length] of chunks
// first .. first + count - 1 into view [SC, pitch]: view += weight * out in
// chunk order (float, as the host loop), or view = out when weight is null
// (no split: one chunk). The view need not be cleared: the chunks come in
// order, and a position's first chunk starts it from zero.
void accumulate_chunks(cudaStream_t stream, const float* out, int64_t SC, const ChunkGrid& g, int64_t first,
                       int count, const float* weight, float* view, int64_t pitch);
// sum_weight[j] for j < g.view_length: the sum of the weights over the chunks
// covering j, in chunk order.
void sum_weights(cudaStream_t stream, const ChunkGrid& g, const float* weight, float* sum_weight);

// One shift's result for the track samples t0 <= i < t1 (of L), res = view[sc, skip + i]
// (/ sum_weight[skip + i] when sum_weight is given):
//   shifts == 0: dst = res
//   else:        dst = (first ? 0 : dst) + res, and on the last shift
//                dst /= shifts
// then, on the last (or only) shift, dst = float(dst * stats[1] + stats[0])
// when stats is given. dst [SC, dst_pitch] may be view + skip (in place).
struct ShiftStep {
    int shifts = 0;
    bool first = true, last = true;
};
void finish_shift(cudaStream_t stream, const float* view, int64_t view_pitch, int64_t skip, const float* sum_weight,
                  int64_t SC, int64_t t0, int64_t t1, const ShiftStep& step, const double* stats, float* dst,
                  int64_t dst_pitch);

// 16-bit output (Separator::separate_pcm16), over the finished stems x
// [S * C rows, pitch], a region [t0, t0 + frames) at a time:
// peaks[s] = max(peaks[s], the largest |x| of stem s in the region) as float
// bits (NaNs ignored; the caller zeroes peaks before the first region), for
// ClipMode::Rescale's divisor;
void stem_peaks(cudaStream_t stream, const float* x, int S, int C, int64_t t0, int64_t frames, int64_t pitch,
                unsigned* peaks);
// out [S, out_frames, C] frames [t0, t0 + frames) = engine/pcm.h's
// conversion of x's. Under Rescale a null `peaks` means the divisor 1 (the
// one every stem whose peak stays under 1 / 1.01 gets).
void stems_to_pcm16(cudaStream_t stream, const float* x, int S, int C, int64_t pitch, int64_t t0, int64_t frames,
                    ClipMode clip, const unsigned* peaks, int16_t* out, int64_t out_frames);

}  // namespace fastdemucs::cuda
