// Every residual layer of a DConv with the row in shared memory, float32 on
// CUDA cores: see dconv_rows in cuda/dconv.h. Serves the float32 mode (and
// DConvs the tensor-core kernels do not take); the arithmetic of the three
// passes in cuda/dconv.cu, the statistics as whole-row block sums.
#include <limits>
#include <string>
#include <type_traits>

#include "cuda/dconv_internal.cuh"
#include "cuda/device_utils.cuh"
#include "error.h"

namespace fastdemucs::cuda {
namespace {

using namespace dconv_detail;

// Per output channel c of the rows kernel, 8 floats (two 16-byte loads):
// the out-bias of a and g (channels c and C + c), y's GroupNorm {scale,
// shift} of a and of g, LayerScale, padding.
constexpr int kChannelConsts = 8;

// Dynamic shared memory of dconv_rows_kernel in floats, in this order: the
// in-table [C * 3][MaxHidden], the out-weights [2C][MaxHidden], the channel
// constants [C][8], h's coefficients [MaxHidden] (float2), the row [C][W]
// (every array before it a multiple of 4 floats: the row starts on 16 bytes).
constexpr size_t rows_smem_floats(int C, int W, int mh) {
    return size_t(C) * 3 * mh + size_t(2 * C) * mh + size_t(C) * kChannelConsts + 2 * size_t(mh) + size_t(C) * W;
}
// The kernel's static arrays: the Gram form and the reduction's 32 doubles.
constexpr size_t rows_static_smem(int mh) { return size_t(mh + 1) * (mh + 2) * sizeof(double) + 32 * sizeof(double); }

// A block per row (b, r), a thread per position (W <= blockDim.x); the
// arithmetic of the three-pass kernels (cuda/dconv.cu), the statistics as whole-row
// block sums in double. Bound by its shared-memory loads (ncu: L1 78%, FMA
// 73% at hidden 6); two or three positions per thread, each weight load
// serving them all, were slower (fewer warps: 0.1254 / 0.1295 s vs 0.1236 s
// for the whole track).
template <int MaxHidden>
__global__ void __launch_bounds__(kDConvRowsMaxW)
    dconv_rows_kernel(const RowLayers layers, float* __restrict__ x, int C, int64_t R, int W, bool vec) {
    static_assert(MaxHidden % 4 == 0, "weight rows are float4 vectors");
    constexpr int Q = MaxHidden / 4;
    extern __shared__ float4 rows_smem4[];
    __shared__ double g[(MaxHidden + 1) * (MaxHidden + 2)];
    __shared__ double red[32];
    const int C2 = 2 * C;
    float* table = reinterpret_cast<float*>(rows_smem4);
    float* ws = table + C * 3 * MaxHidden;
    float* cc = ws + C2 * MaxHidden;
    float2* hc = reinterpret_cast<float2*>(cc + C * kChannelConsts);
    float* xs = reinterpret_cast<float*>(hc + MaxHidden);
    const int64_t b = blockIdx.x / R, r = blockIdx.x - b * R;
    const int64_t plane = R * W;
    float* xrow = x + (b * C * R + r) * W;  // channel c at xrow + c * plane
    // The row goes in asynchronously while the first layer's weights load.
    load_row_async(xs, W, xrow, plane, C, W, vec);
    cp_async_commit();
    const int w = threadIdx.x;
    const bool valid = w < W;
    for (int l = 0; l < layers.count; l++) {
        const DConvLayerWeights& lw = layers.layer[l];
        const int hidden = lw.hidden, d = lw.dilation, n1 = hidden + 1;
        const float4* t4 = reinterpret_cast<const float4*>(lw.in_table);
        for (int i = threadIdx.x; i < C * 3 * Q; i += blockDim.x) reinterpret_cast<float4*>(table)[i] = t4[i];
        for (int i = threadIdx.x; i < C2 * MaxHidden; i += blockDim.x) {
            const int k = i % MaxHidden, o = i / MaxHidden;
            ws[i] = k < hidden ? lw.out_weight[o * hidden + k] : 0.0f;
        }
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            cc[c * kChannelConsts] = lw.out_bias[c];
            cc[c * kChannelConsts + 1] = lw.out_bias[C + c];
            cc[c * kChannelConsts + 6] = lw.scale[c];
            cc[c * kChannelConsts + 7] = 0.0f;
        }
        for (int e = threadIdx.x; e < n1 * n1 + n1; e += blockDim.x) g[e] = lw.out_gram[e];
        cp_async_wait<0>();
        __syncthreads();

        // h = conv3(x) without its bias (the norm takes it), and h's sums.
        float h[MaxHidden];
#pragma unroll
        for (int k = 0; k < MaxHidden; k++) h[k] = 0.0f;
        double sum = 0.0, sq = 0.0;
        if (valid) {
            const bool left = w >= d, right = w + d < W;
            const float* xc = xs + w;
            for (int c = 0; c < C; c++, xc += W) {
                const float v[3] = {left ? xc[-d] : 0.0f, xc[0], right ? xc[d] : 0.0f};
                const float4* wc = reinterpret_cast<const float4*>(table) + c * 3 * Q;
                // Taps 2, 1, 0 in turn: the order of the three-pass kernel's fmaf chain.
#pragma unroll
                for (int j = 2; j >= 0; j--)
#pragma unroll
                    for (int q = 0; q < Q; q++) {
                        const float4 wv = wc[j * Q + q];
                        h[4 * q] = fmaf(wv.x, v[j], h[4 * q]);
                        h[4 * q + 1] = fmaf(wv.y, v[j], h[4 * q + 1]);
                        h[4 * q + 2] = fmaf(wv.z, v[j], h[4 * q + 2]);
                        h[4 * q + 3] = fmaf(wv.w, v[j], h[4 * q + 3]);
                    }
            }
#pragma unroll
            for (int k = 0; k < MaxHidden; k++) {
                if (k < hidden) {
                    const double v = h[k] + lw.in_bias[k];
                    sum += v, sq += v * v;
                }
            }
        }
        sum = block_sum(sum, red);
        sq = block_sum(sq, red);
        {
            const double2 m = row_moments(double(W) * hidden, sum, sq);
            for (int k = threadIdx.x; k < hidden; k += blockDim.x)
                hc[k] = row_norm_coef(m.x, m.y, lw.in_norm_weight[k], lw.in_norm_bias[k], double(lw.in_bias[k]));
        }
        __syncthreads();

        // hn = GELU(GroupNorm(h)) (in h), then y's sums from the Gram form.
#pragma unroll
        for (int k = 0; k < MaxHidden; k++) h[k] = (valid && k < hidden) ? gelu_exact(h[k] * hc[k].x + hc[k].y) : 0.0f;
        sum = 0.0, sq = 0.0;
        if (valid) y_moments<MaxHidden>(h, hidden, g, sum, sq);
        sum = block_sum(sum, red);
        sq = block_sum(sq, red);
        {
            const double2 m = row_moments(double(W) * C2, sum, sq);
            for (int o = threadIdx.x; o < C2; o += blockDim.x) {
                const float2 k = row_norm_coef(m.x, m.y, lw.out_norm_weight[o], lw.out_norm_bias[o], 0.0);
                float* at = cc + (o < C ? o : o - C) * kChannelConsts + (o < C ? 2 : 4);
                at[0] = k.x, at[1] = k.y;
            }
        }
        __syncthreads();

        // x += LayerScale * GLU(normalised y), each thread on its own position.
        if (valid) {
            for (int c = 0; c < C; c++) {
                const float4 k0 = reinterpret_cast<const float4*>(cc)[2 * c];      // bias a, bias g, scale a, shift a
                const float4 k1 = reinterpret_cast<const float4*>(cc)[2 * c + 1];  // scale g, shift g, LayerScale, -
                const float4* wa = reinterpret_cast<const float4*>(ws + c * MaxHidden);
                const float4* wg = reinterpret_cast<const float4*>(ws + (C + c) * MaxHidden);
                float a = k0.x, gt = k0.y;
#pragma unroll
                for (int q = 0; q < Q; q++) {
                    const float4 va = wa[q], vg = wg[q];
                    a = fmaf(va.w, h[4 * q + 3], fmaf(va.z, h[4 * q + 2], fmaf(va.y, h[4 * q + 1], fmaf(va.x, h[4 * q], a))));
                    gt = fmaf(vg.w, h[4 * q + 3], fmaf(vg.z, h[4 * q + 2], fmaf(vg.y, h[4 * q + 1], fmaf(vg.x, h[4 * q], gt))));
                }
                xs[c * W + w] += k1.z * glu_value(a * k0.z + k0.w, gt * k1.x + k1.y);
            }
        }
        __syncthreads();  // the next layer reads the neighbours and replaces the weights
    }
    if (vec) {
        const int q4 = W / 4;
        for (int i = threadIdx.x; i < C * q4; i += blockDim.x) {
            const int c = i / q4, q = i - c * q4;
            *reinterpret_cast<float4*>(xrow + c * plane + 4 * q) = *reinterpret_cast<const float4*>(xs + c * W + 4 * q);
        }
    } else {
        for (int i = threadIdx.x; i < C * W; i += blockDim.x) {
            const int c = i / W;
            xrow[c * plane + (i - c * W)] = xs[i];
        }
    }
}

}  // namespace

bool dconv_rows_fit(int channels, int hidden, int64_t W, int layers) {
    if (channels < 1 || hidden < 1 || hidden > 16 || W < 1 || W > kDConvRowsMaxW || layers < 1 ||
        layers > kDConvRowsMaxLayers)
        return false;
    const int mh = max_hidden_for(hidden);
    return rows_smem_floats(channels, int(W), mh) * sizeof(float) + rows_static_smem(mh) <= optin_smem();
}

void dconv_rows(const Ctx& ctx, const DConvLayerWeights* layers, int count, float* x, int64_t B, int64_t R,
                int64_t W) {
    if (count < 1 || count > kDConvRowsMaxLayers) throw Error("internal error: dconv_rows: layer count");
    const int C = layers[0].channels, hidden = layers[0].hidden;
    RowLayers p;
    p.count = count;
    for (int l = 0; l < count; l++) {
        if (layers[l].channels != C || layers[l].hidden != hidden || !layers[l].out_gram || !layers[l].in_table)
            throw Error("internal error: dconv_rows: layers of one DConv with their tables");
        p.layer[l] = layers[l];
    }
    if (!dconv_rows_fit(C, hidden, W, count))
        throw Error("internal error: dconv_rows: " + std::to_string(C) + " channels, hidden " +
                    std::to_string(hidden) + ", W " + std::to_string(W));
    if (B * R > std::numeric_limits<int>::max()) throw Error("internal error: dconv_rows: too many rows");
    if (ctx.dry || B * R == 0) return;
    const int threads = int((W + 31) / 32 * 32);
    const bool vec = W % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
    const auto launch = [&](auto max_hidden) {
        constexpr int mh = decltype(max_hidden)::value;
        const size_t bytes = rows_smem_floats(C, int(W), mh) * sizeof(float);
        allow_shared(dconv_rows_kernel<mh>, bytes);
        dconv_rows_kernel<mh><<<unsigned(B * R), threads, bytes, ctx.stream>>>(p, x, C, R, int(W), vec);
        FD_LAUNCH_CHECK();
    };
    switch (max_hidden_for(hidden)) {
        case 8: launch(std::integral_constant<int, 8>()); break;
        case 12: launch(std::integral_constant<int, 12>()); break;
        default: launch(std::integral_constant<int, 16>());
    }
}

}  // namespace fastdemucs::cuda
