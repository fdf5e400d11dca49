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

private:
    struct Plan {
        cufftHandle handle = 0;
        size_t work = 0;
    };
    Plan& plan(cufftType type, int64_t transforms);

    int nfft_, hop_;
    int64_t length_, frames_, ola_len_, offset_;
    DeviceBuffer window_, envelope_;
    std::map<std::pair<int, int64_t>, Plan> plans_;
};

}  // namespace fastdemucs::cuda
