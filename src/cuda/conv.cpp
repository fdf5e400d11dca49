#include "cuda/conv.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "cuda/arena.h"
#include "cuda/conv_glu_wgmma.h"
#include "cuda/direct_conv.h"
#include "cuda/freq_encoder_conv.h"
#include "cuda/gemm.h"
#include "cuda/implicit_conv.h"
#include "cuda/kernels.h"
#include "cuda/profile.h"
#include "cuda/weights.h"
#include "error.h"

namespace fastdemucs::cuda {
namespace {

std::string dims(const DTensor& t) {
    return "[" + std::to_string(t.b) + ", " + std::to_string(t.c) + ", " + std::to_string(t.h) + ", " +
           std::to_string(t.w) + "]";
}

// Row stride of a GEMM operand / output with n columns (operand_ld): rows
// start on 16 bytes in float16 / bfloat16 (an odd stride such as the time
// branch's 85995 falls back to slow kernels). Float32 operands are used in place.
int64_t gemm_ld(const Ctx& ctx, int64_t n) { return ctx.gemm == DType::F32 ? n : (n + 7) / 8 * 8; }

// x [B, C, H, W] as a GEMM operand [B * C, ld]: itself in float32, else a
// converted copy from the arena with row stride ld (columns past H * W unset).
const void* operand(const Ctx& ctx, const DTensor& x, int64_t ld) {
    const int64_t n = x.h * x.w;
    if (ctx.gemm == DType::F32 && ld == n) return x.p;
    void* t = ctx.arena->alloc_bytes(size_t(x.b * x.c * ld) * dtype_bytes(ctx.gemm));
    convert_rows(ctx, x.p, t, ctx.gemm, x.b * x.c, n, ld);
    return t;
}

// Column buffers (im2col operands, transposed-conv columns) are taken for
// as many batch items at a time as fit this many bytes (at least one): the
// largest (the outermost decoder's 3x3 rewrite: 432 x 512 x 336 values per
// item) then cost a fixed buffer instead of memory per chunk, and each
// GEMM still has a whole item (>= 3 GFLOP) to itself.
constexpr int64_t kColumnBudget = int64_t(128) << 20;

int64_t items_per_slice(int64_t B, int64_t bytes_per_item) {
    return std::max<int64_t>(1, std::min<int64_t>(B, kColumnBudget / std::max<int64_t>(1, bytes_per_item)));
}

}  // namespace

int64_t operand_ld(const Ctx& ctx, int64_t n) { return gemm_ld(ctx, n); }

void conv_output_size(int64_t H, int64_t Wl, const ConvWeight& w, const ConvGeom& g, int64_t* Ho, int64_t* Wo) {
    *Ho = (H + 2 * g.ph - int64_t(g.dh) * (w.kh - 1) - 1) / g.sh + 1;
    *Wo = (Wl + 2 * g.pw - int64_t(g.dw) * (w.kw - 1) - 1) / g.sw + 1;
}

namespace {

void check_conv_shapes(const DTensor& x, int64_t Wl, const ConvWeight& w, const ConvGeom& g, int64_t B, int64_t cout,
                       int64_t Ho, int64_t Wo, const DTensor* out) {
    if (x.c != w.cin || cout != w.cout || B != x.b || Wl < x.w || Ho <= 0 || Wo <= 0 ||
        (out && (out->h != Ho || out->w != Wo)))
        throw Error("internal error: conv2d shapes: input " + dims(x) +
                    (out ? ", output " + dims(*out) : std::string()) + ", weight [" + std::to_string(w.cout) + ", " +
                    std::to_string(w.cin) + ", " + std::to_string(w.kh) + ", " + std::to_string(w.kw) + "]" +
                    ", stride " + std::to_string(g.sh) + "x" + std::to_string(g.sw));
}

bool is_pointwise(const DTensor& x, int64_t Wl, const ConvGeom& g) {
    return g.sh == 1 && g.sw == 1 && Wl == x.w && g.kh * g.kw == 1 && g.ph == 0 && g.pw == 0;
}

// Items [b0, ..) of an input norm (none for none).
InputNorm norm_slice(const InputNorm* norm, int64_t b0) {
    return norm ? InputNorm{norm->mean + b0, norm->inv + b0} : InputNorm{};
}

// The 1x1 and im2col paths' GEMMs: y [B, cout, ld] (type yt, F32 or the
// operand type; ld >= Ho * Wo, a multiple of 8 in float16 / bfloat16 unless
// it is Ho * Wo), no bias or activation.
// x_operand (or null): x as the pointwise path's operand already. norm (or
// null): conv2d's in_norm.
void conv2d_gemm(const Ctx& ctx, const DTensor& x, int64_t Wl, const ConvWeight& w, const ConvGeom& g, int64_t Ho,
                 int64_t Wo, void* y, DType yt, int64_t ld, const void* x_operand = nullptr,
                 const InputNorm* norm = nullptr) {
    const DType dt = ctx.gemm;
    const int64_t B = x.b, cin = x.c, cout = w.cout;
    if (norm && x_operand) throw Error("internal error: conv2d_gemm: an input norm would leave x's operand stale");
    if (is_pointwise(x, Wl, g)) {
        if (norm) normalize_items(ctx, x.p, B, cin * x.h * x.w, *norm);
        // y[b] [cout, ld] = W [cout, cin] x[b] [cin, ld]
        const void* xb = x_operand ? x_operand : operand(ctx, x, ld);
        gemm_as(ctx, dt, false, false, cout, ld, cin, 1.0f, {w.w, cin, 0}, {xb, ld, cin * ld}, 0.0f, y, yt, ld,
                cout * ld, B);
        return;
    }
    // im2col [items, cin * taps, ld] then one GEMM per item, over slices of the batch.
    const int64_t K = cin * g.kh * g.kw;
    const int64_t slice = items_per_slice(B, K * ld * int64_t(dtype_bytes(dt)));
    void* cols = ctx.arena->alloc_bytes(size_t(slice * K * ld) * dtype_bytes(dt));
    for (int64_t b0 = 0; b0 < B; b0 += slice) {
        const int64_t nb = std::min(slice, B - b0);
        const InputNorm nb_norm = norm_slice(norm, b0);
        im2col(ctx, x.p + b0 * cin * x.h * x.w, cols, dt, nb, cin, x.h, x.w, g, Ho, Wo, ld, 0, norm ? &nb_norm : nullptr);
        gemm_as(ctx, dt, false, false, cout, ld, K, 1.0f, {w.w, K, 0}, {cols, ld, K * ld}, 0.0f,
                offset(y, b0 * cout * ld, yt), yt, ld, cout * ld, nb);
    }
}

// Whether conv2d_biased takes the convolution: its weight has the biased
// copy (float16 / bfloat16), a multi-tap im2col geometry, and output rows
// of 16 bytes (Ho * Wo % 4 == 0). Where they are not (the time encoders'
// odd lengths), cuBLAS's kernels for such rows cost more than the crop pass
// they save (a forward of 8 chunks: 16.48 -> 17.10 ms on the H200).
bool conv2d_biased_takes(const Ctx& ctx, const DTensor& x, int64_t Wl, const ConvWeight& w, const ConvGeom& g,
                         int64_t N) {
    return w.biased && ctx.gemm != DType::F32 && ctx.biased_conv && !is_pointwise(x, Wl, g) && N % 4 == 0;
}

// out [B, cout, Ho * Wo] = act(conv(x) + bias) with the bias carried by the
// GEMM: rows of ones under each item's im2col rows meet the weight's bias
// column (w.biased), and the GELU runs in cuBLASLt's epilogue (gemm_act_lt;
// else one pass over out). The GEMM writes out itself, rows of Ho * Wo: no
// bias pass, and no crop pass where the operand's rows are padded.
void conv2d_biased(const Ctx& ctx, const DTensor& x, const ConvWeight& w, const ConvGeom& g, int64_t Ho, int64_t Wo,
                   float* out, Act act, const InputNorm* norm) {
    const DType dt = ctx.gemm;
    const int64_t B = x.b, cin = x.c, cout = w.cout, N = Ho * Wo, ld = gemm_ld(ctx, N);
    const int64_t K = cin * g.kh * g.kw, Kb = biased_columns(K);
    const int64_t slice = items_per_slice(B, Kb * ld * int64_t(dtype_bytes(dt)));
    void* cols = ctx.arena->alloc_bytes(size_t(slice * Kb * ld) * dtype_bytes(dt));
    std::vector<std::pair<int64_t, int64_t>> pending;  // (first item, items) still wanting the activation
    for (int64_t b0 = 0; b0 < B; b0 += slice) {
        const int64_t nb = std::min(slice, B - b0);
        const InputNorm nb_norm = norm_slice(norm, b0);
        im2col(ctx, x.p + b0 * cin * x.h * x.w, cols, dt, nb, cin, x.h, x.w, g, Ho, Wo, ld, Kb, norm ? &nb_norm : nullptr);
        float* y = out + b0 * cout * N;
        // y[b] [cout, N] = Wb [cout, Kb] cols[b] [Kb, N]
        const GemmOperand wb{w.biased, Kb, 0}, cb{cols, ld, Kb * ld};
        if (act != Act::None && gemm_act_lt(ctx, cout, N, Kb, wb, cb, y, N, cout * N, nb, act)) continue;
        gemm(ctx, dt, false, false, cout, N, Kb, 1.0f, wb, cb, 0.0f, y, N, cout * N, nb);
        if (act != Act::None) pending.emplace_back(b0, nb);
    }
    if (int64_t(pending.size()) == (B + slice - 1) / slice) pending.assign(1, {0, B});  // every slice: one pass
    for (const auto& [b0, nb] : pending) {
        float* y = out + b0 * cout * N;
        bias_act(ctx, y, y, DType::F32, nullptr, nb, cout, N, act);
    }
}

}  // namespace

// The ways conv2d computes a convolution, in the order it tries them.
enum class ConvPath { Direct, FreqEncoder, Implicit, Shifted, Biased, Gemm };

// g with the weight's kernel size; Ho, Wo set.
ConvPath conv2d_path(const Ctx& ctx, const DTensor& x, int64_t Wl, const ConvWeight& w, const ConvGeom& g,
                     int64_t Ho, int64_t Wo) {
    const bool stride1_taps = g.sh == 1 && g.sw == 1 && Wl == x.w && int64_t(w.kh) * w.kw > 1;
    if (ctx.direct_conv && w.w32 && direct_conv_takes(ctx.gemm, w.cin, w.cout, w.kh, w.kw, g)) return ConvPath::Direct;
    if (ctx.freq_encoder_mma && freq_encoder_conv_takes(ctx.gemm, w.cin, w.cout, w.kh, w.kw, g, x.w, Wl))
        return ConvPath::FreqEncoder;
    if (ctx.shifted_conv && stride1_taps) return ConvPath::Shifted;
    if (ctx.gemm != DType::F32 && ctx.implicit_conv) return ConvPath::Implicit;
    return conv2d_biased_takes(ctx, x, Wl, w, g, Ho * Wo) ? ConvPath::Biased : ConvPath::Gemm;
}

bool conv2d_bias_in_gemm(const Ctx& ctx, const DTensor& x, int64_t Wl, const ConvWeight& w, ConvGeom g) {
    g.kh = w.kh, g.kw = w.kw;
    int64_t Ho = 0, Wo = 0;
    conv_output_size(x.h, Wl, w, g, &Ho, &Wo);
    return conv2d_path(ctx, x, Wl, w, g, Ho, Wo) == ConvPath::Biased;
}

void conv2d(const Ctx& ctx, const DTensor& x, int64_t Wl, const ConvWeight& w, ConvGeom g, const DTensor& out,
            Act act, const InputNorm* in_norm) {
    g.kh = w.kh, g.kw = w.kw;
    int64_t Ho = 0, Wo = 0;
    conv_output_size(x.h, Wl, w, g, &Ho, &Wo);
    check_conv_shapes(x, Wl, w, g, out.b, out.c, Ho, Wo, &out);
    ArenaScope scope(*ctx.arena);
    const DType dt = ctx.gemm;
    const int64_t B = x.b, cin = x.c, cout = w.cout, taps = int64_t(w.kh) * w.kw;
    const ConvPath path = conv2d_path(ctx, x, Wl, w, g, Ho, Wo);
    if (path == ConvPath::Direct) {  // normalises as it reads
        direct_conv2d(ctx, x.p, B, cin, x.h, x.w, w.w32, w.bias, cout, g, Ho, Wo, out.p, act, in_norm);
        return;
    }
    // The paths without im2col normalise x first.
    if (in_norm && (path == ConvPath::FreqEncoder || path == ConvPath::Implicit || path == ConvPath::Shifted))
        normalize_items(ctx, x.p, B, cin * x.h * x.w, *in_norm);
    if (path == ConvPath::FreqEncoder) {
        freq_encoder_conv2d(ctx, x.p, B, cin, x.h, x.w, w.w, w.bias, cout, g, Ho, out.p, act);
        return;
    }
    if (path == ConvPath::Implicit) {
        implicit_conv2d(ctx, dt, x.p, B, cin, x.h, x.w, w.w, w.bias, cout, g, Ho, Wo, out.p, act);
        return;
    }
    if (path == ConvPath::Shifted) {
        if (!w.taps) throw Error("internal error: conv2d needs the per-tap weights");
        // Shifted GEMMs over planes padded to [Hp, Wp] (+ a tail read by the last shifts).
        const int64_t Hp = x.h + 2 * g.ph, Wp = x.w + 2 * g.pw;
        const int64_t plane = Hp * Wp + int64_t(g.dw) * (w.kw - 1);
        if (Hp - int64_t(g.dh) * (w.kh - 1) != Ho || Wp - int64_t(g.dw) * (w.kw - 1) != Wo)
            throw Error("internal error: shifted conv geometry");
        void* padded = ctx.arena->alloc_bytes(size_t(B * cin * plane) * dtype_bytes(dt));
        float* full = ctx.arena->alloc<float>(B * cout * Ho * Wp);
        pad_planes(ctx, x.p, padded, dt, B * cin, x.h, x.w, g.ph, g.pw, plane);
        for (int64_t t = 0; t < taps; t++) {
            const int64_t i = t / w.kw, j = t % w.kw;
            const int64_t shift = i * g.dh * Wp + j * g.dw;
            gemm(ctx, dt, false, false, cout, Ho * Wp, cin, 1.0f, {offset(w.taps, t * cout * cin, dt), cin, 0},
                 {offset(padded, shift, dt), plane, cin * plane}, t == 0 ? 0.0f : 1.0f, full, Ho * Wp,
                 cout * Ho * Wp, B);
        }
        crop_bias_act(ctx, full, out.p, w.bias, B, cout, Ho, Wp, Wo, act);
        return;
    }
    if (path == ConvPath::Biased) {
        conv2d_biased(ctx, x, w, g, Ho, Wo, out.p, act, in_norm);
        return;
    }
    // The GEMM straight into the output when its rows need no padding, else
    // into a padded float32 buffer that the bias pass crops.
    const int64_t N = Ho * Wo, ld = gemm_ld(ctx, N);
    if (ld == N) {
        conv2d_gemm(ctx, x, Wl, w, g, Ho, Wo, out.p, DType::F32, N, nullptr, in_norm);
        bias_act(ctx, out.p, out.p, DType::F32, w.bias, B, cout, N, act);
    } else {
        float* full = ctx.arena->alloc<float>(B * cout * ld);
        conv2d_gemm(ctx, x, Wl, w, g, Ho, Wo, full, DType::F32, ld, nullptr, in_norm);
        crop_bias_act(ctx, full, out.p, w.bias, B, cout, 1, ld, N, act);
    }
}

bool conv2d_glu_takes(const Ctx& ctx, const ConvWeight& w, const ConvGeom& g) {
    const bool stride1_taps = g.sh == 1 && g.sw == 1 && int64_t(w.kh) * w.kw > 1;
    return ctx.gemm != DType::F32 && ctx.narrow_gemm_out && !ctx.implicit_conv && !(ctx.shifted_conv && stride1_taps);
}

bool conv2d_glu(const Ctx& ctx, const DTensor& x, const ConvWeight& w, ConvGeom g, const DTensor& out,
                const void* x_operand, const FreqEmbedding* emb) {
    g.kh = w.kh, g.kw = w.kw;
    if (!conv2d_glu_takes(ctx, w, g)) return false;
    int64_t Ho = 0, Wo = 0;
    conv_output_size(x.h, x.w, w, g, &Ho, &Wo);
    check_conv_shapes(x, x.w, w, g, out.b, 2 * out.c, Ho, Wo, nullptr);
    if (out.h != Ho || out.w != Wo) throw Error("internal error: conv2d_glu output shape");
    const int64_t N = Ho * Wo, ld = gemm_ld(ctx, N);
    // The encoders' first two pointwise rewrites from the DConv's operand
    // copy on wgmma, the GLU and the embedding on the accumulators (no conv
    // output between a GEMM and the GLU's pass).
    if (ctx.conv1x1_glu_wgmma && x_operand && is_pointwise(x, x.w, g) && conv1x1_glu_wgmma_fits(w.cin, out.c)) {
        if (emb && emb->F * emb->T != N) throw Error("internal error: conv2d_glu: frequency embedding shape");
        if (ctx.dry || x.b * N == 0) return true;
        ProfileSpan span(ctx, ProfKind::Gemm);
        Conv1x1GluArgs a;
        a.x = x_operand, a.weight = w.w, a.bias = w.bias, a.out = out.p;
        a.Cin = w.cin, a.C = int(out.c), a.B = int(x.b), a.P = N, a.ld = ld;
        if (emb) a.emb_table = emb->table, a.emb_T = emb->T, a.emb_k = emb->k, a.emb_s = emb->s;
        conv1x1_glu_wgmma(ctx.stream, ctx.gemm, a);
        return true;
    }
    ArenaScope scope(*ctx.arena);
    void* y = ctx.arena->alloc_bytes(size_t(x.b * w.cout * ld) * dtype_bytes(ctx.gemm));
    conv2d_gemm(ctx, x, x.w, w, g, Ho, Wo, y, ctx.gemm, ld, x_operand);
    glu(ctx, y, ctx.gemm, ld, out.p, x.b, out.c, N, w.bias, emb);
    return true;
}

void conv_transpose2d(const Ctx& ctx, const DTensor& x, const ConvWeight& w, int sh, int sw, int64_t h0, int64_t w0,
                      const DTensor& out, Act act, const void* x_operand, const ColumnSink* sink) {
    if (x.c != w.cin || out.b != x.b || out.c != w.cout)
        throw Error("internal error: conv_transpose2d shapes: input " + dims(x) + ", output " + dims(out));
    if (sink && act != Act::None) throw Error("internal error: conv_transpose2d: a column sink with an activation");
    ArenaScope scope(*ctx.arena);
    const DType dt = ctx.gemm;
    const int64_t B = x.b, rows = int64_t(w.cout) * w.kh * w.kw, HW = x.h * x.w, ld = gemm_ld(ctx, HW);
    const void* xb = x_operand ? x_operand : operand(ctx, x, ld);
    // The columns are read once, by the overlap-add: in float16 / bfloat16
    // they cost half the bytes, rounded once as autocast rounds the official
    // conv_transpose2d's output.
    const DType ct = dt != DType::F32 && ctx.narrow_gemm_out ? dt : DType::F32;
    const int64_t slice = items_per_slice(B, rows * ld * int64_t(dtype_bytes(ct)));
    void* cols = ctx.arena->alloc_bytes(size_t(slice * rows * ld) * dtype_bytes(ct));
    for (int64_t b0 = 0; b0 < B; b0 += slice) {
        const int64_t nb = std::min(slice, B - b0);
        // cols[b] [cout * kh * kw, ld] = W^T (W stored [cin, cout * kh * kw]) x[b] [cin, ld]
        gemm_as(ctx, dt, true, false, rows, ld, x.c, 1.0f, {w.w, rows, 0},
                {offset(xb, b0 * x.c * ld, dt), ld, x.c * ld}, 0.0f, cols, ct, ld, rows * ld, nb);
        if (sink)
            (*sink)(cols, ct, ld, b0, nb);
        else
            col2im(ctx, cols, ct, out.p + b0 * w.cout * out.h * out.w, w.bias, nb, w.cout, x.h, x.w, w.kh, w.kw, sh,
                   sw, h0, out.h, w0, out.w, act, ld);
    }
}

}  // namespace fastdemucs::cuda
