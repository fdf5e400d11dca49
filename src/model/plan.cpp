#include "model/plan.h"

#include <cmath>

#include "error.h"

namespace fastdemucs {
namespace {

DConvPlan make_dconv(const HTDemucsConfig& c, bool present, int channels) {
    DConvPlan d;
    if (!present) return d;
    d.present = true;
    d.channels = channels;
    d.hidden = static_cast<int>(channels / c.dconv_comp);
    // A negative depth means the same number of layers without dilation.
    bool dilate = c.dconv_depth > 0;
    for (int i = 0; i < std::abs(c.dconv_depth); i++) d.dilations.push_back(dilate ? (1 << i) : 1);
    return d;
}

int grow(double growth, int value) { return static_cast<int>(growth * value); }

}  // namespace

std::string shape_string(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); i++) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

ModelPlan make_plan(const HTDemucsConfig& c) {
    ModelPlan p;
    int chin = c.audio_channels;
    int chin_z = chin * 2;  // complex as channels
    int chout = c.channels_time ? c.channels_time : c.channels;
    int chout_z = c.channels;
    int freqs = c.nfft / 2;
    std::vector<DecoderLayerPlan> decoder, tdecoder;  // built outermost first, reversed below

    for (int index = 0; index < c.depth; index++) {
        bool norm = index >= c.norm_starts;
        bool freq = freqs > 1;
        int stride = c.stride, kernel = c.kernel_size;
        if (!freq) {
            kernel = c.time_stride * 2;
            stride = c.time_stride;
        }
        bool pad = true, last_freq = false;
        if (freq && freqs <= c.kernel_size) {
            kernel = freqs;
            pad = false;
            last_freq = true;
        }
        if (last_freq) {
            chout_z = std::max(chout, chout_z);
            chout = chout_z;
        }

        EncoderLayerPlan enc;
        enc.prefix = "encoder." + std::to_string(index) + ".";
        enc.freq = freq;
        enc.chin = chin_z;
        enc.chout = chout_z;
        enc.kernel = kernel;
        enc.stride = stride;
        enc.pad = pad ? kernel / 4 : 0;
        enc.norm = norm;
        enc.norm_groups = c.norm_groups;
        enc.rewrite_kernel = c.rewrite ? 1 + 2 * c.context_enc : 0;
        enc.dconv = make_dconv(c, c.dconv_mode & 1, chout_z);
        p.encoder.push_back(enc);

        if (freq) {
            EncoderLayerPlan tenc;
            tenc.prefix = "tencoder." + std::to_string(index) + ".";
            tenc.freq = false;
            tenc.chin = chin;
            tenc.chout = chout;
            tenc.kernel = c.kernel_size;
            tenc.stride = c.stride;
            tenc.pad = c.kernel_size / 4;
            tenc.empty = last_freq;
            tenc.norm = norm;
            tenc.norm_groups = c.norm_groups;
            tenc.rewrite_kernel = c.rewrite ? 1 + 2 * c.context_enc : 0;
            tenc.dconv = make_dconv(c, c.dconv_mode & 1, chout);
            p.tencoder.push_back(tenc);
        }

        if (index == 0) {
            chin = c.audio_channels * c.num_sources();
            chin_z = chin * 2;
        }

        DecoderLayerPlan dec;
        dec.prefix = "decoder." + std::to_string(c.depth - 1 - index) + ".";
        dec.freq = freq;
        dec.chin = chout_z;
        dec.chout = chin_z;
        dec.kernel = kernel;
        dec.stride = stride;
        dec.pad = pad ? kernel / 4 : 0;
        dec.last = index == 0;
        dec.norm = norm;
        dec.norm_groups = c.norm_groups;
        dec.rewrite_kernel = c.rewrite ? 1 + 2 * c.context : 0;
        dec.dconv = make_dconv(c, c.dconv_mode & 2, chout_z);
        decoder.push_back(dec);

        if (freq) {
            DecoderLayerPlan tdec;
            tdec.freq = false;
            tdec.chin = chout;
            tdec.chout = chin;
            tdec.kernel = c.kernel_size;
            tdec.stride = c.stride;
            tdec.pad = c.kernel_size / 4;
            tdec.empty = last_freq;
            tdec.last = index == 0;
            tdec.norm = norm;
            tdec.norm_groups = c.norm_groups;
            tdec.rewrite_kernel = c.rewrite ? 1 + 2 * c.context : 0;
            tdec.dconv = make_dconv(c, c.dconv_mode & 2, chout);
            tdecoder.push_back(tdec);
        }

        chin = chout;
        chin_z = chout_z;
        chout = grow(c.growth, chout);
        chout_z = grow(c.growth, chout_z);
        if (freq) freqs = freqs <= c.kernel_size ? 1 : freqs / c.stride;
        if (index == 0 && c.freq_emb != 0.0) {
            p.freq_emb_rows = freqs;
            p.freq_emb_dim = chin_z;
        }
    }
    p.decoder.assign(decoder.rbegin(), decoder.rend());
    p.tdecoder.assign(tdecoder.rbegin(), tdecoder.rend());
    for (size_t i = 0; i < p.tdecoder.size(); i++) p.tdecoder[i].prefix = "tdecoder." + std::to_string(i) + ".";

    p.transformer_in_channels = static_cast<int>(c.channels * std::pow(c.growth, c.depth - 1));
    p.bottom = c.bottom_channels > 0;
    p.transformer_dim = p.bottom ? c.bottom_channels : p.transformer_in_channels;
    p.transformer_hidden = static_cast<int>(p.transformer_dim * c.t_hidden_scale);
    int classic_parity = c.t_cross_first ? 1 : 0;
    for (int i = 0; i < c.t_layers; i++) {
        bool cross = i % 2 != classic_parity;
        p.layers.push_back({"crosstransformer.layers." + std::to_string(i) + ".", cross});
        p.layers_t.push_back({"crosstransformer.layers_t." + std::to_string(i) + ".", cross});
    }
    if (c.t_layers > 0 && p.transformer_dim % c.t_heads != 0)
        throw Error("transformer width " + std::to_string(p.transformer_dim) + " is not divisible by t_heads " +
                    std::to_string(c.t_heads));
    if (c.t_layers > 0 && p.transformer_dim % 4 != 0)
        throw Error("transformer width must be a multiple of 4 for the 2-D positional embedding");
    return p;
}

namespace {

struct ManifestBuilder {
    std::vector<WeightSpec> specs;
    void add(const std::string& name, std::vector<int64_t> shape) { specs.push_back({name, std::move(shape)}); }
    void conv(const std::string& name, int64_t cout, int64_t cin, std::vector<int64_t> kernel) {
        std::vector<int64_t> shape = {cout, cin};
        shape.insert(shape.end(), kernel.begin(), kernel.end());
        add(name + "weight", shape);
        add(name + "bias", {cout});
    }
    void norm(const std::string& name, int64_t channels) {
        add(name + "weight", {channels});
        add(name + "bias", {channels});
    }
    void dconv(const std::string& prefix, const DConvPlan& d) {
        if (!d.present) return;
        for (size_t i = 0; i < d.dilations.size(); i++) {
            std::string p = prefix + "dconv.layers." + std::to_string(i) + ".";
            conv(p + "0.", d.hidden, d.channels, {3});
            norm(p + "1.", d.hidden);
            conv(p + "3.", 2 * d.channels, d.hidden, {1});
            norm(p + "4.", 2 * d.channels);
            add(p + "6.scale", {d.channels});
        }
    }
};

std::vector<int64_t> kernel_shape(bool freq, int k) {
    return freq ? std::vector<int64_t>{k, 1} : std::vector<int64_t>{k};
}
std::vector<int64_t> square_kernel(bool freq, int k) {
    return freq ? std::vector<int64_t>{k, k} : std::vector<int64_t>{k};
}

}  // namespace

std::vector<WeightSpec> weight_manifest(const HTDemucsConfig& c, const ModelPlan& p) {
    ManifestBuilder m;
    auto encoder = [&](const EncoderLayerPlan& e) {
        m.conv(e.prefix + "conv.", e.chout, e.chin, kernel_shape(e.freq, e.kernel));
        if (e.empty) return;
        if (e.norm) m.norm(e.prefix + "norm1.", e.chout);
        if (e.rewrite_kernel) {
            m.conv(e.prefix + "rewrite.", 2 * e.chout, e.chout, square_kernel(e.freq, e.rewrite_kernel));
            if (e.norm) m.norm(e.prefix + "norm2.", 2 * e.chout);
        }
        m.dconv(e.prefix, e.dconv);
    };
    auto decoder = [&](const DecoderLayerPlan& d) {
        // Transposed convolutions store [chin, chout, k...].
        std::vector<int64_t> shape = {d.chin, d.chout};
        for (auto k : kernel_shape(d.freq, d.kernel)) shape.push_back(k);
        m.add(d.prefix + "conv_tr.weight", shape);
        m.add(d.prefix + "conv_tr.bias", {d.chout});
        if (d.norm) m.norm(d.prefix + "norm2.", d.chout);
        if (d.empty) return;
        if (d.rewrite_kernel) {
            m.conv(d.prefix + "rewrite.", 2 * d.chin, d.chin, square_kernel(d.freq, d.rewrite_kernel));
            if (d.norm) m.norm(d.prefix + "norm1.", 2 * d.chin);
        }
        m.dconv(d.prefix, d.dconv);
    };
    // Same order as the official state_dict: encoder, decoder, tencoder, tdecoder, ...
    for (const auto& e : p.encoder) encoder(e);
    for (const auto& d : p.decoder) decoder(d);
    for (const auto& e : p.tencoder) encoder(e);
    for (const auto& d : p.tdecoder) decoder(d);
    if (p.freq_emb_rows) m.add("freq_emb.embedding.weight", {p.freq_emb_rows, p.freq_emb_dim});
    if (p.bottom) {
        int64_t tc = p.transformer_in_channels, bc = p.transformer_dim;
        m.conv("channel_upsampler.", bc, tc, {1});
        m.conv("channel_downsampler.", tc, bc, {1});
        m.conv("channel_upsampler_t.", bc, tc, {1});
        m.conv("channel_downsampler_t.", tc, bc, {1});
    }
    if (c.t_layers > 0) {
        int64_t d = p.transformer_dim, h = p.transformer_hidden;
        if (c.t_norm_in) {
            m.norm("crosstransformer.norm_in.", d);
            m.norm("crosstransformer.norm_in_t.", d);
        }
        auto layer = [&](const TransformerLayerPlan& l) {
            std::string attn = l.prefix + (l.cross ? "cross_attn." : "self_attn.");
            m.add(attn + "in_proj_weight", {3 * d, d});
            m.add(attn + "in_proj_bias", {3 * d});
            m.add(attn + "out_proj.weight", {d, d});
            m.add(attn + "out_proj.bias", {d});
            m.add(l.prefix + "linear1.weight", {h, d});
            m.add(l.prefix + "linear1.bias", {h});
            m.add(l.prefix + "linear2.weight", {d, h});
            m.add(l.prefix + "linear2.bias", {d});
            m.norm(l.prefix + "norm1.", d);
            m.norm(l.prefix + "norm2.", d);
            if (l.cross) m.norm(l.prefix + "norm3.", d);
            if (c.t_norm_first && c.t_norm_out) m.norm(l.prefix + "norm_out.", d);
            if (c.t_layer_scale) {
                m.add(l.prefix + "gamma_1.scale", {d});
                m.add(l.prefix + "gamma_2.scale", {d});
            }
        };
        for (const auto& l : p.layers) layer(l);
        for (const auto& l : p.layers_t) layer(l);
    }
    return m.specs;
}

void check_state(const std::map<std::string, HostTensor>& state, const std::vector<WeightSpec>& manifest,
                 const std::string& where) {
    for (const auto& spec : manifest) {
        auto it = state.find(spec.name);
        if (it == state.end()) throw Error(where + ": missing tensor " + spec.name + " (expected " + shape_string(spec.shape) + ")");
        if (it->second.shape != spec.shape)
            throw Error(where + ": tensor " + spec.name + " has shape " + shape_string(it->second.shape) +
                        " but the checkpoint's kwargs imply " + shape_string(spec.shape));
    }
    if (state.size() != manifest.size()) {
        std::map<std::string, bool> known;
        for (const auto& spec : manifest) known[spec.name] = true;
        for (const auto& kv : state)
            if (!known.count(kv.first)) throw Error(where + ": unexpected tensor " + kv.first + " for the kwargs' architecture");
    }
}

}  // namespace fastdemucs
