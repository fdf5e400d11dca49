#include "cuda/conv.h"

#include <string>

#include "cuda/arena.h"
#include "cuda/gemm.h"
#include "error.h"

namespace fastdemucs::cuda {
namespace {

std::string dims(const DTensor& t) {
    return "[" + std::to_string(t.b) + ", " + std::to_string(t.c) + ", " + std::to_string(t.h) + ", " +
           std::to_string(t.w) + "]";
}

// x as a GEMM operand: itself in float32, else a converted copy from the arena.
const void* operand(const Ctx& ctx, const DTensor& x) {
    if (ctx.gemm == DType::F32) return x.p;
    void* t = ctx.arena->alloc_bytes(size_t(x.numel()) * dtype_bytes(ctx.gemm));
    convert(ctx, x.p, t, ctx.gemm, x.numel());
    return t;
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

    if (g.sh == 1 && g.sw == 1 && Wl == x.w) {
        if (taps == 1 && g.ph == 0 && g.pw == 0) {
            // out[b] [cout, HW] = W [cout, cin] x[b] [cin, HW]
            const int64_t HW = x.h * x.w;
            const void* xb = operand(ctx, x);
            gemm(ctx, dt, false, false, cout, HW, cin, 1.0f, {w.w, cin, 0}, {xb, HW, cin * HW}, 0.0f, out.p, HW,
                 cout * HW, B);
            bias_act(ctx, out.p, out.p, DType::F32, w.bias, B, cout, HW, act);
            return;
        }
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

    // Strided (or zero-extended): im2col [B, cin * taps, Ho * Wo] then one GEMM per item.
    const int64_t K = cin * taps, N = Ho * Wo;
    void* cols = ctx.arena->alloc_bytes(size_t(B * K * N) * dtype_bytes(dt));
    im2col(ctx, x.p, cols, dt, B, cin, x.h, x.w, g, Ho, Wo);
    gemm(ctx, dt, false, false, cout, N, K, 1.0f, {w.w, K, 0}, {cols, N, K * N}, 0.0f, out.p, N, cout * N, B);
    bias_act(ctx, out.p, out.p, DType::F32, w.bias, B, cout, N, act);
}

void conv_transpose2d(const Ctx& ctx, const DTensor& x, const ConvWeight& w, int sh, int sw, int64_t h0, int64_t w0,
                      const DTensor& out, Act act) {
    if (x.c != w.cin || out.b != x.b || out.c != w.cout)
        throw Error("internal error: conv_transpose2d shapes: input " + dims(x) + ", output " + dims(out));
    ArenaScope scope(*ctx.arena);
    const DType dt = ctx.gemm;
    const int64_t B = x.b, rows = int64_t(w.cout) * w.kh * w.kw, HW = x.h * x.w;
    const void* xb = operand(ctx, x);
    float* cols = ctx.arena->alloc<float>(B * rows * HW);
    // cols[b] [cout * kh * kw, HW] = W^T (W stored [cin, cout * kh * kw]) x[b] [cin, HW]
    gemm(ctx, dt, true, false, rows, HW, x.c, 1.0f, {w.w, rows, 0}, {xb, HW, x.c * HW}, 0.0f, cols, HW, rows * HW, B);
    col2im(ctx, cols, out.p, w.bias, B, w.cout, x.h, x.w, w.kh, w.kw, sh, sw, h0, out.h, w0, out.w, act);
}

}  // namespace fastdemucs::cuda
