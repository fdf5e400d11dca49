#include "cpu/spectral.h"

#include <fftw3.h>

#include <cmath>
#include <complex>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <vector>

namespace fastdemucs::cpu {
namespace {

// FFTW's planner is not thread-safe; execution with the new-array API is.
std::mutex planner_mutex;

struct FftwFree {
    void operator()(void* p) const { fftwf_free(p); }
};
template <typename T>
using FftwBuffer = std::unique_ptr<T[], FftwFree>;

template <typename T>
FftwBuffer<T> fftw_buffer(size_t n) {
    return FftwBuffer<T>(static_cast<T*>(fftwf_malloc(n * sizeof(T))));
}

struct Plans {
    fftwf_plan forward = nullptr;   // r2c, nfft
    fftwf_plan inverse = nullptr;   // c2r, nfft
    explicit Plans(int nfft) {
        std::lock_guard<std::mutex> lock(planner_mutex);
        auto real = fftw_buffer<float>(nfft);
        auto spec = fftw_buffer<fftwf_complex>(nfft / 2 + 1);
        forward = fftwf_plan_dft_r2c_1d(nfft, real.get(), spec.get(), FFTW_ESTIMATE);
        inverse = fftwf_plan_dft_c2r_1d(nfft, spec.get(), real.get(), FFTW_ESTIMATE);
    }
    ~Plans() {
        std::lock_guard<std::mutex> lock(planner_mutex);
        fftwf_destroy_plan(forward);
        fftwf_destroy_plan(inverse);
    }
};

// torch.hann_window(n) (periodic).
std::vector<float> hann(int n) {
    std::vector<float> w(n);
    for (int i = 0; i < n; i++) w[i] = float(0.5 - 0.5 * std::cos(2.0 * M_PI * i / n));
    return w;
}

// Index into a signal of `length` samples reflected about its ends (no edge repeat).
int64_t reflect(int64_t i, int64_t length) {
    if (i < 0) i = -i;
    if (i >= length) i = 2 * (length - 1) - i;
    return i;
}

}  // namespace

Tensor stft_cac(const Tensor& x, int nfft) {
    const int64_t B = x.dim(0), C = x.dim(1), L = x.dim(2);
    const int64_t hop = nfft / 4, bins = nfft / 2;
    const int64_t frames = (L + hop - 1) / hop;
    const int64_t pad = hop / 2 * 3;
    if (L <= pad + hop) throw std::invalid_argument("stft_cac: input shorter than the STFT padding");
    // The signal is padded twice: by the model (pad, pad + frames*hop - L),
    // then by torch.stft's centring (nfft/2 each side), both by reflection.
    const int64_t padded_len = frames * hop + 2 * pad;
    auto sample = [&](const float* sig, int64_t j) {  // j indexes the twice-padded signal
        int64_t once = reflect(j - nfft / 2, padded_len);
        return sig[reflect(once - pad, L)];
    };
    const std::vector<float> window = hann(nfft);
    const float norm = float(1.0 / std::sqrt(double(nfft)));
    Plans plans(nfft);

    Tensor out = Tensor::uninitialized({B, 2 * C, bins, frames});
#pragma omp parallel
    {
        auto frame = fftw_buffer<float>(nfft);
        auto spec = fftw_buffer<fftwf_complex>(nfft / 2 + 1);
#pragma omp for collapse(2) schedule(static)
        for (int64_t bc = 0; bc < B * C; bc++)
            for (int64_t t = 0; t < frames; t++) {
                const float* sig = x.ptr() + bc * L;
                // Kept frame t is torch.stft's frame t + 2.
                const int64_t start = (t + 2) * hop;
                for (int n = 0; n < nfft; n++) frame[n] = sample(sig, start + n) * window[n];
                fftwf_execute_dft_r2c(plans.forward, frame.get(), spec.get());
                const int64_t b = bc / C, c = bc % C;
                float* re = out.ptr() + ((b * 2 * C + 2 * c) * bins) * frames + t;
                float* im = re + bins * frames;
                for (int64_t k = 0; k < bins; k++) {
                    re[k * frames] = spec[k][0] * norm;
                    im[k * frames] = spec[k][1] * norm;
                }
            }
    }
    return out;
}

Tensor istft_cac(const Tensor& z, int nfft, int64_t length) {
    const int64_t B = z.dim(0), N = z.dim(1) / 2, bins = z.dim(2), T = z.dim(3);
    const int64_t hop = nfft / 4;
    if (bins != nfft / 2) throw std::invalid_argument("istft_cac: bins != nfft / 2");
    // The official code adds two silent frames on each side, then torch.istft
    // (centred) drops nfft/2 samples and _ispec drops another 3/2 hop: output
    // sample j sits at j + 3.5 hop in the overlap-add of frames 0..T+3.
    const int64_t total_frames = T + 4;
    const int64_t ola_len = nfft + hop * (total_frames - 1);
    const int64_t offset = nfft / 2 + hop / 2 * 3;
    if (offset + length > ola_len) throw std::invalid_argument("istft_cac: length too long for the frames");
    const std::vector<float> window = hann(nfft);
    // Window envelope over every frame, the silent ones included.
    std::vector<double> envelope(ola_len, 0.0);
    for (int64_t f = 0; f < total_frames; f++)
        for (int n = 0; n < nfft; n++) envelope[f * hop + n] += double(window[n]) * window[n];
    const float norm = float(1.0 / std::sqrt(double(nfft)));
    Plans plans(nfft);

    Tensor out = Tensor::uninitialized({B, N, length});
#pragma omp parallel
    {
        auto spec = fftw_buffer<fftwf_complex>(nfft / 2 + 1);
        auto frame = fftw_buffer<float>(nfft);
        std::vector<double> ola(ola_len);
#pragma omp for schedule(static)
        for (int64_t bn = 0; bn < B * N; bn++) {
            const int64_t b = bn / N, n = bn % N;
            const float* re = z.ptr() + ((b * 2 * N + 2 * n) * bins) * T;
            const float* im = re + bins * T;
            std::fill(ola.begin(), ola.end(), 0.0);
            for (int64_t t = 0; t < T; t++) {
                for (int64_t k = 0; k < bins; k++) {
                    spec[k][0] = re[k * T + t];
                    spec[k][1] = im[k * T + t];
                }
                spec[0][1] = 0.0f;  // DC: a real inverse FFT needs Hermitian input
                spec[bins][0] = 0.0f;  // Nyquist: padded with zeros by the model
                spec[bins][1] = 0.0f;
                fftwf_execute_dft_c2r(plans.inverse, spec.get(), frame.get());
                double* o = ola.data() + (t + 2) * hop;
                for (int i = 0; i < nfft; i++) o[i] += double(frame[i]) * norm * window[i];
            }
            float* dst = out.ptr() + bn * length;
            for (int64_t j = 0; j < length; j++) dst[j] = float(ola[offset + j] / envelope[offset + j]);
        }
    }
    return out;
}

}  // namespace fastdemucs::cpu
