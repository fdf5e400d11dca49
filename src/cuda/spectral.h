// The model's STFT and inverse STFT on the GPU (HTDemucs._spec / _ispec),
// float32 through cuFFT, as cpu/spectral does it:
//   STFT: a framing kernel (the two reflect paddings folded into one index
//   map, Hann window, only the kept frames) -> batched R2C -> a packing
//   kernel (scale 1/sqrt(nfft), drop the Nyquist bin, complex as channels).
//   iSTFT: a packing kernel (undo the normalisation, zero Im(DC) and the
//   Nyquist bin: cuFFT's float32 C2R at n = 4096 does not ignore them) ->
//   batched C2R -> one gather kernel doing window, overlap-add over all
//   T + 4 frames, division by the window envelope, the offsets of _ispec,
//   plus the time branch: the model's final sum.
#pragma once

#include <cstdint>
#include <map>

#include "cuda/common.h"

namespace fastdemucs::cuda {

class Spectral {
public:
    // length: the model's training length (every chunk is padded to it).
    Spectral(int nfft, int64_t length);
    ~Spectral();
    Spectral(const Spectral&) = delete;
    Spectral& operator=(const Spectral&) = delete;

    int64_t frames() const { return frames_; }
    int64_t bins() const { return nfft_ / 2; }

    // mix [B, C, L] -> spec [B, 2C, bins, T] (channel 2c real, 2c + 1 imaginary).
    void stft(const Ctx& ctx, int64_t B, int64_t C, const float* mix, float* spec);
    // out [B, N, L] = denorm(xt) + istft(denorm(z)) with z [B, 2N, bins, T]
    // and xt [B, N, L] normalised; each stats array is {mean[B], std[B]}.
    void istft_add(const Ctx& ctx, int64_t B, int64_t N, const float* z, const double* z_stats, const float* xt,
                   const double* xt_stats, float* out);

    // The same with z never stored: the last frequency decoder's transposed
    // convolution (kernel (kh, 1), stride (sh, 1), output rows [h0, h0 +
    // bins), bias per channel) finishes its overlap-add straight into the
    // C2R input. Why: col2im wrote z (B x 2N x bins x T floats) only for the
    // pack to read it back and transpose it (~0.27 ms of a float16 forward
    // of 8). alloc_spectrum takes that input [B * N, T, bins + 1] from the
    // arena where z would have been; spectrum_from_columns fills it for
    // items [b0, b0 + nb) of B from their columns [nb, 2N * kh, ld] (type ct,
    // the input rows H of T frames), undoing the normalisation (z_stats) as
    // istft_add does, with the same arithmetic as col2im + the pack.
    // spectrum_from_columns_fits: whether it takes that kernel height and stride.
    bool spectrum_from_columns_fits(int kh, int sh) const;
    cufftComplex* alloc_spectrum(const Ctx& ctx, int64_t B, int64_t N) const;
    void spectrum_from_columns(const Ctx& ctx, const void* cols, DType ct, int64_t ld, const float* bias, int64_t B,
                               int64_t b0, int64_t nb, int64_t N, int64_t H, int kh, int sh, int64_t h0,
                               const double* z_stats, cufftComplex* spec) const;
    void istft_add_spectrum(const Ctx& ctx, int64_t B, int64_t N, cufftComplex* spec, const float* xt,
                            const double* xt_stats, float* out);

private:
    struct Plan {
        cufftHandle handle = 0;
        size_t work = 0;
    };
    Plan& plan(cufftType type, int64_t transforms);
    // C2R of spec (which it may overwrite), then the overlap-add with the time branch (istft_add's tail).
    void inverse_and_add(const Ctx& ctx, int64_t B, int64_t N, cufftComplex* spec, const float* xt,
                         const double* xt_stats, float* out);

    int nfft_, hop_;
    int64_t length_, frames_, ola_len_, offset_;
    DeviceBuffer window_, envelope_;
    std::map<std::pair<int, int64_t>, Plan> plans_;
};

}  // namespace fastdemucs::cuda
