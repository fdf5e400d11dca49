#include "model/config.h"

#include <cmath>

#include "error.h"

namespace fastdemucs {
namespace {

class KwargsReader {
public:
    KwargsReader(const PyValue& kwargs, const std::string& where) : kwargs_(kwargs), where_(where) {
        if (kwargs.kind != PyValue::Kind::Dict) fail("kwargs is not a dict");
    }

    [[noreturn]] void fail(const std::string& what) const { throw Error(where_ + ": " + what); }

    const PyValue* find(const std::string& key) const { return kwargs_.get(key); }

    double number(const std::string& key, double fallback) const {
        const PyValue* v = find(key);
        if (!v || v->kind == PyValue::Kind::None) return fallback;
        if (!v->is_number() && v->kind != PyValue::Kind::Fraction) fail("kwarg " + key + " is not a number: " + v->repr());
        return v->as_double();
    }
    int integer(const std::string& key, int fallback) const {
        double d = number(key, fallback);
        if (d != std::floor(d) || std::fabs(d) > 1e9) fail("kwarg " + key + " is not an integer: " + std::to_string(d));
        return static_cast<int>(d);
    }
    bool flag(const std::string& key, bool fallback) const {
        const PyValue* v = find(key);
        if (!v || v->kind == PyValue::Kind::None) return fallback;
        if (!v->is_number()) fail("kwarg " + key + " is not a boolean: " + v->repr());
        return v->as_double() != 0.0;
    }
    std::string text(const std::string& key, const std::string& fallback) const {
        const PyValue* v = find(key);
        if (!v || v->kind == PyValue::Kind::None) return fallback;
        if (v->kind != PyValue::Kind::String) fail("kwarg " + key + " is not a string: " + v->repr());
        return v->s;
    }
    // The released models rely on several options keeping their inference
    // defaults; anything else changes the network and is refused.
    void require(bool ok, const std::string& option) const {
        if (!ok) fail("option " + option + " is not supported");
    }

private:
    const PyValue& kwargs_;
    std::string where_;
};

}  // namespace

HTDemucsConfig config_from_kwargs(const PyValue& kwargs, const std::string& where) {
    KwargsReader r(kwargs, where);
    HTDemucsConfig c;

    const PyValue* sources = r.find("sources");
    if (!sources || (sources->kind != PyValue::Kind::List && sources->kind != PyValue::Kind::Tuple) ||
        sources->items.empty())
        r.fail("kwarg sources is missing or not a list of names");
    for (const auto& s : sources->items) {
        if (s->kind != PyValue::Kind::String) r.fail("kwarg sources holds a non-string: " + s->repr());
        c.sources.push_back(s->s);
    }

    c.audio_channels = r.integer("audio_channels", 2);
    c.samplerate = r.integer("samplerate", 44100);
    const PyValue* seg = r.find("segment");
    if (seg && seg->kind == PyValue::Kind::Fraction) {
        c.segment_num = seg->i;
        c.segment_den = seg->den;
    } else if (seg && seg->kind == PyValue::Kind::Int) {
        c.segment_num = seg->i;
        c.segment_den = 1;
    } else if (seg && seg->kind == PyValue::Kind::Float) {
        // A float segment: keep enough precision for int(segment * samplerate).
        c.segment_den = 1000000;
        c.segment_num = static_cast<int64_t>(std::llround(seg->f * 1e6));
    }
    if (c.segment_num <= 0 || c.segment_den <= 0) r.fail("kwarg segment must be positive");

    c.channels = r.integer("channels", 48);
    c.channels_time = r.integer("channels_time", 0);
    c.growth = r.number("growth", 2);
    c.nfft = r.integer("nfft", 4096);
    c.depth = r.integer("depth", 4);
    c.rewrite = r.flag("rewrite", true);
    c.freq_emb = r.number("freq_emb", 0.2);
    c.emb_scale = r.number("emb_scale", 10);
    c.kernel_size = r.integer("kernel_size", 8);
    c.time_stride = r.integer("time_stride", 2);
    c.stride = r.integer("stride", 4);
    c.context = r.integer("context", 1);
    c.context_enc = r.integer("context_enc", 0);
    c.norm_starts = r.integer("norm_starts", 4);
    c.norm_groups = r.integer("norm_groups", 4);
    c.dconv_mode = r.integer("dconv_mode", 1);
    c.dconv_depth = r.integer("dconv_depth", 2);
    c.dconv_comp = r.number("dconv_comp", 8);
    c.bottom_channels = r.integer("bottom_channels", 0);
    c.t_layers = r.integer("t_layers", 5);
    c.t_hidden_scale = r.number("t_hidden_scale", 4.0);
    c.t_heads = r.integer("t_heads", 8);
    c.t_norm_in = r.flag("t_norm_in", true);
    c.t_norm_first = r.flag("t_norm_first", true);
    c.t_norm_out = r.flag("t_norm_out", true);
    c.t_max_period = r.number("t_max_period", 10000.0);
    c.t_layer_scale = r.flag("t_layer_scale", true);
    c.t_gelu = r.flag("t_gelu", true);
    c.t_weight_pos_embed = r.number("t_weight_pos_embed", 1.0);
    c.t_cross_first = r.flag("t_cross_first", false);

    r.require(r.integer("wiener_iters", 0) == 0 && r.integer("end_iters", 0) == 0, "wiener_iters > 0 (Wiener filtering)");
    r.require(r.flag("cac", true), "cac=False (masking instead of complex-as-channels)");
    const PyValue* multi = r.find("multi_freqs");
    r.require(!multi || multi->kind == PyValue::Kind::None || multi->items.empty(), "multi_freqs");
    r.require(!r.flag("t_sparse_self_attn", false), "t_sparse_self_attn");
    r.require(!r.flag("t_sparse_cross_attn", false), "t_sparse_cross_attn");
    r.require(r.text("t_emb", "sin") == "sin", "t_emb='" + r.text("t_emb", "sin") + "' (only 'sin')");
    r.require(r.integer("t_sin_random_shift", 0) == 0, "t_sin_random_shift > 0");
    r.require(!r.flag("t_group_norm", false), "t_group_norm");
    r.require(c.t_norm_in || !r.flag("t_norm_in_group", false), "t_norm_in_group");
    r.require(r.flag("use_train_segment", true), "use_train_segment=False");

    if (c.audio_channels < 1 || c.channels < 1 || c.depth < 1 || c.kernel_size < 1 || c.stride < 1 ||
        c.time_stride < 1 || c.t_heads < 1 || c.t_layers < 0 || c.samplerate < 1)
        r.fail("kwargs describe an invalid network (non-positive size)");
    if (c.nfft < 16 || (c.nfft & (c.nfft - 1)) != 0) r.fail("kwarg nfft must be a power of two");
    if (c.dconv_comp <= 0) r.fail("kwarg dconv_comp must be positive");
    return c;
}

}  // namespace fastdemucs
