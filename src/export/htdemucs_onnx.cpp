// The HTDemucs forward as an ONNX graph: the same walk over the model plan as
// the CPU backend (cpu/cpu_backend.cpp), each kernel written with standard
// opset-17 operators. Tensor layouts: the frequency branch is [B, C, F, T],
// the time branch [B, C, T] (1-D convolutions), the transformer tokens
// [B, N, C].
#include <onnx/checker.h>

#include <cmath>

#include "error.h"
#include "export/export.h"
#include "export/onnx_graph.h"
#include "model/embeddings.h"

#ifndef FASTDEMUCS_VERSION_TEXT
#define FASTDEMUCS_VERSION_TEXT "0.1.0"
#endif

namespace fastdemucs {
namespace {

using onnx_export::Attr;
using onnx_export::GraphBuilder;
using onnx_export::Value;

int64_t prod(const std::vector<int64_t>& v, size_t from = 0) {
    int64_t n = 1;
    for (size_t i = from; i < v.size(); i++) n *= v[i];
    return n;
}

// Index into a signal of `length` samples reflected about its ends (no edge repeat).
int64_t reflect(int64_t i, int64_t length) {
    if (i < 0) i = -i;
    if (i >= length) i = 2 * (length - 1) - i;
    return i;
}

// torch.hann_window(n) (periodic), in double.
std::vector<double> hann(int n) {
    std::vector<double> w(n);
    for (int i = 0; i < n; i++) w[i] = 0.5 - 0.5 * std::cos(2.0 * M_PI * i / n);
    return w;
}

class HTDemucsGraph {
public:
    HTDemucsGraph(const HTDemucsModel& model, GraphBuilder& g) : m_(model), cfg_(model.config), plan_(model.plan), g_(g) {}

    void build() {
        const int64_t B = g_.batch(), C = cfg_.audio_channels, S = cfg_.num_sources(), L = cfg_.segment_samples();
        Value mix = g_.input("mix", {B, C, L}, 0);

        g_.set_scope("spec");
        Value spec = stft(mix);  // [B, 2C, F, T]
        Value spec_mean, spec_std;
        Value x = normalize(spec, spec_mean, spec_std);
        g_.set_scope("time_input");
        Value time_mean, time_std;
        Value xt = normalize(mix, time_mean, time_std);

        network(x, xt);

        g_.set_scope("ispec");
        x = g_.add(g_.mul(x, spec_std, "denormalize/mul_std"), spec_mean, "denormalize/add_mean");
        Value wave = istft(x, L);  // [B, S*C, L]
        g_.set_scope("time_output");
        xt = g_.add(g_.mul(xt, time_std, "denormalize/mul_std"), time_mean, "denormalize/add_mean");
        g_.set_scope("output");
        Value sum = g_.add(xt, wave, "sum_branches");
        Value stems = g_.reshape(sum, {B, S, C, L}, 0, "split_sources");
        g_.output(stems, "stems");
    }

private:
    // --- weights ----------------------------------------------------------

    const HostTensor& tensor(const std::string& name) const { return m_.weight(name); }

    // The checkpoint tensor `name` as an initializer of that name, optionally
    // viewed with another shape of the same size (e.g. [C] -> [C, 1, 1]).
    Value weight(const std::string& name, std::vector<int64_t> shape = {}) {
        const HostTensor& t = tensor(name);
        if (shape.empty()) shape = t.shape;
        std::string key = name;
        if (shape != t.shape) key += "/" + onnx_export::dims_text(shape);
        auto it = weights_.find(key);
        if (it != weights_.end()) return it->second;
        std::string init_name = name;
        if (shape != t.shape) {
            init_name = name;
            for (auto d : shape) init_name += (init_name == name ? ":" : "x") + std::to_string(d);
        }
        Value v = g_.constant(init_name, shape, t.data);
        weights_[key] = v;
        return v;
    }

    // [out, in] (nn.Linear) rows [row0, row0 + rows) transposed to [in, rows], for MatMul.
    Value linear_weight_t(const std::string& name, int64_t row0, int64_t rows, const std::string& suffix) {
        const HostTensor& t = tensor(name);
        const int64_t in = t.shape[1];
        std::vector<float> data(in * rows);
        for (int64_t r = 0; r < rows; r++)
            for (int64_t i = 0; i < in; i++) data[i * rows + r] = t.data[(row0 + r) * in + i];
        return g_.constant(name + suffix + ".T", {in, rows}, data);
    }
    Value bias_slice(const std::string& name, int64_t row0, int64_t rows, const std::string& suffix) {
        const HostTensor& t = tensor(name);
        std::vector<float> data(t.data.begin() + row0, t.data.begin() + row0 + rows);
        return g_.constant(name + suffix, {rows}, data);
    }

    // --- building blocks --------------------------------------------------

    // Convolution with `weight_prefix`weight/bias; spatial params per dim.
    Value conv(const Value& x, const std::string& prefix, const std::vector<int64_t>& strides,
               const std::vector<int64_t>& pads, const std::vector<int64_t>& dilations, const std::string& local) {
        Value w = weight(prefix + "weight");
        Value b = weight(prefix + "bias");
        const size_t nd = x.shape.size() - 2;
        std::vector<int64_t> kernel(w.shape.begin() + 2, w.shape.end());
        std::vector<int64_t> shape = {x.shape[0], w.shape[0]};
        for (size_t i = 0; i < nd; i++) {
            const int64_t span = dilations[i] * (kernel[i] - 1) + 1;
            shape.push_back((x.shape[2 + i] + pads[i] + pads[nd + i] - span) / strides[i] + 1);
        }
        return g_.node("Conv", {x.name, w.name, b.name}, local, shape, x.batch_axis,
                       {Attr::Ints("kernel_shape", kernel), Attr::Ints("strides", strides), Attr::Ints("pads", pads),
                        Attr::Ints("dilations", dilations)});
    }

    Value conv_transpose(const Value& x, const std::string& prefix, const std::vector<int64_t>& strides,
                         const std::string& local) {
        Value w = weight(prefix + "weight");  // [Cin, Cout, k...]
        Value b = weight(prefix + "bias");
        const size_t nd = x.shape.size() - 2;
        std::vector<int64_t> kernel(w.shape.begin() + 2, w.shape.end());
        std::vector<int64_t> shape = {x.shape[0], w.shape[1]};
        for (size_t i = 0; i < nd; i++) shape.push_back((x.shape[2 + i] - 1) * strides[i] + kernel[i]);
        return g_.node("ConvTranspose", {x.name, w.name, b.name}, local, shape, x.batch_axis,
                       {Attr::Ints("kernel_shape", kernel), Attr::Ints("strides", strides)});
    }

    // GroupNorm(groups) over x [B, C, ...], affine per channel: x viewed as
    // [B, groups, rest], mean and biased variance per (item, group) reduced
    // in stages (see mean_over), then the channel scale and shift.
    Value group_norm(const Value& x, int groups, const std::string& prefix, const std::string& local) {
        const int64_t B = x.shape[0], C = x.shape[1];
        const int64_t rest = prod(x.shape, 2) * (C / groups);
        Value grouped = g_.reshape(x, {B, groups, rest}, 0, local + "/group");
        Value mean = mean_over(grouped, 2, local + "/mean");
        Value centred = g_.sub(grouped, mean, local + "/centre");
        Value sq = g_.mul(centred, centred, local + "/square");
        Value var = mean_over(sq, 2, local + "/variance");
        Value denom = g_.unary("Sqrt", g_.add(var, g_.scalar(1e-5f), local + "/variance_eps"), local + "/std");
        Value normed = g_.div(centred, denom, local + "/normalize");
        Value back = g_.reshape(normed, x.shape, 0, local + "/ungroup");
        std::vector<int64_t> affine = {C};
        for (size_t i = 2; i < x.shape.size(); i++) affine.push_back(1);
        Value scaled = g_.mul(back, weight(prefix + "weight", affine), local + "/scale");
        return g_.add(scaled, weight(prefix + "bias", affine), local + "/shift");
    }

    // Exact GELU: x * 0.5 * (1 + erf(x / sqrt(2))).
    Value gelu(const Value& x, const std::string& local) {
        Value d = g_.div(x, g_.scalar(float(std::sqrt(2.0))), local + "/div_sqrt2");
        Value e = g_.unary("Erf", d, local + "/erf");
        Value p = g_.add(e, g_.scalar(1.0f), local + "/add_one");
        Value m = g_.mul(x, p, local + "/mul_x");
        return g_.mul(m, g_.scalar(0.5f), local + "/mul_half");
    }

    // GLU over dim 1: a * sigmoid(b) for [a | b].
    Value glu(const Value& x, const std::string& local) {
        const int64_t half = x.shape[1] / 2;
        std::vector<int64_t> shape = x.shape;
        shape[1] = half;
        Value split = g_.constant_i64(g_.unique(local + "/split_sizes"), {2}, {half, half});
        auto parts = g_.node_multi("Split", {x.name, split.name}, local + "/split", {shape, shape}, x.batch_axis,
                                   {Attr::Int("axis", 1)});
        Value gate = g_.unary("Sigmoid", parts[1], local + "/sigmoid");
        return g_.mul(parts[0], gate, local + "/mul");
    }

    // Factors of n, each at most 1024 where n allows, for reductions in stages.
    static std::vector<int64_t> reduction_factors(int64_t n) {
        std::vector<int64_t> factors;
        while (n > 1024) {
            int64_t d = 1024;
            while (d > 1 && n % d != 0) d--;
            if (d < 16) break;  // no useful divisor: reduce the rest in one go
            factors.insert(factors.begin(), d);
            n /= d;
        }
        factors.insert(factors.begin(), n);
        return factors;
    }

    // The mean over axes [first, rank) of x, kept as size-1 dims. Float32
    // sums over hundreds of thousands of values lose digits (ONNX Runtime's
    // reductions add sequentially: 5e-4 relative error on the std of a
    // spectrogram), so the values are reduced in stages of at most 1024: a
    // mean of equal-sized means is the mean.
    Value mean_over(const Value& x, size_t first, const std::string& local) {
        std::vector<int64_t> lead(x.shape.begin(), x.shape.begin() + first);
        std::vector<int64_t> factors = reduction_factors(prod(x.shape, first));
        std::vector<int64_t> staged = lead;
        staged.insert(staged.end(), factors.begin(), factors.end());
        Value v = g_.reshape(x, staged, x.batch_axis, local + "/stages");
        for (size_t k = 0; k < factors.size(); k++) {
            std::vector<int64_t> shape(v.shape.begin(), v.shape.end() - 1);
            v = g_.node("ReduceMean", {v.name}, local + "/reduce", shape, x.batch_axis,
                        {Attr::Ints("axes", {int64_t(shape.size())}), Attr::Int("keepdims", 0)});
        }
        std::vector<int64_t> kept = lead;
        kept.resize(x.shape.size(), 1);
        return g_.reshape(v, kept, x.batch_axis, local + "/keepdims");
    }

    // Mean and unbiased std over all but dim 0; returns (x - mean) / (std + 1e-5).
    Value normalize(const Value& x, Value& mean, Value& std) {
        const int64_t n = prod(x.shape, 1);
        mean = mean_over(x, 1, "mean");
        Value centred = g_.sub(x, mean, "centre");
        Value sq = g_.mul(centred, centred, "square");
        Value var = mean_over(sq, 1, "variance");
        var = g_.mul(var, g_.scalar(float(double(n) / double(n - 1))), "variance_unbiased");
        std = g_.unary("Sqrt", var, "std");
        Value denom = g_.add(std, g_.scalar(1e-5f), "std_eps");
        return g_.div(centred, denom, "normalize");
    }

    // --- STFT / iSTFT -----------------------------------------------------

    // The model's spectrogram, complex as channels: [B, C, L] -> [B, 2C, F, T].
    // The signal is padded twice by reflection (the model's 3/2 hop each side
    // plus up to a hop at the end, then torch.stft's nfft/2 centring): one
    // Gather with precomputed indices that also drops the samples only the
    // two discarded outer frames on each side would read. Then the opset-17
    // STFT with the periodic Hann window scaled by 1/sqrt(nfft) (a power of
    // two for the released models, so exact), and the Nyquist bin dropped.
    Value stft(const Value& mix) {
        const int64_t B = mix.shape[0], C = mix.shape[1], L = mix.shape[2];
        const int nfft = cfg_.nfft;
        const int64_t hop = cfg_.hop_length(), bins = nfft / 2;
        const int64_t frames = (L + hop - 1) / hop;
        const int64_t pad = hop / 2 * 3;
        if (L <= pad + hop) throw Error("ONNX export: the segment is shorter than the STFT padding");
        const int64_t padded_len = frames * hop + 2 * pad;
        const int64_t span = (frames - 1) * hop + nfft;  // what the kept frames read
        std::vector<int64_t> index(span);
        for (int64_t j = 0; j < span; j++) {
            const int64_t once = reflect(2 * hop + j - nfft / 2, padded_len);
            index[j] = reflect(once - pad, L);
        }
        Value idx = g_.constant_i64("spec/reflect_pad_indices", {span}, index);
        Value padded = g_.node("Gather", {mix.name, idx.name}, "reflect_pad", {B, C, span}, 0, {Attr::Int("axis", 2)});
        Value signal = g_.reshape(padded, {B * C, span, 1}, 0, "frames_input");
        const std::vector<double> w = hann(nfft);
        std::vector<float> window(nfft);
        const double norm = 1.0 / std::sqrt(double(nfft));
        for (int i = 0; i < nfft; i++) window[i] = float(w[i] * norm);
        Value win = g_.constant("spec/hann_window_scaled", {nfft}, window);
        Value step = g_.constant_i64("spec/hop", {}, {hop});
        Value length = g_.constant_i64("spec/nfft", {}, {nfft});
        Value z = g_.node("STFT", {signal.name, step.name, win.name, length.name}, "stft", {B * C, frames, bins + 1, 2},
                          0, {Attr::Int("onesided", 1)});
        Value kept = g_.slice(z, 2, 0, bins, "drop_nyquist");                  // [BC, T, F, 2]
        Value cac = g_.transpose(kept, {0, 3, 2, 1}, "complex_as_channels");   // [BC, 2, F, T]
        return g_.reshape(cac, {B, 2 * C, bins, frames}, 0, "merge_channels");
    }

    // [B, S*2C, F, T] -> [B, S*C, length]. The inverse real DFT of each frame
    // is a MatMul with a constant [2F, nfft] basis holding the irfft
    // ("ortho", 1/sqrt(n)) with the Nyquist bin zero and Im(DC) dropped (its
    // sine row is zero), times the synthesis window. The overlap-add of the
    // frames (hop = nfft/4) sums the 4 quarter-frames shifted by one hop each
    // (Pad + Sum), then the constant window-square envelope of all frames
    // (the 2 silent ones each side included) divides, and the model's offset
    // is sliced away.
    Value istft(const Value& z, int64_t length) {
        const int64_t B = z.shape[0], N = z.shape[1] / 2, F = z.shape[2], T = z.shape[3];
        const int nfft = cfg_.nfft;
        const int64_t hop = cfg_.hop_length();
        if (F != nfft / 2) throw Error("ONNX export: the frequency branch does not end with nfft/2 bins");
        if (nfft % hop != 0) throw Error("ONNX export: nfft must be a multiple of the hop");
        const int64_t R = nfft / hop;
        const std::vector<double> w = hann(nfft);
        const double norm = 1.0 / std::sqrt(double(nfft));
        std::vector<float> basis(2 * F * nfft);
        for (int64_t k = 0; k < F; k++) {
            const double weight = k == 0 ? 1.0 : 2.0;
            for (int64_t n = 0; n < nfft; n++) {
                const double angle = 2.0 * M_PI * double((k * n) % nfft) / double(nfft);
                basis[k * nfft + n] = float(weight * std::cos(angle) * norm * w[n]);
                basis[(F + k) * nfft + n] = k == 0 ? 0.0f : float(-weight * std::sin(angle) * norm * w[n]);
            }
        }
        Value rows = g_.reshape(z, {B * N, 2 * F, T}, 0, "split_complex");
        Value by_frame = g_.transpose(rows, {0, 2, 1}, "frames_first");  // [BN, T, 2F]
        Value basis_v = g_.constant("ispec/irfft_window_basis", {2 * F, nfft}, basis);
        Value frames = g_.matmul(by_frame, basis_v, "irfft_window");  // [BN, T, nfft]
        Value quarters = g_.reshape(frames, {B * N, T, R, hop}, 0, "quarters");
        std::vector<std::string> shifted;
        for (int64_t q = 0; q < R; q++) {
            Value part = g_.slice(quarters, 2, q, q + 1, "quarter" + std::to_string(q));
            Value flat = g_.reshape(part, {B * N, T, hop}, 0, "quarter" + std::to_string(q) + "/squeeze");
            Value pads = g_.constant_i64(g_.unique("quarter" + std::to_string(q) + "/pads"), {6},
                                         {0, q, 0, 0, R - 1 - q, 0});
            Value p = g_.node("Pad", {flat.name, pads.name}, "quarter" + std::to_string(q) + "/shift",
                              {B * N, T + R - 1, hop}, 0);
            shifted.push_back(p.name);
        }
        Value ola = g_.node("Sum", shifted, "overlap_add", {B * N, T + R - 1, hop}, 0);
        Value flat = g_.reshape(ola, {B * N, (T + R - 1) * hop}, 0, "overlap_add/flatten");
        // Frame t starts at (t + 2) hop once the 2 silent frames are added in
        // front; output sample j is at nfft/2 + 3/2 hop + j of that.
        const int64_t total_frames = T + 4, ola_len = nfft + hop * (total_frames - 1);
        const int64_t offset = nfft / 2 + hop / 2 * 3;
        const int64_t start = offset - 2 * hop;
        if (offset + length > ola_len || start < 0 || start + length > (T + R - 1) * hop)
            throw Error("ONNX export: the segment does not fit the iSTFT frames");
        std::vector<double> envelope(ola_len, 0.0);
        for (int64_t f = 0; f < total_frames; f++)
            for (int n = 0; n < nfft; n++) envelope[f * hop + n] += w[n] * w[n];
        std::vector<float> env(length);
        for (int64_t j = 0; j < length; j++) env[j] = float(envelope[offset + j]);
        Value trimmed = g_.slice(flat, 1, start, start + length, "trim");
        Value env_v = g_.constant("ispec/window_envelope", {length}, env);
        Value wave = g_.div(trimmed, env_v, "divide_envelope");
        return g_.reshape(wave, {B, N, length}, 0, "split_batch");
    }

    // --- layers -----------------------------------------------------------

    // DConv on x [N, C, T]: residual branches of dilated convs.
    Value dconv_rows(Value x, const DConvPlan& d, const std::string& prefix) {
        for (size_t i = 0; i < d.dilations.size(); i++) {
            const std::string p = prefix + "dconv.layers." + std::to_string(i) + ".";
            const std::string s = "dconv." + std::to_string(i);
            const int64_t dil = d.dilations[i];
            Value y = conv(x, p + "0.", {1}, {dil, dil}, {dil}, s + "/conv");
            y = group_norm(y, 1, p + "1.", s + "/norm1");
            y = gelu(y, s + "/gelu");
            y = conv(y, p + "3.", {1}, {0, 0}, {1}, s + "/conv_out");
            y = group_norm(y, 1, p + "4.", s + "/norm2");
            y = glu(y, s + "/glu");
            y = g_.mul(y, weight(p + "6.scale", {d.channels, 1}), s + "/layer_scale");
            x = g_.add(x, y, s + "/residual");
        }
        return x;
    }

    // The DConv of either branch: the frequency branch runs it on every
    // frequency row as its own sequence ([B, C, F, T] -> [B*F, C, T]).
    Value dconv(const Value& x, const DConvPlan& d, const std::string& prefix, bool freq) {
        if (!freq) return dconv_rows(x, d, prefix);
        const int64_t B = x.shape[0], C = x.shape[1], F = x.shape[2], T = x.shape[3];
        Value rows = g_.transpose(x, {0, 2, 1, 3}, "dconv/rows_first");
        rows = g_.reshape(rows, {B * F, C, T}, 0, "dconv/rows");
        rows = dconv_rows(rows, d, prefix);
        rows = g_.reshape(rows, {B, F, C, T}, 0, "dconv/unrows");
        return g_.transpose(rows, {0, 2, 1, 3}, "dconv/channels_first");
    }

    Value rewrite(const Value& x, bool freq, int kernel, bool norm, int groups, const std::string& prefix,
                  const std::string& norm_name) {
        const int64_t p = kernel / 2;
        Value y = freq ? conv(x, prefix + "rewrite.", {1, 1}, {p, p, p, p}, {1, 1}, "rewrite")
                       : conv(x, prefix + "rewrite.", {1}, {p, p}, {1}, "rewrite");
        if (norm) y = group_norm(y, groups, prefix + norm_name, norm_name.substr(0, norm_name.size() - 1));
        return glu(y, "glu");
    }

    Value encoder_layer(const EncoderLayerPlan& e, const Value& x, const Value* inject) {
        g_.set_scope(e.prefix.substr(0, e.prefix.size() - 1));
        Value y;
        if (e.freq) {
            y = conv(x, e.prefix + "conv.", {e.stride, 1}, {e.pad, 0, e.pad, 0}, {1, 1}, "conv");
        } else {
            const int64_t len = x.shape[2];
            const int64_t extra = len % e.stride ? e.stride - len % e.stride : 0;  // zero pad to a stride multiple
            y = conv(x, e.prefix + "conv.", {e.stride}, {e.pad, e.pad + extra}, {1}, "conv");
        }
        if (e.empty) return y;
        if (inject) {
            Value rows = g_.reshape(*inject, {inject->shape[0], inject->shape[1], 1, inject->shape[2]}, 0, "inject/unsqueeze");
            y = g_.add(y, rows, "inject");
        }
        if (e.norm) y = group_norm(y, e.norm_groups, e.prefix + "norm1.", "norm1");
        y = gelu(y, "gelu");
        if (e.dconv.present) y = dconv(y, e.dconv, e.prefix, e.freq);
        if (e.rewrite_kernel) y = rewrite(y, e.freq, e.rewrite_kernel, e.norm, e.norm_groups, e.prefix, "norm2.");
        return y;
    }

    Value decoder_layer(const DecoderLayerPlan& d, const Value& input, const Value* skip, int64_t length, Value* pre) {
        g_.set_scope(d.prefix.substr(0, d.prefix.size() - 1));
        Value y = input;
        if (!d.empty) {
            y = g_.add(y, *skip, "add_skip");
            if (d.rewrite_kernel) y = rewrite(y, d.freq, d.rewrite_kernel, d.norm, d.norm_groups, d.prefix, "norm1.");
            if (d.dconv.present) y = dconv(y, d.dconv, d.prefix, d.freq);
        }
        Value z = d.freq ? conv_transpose(y, d.prefix + "conv_tr.", {d.stride, 1}, "conv_tr")
                         : conv_transpose(y, d.prefix + "conv_tr.", {d.stride}, "conv_tr");
        if (d.norm) z = group_norm(z, d.norm_groups, d.prefix + "norm2.", "norm2");
        if (d.freq) {
            if (d.pad) z = g_.slice(z, 2, d.pad, z.shape[2] - d.pad, "trim");
        } else {
            z = g_.slice(z, 2, d.pad, d.pad + length, "trim");
        }
        if (!d.last) z = gelu(z, "gelu");
        if (pre) *pre = y;
        return z;
    }

    // --- transformer ------------------------------------------------------

    Value linear(const Value& x, const std::string& prefix, const std::string& local) {
        const HostTensor& w = tensor(prefix + "weight");
        Value wt = linear_weight_t(prefix + "weight", 0, w.shape[0], "");
        Value y = g_.matmul(x, wt, local + "/matmul");
        return g_.add(y, weight(prefix + "bias"), local + "/bias");
    }

    Value layer_norm(const Value& x, const std::string& prefix, const std::string& local) {
        return g_.node("LayerNormalization", {x.name, weight(prefix + "weight").name, weight(prefix + "bias").name},
                       local, x.shape, x.batch_axis, {Attr::Int("axis", -1), Attr::Float("epsilon", 1e-5f)});
    }

    // nn.MultiheadAttention of q [B, N, C] over kv [B, M, C].
    Value mha(const Value& q_in, const Value& kv_in, const std::string& attn) {
        const int64_t B = q_in.shape[0], N = q_in.shape[1], M = kv_in.shape[1], C = q_in.shape[2];
        const int64_t H = cfg_.t_heads, dh = C / H;
        const std::string in_w = attn + "in_proj_weight", in_b = attn + "in_proj_bias";
        auto project = [&](const Value& x, int which, const char* tag) {
            Value wt = linear_weight_t(in_w, which * C, C, std::string(".") + tag);
            Value b = bias_slice(in_b, which * C, C, std::string(".") + tag);
            Value y = g_.matmul(x, wt, std::string("attn/") + tag + "_proj");
            return g_.add(y, b, std::string("attn/") + tag + "_bias");
        };
        Value q = project(q_in, 0, "q");
        q = g_.mul(q, g_.scalar(float(1.0 / std::sqrt(double(dh)))), "attn/q_scale");
        q = g_.reshape(q, {B, N, H, dh}, 0, "attn/q_heads");
        q = g_.transpose(q, {0, 2, 1, 3}, "attn/q_heads_first");  // [B, H, N, dh]
        Value k = project(kv_in, 1, "k");
        k = g_.reshape(k, {B, M, H, dh}, 0, "attn/k_heads");
        k = g_.transpose(k, {0, 2, 3, 1}, "attn/k_heads_first");  // [B, H, dh, M]
        Value v = project(kv_in, 2, "v");
        v = g_.reshape(v, {B, M, H, dh}, 0, "attn/v_heads");
        v = g_.transpose(v, {0, 2, 1, 3}, "attn/v_heads_first");  // [B, H, M, dh]
        Value scores = g_.matmul(q, k, "attn/scores");
        Value probs = g_.node("Softmax", {scores.name}, "attn/softmax", scores.shape, 0, {Attr::Int("axis", -1)});
        Value o = g_.matmul(probs, v, "attn/weighted_values");      // [B, H, N, dh]
        o = g_.transpose(o, {0, 2, 1, 3}, "attn/tokens_first");
        o = g_.reshape(o, {B, N, C}, 0, "attn/merge_heads");
        return linear(o, attn + "out_proj.", "attn/out_proj");
    }

    Value feed_forward(const Value& x, const std::string& prefix) {
        Value h = linear(x, prefix + "linear1.", "linear1");
        h = cfg_.t_gelu ? gelu(h, "gelu") : g_.unary("Relu", h, "relu");
        return linear(h, prefix + "linear2.", "linear2");
    }

    Value residual(const Value& x, const Value& y, const std::string& gamma, const std::string& local) {
        Value s = cfg_.t_layer_scale ? g_.mul(y, weight(gamma), local + "/layer_scale") : y;
        return g_.add(x, s, local);
    }

    // GroupNorm(1, C) over all tokens and channels of each item, affine per channel.
    Value norm_out(const Value& x, const std::string& prefix) {
        Value mean = mean_over(x, 1, "norm_out/mean");
        Value centred = g_.sub(x, mean, "norm_out/centre");
        Value sq = g_.mul(centred, centred, "norm_out/square");
        Value var = mean_over(sq, 1, "norm_out/variance");
        Value denom = g_.unary("Sqrt", g_.add(var, g_.scalar(1e-5f), "norm_out/variance_eps"), "norm_out/std");
        Value normed = g_.div(centred, denom, "norm_out/normalize");
        Value s = g_.mul(normed, weight(prefix + "norm_out.weight"), "norm_out/scale");
        return g_.add(s, weight(prefix + "norm_out.bias"), "norm_out/shift");
    }

    Value transformer_layer(const TransformerLayerPlan& l, const Value& x, const Value* kv) {
        g_.set_scope(l.prefix.substr(0, l.prefix.size() - 1));
        const std::string attn = l.prefix + (l.cross ? "cross_attn." : "self_attn.");
        const std::string ff_norm = l.cross ? "norm3." : "norm2.";
        Value out;
        if (cfg_.t_norm_first) {
            Value a = layer_norm(x, l.prefix + "norm1.", "norm1");
            Value b;
            if (l.cross) {
                Value kvn = layer_norm(*kv, l.prefix + "norm2.", "norm2");
                b = mha(a, kvn, attn);
            } else {
                b = mha(a, a, attn);
            }
            out = residual(x, b, l.prefix + "gamma_1.scale", "residual1");
            a = layer_norm(out, l.prefix + ff_norm, ff_norm.substr(0, ff_norm.size() - 1));
            b = feed_forward(a, l.prefix);
            out = residual(out, b, l.prefix + "gamma_2.scale", "residual2");
            if (cfg_.t_norm_out) out = norm_out(out, l.prefix);
        } else {
            Value b = mha(x, l.cross ? *kv : x, attn);
            out = residual(x, b, l.prefix + "gamma_1.scale", "residual1");
            out = layer_norm(out, l.prefix + "norm1.", "norm1");
            b = feed_forward(out, l.prefix);
            out = residual(out, b, l.prefix + "gamma_2.scale", "residual2");
            out = layer_norm(out, l.prefix + "norm2.", "norm2");
        }
        return out;
    }

    Value conv1x1(const Value& x, const std::string& prefix) {
        g_.set_scope(prefix.substr(0, prefix.size() - 1));
        return conv(x, prefix, {1}, {0, 0}, {1}, "conv");
    }

    void cross_transformer(Value& x, Value& xt) {
        const int64_t B = x.shape[0], C = x.shape[1], Fr = x.shape[2], T1 = x.shape[3], T2 = xt.shape[2];
        g_.set_scope("crosstransformer");
        Value tok = g_.transpose(x, {0, 3, 2, 1}, "tokens");  // [B, T1, Fr, C]
        tok = g_.reshape(tok, {B, T1 * Fr, C}, 0, "tokens/flatten");
        Value tok_t = g_.transpose(xt, {0, 2, 1}, "tokens_t");  // [B, T2, C]
        if (cfg_.t_norm_in) {
            tok = layer_norm(tok, "crosstransformer.norm_in.", "norm_in");
            tok_t = layer_norm(tok_t, "crosstransformer.norm_in_t.", "norm_in_t");
        }
        const float wpos = float(cfg_.t_weight_pos_embed);
        const std::vector<float> pos2d = sin_embedding_2d(C, Fr, T1, cfg_.t_max_period);  // [C, Fr, T1]
        std::vector<float> pos_tokens(T1 * Fr * C);
        for (int64_t c = 0; c < C; c++)
            for (int64_t f = 0; f < Fr; f++)
                for (int64_t t = 0; t < T1; t++) pos_tokens[(t * Fr + f) * C + c] = wpos * pos2d[(c * Fr + f) * T1 + t];
        std::vector<float> pos1d = sin_embedding_1d(T2, C, cfg_.t_max_period);  // [T2, C]
        for (auto& v : pos1d) v = wpos * v;
        tok = g_.add(tok, g_.constant("crosstransformer/pos_embedding_2d", {T1 * Fr, C}, pos_tokens), "pos_embedding");
        tok_t = g_.add(tok_t, g_.constant("crosstransformer/pos_embedding_1d", {T2, C}, pos1d), "pos_embedding_t");

        for (size_t i = 0; i < plan_.layers.size(); i++) {
            if (!plan_.layers[i].cross) {
                tok = transformer_layer(plan_.layers[i], tok, nullptr);
                tok_t = transformer_layer(plan_.layers_t[i], tok_t, nullptr);
            } else {
                // The time layer attends to the frequency tokens from before this layer.
                const Value old = tok;
                tok = transformer_layer(plan_.layers[i], tok, &tok_t);
                tok_t = transformer_layer(plan_.layers_t[i], tok_t, &old);
            }
        }
        g_.set_scope("crosstransformer");
        tok = g_.reshape(tok, {B, T1, Fr, C}, 0, "untokens");
        x = g_.transpose(tok, {0, 3, 2, 1}, "untokens/channels_first");
        xt = g_.transpose(tok_t, {0, 2, 1}, "untokens_t");
    }

    // --- the network ------------------------------------------------------

    void network(Value& x, Value& xt) {
        std::vector<Value> saved, saved_t;
        std::vector<int64_t> lengths, lengths_t;
        for (size_t idx = 0; idx < plan_.encoder.size(); idx++) {
            lengths.push_back(x.shape.back());
            Value injected;
            const Value* inject = nullptr;
            if (idx < plan_.tencoder.size()) {
                const auto& tenc = plan_.tencoder[idx];
                lengths_t.push_back(xt.shape.back());
                xt = encoder_layer(tenc, xt, nullptr);
                if (!tenc.empty) {
                    saved_t.push_back(xt);
                } else {
                    injected = xt;
                    inject = &injected;
                }
            }
            x = encoder_layer(plan_.encoder[idx], x, inject);
            if (idx == 0 && plan_.freq_emb_rows) add_freq_embedding(x);
            saved.push_back(x);
        }

        if (cfg_.t_layers > 0) {
            const int64_t B = x.shape[0], F = x.shape[2], T = x.shape[3];
            if (plan_.bottom) {
                Value flat = g_.reshape(x, {B, x.shape[1], F * T}, 0, "channel_upsampler/flatten");
                flat = conv1x1(flat, "channel_upsampler.");
                x = g_.reshape(flat, {B, flat.shape[1], F, T}, 0, "unflatten");
                xt = conv1x1(xt, "channel_upsampler_t.");
            }
            cross_transformer(x, xt);
            if (plan_.bottom) {
                g_.set_scope("channel_downsampler");
                Value flat = g_.reshape(x, {B, x.shape[1], F * T}, 0, "flatten");
                flat = conv1x1(flat, "channel_downsampler.");
                x = g_.reshape(flat, {B, flat.shape[1], F, T}, 0, "unflatten");
                xt = conv1x1(xt, "channel_downsampler_t.");
            }
        }

        const size_t offset = plan_.decoder.size() - plan_.tdecoder.size();
        for (size_t idx = 0; idx < plan_.decoder.size(); idx++) {
            Value skip = saved.back();
            saved.pop_back();
            Value pre;
            x = decoder_layer(plan_.decoder[idx], x, &skip, lengths.back(), &pre);
            lengths.pop_back();
            if (idx >= offset) {
                const auto& tdec = plan_.tdecoder[idx - offset];
                const int64_t length_t = lengths_t.back();
                lengths_t.pop_back();
                if (tdec.empty) {
                    // The frequency branch is down to one row: it feeds the time decoder.
                    g_.set_scope(tdec.prefix.substr(0, tdec.prefix.size() - 1));
                    Value row = g_.reshape(pre, {pre.shape[0], pre.shape[1], pre.shape[3]}, 0, "from_frequency_branch");
                    xt = decoder_layer(tdec, row, nullptr, length_t, nullptr);
                } else {
                    Value skip_t = saved_t.back();
                    saved_t.pop_back();
                    xt = decoder_layer(tdec, xt, &skip_t, length_t, nullptr);
                }
            }
        }
    }

    void add_freq_embedding(Value& x) {
        // x [B, C, F, T] += freq_emb * (emb_scale * table[f, c]), as [C, F, 1].
        g_.set_scope("freq_emb");
        const HostTensor& table = tensor("freq_emb.embedding.weight");  // [F, C]
        const int64_t C = x.shape[1], F = x.shape[2];
        const float k = float(cfg_.freq_emb), s = float(cfg_.emb_scale);
        std::vector<float> emb(C * F);
        for (int64_t c = 0; c < C; c++)
            for (int64_t f = 0; f < F; f++) emb[c * F + f] = k * (table.data[f * C + c] * s);
        Value e = g_.constant("freq_emb.embedding.weight:scaled_CxFx1", {C, F, 1}, emb);
        x = g_.add(x, e, "add");
    }

    const HTDemucsModel& m_;
    const HTDemucsConfig& cfg_;
    const ModelPlan& plan_;
    GraphBuilder& g_;
    std::map<std::string, Value> weights_;
};

std::string join(const std::vector<std::string>& items) {
    std::string s;
    for (size_t i = 0; i < items.size(); i++) s += (i ? "," : "") + items[i];
    return s;
}

}  // namespace

void check_export_options(int opset, int64_t batch) {
    if (opset < kExportOpset)
        throw Error("--opset " + std::to_string(opset) + " is too old: the graph needs opset 17, the first with the STFT "
                    "operator (and LayerNormalization) that keeps the spectrogram inside the model");
    if (opset > kExportOpset)
        throw Error("--opset " + std::to_string(opset) + " is not supported: the exporter writes opset 17 (the newest "
                    "the ONNX library it is built with checks); runtimes load opset-17 models");
    if (batch < 0) throw Error("--batch must be a positive number or 'dynamic'");
}

std::string htdemucs_to_onnx(const HTDemucsModel& model, int opset, int64_t batch) {
    check_export_options(opset, batch);
    onnx::ModelProto proto;
    proto.set_ir_version(8);  // the IR of opset 17
    proto.set_producer_name("fastdemucs");
    proto.set_producer_version(FASTDEMUCS_VERSION_TEXT);
    proto.set_model_version(1);
    auto* op = proto.add_opset_import();
    op->set_domain("");
    op->set_version(opset);
    const auto& cfg = model.config;
    proto.set_doc_string("HTDemucs (Demucs v4) from " + model.path +
                         ": mix [batch, channels, segment_samples] -> stems [batch, sources, channels, "
                         "segment_samples], STFT and iSTFT inside. Normalise, chunk and overlap outside.");
    auto meta = [&](const std::string& key, const std::string& value) {
        auto* p = proto.add_metadata_props();
        p->set_key(key);
        p->set_value(value);
    };
    meta("sources", join(cfg.sources));
    meta("samplerate", std::to_string(cfg.samplerate));
    meta("audio_channels", std::to_string(cfg.audio_channels));
    meta("segment_samples", std::to_string(cfg.segment_samples()));
    meta("segment", std::to_string(cfg.segment_num) + "/" + std::to_string(cfg.segment_den));
    meta("checkpoint", model.path);

    auto* graph = proto.mutable_graph();
    graph->set_name("htdemucs");
    GraphBuilder builder(graph, batch);
    HTDemucsGraph(model, builder).build();

    try {
        onnx::checker::check_model(proto);
    } catch (const std::exception& e) {
        throw Error("ONNX export: the ONNX checker rejects the graph: " + std::string(e.what()));
    }
    std::string bytes;
    if (!proto.SerializeToString(&bytes)) throw Error("ONNX export: cannot serialize the model (over 2 GB?)");
    return bytes;
}

}  // namespace fastdemucs
