// The model's STFT and inverse STFT (HTDemucs._spec / _ispec) on the CPU,
// float32 through FFTW.
#pragma once

#include <cstdint>

#include "cpu/tensor.h"

namespace fastdemucs::cpu {

// x [B, C, L] -> complex-as-channels spectrogram [B, 2C, nfft/2, ceil(L/hop)]
// (channel 2c is the real part of channel c, 2c+1 the imaginary part).
// Reflect padding of 3/2 hop each side (plus up to a hop at the end), a
// centred, normalised, Hann-windowed STFT, the Nyquist bin and the two
// outer frames on each side dropped: exactly the official _spec.
Tensor stft_cac(const Tensor& x, int nfft);

// z [B, 2N, nfft/2, T] complex-as-channels -> [B, N, length]: the official
// _ispec. The imaginary parts of the DC and (zero-padded) Nyquist bins are
// dropped before the inverse real FFT, which is the transform's definition.
Tensor istft_cac(const Tensor& z, int nfft, int64_t length);

}  // namespace fastdemucs::cpu
