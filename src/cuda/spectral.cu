#include "cuda/spectral.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "cuda/arena.h"
#include "cuda/device_utils.cuh"
#include "cuda/libraries.h"
#include "cuda/profile.h"
#include "error.h"

namespace fastdemucs::cuda {
namespace {

// Index into a signal of `length` samples reflected about its ends (no edge repeat).
__device__ __forceinline__ int64_t reflect(int64_t i, int64_t length) {
    if (i < 0) i = -i;
    if (i >= length) i = 2 * (length - 1) - i;
    return i;
}


// frames[(bc, t), n] = window[n] * the sample under STFT frame t + 2 (the
// first two frames are dropped by _spec) of signal bc; the signal is padded
// by the model (pad each side, reflect) then by torch.stft's centring
// (nfft / 2 each side, reflect). A block a frame (row (bc, t) on grid y):
// its offsets found once, and a frame inside the signal (all but those at
// its ends) read without the reflections (one thread a value with two
// divisions and both reflections each ran at ~1 TB/s, 81 us of a forward
// of 8 chunks on an H200).
__global__ void stft_frames_kernel(const float* __restrict__ x, float* __restrict__ frames,
                                   const float* __restrict__ window, int64_t rows, int64_t L, int64_t T, int nfft,
                                   int hop, int64_t pad, int64_t padded_len) {
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
        const int64_t t = r % T, bc = r / T;
        const int64_t j = (t + 2) * hop - nfft / 2;  // n = 0's index into the centred signal
        const int64_t s0 = j - pad;                  // ... and into the signal, where no reflection applies
        const bool inside = s0 >= 0 && s0 + nfft <= L && j + nfft <= padded_len;
        const float* xr = x + bc * L;
        float* fr = frames + r * nfft;
#pragma unroll 4
        for (int n = int(blockIdx.x * blockDim.x + threadIdx.x); n < nfft; n += int(gridDim.x * blockDim.x)) {
            const int64_t s = inside ? s0 + n : reflect(reflect(j + n, padded_len) - pad, L);
            fr[n] = xr[s] * window[n];
        }
    }
}

// spec [(bc, t), bins + 1] -> out [B, 2C, bins, T], scaled. Grid (T tiles,
// bin tiles, B * C): a 32 x 32 tile goes through shared memory so that both
// the complex reads (along bins) and the writes (along T) are coalesced.
__global__ void stft_pack_kernel(const cufftComplex* __restrict__ spec, float* __restrict__ out, int64_t bins,
                                 int64_t T, float norm) {
    __shared__ float re[32][33], im[32][33];
    const int64_t bc = blockIdx.z, t0 = int64_t(blockIdx.x) * 32, k0 = int64_t(blockIdx.y) * 32;
    for (int dy = threadIdx.y; dy < 32; dy += blockDim.y) {
        const int64_t t = t0 + dy, k = k0 + threadIdx.x;
        if (t < T && k < bins) {
            const cufftComplex z = spec[(bc * T + t) * (bins + 1) + k];
            re[dy][threadIdx.x] = z.x * norm;
            im[dy][threadIdx.x] = z.y * norm;
        }
    }
    __syncthreads();
    float* o_re = out + (2 * bc) * bins * T;  // channel 2c of item b: (b * 2C + 2c) = 2 * (b * C + c)
    float* o_im = o_re + bins * T;
    for (int dy = threadIdx.y; dy < 32; dy += blockDim.y) {
        const int64_t k = k0 + dy, t = t0 + threadIdx.x;
        if (t < T && k < bins) {
            o_re[k * T + t] = re[threadIdx.x][dy];
            o_im[k * T + t] = im[threadIdx.x][dy];
        }
    }
}

// z [B, 2N, bins, T] (normalised) -> spec [(bn, t), bins + 1], Hermitian-valid.
// Grid (bin tiles over bins + 1, T tiles, B * N), tiled like stft_pack.
__global__ void istft_pack_kernel(const float* __restrict__ z, cufftComplex* __restrict__ spec,
                                  const double* __restrict__ stats, int64_t B, int64_t N, int64_t bins, int64_t T) {
    __shared__ float re[32][33], im[32][33];
    const int64_t bn = blockIdx.z, b = bn / N, n = bn % N;
    const int64_t k0 = int64_t(blockIdx.x) * 32, t0 = int64_t(blockIdx.y) * 32;
    const float mean = float(stats[b]), std = float(stats[B + b]);
    const float* zr = z + ((b * 2 * N + 2 * n) * bins) * T;
    const float* zi = zr + bins * T;
    for (int dy = threadIdx.y; dy < 32; dy += blockDim.y) {
        const int64_t k = k0 + dy, t = t0 + threadIdx.x;
        float vr = 0.0f, vi = 0.0f;
        if (k < bins && t < T) {
            vr = zr[k * T + t] * std + mean;
            if (k > 0) vi = zi[k * T + t] * std + mean;  // Im(DC) dropped: a real FFT's input is Hermitian
        }
        re[dy][threadIdx.x] = vr;
        im[dy][threadIdx.x] = vi;
    }
    __syncthreads();
    for (int dy = threadIdx.y; dy < 32; dy += blockDim.y) {
        const int64_t t = t0 + dy, k = k0 + threadIdx.x;
        if (t < T && k <= bins) {
            cufftComplex v;
            v.x = re[threadIdx.x][dy];  // zero for the Nyquist bin k = bins
            v.y = im[threadIdx.x][dy];
            spec[(bn * T + t) * (bins + 1) + k] = v;
        }
    }
}

// istft_pack_kernel fed by the last frequency decoder's columns instead of
// z: each value summed over its (at most two) taps as col2im_rows_vec_kernel
// sums it (bias first, then taps ho % sh and ho % sh + sh), then
// denormalised, transposed and stored as the pack stores it: the same
// floats. A block takes 32 bins x 64 frames; a thread reads eight frames of
// a row per tap in one 16-byte access (a value a thread, the loads' count
// made it 2.5x slower than col2im + pack), T a multiple of 8.
constexpr int kSpecTileK = 32, kSpecTileT = 64;
template <typename CT>
__global__ void __launch_bounds__(256)
    spectrum_from_columns_kernel(const CT* __restrict__ cols, int64_t ld, const float* __restrict__ bias,
                                 const double* __restrict__ stats, int64_t B, int64_t b0, int N, int H, int T,
                                 int kh, int sh, int h0, int bins, cufftComplex* __restrict__ spec) {
    __shared__ float re[kSpecTileK][kSpecTileT + 1], im[kSpecTileK][kSpecTileT + 1];
    const int ln = int(blockIdx.z), bl = ln / N, n = ln - bl * N;
    const int64_t b = b0 + bl, bn = b * N + n;
    const int k0 = int(blockIdx.x) * kSpecTileK, t0 = int(blockIdx.y) * kSpecTileT;
    const float mean = float(stats[b]), std = float(stats[B + b]);
    const int tid = int(threadIdx.y) * 32 + int(threadIdx.x);
    const int dk = tid / (kSpecTileT / kVec), dt = (tid % (kSpecTileT / kVec)) * kVec;  // 32 rows x 8 runs
    const int k = k0 + dk, t = t0 + dt;
    float vr[kVec], vi[kVec];
#pragma unroll
    for (int e = 0; e < kVec; e++) vr[e] = vi[e] = 0.0f;
    if (k < bins && t < T) {
        const int ho = k + h0, ki0 = ho % sh, hr0 = ho / sh, ki1 = ki0 + sh, hr1 = hr0 - 1;
        const bool tap0 = ki0 < kh && hr0 < H, tap1 = ki1 < kh && ki1 <= ho && hr1 < H;
        const CT* re_cols = cols + (int64_t(bl) * 2 * N + 2 * n) * kh * ld + t;
        const CT* im_cols = re_cols + int64_t(kh) * ld;
        float r0[kVec], r1[kVec], i0[kVec], i1[kVec];
        // All four loads issued before the sums.
        if (tap0) load8(re_cols + ki0 * ld + int64_t(hr0) * T, r0);
        if (tap1) load8(re_cols + ki1 * ld + int64_t(hr1) * T, r1);
        if (tap0 && k > 0) load8(im_cols + ki0 * ld + int64_t(hr0) * T, i0);
        if (tap1 && k > 0) load8(im_cols + ki1 * ld + int64_t(hr1) * T, i1);
        const float br = bias ? bias[2 * n] : 0.0f, bi = bias ? bias[2 * n + 1] : 0.0f;
#pragma unroll
        for (int e = 0; e < kVec; e++) {
            float a = br;
            if (tap0) a += r0[e];
            if (tap1) a += r1[e];
            vr[e] = a * std + mean;
            if (k > 0) {  // Im(DC) dropped, as in istft_pack_kernel
                float c = bi;
                if (tap0) c += i0[e];
                if (tap1) c += i1[e];
                vi[e] = c * std + mean;
            }
        }
    }
#pragma unroll
    for (int e = 0; e < kVec; e++) {
        re[dk][dt + e] = vr[e];
        im[dk][dt + e] = vi[e];
    }
    __syncthreads();
    for (int dy = int(threadIdx.y); dy < kSpecTileT; dy += int(blockDim.y)) {
        const int tt = t0 + dy, kk = k0 + int(threadIdx.x);
        if (tt < T && kk <= bins) {
            cufftComplex v;
            v.x = re[threadIdx.x][dy];  // zero for the Nyquist bin kk = bins
            v.y = im[threadIdx.x][dy];
            spec[(bn * T + tt) * (bins + 1) + kk] = v;
        }
    }
}

// out[bn, j] = denorm(xt)[bn, j] + sum over frames of window * frame / envelope at j + offset.
template <typename I>
__global__ void istft_ola_add_kernel(const float* __restrict__ frames, const float* __restrict__ window,
                                     const double* __restrict__ envelope, const float* __restrict__ xt,
                                     const double* __restrict__ xt_stats, float* __restrict__ out, int64_t B,
                                     I N, I L, I T, int nfft, int hop, int64_t offset, float norm, I total) {
    FD_GRID_STRIDE_I(I, i, total) {
        const I bn = i / L, j = i - bn * L, b = bn / N;
        const int64_t p = offset + j;
        const int64_t f_hi = I(p) / I(hop);
        const int64_t f_lo = p - nfft + 1 <= 0 ? 0 : I(p - nfft + hop) / I(hop);
        double acc = 0.0;
        for (int64_t f = f_lo; f <= f_hi; f++) {
            const int64_t t = f - 2;  // two silent frames precede the data frames
            if (t < 0 || t >= T) continue;
            const int64_t n = p - f * hop;
            acc += double(frames[(int64_t(bn) * T + t) * nfft + n]) * double(norm) * double(window[n]);
        }
        const float wave = float(acc / envelope[p]);
        const float time = xt[i] * float(xt_stats[B + b]) + float(xt_stats[b]);
        out[i] = time + wave;
    }
}

// The same, four outputs a thread: with the hop, the offset and L multiples
// of 4, outputs 4m .. 4m + 3 of a row share their frames and envelope run, so
// each frame's four values (and the window's, the time branch's and the
// output's) move as one 16-byte access, and the frame range is found once
// for four. Per output the same double arithmetic in the same order as
// istft_ola_add_kernel: the results are identical. Why: one output a thread
// spent its time on the index arithmetic (1.7 TB/s, 0.48 ms of a float16
// forward of 8).
template <typename I>
__global__ void istft_ola_add4_kernel(const float* __restrict__ frames, const float* __restrict__ window,
                                      const double* __restrict__ envelope, const float* __restrict__ xt,
                                      const double* __restrict__ xt_stats, float* __restrict__ out, int64_t B,
                                      I N, I L, I T, int nfft, int hop, int64_t offset, float norm, I quads) {
    FD_GRID_STRIDE_I(I, q, quads) {
        const I i = 4 * q;
        const I bn = i / L, j = i - bn * L, b = bn / N;
        const int64_t p = offset + j;
        const int64_t f_hi = I(p) / I(hop);
        const int64_t f_lo = p - nfft + 1 <= 0 ? 0 : I(p - nfft + hop) / I(hop);
        double acc[4] = {0.0, 0.0, 0.0, 0.0};
        for (int64_t f = f_lo; f <= f_hi; f++) {
            const int64_t t = f - 2;  // two silent frames precede the data frames
            if (t < 0 || t >= T) continue;
            const int64_t n = p - f * hop;
            const float4 v = *reinterpret_cast<const float4*>(frames + (int64_t(bn) * T + t) * nfft + n);
            const float4 w = *reinterpret_cast<const float4*>(window + n);
            acc[0] += double(v.x) * double(norm) * double(w.x);
            acc[1] += double(v.y) * double(norm) * double(w.y);
            acc[2] += double(v.z) * double(norm) * double(w.z);
            acc[3] += double(v.w) * double(norm) * double(w.w);
        }
        const float mean = float(xt_stats[b]), std = float(xt_stats[B + b]);
        const float4 x = *reinterpret_cast<const float4*>(xt + i);
        float4 o;
        o.x = x.x * std + mean + float(acc[0] / envelope[p]);
        o.y = x.y * std + mean + float(acc[1] / envelope[p + 1]);
        o.z = x.z * std + mean + float(acc[2] / envelope[p + 2]);
        o.w = x.w * std + mean + float(acc[3] / envelope[p + 3]);
        *reinterpret_cast<float4*>(out + i) = o;
    }
}

}  // namespace

Spectral::Spectral(int nfft, int64_t length) : nfft_(nfft), hop_(nfft / 4), length_(length) {
    if (nfft < 8 || nfft % 8 != 0) throw Error("nfft must be a multiple of 8");
    frames_ = (length + hop_ - 1) / hop_;
    const int64_t pad = hop_ / 2 * 3;
    if (length <= pad + hop_) throw Error("the model's segment is shorter than the STFT padding");
    // torch.hann_window(nfft) (periodic), as cpu/spectral.
    std::vector<float> window(nfft);
    for (int i = 0; i < nfft; i++) window[i] = float(0.5 - 0.5 * std::cos(2.0 * M_PI * i / nfft));
    // Overlap-add of frames 0 .. T + 3 (two silent ones each side); output
    // sample j sits at j + nfft / 2 + 3/2 hop.
    const int64_t total_frames = frames_ + 4;
    ola_len_ = nfft + int64_t(hop_) * (total_frames - 1);
    offset_ = nfft / 2 + hop_ / 2 * 3;
    if (offset_ + length > ola_len_) throw Error("istft: length too long for the frames");
    std::vector<double> envelope(ola_len_, 0.0);
    for (int64_t f = 0; f < total_frames; f++)
        for (int n = 0; n < nfft; n++) envelope[f * hop_ + n] += double(window[n]) * window[n];
    window_ = upload(window.data(), window.size() * sizeof(float), "the STFT window");
    envelope_ = upload(envelope.data(), envelope.size() * sizeof(double), "the STFT window");
}

Spectral::~Spectral() {
    for (auto& kv : plans_) fft_api().cufftDestroy(kv.second.handle);
}

Spectral::Plan& Spectral::plan(cufftType type, int64_t transforms) {
    const auto key = std::make_pair(int(type), transforms);
    auto it = plans_.find(key);
    if (it != plans_.end()) return it->second;
    Plan p;
    FD_CUFFT(fft_api().cufftCreate(&p.handle));
    try {
        // The work area comes from the arena (set before each execution).
        FD_CUFFT(fft_api().cufftSetAutoAllocation(p.handle, 0));
        long long n = nfft_;
        const long long real_dist = nfft_, complex_dist = nfft_ / 2 + 1;
        const bool forward = type == CUFFT_R2C;
        FD_CUFFT(fft_api().cufftMakePlanMany64(p.handle, 1, &n, nullptr, 1, forward ? real_dist : complex_dist, nullptr, 1,
                                     forward ? complex_dist : real_dist, type, transforms, &p.work));
    } catch (...) {
        fft_api().cufftDestroy(p.handle);
        throw;
    }
    return plans_.emplace(key, p).first->second;
}

void Spectral::stft(const Ctx& ctx, int64_t B, int64_t C, const float* mix, float* spec) {
    ArenaScope scope(*ctx.arena);
    const int64_t T = frames_, bins = nfft_ / 2, transforms = B * C * T;
    Plan& p = plan(CUFFT_R2C, transforms);
    float* frames = ctx.arena->alloc<float>(transforms * nfft_);
    cufftComplex* cplx = ctx.arena->alloc<cufftComplex>(transforms * (bins + 1));
    void* work = ctx.arena->alloc_bytes(std::max<size_t>(p.work, 1));
    if (ctx.dry) return;
    const int64_t pad = hop_ / 2 * 3, padded_len = T * hop_ + 2 * pad;
    const dim3 frames_grid(unsigned(std::max<int64_t>(1, nfft_ / (4 * kThreads))),
                           unsigned(std::min<int64_t>(transforms, 65535)));
    stft_frames_kernel<<<frames_grid, kThreads, 0, ctx.stream>>>(mix, frames, window_.as<float>(), transforms,
                                                                 length_, T, nfft_, hop_, pad, padded_len);
    FD_LAUNCH_CHECK();
    FD_CUFFT(fft_api().cufftSetStream(p.handle, ctx.stream));
    FD_CUFFT(fft_api().cufftSetWorkArea(p.handle, work));
    {
        ProfileSpan span(ctx, ProfKind::Fft);
        FD_CUFFT(fft_api().cufftExecR2C(p.handle, frames, cplx));
    }
    const float norm = float(1.0 / std::sqrt(double(nfft_)));
    if (B * C > 65535) throw Error("stft: too many signals in one batch");
    const dim3 grid(unsigned((T + 31) / 32), unsigned((bins + 31) / 32), unsigned(B * C));
    stft_pack_kernel<<<grid, dim3(32, 8), 0, ctx.stream>>>(cplx, spec, bins, T, norm);
    FD_LAUNCH_CHECK();
}

void Spectral::istft_add(const Ctx& ctx, int64_t B, int64_t N, const float* z, const double* z_stats,
                         const float* xt, const double* xt_stats, float* out) {
    ArenaScope scope(*ctx.arena);
    const int64_t T = frames_, bins = nfft_ / 2;
    cufftComplex* cplx = alloc_spectrum(ctx, B, N);
    if (!ctx.dry) {
        if (B * N > 65535) throw Error("istft: too many signals in one batch");
        const dim3 grid(unsigned((bins + 1 + 31) / 32), unsigned((T + 31) / 32), unsigned(B * N));
        istft_pack_kernel<<<grid, dim3(32, 8), 0, ctx.stream>>>(z, cplx, z_stats, B, N, bins, T);
        FD_LAUNCH_CHECK();
    }
    inverse_and_add(ctx, B, N, cplx, xt, xt_stats, out);
}

bool Spectral::spectrum_from_columns_fits(int kh, int sh) const {
    // Eight frames a 16-byte load, at most two taps per value.
    return frames_ % kVec == 0 && kh >= 1 && sh >= 1 && kh <= 2 * sh;
}

cufftComplex* Spectral::alloc_spectrum(const Ctx& ctx, int64_t B, int64_t N) const {
    return ctx.arena->alloc<cufftComplex>(B * N * frames_ * (nfft_ / 2 + 1));
}

void Spectral::spectrum_from_columns(const Ctx& ctx, const void* cols, DType ct, int64_t ld, const float* bias,
                                     int64_t B, int64_t b0, int64_t nb, int64_t N, int64_t H, int kh, int sh,
                                     int64_t h0, const double* z_stats, cufftComplex* spec) const {
    const int64_t T = frames_, bins = nfft_ / 2;
    if (!spectrum_from_columns_fits(kh, sh) || b0 < 0 || nb < 0 || b0 + nb > B || ld < H * T || ld % kVec != 0 ||
        h0 < 0 || h0 + bins > (H - 1) * sh + kh || !aligned16(cols))
        throw Error("internal error: spectrum_from_columns geometry");
    if (ctx.dry || nb == 0) return;
    if (nb * N > 65535) throw Error("istft: too many signals in one batch");
    const dim3 grid(unsigned((bins + 1 + kSpecTileK - 1) / kSpecTileK), unsigned((T + kSpecTileT - 1) / kSpecTileT),
                    unsigned(nb * N));
    FD_DISPATCH(ct, CT,
                spectrum_from_columns_kernel<CT><<<grid, dim3(32, 8), 0, ctx.stream>>>(
                    static_cast<const CT*>(cols), ld, bias, z_stats, B, b0, int(N), int(H), int(T), kh, sh, int(h0),
                    int(bins), spec));
    FD_LAUNCH_CHECK();
}

void Spectral::istft_add_spectrum(const Ctx& ctx, int64_t B, int64_t N, cufftComplex* spec, const float* xt,
                                  const double* xt_stats, float* out) {
    ArenaScope scope(*ctx.arena);
    inverse_and_add(ctx, B, N, spec, xt, xt_stats, out);
}

void Spectral::inverse_and_add(const Ctx& ctx, int64_t B, int64_t N, cufftComplex* spec, const float* xt,
                               const double* xt_stats, float* out) {
    const int64_t T = frames_, transforms = B * N * T;
    Plan& p = plan(CUFFT_C2R, transforms);
    float* frames = ctx.arena->alloc<float>(transforms * nfft_);
    void* work = ctx.arena->alloc_bytes(std::max<size_t>(p.work, 1));
    if (ctx.dry) return;
    FD_CUFFT(fft_api().cufftSetStream(p.handle, ctx.stream));
    FD_CUFFT(fft_api().cufftSetWorkArea(p.handle, work));
    {
        ProfileSpan span(ctx, ProfKind::Fft);
        FD_CUFFT(fft_api().cufftExecC2R(p.handle, spec, frames));
    }
    const float norm = float(1.0 / std::sqrt(double(nfft_)));
    const int64_t n = B * N * length_;
    const bool quads = length_ % 4 == 0 && hop_ % 4 == 0 && offset_ % 4 == 0 && aligned16(frames) &&
                       aligned16(window_.get()) && aligned16(xt) && aligned16(out);
    if (quads) {
        FD_INDEX_DISPATCH(n, I,
                          istft_ola_add4_kernel<I><<<grid_for(n / 4), kThreads, 0, ctx.stream>>>(
                              frames, window_.as<float>(), envelope_.as<double>(), xt, xt_stats, out, B, I(N),
                              I(length_), I(T), nfft_, hop_, offset_, norm, I(n / 4)));
    } else {
        FD_INDEX_DISPATCH(n, I,
                          istft_ola_add_kernel<I><<<grid_for(n), kThreads, 0, ctx.stream>>>(
                              frames, window_.as<float>(), envelope_.as<double>(), xt, xt_stats, out, B, I(N),
                              I(length_), I(T), nfft_, hop_, offset_, norm, I(n)));
    }
    FD_LAUNCH_CHECK();
}

}  // namespace fastdemucs::cuda
