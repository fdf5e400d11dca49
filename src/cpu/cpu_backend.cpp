// The HTDemucs forward pass on the CPU, float32: a walk over the model plan
// with the kernels of cpu/ops, cpu/spectral and cpu/transformer. Follows the
// official HTDemucs.forward step for step.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/dconv.h"
#include "cpu/ops.h"
#include "cpu/spectral.h"
#include "cpu/transformer.h"
#include "engine/backend.h"
#include "error.h"

namespace fastdemucs {
namespace {

using cpu::Conv2dParams;
using cpu::Tensor;

struct MeanStd {
    std::vector<float> mean, std;  // per batch item
};

// Mean and unbiased std over everything but dim 0, then x = (x - mean) / (1e-5 + std).
MeanStd normalize(Tensor& x) {
    const int64_t B = x.dim(0), n = x.numel() / B;
    MeanStd ms{std::vector<float>(B), std::vector<float>(B)};
    for (int64_t b = 0; b < B; b++) {
        float* d = x.ptr() + b * n;
        double sum = 0.0;
        for (int64_t i = 0; i < n; i++) sum += d[i];
        const double mean = sum / n;
        double var = 0.0;
        for (int64_t i = 0; i < n; i++) var += (d[i] - mean) * (d[i] - mean);
        const double std = std::sqrt(var / double(n - 1));
        ms.mean[b] = float(mean);
        ms.std[b] = float(std);
        const double inv = 1.0 / (1e-5 + std);
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) d[i] = float((d[i] - mean) * inv);
    }
    return ms;
}

void denormalize(Tensor& x, const MeanStd& ms) {
    const int64_t B = x.dim(0), n = x.numel() / B;
    for (int64_t b = 0; b < B; b++) {
        float* d = x.ptr() + b * n;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) d[i] = d[i] * ms.std[b] + ms.mean[b];
    }
}

// Kernel geometry of a layer's main convolution: [K, 1] over frequency rows,
// or [1, K] over time (time tensors are [B, C, 1, T]).
Conv2dParams along(bool freq, int kernel, int stride, int pad) {
    Conv2dParams p;
    if (freq) {
        p.kh = kernel, p.sh = stride, p.ph = pad;
    } else {
        p.kw = kernel, p.sw = stride, p.pw = pad;
    }
    return p;
}

class CpuBackend final : public ModelBackend {
public:
    CpuBackend(std::shared_ptr<const HTDemucsModel> model, int threads) : model_(std::move(model)), threads_(threads) {}

    const HTDemucsModel& model() const override { return *model_; }
    int max_batch() const override { return 1; }
    void set_threads(int threads) override { threads_ = threads; }

    void forward(const float* mix, int batch, int64_t length, float* out, const TapFn& tap) override {
        cpu::set_threads(threads_);
        const auto& cfg = model_->config;
        const int64_t training_length = cfg.segment_samples();
        if (length > training_length)
            throw Error("input of " + std::to_string(length) + " samples is longer than the model's segment (" +
                        std::to_string(training_length) + ")");
        const int C = cfg.audio_channels, S = cfg.num_sources();
        tap_ = tap;

        Tensor mixture({batch, C, training_length});
        for (int64_t bc = 0; bc < int64_t(batch) * C; bc++)
            std::memcpy(mixture.ptr() + bc * training_length, mix + bc * length, length * sizeof(float));

        Tensor x = cpu::stft_cac(mixture, cfg.nfft);  // [B, 2C, F, T]
        emit("spec", x);
        const MeanStd spec_stats = normalize(x);
        Tensor xt = Tensor(mixture).reshaped({batch, C, 1, training_length});  // [B, C, 1, L]
        const MeanStd time_stats = normalize(xt);

        run_network(x, xt);

        // x: [B, S*2C, F, T] -> waveform [B, S*C, L]; xt: [B, S*C, 1, L].
        denormalize(x, spec_stats);
        Tensor wave = cpu::istft_cac(x, cfg.nfft, training_length);
        denormalize(xt, time_stats);
        const int64_t rows = int64_t(batch) * S * C;
        for (int64_t r = 0; r < rows; r++) {
            const float* f = wave.ptr() + r * training_length;
            const float* t = xt.ptr() + r * training_length;
            float* o = out + r * length;
            for (int64_t i = 0; i < length; i++) o[i] = t[i] + f[i];
        }
        tap_ = nullptr;
    }

private:
    void emit(const std::string& name, const Tensor& t) const {
        if (tap_) tap_(name, t.shape, t.ptr());
    }
    const float* w(const std::string& name) const { return model_->data(name); }

    void run_network(Tensor& x, Tensor& xt) {
        const auto& plan = model_->plan;
        const auto& cfg = model_->config;
        std::vector<Tensor> saved, saved_t;
        std::vector<int64_t> lengths, lengths_t;
        for (size_t idx = 0; idx < plan.encoder.size(); idx++) {
            lengths.push_back(x.dim(-1));
            const Tensor* inject = nullptr;
            Tensor injected;
            if (idx < plan.tencoder.size()) {
                const auto& tenc = plan.tencoder[idx];
                lengths_t.push_back(xt.dim(-1));
                xt = encoder_layer(tenc, xt, nullptr);
                emit("tencoder." + std::to_string(idx), xt);
                if (!tenc.empty) {
                    saved_t.push_back(xt);
                } else {
                    injected = xt;
                    inject = &injected;
                }
            }
            x = encoder_layer(plan.encoder[idx], x, inject);
            emit("encoder." + std::to_string(idx), x);
            if (idx == 0 && plan.freq_emb_rows) add_freq_embedding(x);
            saved.push_back(x);
        }

        if (cfg.t_layers > 0) {
            const int64_t B = x.dim(0), F = x.dim(2), T = x.dim(3);
            if (plan.bottom) {
                x = conv1x1(std::move(x).reshaped({B, x.dim(1), 1, F * T}), "channel_upsampler.");
                emit("channel_upsampler", x);
                x = std::move(x).reshaped({B, x.dim(1), F, T});
                xt = conv1x1(xt, "channel_upsampler_t.");
                emit("channel_upsampler_t", xt);
            }
            Tensor xt3 = std::move(xt).reshaped({xt.dim(0), xt.dim(1), xt.dim(-1)});
            cpu::cross_transformer(*model_, x, xt3);
            xt = std::move(xt3).reshaped({xt3.dim(0), xt3.dim(1), 1, xt3.dim(2)});
            emit("crosstransformer.0", x);
            if (plan.bottom) {
                x = conv1x1(std::move(x).reshaped({B, x.dim(1), 1, F * T}), "channel_downsampler.");
                emit("channel_downsampler", x);
                x = std::move(x).reshaped({B, x.dim(1), F, T});
                xt = conv1x1(xt, "channel_downsampler_t.");
                emit("channel_downsampler_t", xt);
            }
        }

        const size_t offset = plan.decoder.size() - plan.tdecoder.size();
        for (size_t idx = 0; idx < plan.decoder.size(); idx++) {
            Tensor skip = std::move(saved.back());
            saved.pop_back();
            Tensor pre;
            x = decoder_layer(plan.decoder[idx], x, &skip, lengths.back(), &pre);
            lengths.pop_back();
            emit("decoder." + std::to_string(idx) + ".0", x);
            if (idx >= offset) {
                const auto& tdec = plan.tdecoder[idx - offset];
                const int64_t length_t = lengths_t.back();
                lengths_t.pop_back();
                if (tdec.empty) {
                    // The frequency branch is down to one row: it feeds the time decoder.
                    xt = decoder_layer(tdec, pre, nullptr, length_t, nullptr);
                } else {
                    Tensor skip_t = std::move(saved_t.back());
                    saved_t.pop_back();
                    xt = decoder_layer(tdec, xt, &skip_t, length_t, nullptr);
                }
                emit("tdecoder." + std::to_string(idx - offset) + ".0", xt);
            }
        }
    }

    Tensor conv1x1(const Tensor& x, const std::string& prefix) const {
        const int cout = static_cast<int>(model_->weight(prefix + "weight").shape[0]);
        return cpu::conv2d(x, w(prefix + "weight"), w(prefix + "bias"), cout, Conv2dParams{});
    }

    void add_freq_embedding(Tensor& x) const {
        // x [B, C, F, T] += freq_emb * (emb_scale * table[f, c])
        const auto& cfg = model_->config;
        const float* table = w("freq_emb.embedding.weight");  // [F, C]
        const int64_t B = x.dim(0), C = x.dim(1), F = x.dim(2), T = x.dim(3);
        const float k = float(cfg.freq_emb), s = float(cfg.emb_scale);
        for (int64_t b = 0; b < B; b++)
#pragma omp parallel for collapse(2) schedule(static)
            for (int64_t c = 0; c < C; c++)
                for (int64_t f = 0; f < F; f++) {
                    const float e = k * (table[f * C + c] * s);
                    float* row = x.ptr() + ((b * C + c) * F + f) * T;
                    for (int64_t t = 0; t < T; t++) row[t] += e;
                }
    }

    // DConv: residual branches over time, every frequency row on its own:
    // a row at a time in cache where the rows are many and short (the
    // frequency branch; FASTDEMUCS_DCONV_ROWS=0: layer by layer everywhere).
    void dconv(const DConvPlan& d, const std::string& prefix, Tensor& x) const {
        static const bool rows_off = [] {
            const char* v = std::getenv("FASTDEMUCS_DCONV_ROWS");
            return v && std::string(v) == "0";
        }();
        std::vector<cpu::DConvLayerWeights> layers;
        for (size_t i = 0; i < d.dilations.size(); i++) {
            const std::string p = prefix + "dconv.layers." + std::to_string(i) + ".";
            cpu::DConvLayerWeights l;
            l.dilation = d.dilations[i];
            l.in_weight = w(p + "0.weight"), l.in_bias = w(p + "0.bias");
            l.in_norm_weight = w(p + "1.weight"), l.in_norm_bias = w(p + "1.bias");
            l.out_weight = w(p + "3.weight"), l.out_bias = w(p + "3.bias");
            l.out_norm_weight = w(p + "4.weight"), l.out_norm_bias = w(p + "4.bias");
            l.scale = w(p + "6.scale");
            layers.push_back(l);
        }
        if (!rows_off && cpu::dconv_rows_fit(x, d.hidden))
            cpu::dconv_rows(x, d.hidden, layers);
        else
            cpu::dconv_layer_by_layer(x, d.hidden, layers);
    }

    // rewrite conv -> norm -> GLU. Square kernel over (F, T) in the frequency branch.
    Tensor rewrite(bool freq, int kernel, bool norm, int groups, const std::string& prefix, const std::string& norm_name,
                   const Tensor& x, int chout) const {
        Conv2dParams k;
        k.kw = kernel, k.pw = kernel / 2;
        if (freq) k.kh = kernel, k.ph = kernel / 2;
        Tensor y = cpu::conv2d(x, w(prefix + "rewrite.weight"), w(prefix + "rewrite.bias"), 2 * chout, k);
        if (norm) cpu::group_norm(y, groups, w(prefix + norm_name + "weight"), w(prefix + norm_name + "bias"));
        return cpu::glu(y);
    }

    Tensor encoder_layer(const EncoderLayerPlan& e, const Tensor& input, const Tensor* inject) const {
        const Tensor* x = &input;
        Tensor padded;
        if (!e.freq && input.dim(-1) % e.stride != 0) {
            padded = cpu::pad_right(input, input.dim(-1) + e.stride - input.dim(-1) % e.stride);
            x = &padded;
        }
        Tensor y = cpu::conv2d(*x, w(e.prefix + "conv.weight"), w(e.prefix + "conv.bias"), e.chout,
                               along(e.freq, e.kernel, e.stride, e.pad));
        if (e.empty) return y;
        if (inject) add_rows(y, *inject);
        if (e.norm) cpu::group_norm(y, e.norm_groups, w(e.prefix + "norm1.weight"), w(e.prefix + "norm1.bias"));
        cpu::gelu(y);
        if (e.dconv.present) dconv(e.dconv, e.prefix, y);
        if (e.rewrite_kernel) return rewrite(e.freq, e.rewrite_kernel, e.norm, e.norm_groups, e.prefix, "norm2.", y, e.chout);
        return y;
    }

    // y [B, C, H, T] += inject [B, C, 1, T] on every row.
    static void add_rows(Tensor& y, const Tensor& inject) {
        const int64_t BC = y.dim(0) * y.dim(1), H = y.dim(2), T = y.dim(3);
        for (int64_t bc = 0; bc < BC; bc++)
            for (int64_t h = 0; h < H; h++) {
                float* row = y.ptr() + (bc * H + h) * T;
                const float* src = inject.ptr() + bc * T;
                for (int64_t t = 0; t < T; t++) row[t] += src[t];
            }
    }

    // Returns z; `pre` (if given) receives the input of the transposed conv.
    Tensor decoder_layer(const DecoderLayerPlan& d, const Tensor& input, const Tensor* skip, int64_t length,
                         Tensor* pre) const {
        Tensor y = input;
        if (!d.empty) {
            cpu::add_inplace(y, *skip);
            if (d.rewrite_kernel) y = rewrite(d.freq, d.rewrite_kernel, d.norm, d.norm_groups, d.prefix, "norm1.", y, d.chin);
            if (d.dconv.present) dconv(d.dconv, d.prefix, y);
        }
        Conv2dParams k = along(d.freq, d.kernel, d.stride, 0);
        Tensor z = cpu::conv_transpose2d(y, w(d.prefix + "conv_tr.weight"), w(d.prefix + "conv_tr.bias"), d.chout, k.kh,
                                         k.kw, k.sh, k.sw);
        if (d.norm) cpu::group_norm(z, d.norm_groups, w(d.prefix + "norm2.weight"), w(d.prefix + "norm2.bias"));
        if (d.freq) {
            if (d.pad) z = cpu::crop(z, 2, d.pad, z.dim(2) - 2 * d.pad);
        } else {
            z = cpu::crop(z, 3, d.pad, length);
        }
        if (!d.last) cpu::gelu(z);
        if (pre) *pre = std::move(y);
        return z;
    }

    std::shared_ptr<const HTDemucsModel> model_;
    int threads_;
    TapFn tap_;
};

}  // namespace

std::unique_ptr<ModelBackend> make_cpu_backend(std::shared_ptr<const HTDemucsModel> model, int threads) {
    return std::make_unique<CpuBackend>(std::move(model), threads);
}

}  // namespace fastdemucs
