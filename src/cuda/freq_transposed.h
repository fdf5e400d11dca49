// The frequency decoders' transposed convolutions (kernel (8, 1), stride
// (4, 1)) on the tensor cores, written straight into what reads them
// (float16 / bfloat16): the last decoder's into the iSTFT's C2R input, the
// others' into the next rewrite's packed input (conv_glu.h).
//
// Why: the other path (a GEMM into columns [Cout * kh, positions] in the
// operand type, then Spectral::spectrum_from_columns or pack_columns
// summing each value's two taps) writes the columns and reads them back:
// 0.53 GB for the last decoder of a forward of 8 chunks (htdemucs_6s, H200:
// 0.19 + 0.39 ms). With kernel kh = 2 sh every output row ho = sh hi + p -
// h0 (phase p < sh) takes exactly two taps, p from input row hi and p + sh
// from row hi - 1: one product of K = 2 Cin per position (hi, t) gives all
// sh output rows of it, and the epilogue writes them where the pack would,
// never storing a column.
#pragma once

#include <cufft.h>

#include <cstdint>

#include "cuda/common.h"

namespace fastdemucs::cuda {

struct FreqTransposedArgs {
    const void* x;       // [B, Cin, ld] operand type: the decoder's input, rows of H x T
    int64_t ld;          // a multiple of 8, >= H * T
    const void* weight;  // ConvTranspose2d's [Cin, Cout, kh, 1] in the operand type
    const float* bias;   // [Cout] or null
    int64_t B, H, T;
    int64_t rows;        // output rows [h0, h0 + rows) of the uncropped output
    int cin, cout, kh, sh, h0;
};

// The last decoder: spec [B * Cout / 2, T, rows + 1] (Spectral::alloc_spectrum,
// rows = bins), spec[(b N + n) T + t][k] = denorm(bias + conv_transpose(x))
// [b, 2n (+1), k, t] for bins k < rows, Im(DC) and the Nyquist bin zero (as
// istft_pack_kernel); stats: the spectrogram's {mean[B], std[B]}.
// Takes Cin 48, Cout 16 or 24 (the 4- and 6-source models).
bool decoder_spectrum_fits(const Ctx& ctx, const FreqTransposedArgs& a);
void decoder_spectrum(const Ctx& ctx, const FreqTransposedArgs& a, const double* stats, cufftComplex* spec);

// A decoder before another: xp [B, rows, T, Cout] (the next conv_glu's
// packed operand) = GELU(bias + conv_transpose(x)) + skip, skip [B, Cout,
// rows, T] float32, rounded once to the operand type (as pack_columns).
// Takes Cin 96, Cout 48 (the second-to-last decoder; the deeper ones'
// weights do not fit in shared memory).
bool decoder_packed_fits(const Ctx& ctx, const FreqTransposedArgs& a);
void decoder_packed(const Ctx& ctx, const FreqTransposedArgs& a, const float* skip, void* xp);

}  // namespace fastdemucs::cuda
