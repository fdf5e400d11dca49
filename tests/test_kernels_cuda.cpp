// Unit tests of the CUDA backend's building blocks against host references
// in double: attention (both paths, every operand type), the convolution
// paths (1x1, shifted multi-tap, strided im2col with zero extension,
// transposed with crop), GroupNorm per row, LayerNorm, segment statistics.
// They pinpoint a broken kernel faster than the block-by-block forward test.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <random>
#include <thread>
#include <tuple>
#include <vector>

#include "cuda/arena.h"
#include "cuda/attention.h"
#include "cuda/common.h"
#include "cuda/conv.h"
#include "cuda/conv_glu.h"
#include "cuda/conv_glu_wgmma.h"
#include "cuda/cudnn_attention.h"
#include "cuda/dconv.h"
#include "cuda/direct_conv.h"
#include "cuda/freq_encoder_conv.h"
#include "cuda/freq_transposed.h"
#include "cuda/gemm.h"
#include "cuda/kernels.h"
#include "cuda/libraries.h"
#include "cuda/host_output.h"
#include "cuda/spectral.h"
#include "cuda/staging.h"
#include "cuda/track.h"
#include "cuda/weights.h"
#include "engine/backend.h"
#include "test_support.h"

using namespace fastdemucs;
using namespace fastdemucs::cuda;

namespace {

struct Gpu {
    cudaStream_t stream = nullptr;
    cublasHandle_t blas = nullptr;
    DeviceBuffer memory;
    Arena arena;
    Gpu() {
        FD_CUDA(cudaSetDevice(0));
        FD_CUDA(cudaStreamCreate(&stream));
        FD_CUBLAS(blas_api().cublasCreate(&blas));
        FD_CUBLAS(blas_api().cublasSetStream(blas, stream));
        memory = DeviceBuffer(size_t(256) << 20, "the test arena");
        arena.bind(memory.get(), memory.bytes());
    }
    ~Gpu() {
        cudaStreamSynchronize(stream);
        blas_api().cublasDestroy(blas);
        cudaStreamDestroy(stream);
    }
    Ctx ctx(DType t = DType::F32, bool fused = true, bool tensor_cores = true, bool shifted_conv = false,
            bool implicit_conv = false) {
        Ctx c;
        c.stream = stream, c.blas = blas, c.gemm = t, c.arena = &arena, c.fused_attention = fused;
        c.tensor_core_attention = tensor_cores, c.shifted_conv = shifted_conv, c.implicit_conv = implicit_conv;
        return c;
    }
    template <typename T>
    T* put(const std::vector<T>& host) {
        T* d = arena.alloc<T>(int64_t(host.size()));
        FD_CUDA(cudaMemcpy(d, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
        return d;
    }
    template <typename T>
    std::vector<T> get(const T* d, size_t n) {
        FD_CUDA(cudaStreamSynchronize(stream));
        std::vector<T> h(n);
        FD_CUDA(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
        return h;
    }
};

// Values k / 64 with |k| <= 96: exact in float16 and bfloat16 too.
std::vector<float> exact_random(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> pick(-96, 96);
    std::vector<float> v(n);
    for (auto& x : v) x = float(pick(rng)) / 64.0f;
    return v;
}

std::vector<float> random(size_t n, uint32_t seed, float scale = 1.0f, float shift = 0.0f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.0f, 1.0f);
    std::vector<float> v(n);
    for (auto& x : v) x = shift + scale * d(rng);
    return v;
}

double rel(const std::vector<float>& got, const std::vector<double>& ref) {
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); i++) {
        num += (got[i] - ref[i]) * (got[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return std::sqrt(num / den);
}

// Device copy of float data in operand type t (exact for exact_random values).
void* put_as(Gpu& g, const std::vector<float>& host, DType t) {
    float* f = g.put(host);
    if (t == DType::F32) return f;
    void* d = g.arena.alloc_bytes(host.size() * dtype_bytes(t));
    convert(g.ctx(), f, d, t, int64_t(host.size()));
    return d;
}

std::vector<float> get_as(Gpu& g, const void* d, DType t, size_t n) {
    if (t == DType::F32) return g.get(static_cast<const float*>(d), n);
    // Back to float through the attention-free path: convert is one-way, so read raw bits.
    std::vector<uint16_t> raw = g.get(static_cast<const uint16_t*>(d), n);
    std::vector<float> out(n);
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        if (t == DType::BF16) {
            bits = uint32_t(raw[i]) << 16;
        } else {  // IEEE half -> float
            const uint32_t h = raw[i], sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
            if (exp == 0) {
                const float v = std::ldexp(float(man), -24);
                out[i] = sign ? -v : v;
                continue;
            }
            bits = exp == 31 ? (sign | 0x7f800000u | (man << 13)) : (sign | ((exp + 112) << 23) | (man << 13));
        }
        std::memcpy(&out[i], &bits, 4);
    }
    return out;
}

// plan_first: a dry run and CudnnAttention::prepare before the real run
// (as a forward plans its shapes: only there are plans tuned).
void attention_case(DType t, bool fused, int heads, int dh, bool tensor_cores = true, int64_t N = 131,
                    int64_t M = 77, CudnnAttention* cudnn = nullptr, bool plan_first = false) {
    Gpu g;
    const int64_t B = 2, C = int64_t(heads) * dh, ldq = 3 * C, ldkv = 2 * C;
    const std::vector<float> q = exact_random(size_t(B * N * ldq), 1), kv = exact_random(size_t(B * M * ldkv), 2);
    AttentionArgs a;
    a.q = put_as(g, q, t), a.ldq = ldq;
    a.k = put_as(g, kv, t), a.v = offset(a.k, C, t), a.ldkv = ldkv;
    a.out = g.arena.alloc_bytes(size_t(B * N * C) * dtype_bytes(t)), a.ldo = C;
    a.B = B, a.N = N, a.M = M, a.heads = heads, a.dh = dh;
    Ctx ctx = g.ctx(t, fused, tensor_cores);
    ctx.cudnn_attention = cudnn;
    if (plan_first && cudnn) {
        Ctx dry = ctx;
        dry.dry = true;
        attention(dry, a);
        cudnn->prepare(B);
    }
    attention(ctx, a);
    const std::vector<float> got = get_as(g, a.out, t, size_t(B * N * C));

    std::vector<double> ref(size_t(B * N * C));
    const double scale = 1.0 / std::sqrt(double(dh));
    std::vector<double> s(M);
    for (int64_t b = 0; b < B; b++)
        for (int h = 0; h < heads; h++)
            for (int64_t n = 0; n < N; n++) {
                double mx = -1e300;
                for (int64_t m = 0; m < M; m++) {
                    double dot = 0;
                    for (int d = 0; d < dh; d++)
                        dot += double(q[(b * N + n) * ldq + h * dh + d]) * kv[(b * M + m) * ldkv + h * dh + d];
                    s[m] = dot * scale;
                    mx = std::max(mx, s[m]);
                }
                double sum = 0;
                for (auto& v : s) sum += (v = std::exp(v - mx));
                for (int d = 0; d < dh; d++) {
                    double o = 0;
                    for (int64_t m = 0; m < M; m++) o += s[m] / sum * kv[(b * M + m) * ldkv + C + h * dh + d];
                    ref[(b * N + n) * C + h * dh + d] = o;
                }
            }
    const double tol = t == DType::F32 ? 2e-6 : t == DType::F16 ? 3e-3 : 2e-2;
    EXPECT_LE(rel(got, ref), tol) << dtype_name(t)
                                  << (cudnn ? " cudnn" : fused ? (tensor_cores ? " fused" : " fused simt") : " cublas")
                                  << " dh " << dh << " N " << N << " M " << M;
}

// Host conv2d in double: x [B, Cin, H, W] zero-extended to width Wl.
std::vector<double> conv_ref(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>& bias,
                             int64_t B, int64_t Cin, int64_t H, int64_t W, int64_t Wl, int cout, const ConvGeom& g,
                             int64_t Ho, int64_t Wo) {
    std::vector<double> out(size_t(B * cout * Ho * Wo));
    for (int64_t b = 0; b < B; b++)
        for (int co = 0; co < cout; co++)
            for (int64_t ho = 0; ho < Ho; ho++)
                for (int64_t wo = 0; wo < Wo; wo++) {
                    double acc = bias[co];
                    for (int64_t ci = 0; ci < Cin; ci++)
                        for (int i = 0; i < g.kh; i++)
                            for (int j = 0; j < g.kw; j++) {
                                const int64_t h = ho * g.sh + i * g.dh - g.ph, ww = wo * g.sw + j * g.dw - g.pw;
                                if (h < 0 || h >= H || ww < 0 || ww >= W || ww >= Wl) continue;
                                acc += double(w[((co * Cin + ci) * g.kh + i) * g.kw + j]) *
                                       x[((b * Cin + ci) * H + h) * W + ww];
                            }
                    out[((b * cout + co) * Ho + ho) * Wo + wo] = acc;
                }
    return out;
}

// Reduced-precision operands use exactly representable values: the result is exact in float32 too.
struct ConvShape {
    int64_t B = 2, Cin = 5, H = 9, W = 23;
    int cout = 7;
};
void conv_case(int kh, int kw, ConvGeom g, int64_t extra_w, bool shifted = false, DType t = DType::F32,
               bool implicit = false, ConvShape shape = ConvShape{}) {
    Gpu gpu;
    const int64_t B = shape.B, Cin = shape.Cin, H = shape.H, W = shape.W, Wl = W + extra_w;
    const int cout = shape.cout;
    g.kh = kh, g.kw = kw;
    const std::vector<float> x = t == DType::F32 ? random(size_t(B * Cin * H * W), 3)
                                                 : exact_random(size_t(B * Cin * H * W), 3);
    const std::vector<float> w = t == DType::F32 ? random(size_t(cout * Cin * kh * kw), 4, 0.3f)
                                                 : exact_random(size_t(cout * Cin * kh * kw), 4);
    const std::vector<float> bias = random(size_t(cout), 5);
    std::vector<float> taps(w.size());
    const int64_t nt = int64_t(kh) * kw;
    for (int co = 0; co < cout; co++)
        for (int64_t ci = 0; ci < Cin; ci++)
            for (int64_t t = 0; t < nt; t++) taps[(t * cout + co) * Cin + ci] = w[(co * Cin + ci) * nt + t];
    ConvWeight cw;
    cw.w = put_as(gpu, w, t), cw.taps = put_as(gpu, taps, t), cw.bias = gpu.put(bias);
    cw.cout = cout, cw.cin = int(Cin), cw.kh = kh, cw.kw = kw;
    int64_t Ho = 0, Wo = 0;
    conv_output_size(H, Wl, cw, g, &Ho, &Wo);
    DTensor in{gpu.put(x), B, Cin, H, W};
    DTensor out{gpu.arena.alloc<float>(B * cout * Ho * Wo), B, cout, Ho, Wo};
    conv2d(gpu.ctx(t, true, true, shifted, implicit), in, Wl, cw, g, out, Act::None);
    const auto got = gpu.get(out.p, size_t(out.numel()));
    const auto ref = conv_ref(x, w, bias, B, Cin, H, W, Wl, cout, g, Ho, Wo);
    EXPECT_LE(rel(got, ref), 1e-6) << "kernel " << kh << "x" << kw << " stride " << g.sh << "," << g.sw
                                   << (shifted ? " shifted" : "") << (implicit ? " implicit" : " im2col") << " "
                                   << dtype_name(t) << " cin " << Cin << " cout " << cout << " " << H << "x" << W;
}

}  // namespace

TEST(KernelsCuda, AttentionBothPathsEveryType) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    for (DType t : {DType::F32, DType::F16, DType::BF16})
        for (bool fused : {true, false})
            for (int dh : {16, 32, 48, 64}) attention_case(t, fused, 3, dh);
    attention_case(DType::F32, true, 2, 40);  // unsupported head size: falls back to cuBLAS
    // Several key tiles, partial query and key tiles, both fused kernels.
    for (DType t : {DType::F16, DType::BF16})
        for (bool tensor_cores : {true, false}) attention_case(t, true, 2, 64, tensor_cores, 300, 200);
    attention_case(DType::F16, true, 8, 64, true, 64, 129);
    // The float16 kernel's double-buffered key tiles: an odd number of tiles,
    // exactly one tile, two whole tiles (no key masked).
    attention_case(DType::F16, true, 2, 48, true, 300, 700);
    attention_case(DType::F16, true, 2, 48, true, 70, 64);
    attention_case(DType::F16, true, 2, 48, true, 200, 128);
    attention_case(DType::BF16, true, 2, 48, true, 200, 128);
}

// cuDNN's fused attention where libcudnn.so.9 loads: every head size in
// both reduced types, partial tiles, more keys than queries and the
// reverse, each run taken by cuDNN (not left to our kernels).
TEST(KernelsCuda, AttentionThroughCudnn) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    if (!cudnn_attention_built()) GTEST_SKIP() << "built without cuDNN";
    CudnnAttention cudnn(0);
    if (!cudnn.available()) GTEST_SKIP() << cudnn.reason();
    for (DType t : {DType::F16, DType::BF16})
        for (int dh : {16, 32, 48, 64}) attention_case(t, true, 3, dh, true, 131, 77, &cudnn);
    attention_case(DType::F16, true, 8, 48, true, 300, 700, &cudnn);
    attention_case(DType::BF16, true, 2, 64, true, 64, 129, &cudnn);
    EXPECT_EQ(cudnn.runs(), 10);
}

// A plan made once is read back from the plan store by the next user (no
// kernel generation) and gives the same attention; a damaged stored plan is
// made again. The same for tuned plans (FASTDEMUCS_CUDNN_AUTOTUNE=1, made
// by prepare() only), which the store keeps apart from untuned ones, and
// which a later untuned user reads where they are stored.
TEST(KernelsCuda, CudnnAttentionPlansComeBackFromThePlanStore) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    if (!cudnn_attention_built()) GTEST_SKIP() << "built without cuDNN";
    const std::string dir = testing_support::make_temp_dir("plans");
    testing_support::ScopedEnv store("FASTDEMUCS_PLAN_CACHE", dir);
    for (const char* tuned : {"0", "1"}) {
        testing_support::ScopedEnv tune("FASTDEMUCS_CUDNN_AUTOTUNE", tuned);
        const int rounds = tuned[0] == '0' ? 3 : 2;
        if (tuned[0] == '1')  // only tuned plans stored from here on
            for (const auto& entry : std::filesystem::directory_iterator(dir)) std::filesystem::remove(entry.path());
        for (int round = 0; round < rounds; round++) {
            if (round == 2)  // every stored plan damaged
                for (const auto& entry : std::filesystem::directory_iterator(dir))
                    std::filesystem::resize_file(entry.path(), 100);
            CudnnAttention cudnn(0);
            if (!cudnn.available()) GTEST_SKIP() << cudnn.reason();
            const bool plan_first = tuned[0] == '1';
            attention_case(DType::F16, true, 3, 48, true, 131, 77, &cudnn, plan_first);
            attention_case(DType::BF16, true, 2, 64, true, 64, 129, &cudnn, plan_first);
            EXPECT_EQ(cudnn.runs(), 2);
            EXPECT_EQ(cudnn.plans_read(), round == 1 ? 2 : 0) << "tuned " << tuned << ", round " << round;
        }
    }
    testing_support::ScopedEnv untuned("FASTDEMUCS_CUDNN_AUTOTUNE", "0");
    CudnnAttention cudnn(0);
    attention_case(DType::F16, true, 3, 48, true, 131, 77, &cudnn);
    attention_case(DType::BF16, true, 2, 64, true, 64, 129, &cudnn);
    EXPECT_EQ(cudnn.runs(), 2);
    EXPECT_EQ(cudnn.plans_read(), 2) << "the tuned plans, read by an untuned user";
    std::filesystem::remove_all(dir);
}

TEST(KernelsCuda, ConvolutionPaths) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    conv_case(1, 1, ConvGeom{}, 0);  // direct GEMM
    ConvGeom dil;
    dil.pw = 2, dil.dw = 2;
    ConvGeom sq;
    sq.ph = 1, sq.pw = 1;
    for (bool shifted : {false, true}) {
        conv_case(1, 3, dil, 0, shifted);  // DConv: dilated (im2col, or shifted GEMMs)
        conv_case(3, 3, sq, 0, shifted);   // rewrite 3x3
    }
    ConvGeom fs;
    fs.sh = 4, fs.ph = 2;
    conv_case(8, 1, fs, 0);  // frequency encoder: im2col
    ConvGeom ts;
    ts.sw = 4, ts.pw = 2;
    conv_case(1, 8, ts, 1);  // time encoder with zero extension to the stride: im2col
    // Reduced precision, both paths: im2col (operand rows padded to 16 bytes
    // for odd widths, output cropped) and the implicit GEMM, on one tile and
    // on shapes spanning several tiles with partial ones in M, N and K.
    ConvShape large;
    large.B = 3, large.Cin = 37, large.H = 5, large.W = 301, large.cout = 70;
    // Rows of a multiple of 8 outputs and one long row: im2col's unit-stride loads.
    ConvShape rows8, row, row8;
    rows8.H = 6, rows8.W = 48, row.H = 1, row.W = 301, row8.H = 1, row8.W = 304;
    for (ConvShape shape : {rows8, row, row8}) {  // float32: unit stride needs rows of 8k values
        conv_case(3, 3, sq, 0, false, DType::F32, false, shape);
        conv_case(1, 3, dil, 0, false, DType::F32, false, shape);
        conv_case(8, 1, fs, 0, false, DType::F32, false, shape);
    }
    for (DType t : {DType::F16, DType::BF16})
        for (bool implicit : {true, false})
            for (ConvShape shape : {ConvShape{}, large, rows8, row}) {
                conv_case(1, 1, ConvGeom{}, 0, false, t, implicit, shape);
                conv_case(3, 3, sq, 0, false, t, implicit, shape);
                conv_case(1, 3, dil, 0, false, t, implicit, shape);
                conv_case(8, 1, fs, 0, false, t, implicit, shape);
                conv_case(1, 8, ts, 1, false, t, implicit, shape);
            }
    // The time encoders' strided im2col from a staged row (256 outputs a block):
    // 752 outputs, three blocks, the last partial (float32 needs rows of 8k outputs).
    ConvShape time_row;
    time_row.H = 1, time_row.W = 3007;
    for (DType t : {DType::F32, DType::F16, DType::BF16}) conv_case(1, 8, ts, 1, false, t, false, time_row);
}

// im2col of the 3x3 convolutions with padding 1 (the decoders' rewrites:
// nine column rows a thread from three input rows' windows; and the general
// runs kernel, Ctx::im2col_3x3 off) against the columns built here, value
// for value (exact values in every type) over a NaN-filled buffer, padding
// zero at every edge; rows past the item's K (the biased GEMM's) are ones,
// in rows of ld > N values.
TEST(KernelsCuda, Im2colOfThe3x3Convolutions) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    const int64_t B = 2, C = 3, H = 5, W = 24, K = C * 9, N = H * W, ld = N + 8, item_rows = K + 2;
    ConvGeom g;
    g.kh = g.kw = 3, g.ph = g.pw = 1;
    const std::vector<float> x = exact_random(size_t(B * C * H * W), 111);
    for (DType t : {DType::F32, DType::F16, DType::BF16})
        for (const bool nine_rows : {true, false}) {
            Gpu gpu;
            const size_t n = size_t(B * item_rows * ld);
            void* cols = gpu.arena.alloc_bytes(n * dtype_bytes(t));
            FD_CUDA(cudaMemsetAsync(cols, 0xff, n * dtype_bytes(t), gpu.stream));  // NaN in every type
            Ctx ctx = gpu.ctx(t);
            ctx.im2col_3x3 = nine_rows;
            im2col(ctx, gpu.put(x), cols, t, B, C, H, W, g, H, W, ld, item_rows);
            const std::vector<float> got = get_as(gpu, cols, t, n);
            size_t wrong = 0;
            for (int64_t b = 0; b < B; b++)
                for (int64_t r = 0; r < item_rows; r++)
                    for (int64_t j = 0; j < (r < K ? N : ld); j++) {
                        float want = 1.0f;
                        if (r < K) {
                            const int64_t c = r / 9, i = r % 9 / 3, k = r % 3, h = j / W + i - 1, w = j % W + k - 1;
                            const bool inside = h >= 0 && h < H && w >= 0 && w < W;
                            want = inside ? x[size_t(((b * C + c) * H + h) * W + w)] : 0.0f;
                        }
                        if (!(got[size_t((b * item_rows + r) * ld + j)] == want)) wrong++;
                    }
            EXPECT_EQ(wrong, 0u) << dtype_name(t) << (nine_rows ? " nine rows a thread" : " runs kernel");
        }
}

namespace {

// A result written as a GEMM operand too (type t, rows of ld = operand_ld(n) per (b, c)) holds
// the float32 result `got` ([rows, n]) rounded once: equal to it converted on the device.
void expect_operand_rows(Gpu& gpu, DType t, const Planes& op, const std::vector<float>& got, int64_t rows,
                         int64_t n, const std::string& what) {
    ASSERT_EQ(op.type, t);
    ASSERT_EQ(op.ld, operand_ld(gpu.ctx(t), n));
    const std::vector<float> want = get_as(gpu, put_as(gpu, got, t), t, got.size());
    const std::vector<float> all = get_as(gpu, op.p, t, size_t(rows * op.ld));
    size_t differ = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < n; i++) differ += all[size_t(r * op.ld + i)] != want[size_t(r * n + i)];
    EXPECT_EQ(differ, 0u) << what << ": the operand copy (rows of " << op.ld << ")";
}

// A Planes buffer for [rows, n] in the operand type.
Planes operand_planes(Gpu& gpu, DType t, int64_t rows, int64_t n) {
    const int64_t ld = operand_ld(gpu.ctx(t), n);
    return {gpu.arena.alloc_bytes(size_t(rows * ld) * dtype_bytes(t)), t, ld};
}

struct TransposedShape {
    int64_t H, W;
    int kh, kw, sh, sw;
    int64_t h0, Hc, w0, Wc;  // the window of the full output kept
};

void transposed_case(DType t, const TransposedShape& k) {
    Gpu gpu;
    const int64_t B = 2, Cin = 6, H = k.H, W = k.W;
    const int cout = 3, kh = k.kh, kw = k.kw, sh = k.sh, sw = k.sw;
    const std::vector<float> x = t == DType::F32 ? random(size_t(B * Cin * H * W), 6)
                                                 : exact_random(size_t(B * Cin * H * W), 6);
    const std::vector<float> w = t == DType::F32 ? random(size_t(Cin * cout * kh * kw), 7, 0.3f)
                                                 : exact_random(size_t(Cin * cout * kh * kw), 7);
    const std::vector<float> bias = random(size_t(cout), 8);
    ConvWeight cw;
    cw.w = put_as(gpu, w, t), cw.bias = gpu.put(bias), cw.cout = cout, cw.cin = int(Cin), cw.kh = kh, cw.kw = kw;
    const int64_t Hf = (H - 1) * sh + kh, Wf = (W - 1) * sw + kw;
    DTensor in{gpu.put(x), B, Cin, H, W};
    DTensor out{gpu.arena.alloc<float>(B * cout * k.Hc * k.Wc), B, cout, k.Hc, k.Wc};
    // Exact with float32 columns; with columns in the operand type (the default) each column
    // value is rounded once, and an output sums at most kh * kw / (sh * sw) of them.
    Ctx exact = gpu.ctx(t);
    exact.narrow_gemm_out = false;
    conv_transpose2d(exact, in, cw, sh, sw, k.h0, k.w0, out, Act::None);
    const auto got = gpu.get(out.p, size_t(out.numel()));
    conv_transpose2d(gpu.ctx(t), in, cw, sh, sw, k.h0, k.w0, out, Act::None);
    const auto narrow = gpu.get(out.p, size_t(out.numel()));
    if (t != DType::F32) {
        // The input handed over as the GEMM operand already (as the DConv's last layer writes it).
        const Planes op = operand_planes(gpu, t, B * Cin, H * W);
        convert_rows(gpu.ctx(t), in.p, op.p, t, B * Cin, H * W, op.ld);
        DTensor shape_only = in;
        shape_only.p = nullptr;
        conv_transpose2d(gpu.ctx(t), shape_only, cw, sh, sw, k.h0, k.w0, out, Act::None, op.p);
        EXPECT_EQ(gpu.get(out.p, size_t(out.numel())), narrow) << dtype_name(t) << " input given as the operand";
    }
    std::vector<double> full(size_t(B * cout * Hf * Wf), 0.0);
    for (int64_t b = 0; b < B; b++)
        for (int co = 0; co < cout; co++) {
            for (int64_t i = 0; i < Hf * Wf; i++) full[(b * cout + co) * Hf * Wf + i] = bias[co];
            for (int64_t ci = 0; ci < Cin; ci++)
                for (int64_t h = 0; h < H; h++)
                    for (int64_t ww = 0; ww < W; ww++)
                        for (int i = 0; i < kh; i++)
                            for (int j = 0; j < kw; j++)
                                full[((b * cout + co) * Hf + h * sh + i) * Wf + ww * sw + j] +=
                                    double(w[((ci * cout + co) * kh + i) * kw + j]) *
                                    x[((b * Cin + ci) * H + h) * W + ww];
        }
    std::vector<double> ref(size_t(B * cout * k.Hc * k.Wc));
    for (int64_t bc = 0; bc < B * cout; bc++)
        for (int64_t h = 0; h < k.Hc; h++)
            for (int64_t ww = 0; ww < k.Wc; ww++)
                ref[(bc * k.Hc + h) * k.Wc + ww] = full[(bc * Hf + h + k.h0) * Wf + ww + k.w0];
    EXPECT_LE(rel(got, ref), 1e-6) << dtype_name(t) << " kernel " << kh << "x" << kw << ", " << W << " wide";
    if (t == DType::F32) {
        EXPECT_EQ(narrow, got) << "float32 columns either way";
    } else {
        // Columns rounded once (unit roundoff u); outputs sum two column values of like
        // magnitude here, so the error stays within a few u of the norm.
        const double unit = t == DType::F16 ? 0x1p-11 : 0x1p-8;
        EXPECT_LE(rel(narrow, ref), 2 * unit) << dtype_name(t) << " narrow columns, kernel " << kh << "x" << kw;
    }
}

// The rewrite convolutions' conv2d_glu: GLU(conv(x) + bias) with the convolution's result in
// the operand type in between, against the double reference.
void conv_glu_case(DType t, int kh, int kw, int64_t H, int64_t W) {
    Gpu gpu;
    const int64_t B = 2, Cin = 5, C = 4;
    ConvGeom g;
    g.kh = kh, g.kw = kw, g.ph = kh / 2, g.pw = kw / 2;
    const std::vector<float> x = exact_random(size_t(B * Cin * H * W), 11);
    const std::vector<float> w = exact_random(size_t(2 * C * Cin * kh * kw), 12);
    const std::vector<float> bias = random(size_t(2 * C), 13);
    ConvWeight cw;
    cw.w = put_as(gpu, w, t), cw.bias = gpu.put(bias), cw.cout = int(2 * C), cw.cin = int(Cin), cw.kh = kh;
    cw.kw = kw;
    DTensor in{gpu.put(x), B, Cin, H, W};
    DTensor out{gpu.arena.alloc<float>(B * C * H * W), B, C, H, W};
    ASSERT_TRUE(conv2d_glu(gpu.ctx(t), in, cw, g, out));
    const auto got = gpu.get(out.p, size_t(out.numel()));
    if (kh * kw == 1) {  // a pointwise conv given its input as the operand (the DConv's copy): the same
        const Planes op = operand_planes(gpu, t, B * Cin, H * W);
        convert_rows(gpu.ctx(t), in.p, op.p, t, B * Cin, H * W, op.ld);
        ASSERT_TRUE(conv2d_glu(gpu.ctx(t), in, cw, g, out, op.p));
        EXPECT_EQ(gpu.get(out.p, size_t(out.numel())), got) << dtype_name(t) << " input given as the operand";
    }
    const auto y = conv_ref(x, w, bias, B, Cin, H, W, W, int(2 * C), g, H, W);
    std::vector<double> ref(size_t(B * C * H * W));
    const int64_t n = H * W;
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < C * n; i++)
            ref[size_t(b * C * n + i)] = y[size_t(b * 2 * C * n + i)] / (1.0 + std::exp(-y[size_t((b * 2 + 1) * C * n + i)]));
    const double unit = t == DType::F16 ? 0x1p-11 : 0x1p-8;
    EXPECT_LE(rel(got, ref), 4 * unit) << dtype_name(t) << " kernel " << kh << "x" << kw << ", " << H << "x" << W;
    Ctx f32 = gpu.ctx(DType::F32);
    EXPECT_FALSE(conv2d_glu(f32, in, cw, g, out));  // float32 keeps conv2d + glu
}

// The GLU pass adding the frequency embedding (the first encoder's rewrite)
// gives the very floats of the GLU followed by add_freq_embedding's pass:
// float32 and float16 inputs, rows padded or not, T a multiple of 8 (the
// vector path), or not with rows of whole vectors (the vector GLU, then the
// embedding's pass) or not (the scalar GLU, then the embedding's pass).
TEST(KernelsCuda, GluAddsTheFrequencyEmbeddingAsItsOwnPassDoes) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    Gpu gpu;
    const int64_t B = 2, C = 3;
    for (DType t : {DType::F32, DType::F16})
        for (auto [F, T] : {std::pair<int64_t, int64_t>{5, 16}, {5, 13}, {8, 13}})
            for (int64_t pad : {0, 8}) {
                const int64_t inner = F * T, ld = inner + pad;
                const std::vector<float> x = random(size_t(B * 2 * C * ld), 61);
                const std::vector<float> bias = random(size_t(2 * C), 62);
                const std::vector<float> table = random(size_t(F * C), 63);
                const void* xd = put_as(gpu, x, t);
                FreqEmbedding emb;
                emb.table = gpu.put(table), emb.F = F, emb.T = T, emb.k = 0.2f, emb.s = 10.0f;
                float* fused = gpu.arena.alloc<float>(B * C * inner);
                float* apart = gpu.arena.alloc<float>(B * C * inner);
                glu(gpu.ctx(t), xd, t, ld, fused, B, C, inner, gpu.put(bias), &emb);
                glu(gpu.ctx(t), xd, t, ld, apart, B, C, inner, gpu.put(bias));
                add_freq_embedding(gpu.ctx(t), apart, B, C, emb);
                EXPECT_EQ(gpu.get(fused, size_t(B * C * inner)), gpu.get(apart, size_t(B * C * inner)))
                    << dtype_name(t) << " F " << F << " T " << T << " pad " << pad;
            }
}

// The weighted overlap-add never reads a view position before a chunk has
// written it: a view full of NaNs (a buffer reused from an earlier track)
// gives the very floats of a cleared one, over batches of 3 chunks, a short
// last chunk and chunks that overlap by a third, two views one after the
// other; and both equal the sums in double to float rounding. Also with
// chunks 40 apart in batches of 6, where five chunks of a batch cover a
// position (past the kernel's cache of a position's chunks).
TEST(KernelsCuda, OverlapAddNeedsNoClearedView) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    Gpu gpu;
    const int64_t SC = 3, pitch = 1100;
    for (const auto& [length, stride, batch] :
         {std::tuple<int64_t, int64_t, int64_t>{1000, 150, 3}, {1037, 150, 3}, {1037, 40, 6}}) {
        ChunkGrid g;
        g.total = 1200, g.view_start = 0, g.view_length = length, g.stride = stride, g.segment = 200;
        g.valid = 220, g.model_length = 224;
        const int64_t jobs = g.jobs();
        const std::vector<float> out = random(size_t(jobs * SC * g.model_length), 71);
        const std::vector<float> weight = random(size_t(g.segment), 72);
        const float* out_d = gpu.put(out);
        const float* weight_d = gpu.put(weight);
        std::vector<std::vector<float>> got;
        for (float fill : {std::nanf(""), 0.0f}) {
            float* view = gpu.put(std::vector<float>(size_t(SC * pitch), fill));
            for (int64_t first = 0; first < jobs; first += batch) {
                const int n = int(std::min<int64_t>(batch, jobs - first));
                accumulate_chunks(gpu.stream, out_d + first * SC * g.model_length, SC, g, first, n, weight_d, view,
                                  pitch);
            }
            got.push_back(gpu.get(view, size_t(SC * pitch)));
        }
        for (int64_t sc = 0; sc < SC; sc++)
            for (int64_t j = 0; j < length; j++) {
                const float a = got[0][size_t(sc * pitch + j)], b = got[1][size_t(sc * pitch + j)];
                ASSERT_EQ(std::memcmp(&a, &b, sizeof(float)), 0) << "length " << length << " row " << sc << " at " << j;
                double ref = 0.0;
                for (int64_t k = 0; k < jobs; k++) {
                    const int64_t off = k * g.stride, len = std::min(length - off, g.segment);
                    if (j < off || j >= off + len) continue;
                    const int64_t left = (g.valid - len) / 2;
                    ref += double(weight[size_t(j - off)]) * out[size_t((k * SC + sc) * g.model_length + left + j - off)];
                }
                ASSERT_NEAR(a, ref, 1e-5) << "length " << length << " row " << sc << " at " << j;
            }
    }
}

// conv_glu (the rewrites' implicit GEMM with the GLU on its accumulators):
// GLU(conv(x + skip) + bias) against the double reference. The operands are
// exact in the operand type and so are x + skip (|k| / 64 <= 3) and every
// partial sum in float32: only the GLU's exp2 and reciprocal differ.
void conv_glu_fused_case(DType t, int kh, int kw, int64_t B, int64_t C, int64_t H, int64_t W, bool with_skip,
                         bool with_bias = true, bool wgmma = false) {
    Gpu gpu;
    ConvGeom g;
    g.kh = kh, g.kw = kw, g.ph = kh / 2, g.pw = kw / 2;
    const int64_t n = H * W, taps = int64_t(kh) * kw;
    const std::vector<float> x = exact_random(size_t(B * C * n), 21);
    const std::vector<float> skip = with_skip ? exact_random(size_t(B * C * n), 22) : std::vector<float>();
    const std::vector<float> w = exact_random(size_t(2 * C * C * taps), 23);
    const std::vector<float> bias = random(size_t(2 * C), 24);
    ConvWeight cw;
    cw.w = put_as(gpu, w, t), cw.bias = with_bias ? gpu.put(bias) : nullptr;
    cw.cout = int(2 * C), cw.cin = int(C), cw.kh = kh, cw.kw = kw;
    float* w32 = gpu.put(w);
    void* taps_copy = gpu.arena.alloc_bytes(w.size() * dtype_bytes(t));
    conv_weight_taps(gpu.ctx(t), w32, taps_copy, t, 2 * C, C, taps);
    cw.taps = taps_copy;
    Ctx ctx = gpu.ctx(t);
    ctx.conv_glu_wgmma = wgmma;
    ASSERT_TRUE(conv_glu_takes(ctx, cw, g));
    DTensor in{gpu.put(x), B, C, H, W};
    DTensor out{gpu.arena.alloc<float>(B * C * n), B, C, H, W};
    conv_glu(ctx, in, with_skip ? gpu.put(skip) : nullptr, cw, out);
    const auto got = gpu.get(out.p, size_t(out.numel()));
    std::vector<float> sum = x;
    for (size_t i = 0; i < skip.size(); i++) sum[i] += skip[i];
    const auto y = conv_ref(sum, w, with_bias ? bias : std::vector<float>(bias.size(), 0.0f), B, C, H, W, W,
                            int(2 * C), g, H, W);
    std::vector<double> ref(size_t(B * C * n));
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < C * n; i++)
            ref[size_t(b * C * n + i)] = y[size_t(b * 2 * C * n + i)] / (1.0 + std::exp(-y[size_t((b * 2 + 1) * C * n + i)]));
    EXPECT_LE(rel(got, ref), 1e-5) << dtype_name(t) << (wgmma ? " wgmma" : " mma.sync") << " kernel " << kh << "x"
                                   << kw << ", C " << C << ", " << H << "x" << W << (with_skip ? ", skip" : "")
                                   << (with_bias ? "" : ", no bias");
}

// The cases of ConvGluMatchesTheModule, on the kernel `wgmma` picks.
void conv_glu_cases(bool wgmma) {
    for (DType t : {DType::F16, DType::BF16}) {
        // The frequency decoders' 3x3 (odd rows: a block's second row past H; 300 = 2 blocks of
        // 128 + a partial one), the time decoders' 1x3 on odd and even rows of several blocks;
        // C = 16 and 64 leave GLU tiles partly empty, C = 96 fills two.
        conv_glu_fused_case(t, 3, 3, 2, 48, 5, 300, true, true, wgmma);
        conv_glu_fused_case(t, 3, 3, 1, 64, 4, 37, false, true, wgmma);
        conv_glu_fused_case(t, 3, 3, 3, 16, 8, 128, true, true, wgmma);
        conv_glu_fused_case(t, 3, 3, 1, 96, 3, 130, true, true, wgmma);
        conv_glu_fused_case(t, 1, 3, 2, 32, 1, 601, true, true, wgmma);
        conv_glu_fused_case(t, 1, 3, 1, 96, 1, 512, false, true, wgmma);
        // Items and channel tiles together, no bias.
        conv_glu_fused_case(t, 3, 3, 2, 64, 6, 40, true, false, wgmma);
        // More tiles than a grid of one block per SM (132 on an H100 / H200): blocks walk
        // several tiles, the next tile's loads in flight across the previous one's epilogue.
        conv_glu_fused_case(t, 3, 3, 2, 16, 160, 128, true, true, wgmma);
        conv_glu_fused_case(t, 1, 3, 2, 16, 1, 20001, true, true, wgmma);
    }
}

}  // namespace

namespace {

// The encoders' 1x1 rewrite + GLU (+ the frequency embedding) on wgmma,
// from planes of positions [B, Cin, ld], against the double reference.
// T: the embedding's positions a row (from 128 on the kernel loads a tile's two rows ahead).
void conv1x1_glu_case(DType t, int64_t B, int64_t Cin, int64_t C, int64_t P, bool embed, int64_t T = 37) {
    Gpu gpu;
    const int64_t ld = (P + 7) / 8 * 8, F = (P + T - 1) / T;
    const std::vector<float> x = exact_random(size_t(B * Cin * ld), 31);
    const std::vector<float> w = exact_random(size_t(2 * C * Cin), 32);
    const std::vector<float> bias = random(size_t(2 * C), 33);
    const std::vector<float> table = random(size_t(F * C), 34);
    Conv1x1GluArgs a;
    a.x = put_as(gpu, x, t), a.weight = put_as(gpu, w, t), a.bias = gpu.put(bias);
    a.out = gpu.arena.alloc<float>(B * C * P);
    a.Cin = int(Cin), a.C = int(C), a.B = int(B), a.P = P, a.ld = ld;
    if (embed) a.emb_table = gpu.put(table), a.emb_T = T, a.emb_k = 0.7f, a.emb_s = 1.3f;
    conv1x1_glu_wgmma(gpu.stream, t, a);
    FD_CUDA(cudaStreamSynchronize(gpu.stream));
    const auto got = gpu.get(a.out, size_t(B * C * P));
    std::vector<double> ref(size_t(B * C * P));
    for (int64_t b = 0; b < B; b++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t p = 0; p < P; p++) {
                double va = bias[size_t(c)], vg = bias[size_t(C + c)];
                for (int64_t k = 0; k < Cin; k++) {
                    const double xv = x[size_t((b * Cin + k) * ld + p)];
                    va += double(w[size_t(c * Cin + k)]) * xv, vg += double(w[size_t((C + c) * Cin + k)]) * xv;
                }
                double v = va / (1.0 + std::exp(-vg));
                if (embed) v += 0.7 * (double(table[size_t((p / T) * C + c)]) * 1.3);
                ref[size_t((b * C + c) * P + p)] = v;
            }
    EXPECT_LE(rel(got, ref), 1e-5) << dtype_name(t) << " Cin " << Cin << ", C " << C << ", P " << P
                                   << (embed ? ", embedding, T " + std::to_string(T) : "");
}

}  // namespace

TEST(KernelsCuda, Conv1x1GluWgmmaMatchesTheModule) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    if (!conv_glu_wgmma_available(0)) GTEST_SKIP() << "no sm_90a device";
    for (DType t : {DType::F16, DType::BF16}) {
        // The first encoder's (48 -> 2 x 48, with the embedding), the second's (96 -> 2 x 96:
        // two GLU tiles), a partial GLU tile and position tile, several tiles a warpgroup.
        conv1x1_glu_case(t, 2, 48, 48, 1000, true);
        conv1x1_glu_case(t, 1, 96, 96, 777, false);
        conv1x1_glu_case(t, 3, 32, 40, 130, true);
        conv1x1_glu_case(t, 2, 48, 48, 6 * 336, true, 336);  // the model's rows (336 frames), tiles across two
        conv1x1_glu_case(t, 1, 48, 40, 1000, true, 128);     // rows of one tile, a partial last row
        conv1x1_glu_case(t, 2, 16, 16, 70001, false);
        // The two-warpgroup variants short of 96 channels.
        conv1x1_glu_case(t, 1, 64, 48, 300, false);
        conv1x1_glu_case(t, 1, 80, 24, 257, true);
    }
}

TEST(KernelsCuda, ConvGluWgmmaMatchesTheModule) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    if (!conv_glu_wgmma_available(0)) GTEST_SKIP() << "no sm_90a device";
    conv_glu_cases(true);
}

TEST(KernelsCuda, ConvGluMatchesTheModule) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    conv_glu_cases(false);
    Ctx f32;
    f32.gemm = DType::F32;
    ConvWeight w;
    w.cin = 16, w.cout = 32, w.kh = 3, w.kw = 3, w.taps = &w;
    ConvGeom g;
    g.kh = 3, g.kw = 3, g.ph = 1, g.pw = 1;
    EXPECT_FALSE(conv_glu_takes(f32, w, g));  // float32 keeps the exact GEMM path
    Ctx f16 = f32;
    f16.gemm = DType::F16;
    EXPECT_TRUE(conv_glu_takes(f16, w, g));
    w.cin = 24, w.cout = 48;
    EXPECT_FALSE(conv_glu_takes(f16, w, g));  // channels not a multiple of 16
    w.cin = 192, w.cout = 384;
    EXPECT_FALSE(conv_glu_takes(f16, w, g));  // wide rewrites stay on cuBLAS
    w.cin = 16, w.cout = 32, w.kh = 1, w.kw = 1;
    g.kh = 1, g.kw = 1, g.ph = 0, g.pw = 0;
    EXPECT_FALSE(conv_glu_takes(f16, w, g));  // the encoders' 1x1 rewrites too
}

namespace {

// A decoder's transposed conv (Cin -> C, kernel kh x kw) and the next
// decoder's rewrite (C -> 2 C, rkh x rkw, its per-tap weights built), exact
// in float16 and bfloat16; seeds seed .. seed + 3.
struct DecoderPairWeights {
    ConvWeight tw, rw;
};
DecoderPairWeights decoder_pair_weights(Gpu& gpu, const Ctx& ctx, DType t, int64_t Cin, int64_t C, int kh, int kw,
                                        int rkh, int rkw, uint32_t seed) {
    DecoderPairWeights d;
    d.tw.w = put_as(gpu, exact_random(size_t(Cin * C * kh * kw), seed), t);
    d.tw.bias = gpu.put(random(size_t(C), seed + 1));
    d.tw.cin = int(Cin), d.tw.cout = int(C), d.tw.kh = kh, d.tw.kw = kw;
    const int taps = rkh * rkw;
    const std::vector<float> gw = exact_random(size_t(2 * C * C * taps), seed + 2);
    d.rw.w = put_as(gpu, gw, t), d.rw.bias = gpu.put(random(size_t(2 * C), seed + 3));
    d.rw.cin = int(C), d.rw.cout = int(2 * C), d.rw.kh = rkh, d.rw.kw = rkw;
    d.rw.taps = gpu.arena.alloc_bytes(gw.size() * dtype_bytes(t));
    conv_weight_taps(ctx, gpu.put(gw), const_cast<void*>(d.rw.taps), t, 2 * C, C, taps);
    return d;
}

}  // namespace

// A frequency decoder's transposed conv writing the next rewrite's packed
// input (pack_columns) gives the conv_glu of the stored path (col2im with
// GELU, then conv_glu's own pack of x + skip) bit for bit.
TEST(KernelsCuda, PackedInputFromColumnsEqualsTheStoredPath) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    for (DType t : {DType::F16, DType::BF16})
        for (const auto& [C, W] : {std::pair<int64_t, int64_t>{16, 16}, {48, 40}, {96, 336}}) {
            Gpu gpu;
            Ctx ctx = gpu.ctx(t);
            const int64_t B = 2, Cin = 24, H = 5, kh = 8, sh = 4, h0 = 2, Hc = (H - 1) * sh + kh - 2 * h0;
            const DecoderPairWeights pair = decoder_pair_weights(gpu, ctx, t, Cin, C, int(kh), 1, 3, 3, 31);
            const ConvWeight &tw = pair.tw, &rw = pair.rw;
            ConvGeom g;
            g.kh = 3, g.kw = 3, g.ph = 1, g.pw = 1;
            ASSERT_TRUE(conv_glu_takes(ctx, rw, g));
            ASSERT_TRUE(pack_columns_fits(ctx, C, W));
            const DTensor in{gpu.put(random(size_t(B * Cin * H * W), 35)), B, Cin, H, W};
            const float* skip = gpu.put(random(size_t(B * C * Hc * W), 36));
            // Stored: z = GELU(conv_transpose(in)), then conv_glu(z + skip).
            const DTensor z{gpu.arena.alloc<float>(B * C * Hc * W), B, C, Hc, W};
            conv_transpose2d(ctx, in, tw, int(sh), 1, h0, 0, z, Act::Gelu);
            const DTensor stored{gpu.arena.alloc<float>(z.numel()), B, C, Hc, W};
            conv_glu(ctx, z, skip, rw, stored);
            // Packed straight from the columns.
            void* xp = gpu.arena.alloc_bytes(conv_glu_packed_bytes(ctx, B, C, Hc * W));
            const ColumnSink sink = [&](const void* cols, DType ct, int64_t ld, int64_t b0, int64_t nb) {
                pack_columns(ctx, cols, ct, ld, tw.bias, Act::Gelu, b0, nb, C, H, W, int(kh), int(sh), h0, Hc, skip,
                             xp);
            };
            const DTensor shape{nullptr, B, C, Hc, W};
            conv_transpose2d(ctx, in, tw, int(sh), 1, h0, 0, shape, Act::None, nullptr, &sink);
            const DTensor packed{gpu.arena.alloc<float>(z.numel()), B, C, Hc, W};
            conv_glu_packed(ctx, xp, shape, rw, packed);
            EXPECT_EQ(gpu.get(packed.p, size_t(z.numel())), gpu.get(stored.p, size_t(z.numel())))
                << dtype_name(t) << " C " << C << " W " << W;
        }
}

// The same between two time decoders (pack_columns_w): the transposed conv
// [1, 8] of stride 4 cropped to [w0, w0 + Wc), then a 1 x 3 rewrite; the
// stored path's col2im (col2im_w_pairs_kernel) and pack give the same bits.
TEST(KernelsCuda, PackedInputFromTimeColumnsEqualsTheStoredPath) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    struct Case {
        int64_t C, W, w0, Wc;
    };
    // A block's 128 outputs and less, the whole uncropped row, several channel tiles, a partial one,
    // W a multiple of 8 (the thread of columns W .. W + 7 takes the row's last outputs from column W - 1,
    // as the model's crop [2, 4 W + 2) asks).
    for (DType t : {DType::F16, DType::BF16})
        for (const Case& k : {Case{16, 37, 2, 4 * 36 + 8 - 4}, Case{48, 300, 2, 1190}, Case{96, 70, 0, 4 * 69 + 8},
                              Case{80, 41, 5, 100}, Case{48, 40, 2, 160}}) {
            Gpu gpu;
            Ctx ctx = gpu.ctx(t);
            const int64_t B = 3, Cin = 24, C = k.C, W = k.W;
            const DecoderPairWeights pair = decoder_pair_weights(gpu, ctx, t, Cin, C, 1, 8, 1, 3, 41);
            const ConvWeight &tw = pair.tw, &rw = pair.rw;
            ConvGeom g;
            g.kh = 1, g.kw = 3, g.ph = 0, g.pw = 1;
            ASSERT_TRUE(conv_glu_takes(ctx, rw, g));
            ASSERT_TRUE(pack_columns_w_fits(ctx, C));
            const DTensor in{gpu.put(random(size_t(B * Cin * W), 45)), B, Cin, 1, W};
            const float* skip = gpu.put(random(size_t(B * C * k.Wc), 46));
            const DTensor z{gpu.arena.alloc<float>(B * C * k.Wc), B, C, 1, k.Wc};
            conv_transpose2d(ctx, in, tw, 1, 4, 0, k.w0, z, Act::Gelu);
            const DTensor stored{gpu.arena.alloc<float>(z.numel()), B, C, 1, k.Wc};
            conv_glu(ctx, z, skip, rw, stored);
            void* xp = gpu.arena.alloc_bytes(conv_glu_packed_bytes(ctx, B, C, k.Wc));
            const ColumnSink sink = [&](const void* cols, DType ct, int64_t ld, int64_t b0, int64_t nb) {
                pack_columns_w(ctx, cols, ct, ld, tw.bias, Act::Gelu, b0, nb, C, W, k.w0, k.Wc, skip, xp);
            };
            const DTensor shape{nullptr, B, C, 1, k.Wc};
            conv_transpose2d(ctx, in, tw, 1, 4, 0, k.w0, shape, Act::None, nullptr, &sink);
            const DTensor packed{gpu.arena.alloc<float>(z.numel()), B, C, 1, k.Wc};
            conv_glu_packed(ctx, xp, shape, rw, packed);
            EXPECT_EQ(gpu.get(packed.p, size_t(z.numel())), gpu.get(stored.p, size_t(z.numel())))
                << dtype_name(t) << " C " << C << " W " << W << " w0 " << k.w0 << " Wc " << k.Wc;
        }
}

// The last frequency decoder's columns straight into the C2R input
// (Spectral::spectrum_from_columns) give the stored path's stems (col2im
// into z, then istft_add's own pack) bit for bit, in every column type.
TEST(KernelsCuda, SpectrumFromColumnsEqualsTheStoredPath) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    for (DType t : {DType::F32, DType::F16, DType::BF16}) {
        Gpu gpu;
        Ctx ctx = gpu.ctx(t);
        const int nfft = 256;
        const int64_t L = 64 * 40;  // 40 frames of hop 64
        Spectral spectral(nfft, L);
        const int64_t T = spectral.frames(), bins = spectral.bins();
        const int64_t B = 2, N = 3, Cin = 8, kh = 8, sh = 4, h0 = 2, H = (bins + 2 * h0 - kh) / sh + 1;
        ASSERT_TRUE(spectral.spectrum_from_columns_fits(int(kh), int(sh)));
        ConvWeight tw;
        tw.w = put_as(gpu, t == DType::F32 ? random(size_t(Cin * 2 * N * kh), 41, 0.3f)
                                          : exact_random(size_t(Cin * 2 * N * kh), 41),
                      t);
        tw.bias = gpu.put(random(size_t(2 * N), 42));
        tw.cin = int(Cin), tw.cout = int(2 * N), tw.kh = int(kh), tw.kw = 1;
        const DTensor in{gpu.put(random(size_t(B * Cin * H * T), 43)), B, Cin, H, T};
        const float* xt = gpu.put(random(size_t(B * N * L), 44));
        const double* z_stats = gpu.put(std::vector<double>{0.1, -0.2, 1.5, 0.7});
        const double* xt_stats = gpu.put(std::vector<double>{-0.05, 0.3, 0.9, 1.2});
        // Stored: z = conv_transpose(in), then istft_add.
        const DTensor z{gpu.arena.alloc<float>(B * 2 * N * bins * T), B, 2 * N, bins, T};
        conv_transpose2d(ctx, in, tw, int(sh), 1, h0, 0, z, Act::None);
        float* stored = gpu.arena.alloc<float>(B * N * L);
        spectral.istft_add(ctx, B, N, z.p, z_stats, xt, xt_stats, stored);
        // From the columns.
        cufftComplex* spec = spectral.alloc_spectrum(ctx, B, N);
        const ColumnSink sink = [&](const void* cols, DType ct, int64_t ld, int64_t b0, int64_t nb) {
            spectral.spectrum_from_columns(ctx, cols, ct, ld, tw.bias, B, b0, nb, N, H, int(kh), int(sh), h0, z_stats,
                                           spec);
        };
        conv_transpose2d(ctx, in, tw, int(sh), 1, h0, 0, DTensor{nullptr, B, 2 * N, bins, T}, Act::None, nullptr,
                         &sink);
        float* direct = gpu.arena.alloc<float>(B * N * L);
        spectral.istft_add_spectrum(ctx, B, N, spec, xt, xt_stats, direct);
        EXPECT_EQ(gpu.get(direct, size_t(B * N * L)), gpu.get(stored, size_t(B * N * L))) << dtype_name(t);
    }
}

// A frequency transposed conv (kernel 8, stride 4, rows cropped by 2) in
// double: out[b][c][k][t] = bias[c] + its two taps, k < rows.
std::vector<double> freq_transposed_reference(const std::vector<float>& x, const std::vector<float>& w,
                                              const std::vector<float>& bias, int64_t B, int cin, int cout,
                                              int64_t H, int64_t T, int64_t ld, int64_t rows) {
    const int kh = 8, sh = 4, h0 = 2;
    std::vector<double> out(size_t(B * cout * rows * T));
    for (int64_t b = 0; b < B; b++)
        for (int c = 0; c < cout; c++)
            for (int64_t k = 0; k < rows; k++)
                for (int64_t t = 0; t < T; t++) {
                    double s = bias[size_t(c)];
                    const int64_t ho = k + h0;
                    for (int kk = 0; kk < kh; kk++) {
                        if (ho < kk || (ho - kk) % sh != 0 || (ho - kk) / sh >= H) continue;
                        const int64_t hi = (ho - kk) / sh;
                        for (int ci = 0; ci < cin; ci++)
                            s += double(x[size_t((b * cin + ci) * ld + hi * T + t)]) * w[size_t((ci * cout + c) * kh + kk)];
                    }
                    out[size_t(((b * cout + c) * rows + k) * T + t)] = s;
                }
    return out;
}

// The last frequency decoder's transposed conv straight into the C2R input
// on the tensor cores (decoder_spectrum) against the module in double:
// exact_random operands make every product and sum exact in float32.
void decoder_spectrum_case(DType t, int cout, int64_t B, int64_t H, int64_t T, int64_t ld_extra) {
    Gpu gpu;
    Ctx ctx = gpu.ctx(t);
    const int cin = 48, n = cout / 2;
    const int64_t bins = 4 * H, ld = H * T + ld_extra;
    const std::vector<float> x = exact_random(size_t(B * cin * ld), 51), w = exact_random(size_t(cin * cout * 8), 52);
    const std::vector<float> bias = random(size_t(cout), 53);
    std::vector<double> stats(size_t(2 * B));  // {mean[B], std[B]}
    for (int64_t b = 0; b < B; b++) {
        stats[size_t(b)] = 0.1 * double(b + 1) * (b % 2 ? -1 : 1);
        stats[size_t(B + b)] = 0.5 + 0.3 * double(b);
    }
    FreqTransposedArgs a;
    a.x = put_as(gpu, x, t), a.ld = ld, a.weight = put_as(gpu, w, t), a.bias = gpu.put(bias);
    a.B = B, a.H = H, a.T = T, a.rows = bins, a.cin = cin, a.cout = cout, a.kh = 8, a.sh = 4, a.h0 = 2;
    const int64_t count = B * n * T * (bins + 1);
    cufftComplex* spec = reinterpret_cast<cufftComplex*>(gpu.arena.alloc<float>(2 * count));
    ASSERT_TRUE(decoder_spectrum_fits(ctx, a));
    FD_CUDA(cudaMemset(spec, 0x7f, size_t(count) * sizeof(cufftComplex)));  // every value must be written
    decoder_spectrum(ctx, a, gpu.put(stats), spec);
    const std::vector<float> got = gpu.get(reinterpret_cast<const float*>(spec), size_t(2 * count));
    const std::vector<double> z = freq_transposed_reference(x, w, bias, B, cin, cout, H, T, ld, bins);
    // (b, complex channel, frame, bin) denormalised; Im(DC) and the Nyquist bin zero.
    double worst = 0.0;
    for (int64_t b = 0; b < B; b++)
        for (int nn = 0; nn < n; nn++)
            for (int64_t tt = 0; tt < T; tt++)
                for (int64_t k = 0; k <= bins; k++) {
                    double re = 0.0, im = 0.0;
                    if (k < bins) {
                        const double sd = stats[size_t(B + b)], mean = stats[size_t(b)];
                        re = z[size_t(((b * cout + 2 * nn) * bins + k) * T + tt)] * sd + mean;
                        if (k > 0) im = z[size_t(((b * cout + 2 * nn + 1) * bins + k) * T + tt)] * sd + mean;
                    }
                    const size_t at = 2 * size_t(((b * n + nn) * T + tt) * (bins + 1) + k);
                    worst = std::max({worst, std::abs(got[at] - re) / (1.0 + std::abs(re)),
                                      std::abs(got[at + 1] - im) / (1.0 + std::abs(im))});
                }
    EXPECT_LT(worst, 2e-6) << dtype_name(t) << " Cout " << cout << " H " << H << " T " << T;
}

// The second-to-last decoder's transposed conv straight into the next
// rewrite's packed input (decoder_packed): GELU, + skip, rounded once.
void decoder_packed_case(DType t, int64_t B, int64_t H, int64_t T, int64_t ld_extra) {
    Gpu gpu;
    Ctx ctx = gpu.ctx(t);
    const int cin = 96, cout = 48;
    const int64_t rows = 4 * H, ld = H * T + ld_extra;
    const std::vector<float> x = exact_random(size_t(B * cin * ld), 61), w = exact_random(size_t(cin * cout * 8), 62);
    const std::vector<float> bias = random(size_t(cout), 63), skip = random(size_t(B * cout * rows * T), 64);
    FreqTransposedArgs a;
    a.x = put_as(gpu, x, t), a.ld = ld, a.weight = put_as(gpu, w, t), a.bias = gpu.put(bias);
    a.B = B, a.H = H, a.T = T, a.rows = rows, a.cin = cin, a.cout = cout, a.kh = 8, a.sh = 4, a.h0 = 2;
    ASSERT_TRUE(decoder_packed_fits(ctx, a));
    const int64_t count = B * rows * T * cout;
    void* xp = gpu.arena.alloc_bytes(size_t(count) * dtype_bytes(t));
    decoder_packed(ctx, a, gpu.put(skip), xp);
    const std::vector<float> got = get_as(gpu, xp, t, size_t(count));
    const std::vector<double> z = freq_transposed_reference(x, w, bias, B, cin, cout, H, T, ld, rows);
    const double ulp = t == DType::BF16 ? 1.0 / 256 : 1.0 / 2048;  // half an ulp of the rounding, relative
    double worst = 0.0;
    for (int64_t b = 0; b < B; b++)
        for (int c = 0; c < cout; c++)
            for (int64_t k = 0; k < rows; k++)
                for (int64_t tt = 0; tt < T; tt++) {
                    const size_t in = size_t(((b * cout + c) * rows + k) * T + tt);
                    const double v = z[in], ref = 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))) + skip[in];
                    const double g = got[size_t(((b * rows + k) * T + tt) * cout + c)];
                    worst = std::max(worst, std::abs(g - ref) / (1e-3 + std::abs(ref)));
                }
    EXPECT_LT(worst, ulp * 1.01) << dtype_name(t) << " H " << H << " T " << T;
}

TEST(KernelsCuda, FreqTransposedMatchesTheModule) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    for (DType t : {DType::F16, DType::BF16}) {
        decoder_spectrum_case(t, 24, 2, 9, 32, 0);   // htdemucs_6s: 6 sources x 2 channels x (re, im)
        decoder_spectrum_case(t, 16, 3, 20, 48, 8);  // htdemucs: 4 sources; rows apart by more than H x T
        decoder_spectrum_case(t, 24, 1, 17, 16, 0);  // one tile of frames, rows past the last full tile
        decoder_packed_case(t, 2, 9, 32, 0);
        decoder_packed_case(t, 1, 17, 48, 8);
    }
    // More tiles than persistent blocks (two an SM for the spectrum, one for the packed
    // kernel: 340 and 156 tiles on a 132-SM H200): the next tile's input loaded while a
    // block computes one, its buffers and stage reused.
    decoder_spectrum_case(DType::F16, 24, 5, 128, 64, 0);
    decoder_packed_case(DType::BF16, 3, 96, 64, 0);
    Ctx f32;
    f32.gemm = DType::F32;
    FreqTransposedArgs a;
    a.ld = 9 * 32, a.B = 1, a.H = 9, a.T = 32, a.rows = 36, a.cin = 48, a.cout = 24, a.kh = 8, a.sh = 4, a.h0 = 2;
    EXPECT_FALSE(decoder_spectrum_fits(f32, a));  // float32 keeps the exact GEMM path
    Ctx f16 = f32;
    f16.gemm = DType::F16;
    EXPECT_TRUE(decoder_spectrum_fits(f16, a));
    EXPECT_FALSE(decoder_packed_fits(f16, a));  // 48 -> 24 channels: the spectrum's only
    a.T = 40, a.ld = 9 * 40;
    EXPECT_FALSE(decoder_spectrum_fits(f16, a));  // frames not a multiple of 16
}

TEST(KernelsCuda, TransposedConvolutionWithCrop) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    for (DType t : {DType::F32, DType::F16, DType::BF16}) {
        // The frequency decoders: [8, 1] kernels, stride 4 over H, rows cropped both sides.
        transposed_case(t, {5, 7, 8, 1, 4, 1, 2, (5 - 1) * 4 + 8 - 4, 0, 7});
        // The time decoders: [1, 8] kernels, stride 4 over W, a window starting past 0, rows of
        // more than one overlap-add run (1204 positions).
        transposed_case(t, {1, 300, 1, 8, 1, 4, 0, 1, 2, (300 - 1) * 4 + 8 - 5});
        // The whole row (its last outputs from the tap before the end alone), and a window
        // that starts mid-group and ends early.
        transposed_case(t, {1, 300, 1, 8, 1, 4, 0, 1, 0, (300 - 1) * 4 + 8});
        transposed_case(t, {1, 37, 1, 8, 1, 4, 0, 1, 3, 140});
        // Rows of a multiple of 8 positions: the vectorised overlap-add along H.
        transposed_case(t, {6, 16, 8, 1, 4, 1, 2, (6 - 1) * 4 + 8 - 4, 0, 16});
        // 300-position rows (not a multiple of 8): scalar runs of 3 positions per thread.
        transposed_case(t, {3, 300, 8, 1, 4, 1, 2, (3 - 1) * 4 + 8 - 4, 0, 300});
    }
}

TEST(KernelsCuda, ConvolutionWithGluInTheOperandType) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    for (DType t : {DType::F16, DType::BF16}) {
        conv_glu_case(t, 1, 1, 3, 37);  // the encoders' 1x1 rewrite (rows padded to 8 values)
        conv_glu_case(t, 3, 3, 6, 40);  // the frequency decoders' 3x3 rewrite (im2col, unpadded rows, vector GLU)
        conv_glu_case(t, 1, 3, 1, 301);  // the time decoders' 1x3 rewrite
        conv_glu_case(t, 1, 1, 2, 48);   // rows of a multiple of 8: the vectorised GLU
    }
}

TEST(KernelsCuda, BiasActivationInPlace) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    for (DType t : {DType::F16, DType::BF16})
        for (int64_t C : {16, 12}) {  // vectorised rows, scalar rows
            Gpu gpu;
            const int64_t rows = 37;
            const std::vector<float> x = exact_random(size_t(rows * C), 14), bias = exact_random(size_t(C), 15);
            void* d = put_as(gpu, x, t);
            bias_act_inplace(gpu.ctx(t), d, t, gpu.put(bias), rows, C, 1, Act::Gelu);
            const auto got = get_as(gpu, d, t, x.size());
            std::vector<double> ref(x.size());
            for (size_t i = 0; i < x.size(); i++) {
                const double v = double(x[i]) + bias[i % size_t(C)];
                ref[i] = 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
            }
            const double unit = t == DType::F16 ? 0x1p-11 : 0x1p-8;
            EXPECT_LE(rel(got, ref), unit) << dtype_name(t) << " C " << C;
        }
}

// The transformer's projections with the bias in cuBLASLt's epilogue:
// y = x W^T + b rounded once from float32 (inputs exact in the operand type).
TEST(KernelsCuda, LinearWithTheBiasInTheEpilogue) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    for (DType t : {DType::F16, DType::BF16})
        for (const auto& [rows, in, out] : {std::tuple<int64_t, int64_t, int64_t>{37, 48, 24}, {300, 384, 1152}}) {
            Gpu gpu;
            const std::vector<float> x = exact_random(size_t(rows * in), 21), w = exact_random(size_t(out * in), 22),
                                     bias = exact_random(size_t(out), 23);
            void* y = gpu.arena.alloc_bytes(size_t(rows * out) * dtype_bytes(t));
            ASSERT_TRUE(linear_bias_as(gpu.ctx(t), put_as(gpu, x, t), rows, in, put_as(gpu, w, t), out,
                                       put_as(gpu, bias, t), y, t))
                << "no cuBLASLt algorithm for " << dtype_name(t);
            const auto got = get_as(gpu, y, t, size_t(rows * out));
            std::vector<double> ref(got.size());
            for (int64_t r = 0; r < rows; r++)
                for (int64_t o = 0; o < out; o++) {
                    double v = bias[size_t(o)];
                    for (int64_t k = 0; k < in; k++) v += double(x[size_t(r * in + k)]) * w[size_t(o * in + k)];
                    ref[size_t(r * out + o)] = v;
                }
            const double unit = t == DType::F16 ? 0x1p-11 : 0x1p-8;
            EXPECT_LE(rel(got, ref), unit) << dtype_name(t) << " " << rows << " x " << in << " -> " << out;
        }
    // float32 never takes it (no rounding to spare).
    Gpu gpu;
    EXPECT_FALSE(linear_bias_as(gpu.ctx(DType::F32), nullptr, 4, 4, nullptr, 4, nullptr, nullptr, DType::F32));
}

// A first encoder's convolution (kernel 8, stride 4, padding 2, along H or
// along W for the time branch, whose input is zero-extended to a multiple
// of the stride) with exact_random weights and, in float16 / bfloat16, the
// weight's biased copy (DeviceWeights::biased: the bias as column K).
struct EncoderConv {
    ConvGeom g;
    int64_t Wl = 0;
    std::vector<float> w, bias;
    ConvWeight cw;
};
EncoderConv encoder_conv(Gpu& gpu, DType t, int64_t cin, int64_t cout, int64_t W, bool time, uint32_t seed) {
    EncoderConv e;
    const int k = 8;
    if (time) e.g.sw = 4, e.g.pw = 2; else e.g.sh = 4, e.g.ph = 2;
    const int64_t K = cin * k, Kb = biased_columns(K);
    e.Wl = time && W % 4 ? W + 4 - W % 4 : W;
    e.w = exact_random(size_t(cout * K), seed), e.bias = exact_random(size_t(cout), seed + 1);
    std::vector<float> wb(size_t(cout * Kb), 0.0f);
    for (int64_t o = 0; o < cout; o++) {
        std::copy_n(e.w.begin() + o * K, K, wb.begin() + o * Kb);
        wb[size_t(o * Kb + K)] = e.bias[size_t(o)];
    }
    e.cw.cout = int(cout), e.cw.cin = int(cin), e.cw.kh = time ? 1 : k, e.cw.kw = time ? k : 1;
    e.cw.w = put_as(gpu, e.w, t), e.cw.bias = gpu.put(e.bias);
    e.cw.biased = t == DType::F32 ? nullptr : put_as(gpu, wb, t);
    return e;
}

// act(conv(x) + bias) of e in double, x [B, cin, H, W] (zeros outside it,
// past W too: the time encoders' zero extension).
std::vector<double> encoder_conv_reference(const EncoderConv& e, const std::vector<float>& x, int64_t B, int64_t H,
                                           int64_t W, int64_t Ho, int64_t Wo, Act act) {
    const int64_t cin = e.cw.cin, cout = e.cw.cout, k = 8, K = cin * k;
    const bool time = e.cw.kw == k;
    std::vector<double> ref(size_t(B * cout * Ho * Wo));
    for (int64_t b = 0; b < B; b++)
        for (int64_t o = 0; o < cout; o++)
            for (int64_t ho = 0; ho < Ho; ho++)
                for (int64_t wo = 0; wo < Wo; wo++) {
                    double v = e.bias[size_t(o)];
                    for (int64_t ci = 0; ci < cin; ci++)
                        for (int64_t tap = 0; tap < k; tap++) {
                            const int64_t h = time ? ho : ho * e.g.sh - e.g.ph + tap;
                            const int64_t ww = time ? wo * e.g.sw - e.g.pw + tap : wo;
                            if (h < 0 || h >= H || ww < 0 || ww >= W) continue;
                            v += double(e.w[size_t(o * K + ci * k + tap)]) *
                                 x[size_t(((b * cin + ci) * H + h) * W + ww)];
                        }
                    ref[size_t(((b * cout + o) * Ho + ho) * Wo + wo)] =
                        act == Act::Gelu ? 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))) : v;
                }
    return ref;
}

// conv2d of x [3, cin, H, W] with an input norm applied as it reads
// (conv2d's in_norm) gives the floats of normalize_items, then conv2d: bit
// for bit, in ctx's path.
void expect_normalised_as_read(Gpu& gpu, const Ctx& ctx, const EncoderConv& e, const std::vector<float>& x,
                               int64_t cin, int64_t H, int64_t W, const std::string& what) {
    const int64_t B = 3, cout = e.cw.cout;
    const InputNorm norm{gpu.put(std::vector<double>{0.3, -0.1, 0.05}), gpu.put(std::vector<double>{1.25, 0.8, 3.0})};
    int64_t Ho = 0, Wo = 0;
    conv_output_size(H, e.Wl, e.cw, e.g, &Ho, &Wo);
    const DTensor before{gpu.put(x), B, cin, H, W}, raw{gpu.put(x), B, cin, H, W};
    normalize_items(ctx, before.p, B, cin * H * W, norm);
    const DTensor a{gpu.arena.alloc<float>(B * cout * Ho * Wo), B, cout, Ho, Wo};
    const DTensor b{gpu.arena.alloc<float>(B * cout * Ho * Wo), B, cout, Ho, Wo};
    conv2d(ctx, before, e.Wl, e.cw, e.g, a, Act::Gelu);
    conv2d(ctx, raw, e.Wl, e.cw, e.g, b, Act::Gelu, &norm);
    EXPECT_EQ(gpu.get(b.p, size_t(b.numel())), gpu.get(a.p, size_t(a.numel()))) << what;
}

// The encoders' convolutions with the bias carried by the GEMM (a column of
// the weight's biased copy against rows of ones in the im2col operand) and
// the GELU in cuBLASLt's epilogue (its tanh form: within a few float16 steps
// of the erf form at these magnitudes), and without (biased_conv off), against
// a double reference; with no activation too. Output rows of 16 bytes (taken),
// and not (the time encoders' odd lengths, which keep the bias pass); the time
// cases zero-extend the input to a multiple of the stride, as the encoders do.
TEST(KernelsCuda, ConvolutionWithTheBiasInItsGemm) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    for (DType t : {DType::F16, DType::BF16})
        for (const auto& [cin, cout, H, W, time] :
             {std::tuple<int64_t, int64_t, int64_t, int64_t, bool>{4, 48, 64, 12, false},
              {2, 24, 1, 4013, true},
              {2, 24, 1, 4005, true}}) {
            Gpu gpu;
            const int64_t B = 3, Kb = biased_columns(cin * 8);
            const std::vector<float> x = exact_random(size_t(B * cin * H * W), 41);
            const EncoderConv e = encoder_conv(gpu, t, cin, cout, W, time, 42);
            const ConvGeom& g = e.g;
            const int64_t Wl = e.Wl;
            const ConvWeight& cw = e.cw;
            const DTensor xd{gpu.put(x), B, cin, H, W};
            int64_t Ho = 0, Wo = 0;
            conv_output_size(H, Wl, cw, g, &Ho, &Wo);
            const bool aligned = Ho * Wo % 4 == 0;
            for (const bool biased : {false, true})
                for (const Act act : {Act::Gelu, Act::None}) {
                    Ctx ctx = gpu.ctx(t);
                    ctx.biased_conv = biased;
                    EXPECT_EQ(conv2d_bias_in_gemm(ctx, xd, Wl, cw, g), biased && aligned);
                    if (biased && aligned && act == Act::Gelu) {  // the epilogue is there for this shape
                        Ctx dry = ctx;
                        dry.dry = true;
                        void* cols = gpu.arena.alloc_bytes(size_t(B * Kb * Wo * Ho) * 2 + 256);
                        float* y = gpu.arena.alloc<float>(B * cout * Ho * Wo);
                        EXPECT_TRUE(gemm_act_lt(dry, cout, Ho * Wo, Kb, {cw.biased, Kb, 0},
                                                {cols, Ho * Wo, Kb * Ho * Wo}, y, Ho * Wo, cout * Ho * Wo, B, act))
                            << dtype_name(t) << " no cuBLASLt GELU epilogue for the shape";
                    }
                    const DTensor out{gpu.arena.alloc<float>(B * cout * Ho * Wo), B, cout, Ho, Wo};
                    conv2d(ctx, xd, Wl, cw, g, out, act);
                    const auto got = gpu.get(out.p, size_t(out.numel()));
                    const std::vector<double> ref = encoder_conv_reference(e, x, B, H, W, Ho, Wo, act);
                    const double unit = t == DType::F16 ? 0x1p-11 : 0x1p-8;
                    EXPECT_LE(rel(got, ref), 2 * unit) << dtype_name(t) << (time ? " time " : " freq ") << W
                                                       << (biased ? " biased" : "")
                                                       << (act == Act::Gelu ? " gelu" : " none");
                }
        }
}

// The first encoders' input normalisation applied by im2col as it reads
// (conv2d's in_norm) gives the floats of normalize_items, then the
// convolution: through the biased GEMM, the plain im2col GEMM (the general,
// unit-stride runs and strided-row kernels) and the implicit GEMM (x
// normalised first), in every type.
TEST(KernelsCuda, ConvolutionNormalisesItsInputAsItReads) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    for (DType t : {DType::F32, DType::F16, DType::BF16})
        for (const auto& [cin, cout, H, W, time] :
             {std::tuple<int64_t, int64_t, int64_t, int64_t, bool>{4, 48, 64, 12, false},
              {4, 16, 16, 48, false},
              {3, 8, 9, 23, false},
              {2, 24, 1, 4013, true}}) {
            Gpu gpu;
            const int64_t B = 3;
            const std::vector<float> x = random(size_t(B * cin * H * W), 71, 0.8f, 0.3f);
            const EncoderConv e = encoder_conv(gpu, t, cin, cout, W, time, 72);
            for (const bool implicit : {false, true}) {
                if (implicit && t == DType::F32) continue;
                expect_normalised_as_read(gpu, gpu.ctx(t, true, true, false, implicit), e, x, cin, H, W,
                                          std::string(dtype_name(t)) + (time ? " time " : " freq ") +
                                              std::to_string(H) + "x" + std::to_string(W) +
                                              (implicit ? " implicit" : ""));
            }
        }
}

// The time encoder's first convolution straight from its input
// (direct_conv2d, from the weight's float32 copy ConvWeight::w32), chosen by
// conv2d in float16 / bfloat16: against a double reference within the
// operands' rounding (exact operands: only the accumulation order differs),
// the input normalisation as normalize_items gives it, and the shapes it
// refuses (float32 among them).
TEST(KernelsCuda, DirectConvolutionOfTheTimeEncoder) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    for (DType t : {DType::F16, DType::BF16})
        for (const auto& [cin, W] : {std::pair<int64_t, int64_t>{2, 4013}, {1, 1022}}) {
            Gpu gpu;
            const int64_t B = 3, cout = 48;
            const std::vector<float> x = exact_random(size_t(B * cin * W), 91);
            EncoderConv e = encoder_conv(gpu, t, cin, cout, W, true, 92);
            e.cw.w32 = gpu.put(e.w);
            int64_t Ho = 0, Wo = 0;
            conv_output_size(1, e.Wl, e.cw, e.g, &Ho, &Wo);
            Ctx ctx = gpu.ctx(t);
            EXPECT_FALSE(conv2d_bias_in_gemm(ctx, {nullptr, B, cin, 1, W}, e.Wl, e.cw, e.g));
            const DTensor xd{gpu.put(x), B, cin, 1, W};
            for (const Act act : {Act::Gelu, Act::None}) {
                const DTensor out{gpu.arena.alloc<float>(B * cout * Wo), B, cout, 1, Wo};
                conv2d(ctx, xd, e.Wl, e.cw, e.g, out, act);
                EXPECT_LE(rel(gpu.get(out.p, size_t(out.numel())), encoder_conv_reference(e, x, B, 1, W, Ho, Wo, act)),
                          1e-6)
                    << dtype_name(t) << " " << W;
            }
            expect_normalised_as_read(gpu, ctx, e, random(size_t(B * cin * W), 93, 0.8f, 0.3f), cin, 1, W,
                                      std::string(dtype_name(t)) + " " + std::to_string(W) + " normalised");
        }
    {  // 700 items: fewer blocks than position groups, each warp loops over its item's positions
        Gpu gpu;
        const int64_t B = 700, cin = 1, W = 2048, cout = 48;
        const std::vector<float> x = exact_random(size_t(B * cin * W), 94);
        EncoderConv e = encoder_conv(gpu, DType::F16, cin, cout, W, true, 95);
        e.cw.w32 = gpu.put(e.w);
        int64_t Ho = 0, Wo = 0;
        conv_output_size(1, e.Wl, e.cw, e.g, &Ho, &Wo);
        const DTensor out{gpu.arena.alloc<float>(B * cout * Wo), B, cout, 1, Wo};
        conv2d(gpu.ctx(DType::F16), {gpu.put(x), B, cin, 1, W}, e.Wl, e.cw, e.g, out, Act::None);
        EXPECT_LE(rel(gpu.get(out.p, size_t(out.numel())), encoder_conv_reference(e, x, B, 1, W, Ho, Wo, Act::None)),
                  1e-6);
    }
    ConvGeom g;
    EXPECT_TRUE(direct_conv_takes(DType::F16, 2, 48, 1, 8, g));
    EXPECT_FALSE(direct_conv_takes(DType::F16, 4, 48, 8, 1, g));  // along H (the frequency encoder)
    EXPECT_FALSE(direct_conv_takes(DType::F32, 2, 48, 1, 8, g));  // float32: the exact GEMM
    EXPECT_FALSE(direct_conv_takes(DType::F16, 3, 48, 1, 8, g));  // cin
    EXPECT_FALSE(direct_conv_takes(DType::F16, 2, 48, 3, 3, g));  // not 8 taps along W
    EXPECT_FALSE(direct_conv_takes(DType::F16, 2, 24, 1, 8, g));  // outputs
    g.dw = 2;
    EXPECT_FALSE(direct_conv_takes(DType::BF16, 2, 48, 1, 8, g));  // dilation
}

// The second frequency encoder's convolution as an implicit GEMM on
// mma.sync (freq_encoder_conv2d), chosen by conv2d with ctx.freq_encoder_mma:
// against a double reference (exact operands and sums: only the GELU's
// float32 differs) for its channels (48 -> 96) and fewer, tiles that end
// past the last row and past W, blocks that loop over many tiles of several
// steps each (the ring crossing tiles mid-flight), nothing written past the
// output (a NaN guard); an input norm applied first (as normalize_items
// gives it); and the shapes it refuses (the other encoders among them).
TEST(KernelsCuda, SecondFrequencyEncoderOnTheTensorCores) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    for (DType t : {DType::F16, DType::BF16})
        for (const auto& [B, cin, H, W] : {std::tuple<int64_t, int64_t, int64_t, int64_t>{2, 48, 40, 20},
                                           {3, 8, 20, 52},
                                           {12, 8, 128, 336}}) {
            Gpu gpu;
            const int64_t cout = 96;
            const std::vector<float> x = exact_random(size_t(B * cin * H * W), 101);
            const EncoderConv e = encoder_conv(gpu, t, cin, cout, W, false, 102);
            int64_t Ho = 0, Wo = 0;
            conv_output_size(H, e.Wl, e.cw, e.g, &Ho, &Wo);
            Ctx ctx = gpu.ctx(t);
            ctx.freq_encoder_mma = true;
            EXPECT_TRUE(freq_encoder_conv_takes(t, cin, cout, 8, 1, e.g, W, e.Wl));
            EXPECT_FALSE(conv2d_bias_in_gemm(ctx, {nullptr, B, cin, H, W}, e.Wl, e.cw, e.g));
            const DTensor xd{gpu.put(x), B, cin, H, W};
            for (const Act act : {Act::Gelu, Act::None}) {
                const int64_t n = B * cout * Ho * Wo, guard = 64;
                const DTensor out{gpu.arena.alloc<float>(n + guard), B, cout, Ho, Wo};
                FD_CUDA(cudaMemsetAsync(out.p, 0xff, size_t(n + guard) * sizeof(float), gpu.stream));  // NaN
                conv2d(ctx, xd, e.Wl, e.cw, e.g, out, act);
                const std::vector<float> got = gpu.get(out.p, size_t(n + guard));
                EXPECT_LE(rel(std::vector<float>(got.begin(), got.begin() + n),
                              encoder_conv_reference(e, x, B, H, W, Ho, Wo, act)),
                          1e-6)
                    << dtype_name(t) << " " << cin << " channels " << H << "x" << W;
                for (int64_t i = n; i < n + guard; i++) EXPECT_TRUE(std::isnan(got[size_t(i)])) << "written past the output";
            }
            if (B != 3) continue;
            expect_normalised_as_read(gpu, ctx, e, random(size_t(B * cin * H * W), 103, 0.8f, 0.3f), cin, H, W,
                                      std::string(dtype_name(t)) + " " + std::to_string(H) + "x" +
                                          std::to_string(W) + " normalised");
        }
    ConvGeom g;
    g.sh = 4, g.ph = 2;
    EXPECT_TRUE(freq_encoder_conv_takes(DType::F16, 48, 96, 8, 1, g, 336, 336));
    EXPECT_TRUE(freq_encoder_conv_takes(DType::BF16, 48, 96, 8, 1, g, 336, 336));
    EXPECT_FALSE(freq_encoder_conv_takes(DType::F32, 48, 96, 8, 1, g, 336, 336));   // float32: the exact GEMM
    EXPECT_FALSE(freq_encoder_conv_takes(DType::F16, 4, 48, 8, 1, g, 336, 336));    // the first encoder
    EXPECT_FALSE(freq_encoder_conv_takes(DType::F16, 96, 192, 8, 1, g, 336, 336));  // the third
    EXPECT_FALSE(freq_encoder_conv_takes(DType::F16, 2, 96, 8, 1, g, 336, 336));    // cin
    EXPECT_FALSE(freq_encoder_conv_takes(DType::F16, 48, 96, 8, 1, g, 338, 338));   // W not a multiple of 4
    EXPECT_FALSE(freq_encoder_conv_takes(DType::F16, 48, 96, 8, 1, g, 336, 340));   // a zero extension
    EXPECT_FALSE(freq_encoder_conv_takes(DType::F16, 48, 96, 3, 3, g, 336, 336));   // kernel
    g.sh = 2;
    EXPECT_FALSE(freq_encoder_conv_takes(DType::F16, 48, 96, 8, 1, g, 336, 336));   // stride
}

// The transformer's residual with norm_out's statistics taken on the way
// (residual_group_norm_tokens) against residual then group_norm_tokens;
// channels not a multiple of 4 take those two.
TEST(KernelsCuda, ResidualWithTheGroupNormStatistics) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    for (const auto& [B, N, C] : {std::tuple<int64_t, int64_t, int64_t>{3, 37, 384}, {2, 2688, 48}, {2, 11, 6}}) {
        Gpu gpu;
        Ctx ctx = gpu.ctx();
        const std::vector<float> x = random(size_t(B * N * C), 81, 1.0f, 0.2f), y = random(size_t(B * N * C), 82);
        const float* bias = gpu.put(random(size_t(C), 83));
        const float* gamma = gpu.put(random(size_t(C), 84, 0.1f));
        const float* weight = gpu.put(random(size_t(C), 85, 1.0f, 1.0f));
        const float* norm_bias = gpu.put(random(size_t(C), 86));
        const float* yd = gpu.put(y);
        float* a = gpu.put(x);
        float* b = gpu.put(x);
        residual(ctx, a, yd, bias, gamma, B * N, C);
        group_norm_tokens(ctx, a, B, N, C, weight, norm_bias, 1e-5f);
        residual_group_norm_tokens(ctx, b, yd, bias, gamma, B, N, C, weight, norm_bias, 1e-5f);
        const auto ga = gpu.get(a, x.size()), gb = gpu.get(b, x.size());
        double worst = 0.0;
        for (size_t i = 0; i < x.size(); i++) worst = std::max(worst, double(std::abs(ga[i] - gb[i])) / (1.0 + std::abs(ga[i])));
        EXPECT_LT(worst, 1e-6) << B << " x " << N << " x " << C;
    }
}

TEST(KernelsCuda, GroupNormPerRowAndLayerNormAndStats) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    Gpu gpu;
    // Per-row GroupNorm(1) of [B, C, R, W], as the DConv of the frequency branch
    // (rows of 37 values: scalar statistics; of 36: 16-byte loads).
    for (const int64_t W : {37, 36}) {
        const int64_t B = 2, C = 6, R = 5;
        const std::vector<float> x = random(size_t(B * C * R * W), 9, 2.0f, 3.0f);
        const std::vector<float> wt = random(size_t(C), 10, 0.2f, 1.0f), bs = random(size_t(C), 11, 0.1f);
        float* d = gpu.put(x);
        Segments seg;
        seg.B = B, seg.C = C, seg.G = 1, seg.R = R, seg.W = W;
        group_norm(gpu.ctx(), d, seg, gpu.put(wt), gpu.put(bs), 1e-5f, Act::None);
        const auto got = gpu.get(d, x.size());
        std::vector<double> ref(x.size());
        for (int64_t b = 0; b < B; b++)
            for (int64_t r = 0; r < R; r++) {
                double sum = 0, var = 0;
                for (int64_t c = 0; c < C; c++)
                    for (int64_t w = 0; w < W; w++) sum += x[((b * C + c) * R + r) * W + w];
                const double mean = sum / double(C * W);
                for (int64_t c = 0; c < C; c++)
                    for (int64_t w = 0; w < W; w++) {
                        const double v = x[((b * C + c) * R + r) * W + w] - mean;
                        var += v * v;
                    }
                const double inv = 1.0 / std::sqrt(var / double(C * W) + 1e-5);
                for (int64_t c = 0; c < C; c++)
                    for (int64_t w = 0; w < W; w++) {
                        const int64_t i = ((b * C + c) * R + r) * W + w;
                        ref[i] = (x[i] - mean) * inv * wt[c] + bs[c];
                    }
            }
        EXPECT_LE(rel(got, ref), 1e-6) << "group norm per row, W " << W;
    }

    // LayerNorm of rows.
    const int64_t rows = 33, ch = 384;
    const std::vector<float> t = random(size_t(rows * ch), 12, 1.5f, -0.5f);
    const std::vector<float> lw = random(size_t(ch), 13, 0.2f, 1.0f), lb = random(size_t(ch), 14, 0.1f);
    float* dt = gpu.put(t);
    float* dy = gpu.arena.alloc<float>(rows * ch);
    layer_norm(gpu.ctx(), dt, dy, DType::F32, rows, ch, gpu.put(lw), gpu.put(lb), 1e-5f);
    const auto gy = gpu.get(dy, t.size());
    std::vector<double> ry(t.size());
    for (int64_t r = 0; r < rows; r++) {
        double sum = 0, var = 0;
        for (int64_t c = 0; c < ch; c++) sum += t[r * ch + c];
        const double mean = sum / ch;
        for (int64_t c = 0; c < ch; c++) var += (t[r * ch + c] - mean) * (t[r * ch + c] - mean);
        const double inv = 1.0 / std::sqrt(var / ch + 1e-5);
        for (int64_t c = 0; c < ch; c++) ry[r * ch + c] = (t[r * ch + c] - mean) * inv * lw[c] + lb[c];
    }
    EXPECT_LE(rel(gy, ry), 1e-6) << "layer norm";

    // The residual and the LayerNorm after it in one pass, against the double reference and
    // the two separate passes: rows of 384 (three runs of 4 values a lane), 40 (lanes left
    // idle), 520 (runs of 4, up to five a lane), 37 (single values) and 1100 (past the
    // registers: the two passes themselves); float32 (also in place), float16, bfloat16.
    for (const int64_t C : {int64_t(384), int64_t(40), int64_t(520), int64_t(37), int64_t(1100)}) {
        const int64_t n = rows * C;
        const std::vector<float> x0 = random(size_t(n), 16, 1.5f, -0.5f), y = random(size_t(n), 17);
        const std::vector<float> rb = random(size_t(C), 18), rg = random(size_t(C), 19, 0.1f);
        const std::vector<float> nw = random(size_t(C), 20, 0.2f, 1.0f), nb = random(size_t(C), 21, 0.1f);
        std::vector<double> rx(static_cast<size_t>(n)), ref(static_cast<size_t>(n));  // x after the residual (float32 arithmetic), the norm
        for (int64_t r = 0; r < rows; r++) {
            double sum = 0, var = 0;
            for (int64_t c = 0; c < C; c++) {
                const float v = y[size_t(r * C + c)] + rb[size_t(c)];
                rx[size_t(r * C + c)] = x0[size_t(r * C + c)] + rg[size_t(c)] * v;
                sum += rx[size_t(r * C + c)];
            }
            const double mean = sum / double(C);
            for (int64_t c = 0; c < C; c++) var += (rx[size_t(r * C + c)] - mean) * (rx[size_t(r * C + c)] - mean);
            const double inv = 1.0 / std::sqrt(var / double(C) + 1e-5);
            for (int64_t c = 0; c < C; c++)
                ref[size_t(r * C + c)] = (rx[size_t(r * C + c)] - mean) * inv * nw[size_t(c)] + nb[size_t(c)];
        }
        const float *dy2 = gpu.put(y), *db = gpu.put(rb), *dg = gpu.put(rg), *dw = gpu.put(nw), *dnb = gpu.put(nb);
        for (DType type : {DType::F32, DType::F16, DType::BF16}) {
            float *ra = gpu.put(x0), *rb_ = gpu.put(x0);
            void* oa = gpu.arena.alloc_bytes(size_t(n) * dtype_bytes(type));
            void* ob = gpu.arena.alloc_bytes(size_t(n) * dtype_bytes(type));
            residual(gpu.ctx(), ra, dy2, db, dg, rows, C);
            layer_norm(gpu.ctx(), ra, oa, type, rows, C, dw, dnb, 1e-5f);
            residual_layer_norm(gpu.ctx(), rb_, dy2, db, dg, ob, type, rows, C, dw, dnb, 1e-5f);
            const auto xa = gpu.get(ra, size_t(n)), xb = gpu.get(rb_, size_t(n));
            const auto ya = get_as(gpu, oa, type, size_t(n)), yb = get_as(gpu, ob, type, size_t(n));
            const std::string what = "C " + std::to_string(C) + " " + dtype_name(type);
            EXPECT_LE(rel(xb, rx), 2e-7) << "fused residual, " << what;
            const double unit = type == DType::F32 ? 1e-6 : type == DType::F16 ? 0x1p-11 : 0x1p-8;
            EXPECT_LE(rel(ya, ref), unit) << "layer norm, " << what;
            EXPECT_LE(rel(yb, ref), unit) << "fused layer norm, " << what;
            const std::vector<double> ya64(ya.begin(), ya.end());
            EXPECT_LE(rel(yb, ya64), type == DType::F32 ? 1e-7 : 1e-4) << "fused against the two passes, " << what;
            if (type == DType::F32) {  // in place (the post-norm layers' use)
                float* rc = gpu.put(x0);
                residual_layer_norm(gpu.ctx(), rc, dy2, db, dg, rc, type, rows, C, dw, dnb, 1e-5f);
                EXPECT_EQ(gpu.get(rc, size_t(n)), get_as(gpu, ob, type, size_t(n))) << "in place, " << what;
            }
        }
    }

    // Whole-item statistics over many chunks (mean far from zero), unbiased std;
    // contiguous items of 100003 values (scalar) and 100000 (16-byte loads).
    for (const int64_t n : {100003, 100000}) {
        const std::vector<float> big = random(size_t(2 * n), 15, 0.5f, 40.0f);
        double* stats = gpu.arena.alloc<double>(4);
        Segments items;
        items.B = 2, items.W = n;
        segment_stats(gpu.ctx(), gpu.put(big), items, Spread::UnbiasedStd, stats, stats + 2);
        const auto s = gpu.get(stats, 4);
        for (int b = 0; b < 2; b++) {
            double sum = 0, var = 0;
            for (int64_t i = 0; i < n; i++) sum += big[b * n + i];
            const double mean = sum / n;
            for (int64_t i = 0; i < n; i++) var += (big[b * n + i] - mean) * (big[b * n + i] - mean);
            EXPECT_NEAR(s[b], mean, 1e-12 * std::abs(mean));
            EXPECT_NEAR(s[2 + b], std::sqrt(var / (n - 1)), 1e-10);
        }
    }
}

namespace {

// One DConv residual layer in double, as the official module computes it on
// [B * R, C, W]: conv3 (dilated, padding = dilation) -> GroupNorm(1, hidden)
// -> GELU -> 1x1 conv to 2C -> GroupNorm(1, 2C) -> GLU -> LayerScale, added to x.
struct DConvCase {
    int64_t B, C, hidden, R, W;
    int dilation;
};

// A residual layer's random weights (seeded), on the host and on the device.
struct DConvLayerHost {
    std::vector<float> w_in, b_in, n1w, n1b, w_out, b_out, n2w, n2b, scale;
    int dilation;
    DConvLayerHost(int64_t C, int64_t Hd, int d, uint32_t seed) : dilation(d) {
        const int64_t C2 = 2 * C;
        w_in = random(size_t(Hd * C * 3), seed + 22, 0.3f), b_in = random(size_t(Hd), seed + 23, 0.2f);
        n1w = random(size_t(Hd), seed + 24, 0.2f, 1.0f), n1b = random(size_t(Hd), seed + 25, 0.1f);
        w_out = random(size_t(C2 * Hd), seed + 26, 0.5f), b_out = random(size_t(C2), seed + 27, 0.2f);
        n2w = random(size_t(C2), seed + 28, 0.2f, 1.0f), n2b = random(size_t(C2), seed + 29, 0.1f);
        scale = random(size_t(C), seed + 30, 0.5f);
    }
    DConvLayerWeights upload(Gpu& gpu, int C, int Hd) const {
        DConvLayerWeights lw;
        lw.channels = C, lw.hidden = Hd, lw.dilation = dilation;
        lw.in_table = gpu.put(dconv_in_table(w_in.data(), Hd, C));
        lw.in_bias = gpu.put(b_in), lw.in_norm_weight = gpu.put(n1w);
        lw.in_norm_bias = gpu.put(n1b), lw.out_weight = gpu.put(w_out), lw.out_bias = gpu.put(b_out);
        lw.out_norm_weight = gpu.put(n2w), lw.out_norm_bias = gpu.put(n2b), lw.scale = gpu.put(scale);
        lw.out_gram = gpu.put(dconv_out_gram(w_out.data(), b_out.data(), Hd, 2 * C));
        const std::vector<uint32_t> fragments = dconv_out_fragments(w_out.data(), Hd, 2 * C);
        if (!fragments.empty()) lw.out_fragments = gpu.put(fragments);
        const std::vector<uint32_t> in_fragments = dconv_in_fragments(w_in.data(), Hd, C);
        if (!in_fragments.empty()) lw.in_fragments = gpu.put(in_fragments);
        return lw;
    }
    // ref [B, C, R, W] += the layer's branch, in double.
    void reference(std::vector<double>& ref, int64_t B, int64_t C, int64_t Hd, int64_t R, int64_t W) const {
        const int64_t C2 = 2 * C, d = dilation;
        const std::vector<double> x = ref;
        std::vector<double> h(size_t(Hd * W)), y(size_t(C2 * W));
        for (int64_t b = 0; b < B; b++)
            for (int64_t r = 0; r < R; r++) {
                auto at = [&](int64_t c, int64_t w) { return ((b * C + c) * R + r) * W + w; };
                for (int64_t o = 0; o < Hd; o++)
                    for (int64_t w = 0; w < W; w++) {
                        double s = b_in[o];
                        for (int64_t c = 0; c < C; c++)
                            for (int j = 0; j < 3; j++) {
                                const int64_t t = w + (j - 1) * d;
                                if (t >= 0 && t < W) s += double(w_in[(o * C + c) * 3 + j]) * x[at(c, t)];
                            }
                        h[o * W + w] = s;
                    }
                auto norm = [](std::vector<double>& v, int64_t ch, int64_t n, const std::vector<float>& g,
                               const std::vector<float>& bb) {
                    double mean = 0, var = 0;
                    for (double e : v) mean += e;
                    mean /= double(v.size());
                    for (double e : v) var += (e - mean) * (e - mean);
                    const double inv = 1.0 / std::sqrt(var / double(v.size()) + 1e-5);
                    for (int64_t c = 0; c < ch; c++)
                        for (int64_t i = 0; i < n; i++) v[c * n + i] = (v[c * n + i] - mean) * inv * g[c] + bb[c];
                };
                norm(h, Hd, W, n1w, n1b);
                for (double& e : h) e = 0.5 * e * (1.0 + std::erf(e / std::sqrt(2.0)));
                for (int64_t o = 0; o < C2; o++)
                    for (int64_t w = 0; w < W; w++) {
                        double s = b_out[o];
                        for (int64_t i = 0; i < Hd; i++) s += double(w_out[o * Hd + i]) * h[i * W + w];
                        y[o * W + w] = s;
                    }
                norm(y, C2, W, n2w, n2b);
                for (int64_t c = 0; c < C; c++)
                    for (int64_t w = 0; w < W; w++)
                        ref[at(c, w)] += scale[c] * y[c * W + w] / (1.0 + std::exp(-y[(C + c) * W + w]));
            }
    }
};

// The residual branches of `dilations.size()` layers (seeded weights) through
// a row-resident kernel (rows = true: dconv_rows in float32, dconv_rows_tc in
// float16 / bfloat16) or one dconv_layer_thin call per layer, against the
// double reference; relative error of x_out - x_in.
// split: Ctx::dconv_split_warps (several warps a strip in the tensor-core passes).
double dconv_case_error(const DConvCase& k, const std::vector<int>& dilations, bool rows, DType type = DType::F32,
                        bool split = true) {
    Gpu gpu;
    const int64_t B = k.B, C = k.C, Hd = k.hidden, R = k.R, W = k.W;
    const std::vector<float> x = random(size_t(B * C * R * W), 21, 1.0f, 0.2f);
    std::vector<double> ref(x.begin(), x.end());
    std::vector<DConvLayerHost> host;
    std::vector<DConvLayerWeights> layers;
    for (size_t i = 0; i < dilations.size(); i++) {
        host.emplace_back(C, Hd, dilations[i], uint32_t(10 * i));
        host.back().reference(ref, B, C, Hd, R, W);
        layers.push_back(host.back().upload(gpu, int(C), int(Hd)));
    }
    float* dx = gpu.put(x);
    // In float16 / bfloat16 the DConv also writes its result as a GEMM operand.
    Planes copy;
    if (type != DType::F32) copy = operand_planes(gpu, type, B * C, R * W);
    if (rows && type == DType::F32) {
        dconv_rows(gpu.ctx(), layers.data(), int(layers.size()), dx, B, R, W);
    } else if (rows) {
        if (!dconv_rows_tc_fit(gpu.ctx(type), layers.data(), int(layers.size()), W)) {
            ADD_FAILURE() << "dconv_rows_tc does not take C " << C << ", hidden " << Hd << ", W " << W;
            return 1.0;
        }
        dconv_rows_tc(gpu.ctx(type), layers.data(), int(layers.size()), dx, B, R, W, &copy);
    } else {
        Ctx ctx = gpu.ctx(type);
        ctx.dconv_split_warps = split;
        for (size_t i = 0; i < layers.size(); i++)
            dconv_layer_thin(ctx, layers[i], dx, B, R, W, i + 1 == layers.size() && copy.p ? &copy : nullptr);
    }
    if (copy.p)
        expect_operand_rows(gpu, type, copy, gpu.get(dx, x.size()), B * C, R * W,
                            "DConv C " + std::to_string(C) + ", W " + std::to_string(W));
    const auto got = gpu.get(dx, x.size());
    // Against the residual branches alone (x itself is exact in both).
    std::vector<float> branch(got.size());
    std::vector<double> ref_branch(ref.size());
    for (size_t i = 0; i < got.size(); i++) branch[i] = got[i] - x[i], ref_branch[i] = ref[i] - x[i];
    return rel(branch, ref_branch);
}

void dconv_thin_case(const DConvCase& k) {
    ASSERT_TRUE(dconv_layer_thin_fits(int(k.C), int(k.hidden)));
    EXPECT_LE(dconv_case_error(k, {k.dilation}, false), 1e-5)
        << "C " << k.C << ", hidden " << k.hidden << ", R " << k.R << ", W " << k.W;
}

}  // namespace

TEST(KernelsCuda, ThinDConvLayerMatchesTheModule) {
    EXPECT_TRUE(dconv_layer_thin_fits(48, 6));
    EXPECT_TRUE(dconv_layer_thin_fits(96, 12));
    EXPECT_TRUE(dconv_layer_thin_fits(192, 24));
    EXPECT_FALSE(dconv_layer_thin_fits(384, 48));  // the innermost layers keep the GEMM path
    // The in-convolution's table: [C * 3][hidden padded to 8], w [2, 1, 3] -> rows of 8.
    const std::vector<float> w3 = {1, 2, 3, 4, 5, 6};
    const std::vector<float> table = dconv_in_table(w3.data(), 2, 1);
    ASSERT_EQ(table.size(), 24u);
    const std::vector<float> expected = {1, 4, 0, 0, 0, 0, 0, 0, 2, 5, 0, 0, 0, 0, 0, 0, 3, 6, 0, 0, 0, 0, 0, 0};
    EXPECT_EQ(table, expected);
    // The statistics form of W' = [W | b], W [3, 1], b [3]: G = W'^T W', then W''s column sums.
    const std::vector<float> w = {1, 2, 3}, b = {-1, 0.5f, 2};
    EXPECT_EQ(dconv_out_gram(w.data(), b.data(), 1, 3), (std::vector<double>{14, 6, 6, 5.25, 6, 1.5}));
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    dconv_thin_case({2, 48, 6, 3, 300, 2});   // several blocks per row, a partial last one
    dconv_thin_case({1, 96, 12, 1, 1000, 1});  // the time branch: one long row
    dconv_thin_case({2, 24, 6, 1, 900, 5});    // several blocks, a partial last one, dilation 5
    dconv_thin_case({2, 8, 1, 2, 5, 4});       // taps beyond both ends
    dconv_thin_case({2, 192, 24, 4, 150, 2});  // past the default shared memory
    dconv_thin_case({1, 100, 14, 2, 200, 3});  // channels not a multiple of the output group, hidden 16's kernels
    dconv_thin_case({1, 60, 28, 1, 140, 1});   // hidden 32's kernels
}

// In float16 / bfloat16 mode both convolutions run on the tensor cores in
// float16 (the apply pass where C is a multiple of 8): hidden 6 / 12 / 24 /
// 28 (one to four hidden tiles, one and two k-steps, zero-padded), channels
// not a multiple of the 16 staged at once, several blocks per row with a
// partial last m-tile, one long row, dilation beyond the row.
TEST(KernelsCuda, TensorCoreDConvApplyMatchesTheModule) {
    // The B fragments' layout: W [16, 3] = 10 o + k; lane 5 (g 1, t 1) of tile 1 holds
    // W[9][2, 3] and W[9][10, 11], zero past hidden.
    std::vector<float> w(16 * 3);
    for (int o = 0; o < 16; o++)
        for (int k = 0; k < 3; k++) w[size_t(o * 3 + k)] = float(10 * o + k);
    const std::vector<uint32_t> fragments = dconv_out_fragments(w.data(), 3, 16);
    ASSERT_EQ(fragments.size(), 2u * 32 * 2);
    const uint32_t h92 = __half_as_ushort(__float2half_rn(92.0f));
    EXPECT_EQ(fragments[(32 + 5) * 2], h92);
    EXPECT_EQ(fragments[(32 + 5) * 2 + 1], 0u);
    EXPECT_TRUE(dconv_out_fragments(w.data(), 3, 12).empty());  // not whole tiles of a and g
    // The in-convolution's: W [hidden 2, channels 18, 3] = 100 k + 3 c + j; lane 6 (g 1, t 2) of
    // tile 0, chunk 1, tap 2 holds W[1][20, 21][2] and W[1][28, 29][2] (channels past 18: zero).
    std::vector<float> w_in(2 * 18 * 3);
    for (int k = 0; k < 2; k++)
        for (int c = 0; c < 18; c++)
            for (int j = 0; j < 3; j++) w_in[size_t((k * 18 + c) * 3 + j)] = float(100 * k + 3 * c + j);
    const std::vector<uint32_t> in_fragments = dconv_in_fragments(w_in.data(), 2, 18);
    ASSERT_EQ(in_fragments.size(), 1u * 2 * 3 * 32 * 2);
    EXPECT_EQ(in_fragments[((1 * 3 + 2) * 32 + 6) * 2], 0u);  // channels 20, 21: past 18
    EXPECT_EQ(in_fragments[((0 * 3 + 2) * 32 + 6) * 2],
              uint32_t(__half_as_ushort(__float2half_rn(100 + 3 * 4 + 2))) |
                  uint32_t(__half_as_ushort(__float2half_rn(100 + 3 * 5 + 2))) << 16);  // chunk 0: channels 4, 5
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    const DConvCase cases[] = {{2, 48, 6, 3, 300, 2}, {1, 96, 12, 1, 1000, 1}, {2, 192, 24, 4, 150, 2},
                               {2, 8, 1, 2, 5, 4},    {1, 56, 28, 1, 523, 3},  {1, 192, 24, 1, 5375, 1},
                               {1, 64, 20, 2, 200, 1}};  // hidden 20: a partial third tile split among warps
    // Each with the warps of a strip sharing its work at hidden > 16 (the in-convolution's hidden
    // tiles, the apply's channels) and without.
    for (const DConvCase& k : cases)
        for (DType type : {DType::F16, DType::BF16})
            for (bool split : {false, true}) {
                const double err = dconv_case_error(k, {k.dilation}, false, type, split);
                EXPECT_LE(err, 2e-3) << "C " << k.C << ", hidden " << k.hidden << ", R " << k.R << ", W " << k.W
                                     << ", split " << split;
                EXPECT_GT(err, 1e-6) << "C " << k.C << ": the tensor-core kernel should have run (float16 rounding)";
            }
    EXPECT_LE(dconv_case_error({1, 100, 14, 2, 200, 3}, {3}, false, DType::F16), 2e-3);  // C % 16 != 0
}

// Whole DConvs with the row in shared memory: the same as the module's
// layers one after the other (2 layers as in the model, 1 and 4 for the
// loop), against the double reference.
TEST(KernelsCuda, RowResidentDConvMatchesTheModule) {
    EXPECT_TRUE(dconv_rows_fit(48, 6, 336, 2));   // the frequency branch's outer DConvs
    EXPECT_TRUE(dconv_rows_fit(96, 12, 336, 2));
    EXPECT_FALSE(dconv_rows_fit(192, 24, 336, 2));  // hidden 24 and a 258 KB row: the three passes
    EXPECT_FALSE(dconv_rows_fit(48, 6, 85995, 2));  // the time branch's rows
    EXPECT_FALSE(dconv_rows_fit(48, 6, 336, kDConvRowsMaxLayers + 1));
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    struct Case {
        DConvCase shape;
        std::vector<int> dilations;
    };
    const Case cases[] = {
        {{2, 48, 6, 3, 336, 1}, {1, 2}},      // the model's outermost shape, fewer rows
        {{1, 96, 12, 2, 336, 1}, {1, 2}},     // 126 KiB rows: one block per SM
        {{2, 24, 6, 2, 37, 1}, {3}},          // W not a multiple of 4 (scalar row copies), one layer
        {{1, 16, 3, 2, 5, 1}, {1, 2, 4, 8}},  // taps beyond both ends, four layers
        {{1, 40, 14, 2, 100, 1}, {1, 2}},     // hidden 16's kernel
    };
    for (const Case& c : cases) {
        ASSERT_TRUE(dconv_rows_fit(int(c.shape.C), int(c.shape.hidden), c.shape.W, int(c.dilations.size())));
        EXPECT_LE(dconv_case_error(c.shape, c.dilations, true), 1e-5)
            << "C " << c.shape.C << ", hidden " << c.shape.hidden << ", W " << c.shape.W << ", layers "
            << c.dilations.size();
        // The three passes per layer give the same branches.
        EXPECT_LE(dconv_case_error(c.shape, c.dilations, false), 1e-5);
    }
}

// The row-resident DConv on the tensor cores (float16 / bfloat16 modes)
// against the double reference: the model's outer shapes (one and two hidden
// tiles), W not a multiple of 16 (a partial last m-tile) nor of 4 (scalar row
// copies), channels not a multiple of 16 (a zero half k-step), taps beyond
// both ends, one to four layers, every launch form (one or two blocks an SM,
// one to three m-tiles a warp, one or two hidden tiles, hidden 16); the
// operand copy checked as well.
TEST(KernelsCuda, TensorCoreRowResidentDConvMatchesTheModule) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    struct Case {
        DConvCase shape;
        std::vector<int> dilations;
    };
    const Case cases[] = {
        {{2, 48, 6, 3, 336, 1}, {1, 2}},       // the outermost shape, fewer rows
        {{1, 96, 12, 2, 336, 1}, {1, 2}},      // 217 KiB of shared memory: one block per SM, a tile a warp
        {{1, 96, 8, 1, 336, 1}, {1, 2}},       // one hidden tile, one block per SM
        {{2, 40, 6, 2, 37, 1}, {3}},           // W % 4 != 0, C % 16 != 0, one layer
        {{1, 16, 3, 2, 5, 1}, {1, 2, 4, 8}},   // taps beyond both ends, four layers
        {{1, 24, 14, 2, 100, 1}, {1, 2}},      // hidden 14: two tiles, zero-padded
        {{1, 48, 6, 1, 512, 1}, {1, 2}},       // the longest row: three tiles a warp (11 warps)
        {{1, 16, 16, 1, 400, 1}, {2, 1}},      // hidden 16 (the most), two hidden tiles, three m-tiles a warp
    };
    for (const Case& c : cases)
        for (DType type : {DType::F16, DType::BF16}) {
            const double err = dconv_case_error(c.shape, c.dilations, true, type);
            EXPECT_LE(err, 2e-3) << "C " << c.shape.C << ", hidden " << c.shape.hidden << ", W " << c.shape.W
                                 << ", layers " << c.dilations.size();
            EXPECT_GT(err, 1e-6) << "C " << c.shape.C << ": float16 rounding expected";
        }
}

// What the row-resident tensor-core DConv takes (host logic: runs without a
// GPU, the shared memory then sm_90's 227 KB): float16 / bfloat16 only,
// hidden <= 16, dilation <= 8, C % 8 == 0, rows of at most 512, the layers of
// one DConv (one to four, the same channels and hidden size), both fragment
// tables on 16 bytes.
TEST(KernelsCuda, TensorCoreRowResidentDConvFit) {
    Ctx f16, f32;  // what the fit reads: the operand type and the tensor-core switch
    f16.gemm = DType::F16;
    DConvLayerWeights lw;
    lw.channels = 48, lw.hidden = 6, lw.dilation = 1;
    alignas(16) const uint32_t table[4] = {};
    lw.in_fragments = lw.out_fragments = table;  // only their presence (and alignment) is checked
    EXPECT_TRUE(dconv_rows_tc_fit(f16, &lw, 1, 336));
    EXPECT_FALSE(dconv_rows_tc_fit(f32, &lw, 1, 336));
    EXPECT_FALSE(dconv_rows_tc_fit(f16, &lw, 1, 513));
    lw.dilation = 9;
    EXPECT_FALSE(dconv_rows_tc_fit(f16, &lw, 1, 336));
    lw.dilation = 1, lw.hidden = 24;
    EXPECT_FALSE(dconv_rows_tc_fit(f16, &lw, 1, 336));
    lw.hidden = 6, lw.channels = 44;
    EXPECT_FALSE(dconv_rows_tc_fit(f16, &lw, 1, 336));
    // Layers of one DConv only (the same channels and hidden size), one to four of them.
    lw.channels = 48;
    DConvLayerWeights two[2] = {lw, lw};
    EXPECT_TRUE(dconv_rows_tc_fit(f16, two, 2, 336));
    two[1].hidden = 12;
    EXPECT_FALSE(dconv_rows_tc_fit(f16, two, 2, 336));
    EXPECT_FALSE(dconv_rows_tc_fit(f16, two, 0, 336));
    const DConvLayerWeights five[5] = {lw, lw, lw, lw, lw};
    EXPECT_FALSE(dconv_rows_tc_fit(f16, five, 5, 336));
    lw.out_fragments = table + 1;  // not on 16 bytes
    EXPECT_FALSE(dconv_rows_tc_fit(f16, &lw, 1, 336));
    f16.tensor_core_dconv = false;  // FASTDEMUCS_TC_DCONV=0
    lw.out_fragments = table;
    EXPECT_FALSE(dconv_rows_tc_fit(f16, &lw, 1, 336));
}

// The staged upload, in pieces smaller than a row (several per row, a short
// last one; each piece split among 3 copying threads) through 4 slots (9
// pieces: the slots are refilled after their copies' events), into a
// pitched destination: every value lands once, the padding between rows is
// untouched. Called twice: the slots and their events are reused.
TEST(KernelsCuda, StagedUploadCopiesEveryPiece) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    Gpu gpu;
    const size_t rows = 3, width = 25000, spitch = 25003, dpitch = 25100;
    const std::vector<float> src = random(rows * spitch, 41);
    UploadStaging staging(10000, 4, 3);
    for (int round = 0; round < 2; round++) {
        std::vector<float> canary(rows * dpitch, -7.0f);
        float* dst = gpu.put(canary);
        staging.upload(dst, dpitch, src.data(), spitch, width, rows, gpu.stream);
        const std::vector<float> got = gpu.get(dst, canary.size());
        for (size_t r = 0; r < rows; r++)
            for (size_t c = 0; c < dpitch; c++)
                ASSERT_EQ(got[r * dpitch + c], c < width ? src[r * spitch + c] : -7.0f) << r << ", " << c;
    }
}

// The stems' host vector, faulted in and page-locked in pieces by threads:
// copies that cross the pieces' bounds, queued as soon as the floats under
// them are ready, land whole, into fresh and reused vectors, locked or not,
// or through a download ring.
TEST(KernelsCuda, HostOutputTakesCopiesAcrossItsPieces) {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device";
    Gpu gpu;
    const size_t n = 3300001;  // 12.6 MB: seven pieces of 2 MiB
    const std::vector<float> src = random(n, 43);
    const float* d = gpu.put(src);
    cudaStream_t copies = nullptr;
    FD_CUDA(cudaStreamCreateWithFlags(&copies, cudaStreamNonBlocking));
    std::vector<float> out(10, 1.0f);
    // Rounds: fresh and locked, reused and locked, reused unlocked, fresh
    // unlocked, then through a download ring of 3 slots of 1 MB (copies
    // queued before the faults reach them, split across slots): fresh, reused.
    // A last ring round copies everything twice, the second time from other
    // floats (as 16-bit stems that rescale divides are copied again): the
    // second copy wins (the ring's jobs land in order); and a copy of nothing.
    const std::vector<float> again = random(n, 44);
    const float* d2 = gpu.put(again);
    DownloadRing ring(0, size_t(1) << 20, 3, 3);
    for (int round = 0; round < 7; round++) {
        if (round == 3 || round == 4 || round == 6) std::vector<float>().swap(out);
        {
            HostOutput<float> host(out, n, 0, round < 2, copies, 1, round >= 4 ? &ring : nullptr);
            const size_t cuts[] = {0, 5, 524287, 524289, 1700000, 2621440, n};
            for (size_t i = 0; i + 1 < std::size(cuts); i++) {
                while (host.queueable() < cuts[i + 1]) std::this_thread::yield();
                host.copy_from_device(cuts[i], d + cuts[i], cuts[i + 1] - cuts[i]);
            }
            if (round == 6) {
                host.copy_from_device(0, d2, n);
                host.copy_from_device(n, d2, 0);
            }
            host.wait();
            host.finish();
            host.release();
        }
        ASSERT_EQ(out.size(), n);
        const std::vector<float>& expected = round == 6 ? again : src;
        for (size_t i = 0; i < n; i++) ASSERT_EQ(out[i], expected[i]) << "round " << round << ", float " << i;
        std::fill(out.begin(), out.end(), -1.0f);
    }
    cudaStreamDestroy(copies);
}
