#include "cuda/conv.h"

#include <algorithm>
#include <string>

#include "cuda/arena.h"
#include "cuda/gemm.h"
#include "cuda/implicit_conv.h"
#include "error.h"

namespace fastdemucs::cuda {
namespace {

std::string dims(const DTensor& t) {
    return "[" + std::to_string(t.b) + ", " + std::to_string(t.c) + ", " + std::to_string(t.h) + ", " +
           std::to_string(t.w) + "]";
}

// Row stride of a GEMM operand / output with n columns: rows start on 16
// bytes in float16 / bfloat16 (cuBLAS's tensor-core kernels want aligned
// rows; an odd stride such as the time branch's 85995 falls back to slow
// kernels). Float32 operands are used in place.
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

void conv_output_size(int64_t H, int64_t Wl, const ConvWeight& w, const ConvGeom& g, int64_t* Ho, int64_t* Wo) {
    *Ho = (H + 2 * g.ph - int64_t(g.dh) * (w.kh - 1) - 1) / g.sh + 1;
    *Wo = (Wl + 2 * g.pw - int64_t(g.dw) * (w.kw - 1) - 1) / g.sw + 1;
}

void conv2d(const Ctx& ctx, const DTensor& x, int64_t Wl, const ConvWeight& w, ConvGeom g, const DTensor& out,
            Act act) {
    g.kh = w.kh, g.kw = w.kw;
    int64_t Ho = 0, Wo = 0;
    conv_output_size(x.h, Wl, w, g, &Ho, &Wo);
    if (x.c != w.cin || out.b != x.b || out.c != w.cout || out.h != Ho || out.w != Wo || Wl < x.w || Ho <= 0 ||
        Wo <= 0)
        throw Error("internal error: conv2d shapes: input " + dims(x) + ", output " + dims(out) + ", weight [" +
                    std::to_string(w.cout) + ", " + std::to_string(w.cin) + ", " + std::to_string(w.kh) + ", " +
                    std::to_string(w.kw) + "]");
    ArenaScope scope(*ctx.arena);
    const DType dt = ctx.gemm;
    const int64_t B = x.b, cin = x.c, cout = w.cout, taps = int64_t(w.kh) * w.kw;

    const bool stride1_taps = g.sh == 1 && g.sw == 1 && Wl == x.w && taps > 1;
    if (dt != DType::F32 && ctx.implicit_conv && !(ctx.shifted_conv && stride1_taps)) {
        implicit_conv2d(ctx, dt, x.p, B, cin, x.h, x.w, w.w, w.bias, cout, g, Ho, Wo, out.p, act);
        return;
    }

    if (g.sh == 1 && g.sw == 1 && Wl == x.w && taps == 1 && g.ph == 0 && g.pw == 0) {
        // out[b] [cout, HW] = W [cout, cin] x[b] [cin, HW]
        const int64_t HW = x.h * x.w, ld = gemm_ld(ctx, HW);
        const void* xb = operand(ctx, x, ld);
        if (ld == HW) {
            gemm(ctx, dt, false, false, cout, HW, cin, 1.0f, {w.w, cin, 0}, {xb, HW, cin * HW}, 0.0f, out.p, HW,
                 cout * HW, B);
            bias_act(ctx, out.p, out.p, DType::F32, w.bias, B, cout, HW, act);
        } else {
            float* full = ctx.arena->alloc<float>(B * cout * ld);
            gemm(ctx, dt, false, false, cout, ld, cin, 1.0f, {w.w, cin, 0}, {xb, ld, cin * ld}, 0.0f, full, ld,
                 cout * ld, B);
            crop_bias_act(ctx, full, out.p, w.bias, B, cout, 1, ld, HW, act);
        }
        return;
    }
    if (g.sh == 1 && g.sw == 1 && Wl == x.w && ctx.shifted_conv) {
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

    // Everything else (strided, zero-extended, padded multi-tap): im2col
    // [items, cin * taps, Ho * Wo] (rows padded to ld) then one GEMM per
    // item, over slices of the batch.
    const int64_t K = cin * taps, N = Ho * Wo, ld = gemm_ld(ctx, N);
    const int64_t slice = items_per_slice(B, K * ld * int64_t(dtype_bytes(dt)));
    void* cols = ctx.arena->alloc_bytes(size_t(slice * K * ld) * dtype_bytes(dt));
    float* full = ld == N ? nullptr : ctx.arena->alloc<float>(slice * cout * ld);
    for (int64_t b0 = 0; b0 < B; b0 += slice) {
        const int64_t nb = std::min(slice, B - b0);
        im2col(ctx, x.p + b0 * cin * x.h * x.w, cols, dt, nb, cin, x.h, x.w, g, Ho, Wo, ld);
        float* o = out.p + b0 * cout * N;
        if (!full) {
            gemm(ctx, dt, false, false, cout, N, K, 1.0f, {w.w, K, 0}, {cols, N, K * N}, 0.0f, o, N, cout * N, nb);
        } else {
            gemm(ctx, dt, false, false, cout, ld, K, 1.0f, {w.w, K, 0}, {cols, ld, K * ld}, 0.0f, full, ld,
                 cout * ld, nb);
            crop_bias_act(ctx, full, o, w.bias, nb, cout, 1, ld, N, act);
        }
    }
    if (!full) bias_act(ctx, out.p, out.p, DType::F32, w.bias, B, cout, N, act);
}

void conv_transpose2d(const Ctx& ctx, const DTensor& x, const ConvWeight& w, int sh, int sw, int64_t h0, int64_t w0,
                      const DTensor& out, Act act) {
    if (x.c != w.cin || out.b != x.b || out.c != w.cout)
        throw Error("internal error: conv_transpose2d shapes: input " + dims(x) + ", output " + dims(out));
    ArenaScope scope(*ctx.arena);
    const DType dt = ctx.gemm;
    const int64_t B = x.b, rows = int64_t(w.cout) * w.kh * w.kw, HW = x.h * x.w, ld = gemm_ld(ctx, HW);
    const void* xb = operand(ctx, x, ld);
    const int64_t slice = items_per_slice(B, rows * ld * int64_t(sizeof(float)));
    float* cols = ctx.arena->alloc<float>(slice * rows * ld);
    for (int64_t b0 = 0; b0 < B; b0 += slice) {
        const int64_t nb = std::min(slice, B - b0);
        // cols[b] [cout * kh * kw, ld] = W^T (W stored [cin, cout * kh * kw]) x[b] [cin, ld]
        gemm(ctx, dt, true, false, rows, ld, x.c, 1.0f, {w.w, rows, 0}, {offset(xb, b0 * x.c * ld, dt), ld, x.c * ld},
             0.0f, cols, ld, rows * ld, nb);
        col2im(ctx, cols, out.p + b0 * w.cout * out.h * out.w, w.bias, nb, w.cout, x.h, x.w, w.kh, w.kw, sh, sw, h0,
               out.h, w0, out.w, act, ld);
    }
}

}  // namespace fastdemucs::cuda
