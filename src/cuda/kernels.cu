#include "cuda/kernels.h"

#include "cuda/arena.h"
#include "cuda/device_utils.cuh"
#include "error.h"

namespace fastdemucs::cuda {
namespace {

// ------------------------------------------------------------------ statistics

constexpr int64_t kStatChunk = 8192;  // values per partial-statistics block

// One block per (segment, chunk): count, mean and centred sum of squares of
// the chunk, two passes in double.
__global__ void segment_partial_kernel(const float* __restrict__ x, Segments seg, int64_t splits, int64_t chunk,
                                       double* __restrict__ partial) {
    __shared__ double shared[32];
    const int64_t blk = blockIdx.x;
    const int64_t s = blk / splits, sp = blk % splits;
    const int64_t cg = seg.C / seg.G, size = cg * seg.W;
    const int64_t b = s / (seg.G * seg.R), g = (s / seg.R) % seg.G, r = s % seg.R;
    const float* base = x + ((b * seg.C + g * cg) * seg.R + r) * seg.W;
    const int64_t row_stride = seg.R * seg.W;
    const int64_t lo = sp * chunk, hi = min(size, lo + chunk);
    const int64_t n = hi > lo ? hi - lo : 0;

    double sum = 0.0;
    for (int64_t e = lo + threadIdx.x; e < hi; e += blockDim.x) {
        const int64_t k = e / seg.W, w = e - k * seg.W;
        sum += base[k * row_stride + w];
    }
    sum = block_sum(sum, shared);
    const double mean = n > 0 ? sum / double(n) : 0.0;
    double m2 = 0.0;
    for (int64_t e = lo + threadIdx.x; e < hi; e += blockDim.x) {
        const int64_t k = e / seg.W, w = e - k * seg.W;
        const double d = double(base[k * row_stride + w]) - mean;
        m2 += d * d;
    }
    m2 = block_sum(m2, shared);
    if (threadIdx.x == 0) {
        partial[3 * blk] = double(n);
        partial[3 * blk + 1] = mean;
        partial[3 * blk + 2] = m2;
    }
}

__global__ void segment_finalize_kernel(const double* __restrict__ partial, int64_t segments, int64_t splits,
                                        Spread spread, double* __restrict__ mean_out, double* __restrict__ out) {
    FD_GRID_STRIDE(s, segments) {
        double n = 0.0, mean = 0.0, m2 = 0.0;
        for (int64_t sp = 0; sp < splits; sp++) {
            const double* p = partial + 3 * (s * splits + sp);
            const double nb = p[0];
            if (nb <= 0.0) continue;
            if (n == 0.0) {
                n = nb, mean = p[1], m2 = p[2];
            } else {
                const double delta = p[1] - mean, total = n + nb;
                mean += delta * (nb / total);
                m2 += p[2] + delta * delta * (n * nb / total);
                n = total;
            }
        }
        mean_out[s] = mean;
        out[s] = spread == Spread::Variance ? m2 / n : sqrt(m2 / (n - 1.0));
    }
}

__global__ void normalize_kernel(float* x, int64_t B, int64_t n, const double* __restrict__ mean,
                                 const double* __restrict__ std) {
    FD_GRID_STRIDE(i, B * n) {
        const int64_t b = i / n;
        const double inv = 1.0 / (1e-5 + std[b]);
        x[i] = float((double(x[i]) - mean[b]) * inv);
    }
}

__global__ void group_norm_apply_kernel(float* x, Segments seg, const double* __restrict__ mean,
                                        const double* __restrict__ var, const float* __restrict__ weight,
                                        const float* __restrict__ bias, float eps, Act act) {
    const int64_t cg = seg.C / seg.G, total = seg.B * seg.C * seg.R * seg.W;
    FD_GRID_STRIDE(i, total) {
        const int64_t r = (i / seg.W) % seg.R;
        const int64_t c = (i / (seg.W * seg.R)) % seg.C;
        const int64_t b = i / (seg.W * seg.R * seg.C);
        const int64_t s = (b * seg.G + c / cg) * seg.R + r;
        const double inv = 1.0 / sqrt(var[s] + double(eps));
        const float scale = float(inv * weight[c]);
        const float shift = float(bias[c] - mean[s] * inv * weight[c]);
        x[i] = activate(x[i] * scale + shift, act);
    }
}

__global__ void group_norm_tokens_apply_kernel(float* x, int64_t B, int64_t N, int64_t C,
                                               const double* __restrict__ mean, const double* __restrict__ var,
                                               const float* __restrict__ weight, const float* __restrict__ bias,
                                               float eps) {
    FD_GRID_STRIDE(i, B * N * C) {
        const int64_t b = i / (N * C), c = i % C;
        const double inv = 1.0 / sqrt(var[b] + double(eps));
        x[i] = float((double(x[i]) - mean[b]) * inv) * weight[c] + bias[c];
    }
}

// One warp per row. y may alias x (each value is read before it is written, by the same lane).
template <typename T>
__global__ void layer_norm_kernel(const float* x, T* y, int64_t rows, int64_t C, const float* __restrict__ weight,
                                  const float* __restrict__ bias, float eps) {
    const int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;  // whole warps leave together
    const float* xr = x + row * C;
    double sum = 0.0;
    for (int64_t c = lane; c < C; c += 32) sum += xr[c];
    const double mean = warp_sum(sum) / double(C);
    double var = 0.0;
    for (int64_t c = lane; c < C; c += 32) {
        const double d = double(xr[c]) - mean;
        var += d * d;
    }
    const double inv = 1.0 / sqrt(warp_sum(var) / double(C) + double(eps));
    T* yr = y + row * C;
    for (int64_t c = lane; c < C; c += 32)
        yr[c] = from_float<T>(float((double(xr[c]) - mean) * inv) * weight[c] + bias[c]);
}

// ---------------------------------------------------------------- element-wise

__global__ void gelu_kernel(float* x, int64_t n) {
    FD_GRID_STRIDE(i, n) x[i] = gelu_exact(x[i]);
}

template <typename T>
__global__ void bias_act_kernel(const float* in, T* out, const float* __restrict__ bias, int64_t outer, int64_t C,
                                int64_t inner, Act act) {
    FD_GRID_STRIDE(i, outer * C * inner) {
        float v = in[i];
        if (bias) v += bias[(i / inner) % C];
        out[i] = from_float<T>(activate(v, act));
    }
}

template <typename T>
__global__ void convert_kernel(const float* __restrict__ in, T* __restrict__ out, int64_t n) {
    FD_GRID_STRIDE(i, n) out[i] = from_float<T>(in[i]);
}

__global__ void glu_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t B, int64_t C, int64_t inner) {
    FD_GRID_STRIDE(i, B * C * inner) {
        const int64_t k = i % inner, bc = i / inner, b = bc / C, c = bc % C;
        const float a = x[(b * 2 * C + c) * inner + k];
        const float g = x[(b * 2 * C + C + c) * inner + k];
        y[i] = a / (1.0f + expf(-g));
    }
}

__global__ void glu_residual_kernel(const float* __restrict__ gates, float* __restrict__ x,
                                    const float* __restrict__ scale, int64_t B, int64_t C, int64_t inner) {
    FD_GRID_STRIDE(i, B * C * inner) {
        const int64_t k = i % inner, bc = i / inner, b = bc / C, c = bc % C;
        const float a = gates[(b * 2 * C + c) * inner + k];
        const float g = gates[(b * 2 * C + C + c) * inner + k];
        x[i] += scale[c] * (a / (1.0f + expf(-g)));
    }
}

__global__ void add_kernel(float* x, const float* y, int64_t n) {  // x may be y
    FD_GRID_STRIDE(i, n) x[i] += y[i];
}

__global__ void add_rows_kernel(float* __restrict__ y, const float* __restrict__ inject, int64_t BC, int64_t H,
                                int64_t W) {
    FD_GRID_STRIDE(i, BC * H * W) {
        const int64_t w = i % W, bc = i / (H * W);
        y[i] += inject[bc * W + w];
    }
}

__global__ void freq_embedding_kernel(float* x, const float* __restrict__ table, int64_t B, int64_t C, int64_t F,
                                      int64_t T, float k, float s) {
    FD_GRID_STRIDE(i, B * C * F * T) {
        const int64_t f = (i / T) % F, c = (i / (T * F)) % C;
        x[i] += k * (table[f * C + c] * s);
    }
}

__global__ void residual_kernel(float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ bias,
                                const float* __restrict__ gamma, int64_t rows, int64_t C) {
    FD_GRID_STRIDE(i, rows * C) {
        const int64_t c = i % C;
        const float v = y[i] + (bias ? bias[c] : 0.0f);
        x[i] += gamma ? gamma[c] * v : v;
    }
}

__global__ void add_broadcast_kernel(float* __restrict__ x, const float* __restrict__ table, float weight, int64_t B,
                                     int64_t n) {
    FD_GRID_STRIDE(i, B * n) x[i] += weight * table[i % n];
}

// ---------------------------------------------------------------------- layout

__global__ void to_tokens_kernel(const float* __restrict__ x, float* __restrict__ tok, int64_t B, int64_t C,
                                 int64_t Fr, int64_t T) {
    FD_GRID_STRIDE(i, B * C * Fr * T) {
        const int64_t c = i % C, n = (i / C) % (T * Fr), b = i / (C * T * Fr);
        const int64_t t = n / Fr, f = n % Fr;
        tok[i] = x[((b * C + c) * Fr + f) * T + t];
    }
}

__global__ void from_tokens_kernel(const float* __restrict__ tok, float* __restrict__ x, int64_t B, int64_t C,
                                   int64_t Fr, int64_t T) {
    FD_GRID_STRIDE(i, B * C * Fr * T) {
        const int64_t t = i % T, f = (i / T) % Fr, c = (i / (T * Fr)) % C, b = i / (T * Fr * C);
        x[i] = tok[(b * T * Fr + t * Fr + f) * C + c];
    }
}

// One block per row; p may alias s when T is float (each value is read before it is written by the same thread).
template <typename T>
__global__ void softmax_rows_kernel(const float* s, T* p, int64_t cols) {
    __shared__ float smax[32];
    __shared__ double ssum[32];
    const int64_t row = blockIdx.x;
    const float* sr = s + row * cols;
    float mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) mx = fmaxf(mx, sr[j]);
    mx = block_max(mx, smax);
    double sum = 0.0;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) sum += expf(sr[j] - mx);
    const float inv = float(1.0 / block_sum(sum, ssum));
    T* pr = p + row * cols;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) pr[j] = from_float<T>(expf(sr[j] - mx) * inv);
}

// --------------------------------------------------------- convolution helpers

template <typename T>
__global__ void im2col_kernel(const float* __restrict__ x, T* __restrict__ cols, int64_t B, int64_t Cin, int64_t H,
                              int64_t W, ConvGeom g, int64_t Ho, int64_t Wo) {
    const int64_t K = Cin * g.kh * g.kw;
    FD_GRID_STRIDE(i, B * K * Ho * Wo) {
        const int64_t wo = i % Wo, ho = (i / Wo) % Ho, r = (i / (Wo * Ho)) % K, b = i / (Wo * Ho * K);
        const int64_t ci = r / (g.kh * g.kw), ki = (r / g.kw) % g.kh, kj = r % g.kw;
        const int64_t h = ho * g.sh + ki * g.dh - g.ph, w = wo * g.sw + kj * g.dw - g.pw;
        const float v = (h >= 0 && h < H && w >= 0 && w < W) ? x[((b * Cin + ci) * H + h) * W + w] : 0.0f;
        cols[i] = from_float<T>(v);
    }
}

template <typename T>
__global__ void pad_planes_kernel(const float* __restrict__ x, T* __restrict__ out, int64_t BC, int64_t H, int64_t W,
                                  int ph, int pw, int64_t plane) {
    const int64_t Hp = H + 2 * ph, Wp = W + 2 * pw;
    FD_GRID_STRIDE(i, BC * plane) {
        const int64_t bc = i / plane, p = i % plane;
        const int64_t hp = p / Wp, wp = p % Wp;
        const int64_t h = hp - ph, w = wp - pw;
        const float v = (hp < Hp && h >= 0 && h < H && w >= 0 && w < W) ? x[(bc * H + h) * W + w] : 0.0f;
        out[i] = from_float<T>(v);
    }
}

__global__ void crop_bias_act_kernel(const float* __restrict__ full, float* __restrict__ out,
                                     const float* __restrict__ bias, int64_t B, int64_t C, int64_t H, int64_t Wfull,
                                     int64_t W, Act act) {
    FD_GRID_STRIDE(i, B * C * H * W) {
        const int64_t w = i % W, h = (i / W) % H, bc = i / (W * H), c = bc % C;
        float v = full[(bc * H + h) * Wfull + w];
        if (bias) v += bias[c];
        out[i] = activate(v, act);
    }
}

__global__ void col2im_kernel(const float* __restrict__ cols, float* __restrict__ out, const float* __restrict__ bias,
                              int64_t B, int64_t C, int64_t H, int64_t W, int kh, int kw, int sh, int sw, int64_t h0,
                              int64_t Hc, int64_t w0, int64_t Wc, Act act) {
    const int64_t HW = H * W;
    FD_GRID_STRIDE(i, B * C * Hc * Wc) {
        const int64_t wo = i % Wc + w0, ho = (i / Wc) % Hc + h0, bc = i / (Wc * Hc), c = bc % C;
        float acc = bias ? bias[c] : 0.0f;
        const float* cb = cols + bc * int64_t(kh) * kw * HW;
        for (int ki = 0; ki < kh; ki++) {
            const int64_t hh = ho - ki;
            if (hh < 0 || hh % sh != 0) continue;
            const int64_t h = hh / sh;
            if (h >= H) continue;
            for (int kj = 0; kj < kw; kj++) {
                const int64_t ww = wo - kj;
                if (ww < 0 || ww % sw != 0) continue;
                const int64_t w = ww / sw;
                if (w >= W) continue;
                acc += cb[(int64_t(ki) * kw + kj) * HW + h * W + w];
            }
        }
        out[i] = activate(acc, act);
    }
}

__global__ void crop_act_kernel(const float* __restrict__ in, float* __restrict__ out, int64_t BC, int64_t Hin,
                                int64_t Win, int64_t h0, int64_t Hc, int64_t w0, int64_t Wc, Act act) {
    FD_GRID_STRIDE(i, BC * Hc * Wc) {
        const int64_t w = i % Wc, h = (i / Wc) % Hc, bc = i / (Wc * Hc);
        out[i] = activate(in[(bc * Hin + h + h0) * Win + w + w0], act);
    }
}

}  // namespace

// ------------------------------------------------------------------ host side

void segment_stats(const Ctx& ctx, const float* x, const Segments& seg, Spread spread, double* mean, double* out) {
    const int64_t size = seg.size(), count = seg.count();
    const int64_t splits = std::max<int64_t>(1, (size + kStatChunk - 1) / kStatChunk);
    double* partial = ctx.arena->alloc<double>(3 * count * splits);
    if (ctx.dry || count == 0) return;
    if (count * splits > int64_t(0x7fffffff)) throw Error("segment_stats: too many segments");
    segment_partial_kernel<<<unsigned(count * splits), kThreads, 0, ctx.stream>>>(x, seg, splits, kStatChunk,
                                                                                   partial);
    FD_LAUNCH_CHECK();
    segment_finalize_kernel<<<grid_for(count), kThreads, 0, ctx.stream>>>(partial, count, splits, spread, mean, out);
    FD_LAUNCH_CHECK();
}

void normalize(const Ctx& ctx, float* x, int64_t B, int64_t n, const double* mean, const double* std) {
    if (ctx.dry || B * n == 0) return;
    normalize_kernel<<<grid_for(B * n), kThreads, 0, ctx.stream>>>(x, B, n, mean, std);
    FD_LAUNCH_CHECK();
}

void group_norm(const Ctx& ctx, float* x, const Segments& seg, const float* weight, const float* bias, float eps,
                Act act) {
    if (seg.C % seg.G != 0) throw Error("group_norm: channels not divisible by groups");
    ArenaScope scope(*ctx.arena);
    double* mean = ctx.arena->alloc<double>(seg.count());
    double* var = ctx.arena->alloc<double>(seg.count());
    segment_stats(ctx, x, seg, Spread::Variance, mean, var);
    if (ctx.dry) return;
    group_norm_apply_kernel<<<grid_for(seg.numel()), kThreads, 0, ctx.stream>>>(x, seg, mean, var, weight, bias, eps,
                                                                                 act);
    FD_LAUNCH_CHECK();
}

void group_norm_tokens(const Ctx& ctx, float* x, int64_t B, int64_t N, int64_t C, const float* weight,
                       const float* bias, float eps) {
    ArenaScope scope(*ctx.arena);
    double* mean = ctx.arena->alloc<double>(B);
    double* var = ctx.arena->alloc<double>(B);
    Segments seg;
    seg.B = B, seg.W = N * C;
    segment_stats(ctx, x, seg, Spread::Variance, mean, var);
    if (ctx.dry) return;
    group_norm_tokens_apply_kernel<<<grid_for(B * N * C), kThreads, 0, ctx.stream>>>(x, B, N, C, mean, var, weight,
                                                                                      bias, eps);
    FD_LAUNCH_CHECK();
}

void layer_norm(const Ctx& ctx, const float* x, void* y, DType dt, int64_t rows, int64_t C, const float* weight,
                const float* bias, float eps) {
    if (ctx.dry || rows == 0) return;
    const int warps = kThreads / 32;
    const unsigned blocks = unsigned((rows + warps - 1) / warps);
    FD_DISPATCH(dt, T,
                layer_norm_kernel<T><<<blocks, kThreads, 0, ctx.stream>>>(x, static_cast<T*>(y), rows, C, weight,
                                                                          bias, eps));
    FD_LAUNCH_CHECK();
}

void gelu(const Ctx& ctx, float* x, int64_t n) {
    if (ctx.dry || n == 0) return;
    gelu_kernel<<<grid_for(n), kThreads, 0, ctx.stream>>>(x, n);
    FD_LAUNCH_CHECK();
}

void bias_act(const Ctx& ctx, const float* in, void* out, DType dt, const float* bias, int64_t outer, int64_t C,
              int64_t inner, Act act) {
    const int64_t n = outer * C * inner;
    if (ctx.dry || n == 0) return;
    if (dt == DType::F32 && out == in && !bias && act == Act::None) return;
    FD_DISPATCH(dt, T,
                bias_act_kernel<T><<<grid_for(n), kThreads, 0, ctx.stream>>>(in, static_cast<T*>(out), bias, outer,
                                                                             C, inner, act));
    FD_LAUNCH_CHECK();
}

void convert(const Ctx& ctx, const float* in, void* out, DType dt, int64_t n) {
    if (ctx.dry || n == 0) return;
    if (dt == DType::F32) {
        if (out != in) FD_CUDA(cudaMemcpyAsync(out, in, n * sizeof(float), cudaMemcpyDeviceToDevice, ctx.stream));
        return;
    }
    FD_DISPATCH(dt, T,
                convert_kernel<T><<<grid_for(n), kThreads, 0, ctx.stream>>>(in, static_cast<T*>(out), n));
    FD_LAUNCH_CHECK();
}

void glu(const Ctx& ctx, const float* x, float* y, int64_t B, int64_t C, int64_t inner) {
    if (ctx.dry || B * C * inner == 0) return;
    glu_kernel<<<grid_for(B * C * inner), kThreads, 0, ctx.stream>>>(x, y, B, C, inner);
    FD_LAUNCH_CHECK();
}

void glu_residual(const Ctx& ctx, const float* g, float* x, const float* scale, int64_t B, int64_t C,
                  int64_t inner) {
    if (ctx.dry || B * C * inner == 0) return;
    glu_residual_kernel<<<grid_for(B * C * inner), kThreads, 0, ctx.stream>>>(g, x, scale, B, C, inner);
    FD_LAUNCH_CHECK();
}

void add(const Ctx& ctx, float* x, const float* y, int64_t n) {
    if (ctx.dry || n == 0) return;
    add_kernel<<<grid_for(n), kThreads, 0, ctx.stream>>>(x, y, n);
    FD_LAUNCH_CHECK();
}

void add_rows(const Ctx& ctx, float* y, const float* inject, int64_t BC, int64_t H, int64_t W) {
    if (ctx.dry || BC * H * W == 0) return;
    add_rows_kernel<<<grid_for(BC * H * W), kThreads, 0, ctx.stream>>>(y, inject, BC, H, W);
    FD_LAUNCH_CHECK();
}

void add_freq_embedding(const Ctx& ctx, float* x, const float* table, int64_t B, int64_t C, int64_t F, int64_t T,
                        float k, float s) {
    if (ctx.dry || B * C * F * T == 0) return;
    freq_embedding_kernel<<<grid_for(B * C * F * T), kThreads, 0, ctx.stream>>>(x, table, B, C, F, T, k, s);
    FD_LAUNCH_CHECK();
}

void residual(const Ctx& ctx, float* x, const float* y, const float* bias, const float* gamma, int64_t rows,
              int64_t C) {
    if (ctx.dry || rows * C == 0) return;
    residual_kernel<<<grid_for(rows * C), kThreads, 0, ctx.stream>>>(x, y, bias, gamma, rows, C);
    FD_LAUNCH_CHECK();
}

void add_broadcast(const Ctx& ctx, float* x, const float* table, float weight, int64_t B, int64_t n) {
    if (ctx.dry || B * n == 0) return;
    add_broadcast_kernel<<<grid_for(B * n), kThreads, 0, ctx.stream>>>(x, table, weight, B, n);
    FD_LAUNCH_CHECK();
}

void copy(const Ctx& ctx, float* dst, const float* src, int64_t n) {
    if (ctx.dry || n == 0) return;
    FD_CUDA(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, ctx.stream));
}

void to_tokens(const Ctx& ctx, const float* x, float* tok, int64_t B, int64_t C, int64_t Fr, int64_t T) {
    if (ctx.dry || B * C * Fr * T == 0) return;
    to_tokens_kernel<<<grid_for(B * C * Fr * T), kThreads, 0, ctx.stream>>>(x, tok, B, C, Fr, T);
    FD_LAUNCH_CHECK();
}

void from_tokens(const Ctx& ctx, const float* tok, float* x, int64_t B, int64_t C, int64_t Fr, int64_t T) {
    if (ctx.dry || B * C * Fr * T == 0) return;
    from_tokens_kernel<<<grid_for(B * C * Fr * T), kThreads, 0, ctx.stream>>>(tok, x, B, C, Fr, T);
    FD_LAUNCH_CHECK();
}

void softmax_rows(const Ctx& ctx, const float* s, void* p, DType dt, int64_t rows, int64_t cols) {
    if (ctx.dry || rows == 0) return;
    if (rows > int64_t(0x7fffffff)) throw Error("softmax_rows: too many rows");
    FD_DISPATCH(dt, T,
                softmax_rows_kernel<T><<<unsigned(rows), kThreads, 0, ctx.stream>>>(s, static_cast<T*>(p), cols));
    FD_LAUNCH_CHECK();
}

void im2col(const Ctx& ctx, const float* x, void* cols, DType dt, int64_t B, int64_t Cin, int64_t H, int64_t W,
            const ConvGeom& g, int64_t Ho, int64_t Wo) {
    const int64_t n = B * Cin * g.kh * g.kw * Ho * Wo;
    if (ctx.dry || n == 0) return;
    FD_DISPATCH(dt, T,
                im2col_kernel<T><<<grid_for(n), kThreads, 0, ctx.stream>>>(x, static_cast<T*>(cols), B, Cin, H, W,
                                                                           g, Ho, Wo));
    FD_LAUNCH_CHECK();
}

void pad_planes(const Ctx& ctx, const float* x, void* out, DType dt, int64_t BC, int64_t H, int64_t W, int ph, int pw,
                int64_t plane) {
    if (plane < (H + 2 * ph) * (W + 2 * pw)) throw Error("pad_planes: plane too small");
    if (ctx.dry || BC * plane == 0) return;
    FD_DISPATCH(dt, T,
                pad_planes_kernel<T><<<grid_for(BC * plane), kThreads, 0, ctx.stream>>>(
                    x, static_cast<T*>(out), BC, H, W, ph, pw, plane));
    FD_LAUNCH_CHECK();
}

void crop_bias_act(const Ctx& ctx, const float* full, float* out, const float* bias, int64_t B, int64_t C, int64_t H,
                   int64_t Wfull, int64_t W, Act act) {
    if (W > Wfull) throw Error("crop_bias_act: crop wider than the input");
    if (ctx.dry || B * C * H * W == 0) return;
    crop_bias_act_kernel<<<grid_for(B * C * H * W), kThreads, 0, ctx.stream>>>(full, out, bias, B, C, H, Wfull, W,
                                                                                act);
    FD_LAUNCH_CHECK();
}

void col2im(const Ctx& ctx, const float* cols, float* out, const float* bias, int64_t B, int64_t C, int64_t H,
            int64_t W, int kh, int kw, int sh, int sw, int64_t h0, int64_t Hc, int64_t w0, int64_t Wc, Act act) {
    const int64_t Hf = (H - 1) * sh + kh, Wf = (W - 1) * sw + kw;
    if (h0 < 0 || w0 < 0 || h0 + Hc > Hf || w0 + Wc > Wf) throw Error("col2im: crop outside the output");
    if (ctx.dry || B * C * Hc * Wc == 0) return;
    col2im_kernel<<<grid_for(B * C * Hc * Wc), kThreads, 0, ctx.stream>>>(cols, out, bias, B, C, H, W, kh, kw, sh, sw,
                                                                           h0, Hc, w0, Wc, act);
    FD_LAUNCH_CHECK();
}

void crop_act(const Ctx& ctx, const float* in, float* out, int64_t BC, int64_t Hin, int64_t Win, int64_t h0,
              int64_t Hc, int64_t w0, int64_t Wc, Act act) {
    if (h0 < 0 || w0 < 0 || h0 + Hc > Hin || w0 + Wc > Win) throw Error("crop_act: crop outside the input");
    if (ctx.dry || BC * Hc * Wc == 0) return;
    crop_act_kernel<<<grid_for(BC * Hc * Wc), kThreads, 0, ctx.stream>>>(in, out, BC, Hin, Win, h0, Hc, w0, Wc, act);
    FD_LAUNCH_CHECK();
}

}  // namespace fastdemucs::cuda
