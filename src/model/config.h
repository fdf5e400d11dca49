// HTDemucs hyper-parameters, read from a checkpoint's constructor kwargs.
// Everything the network's shapes depend on comes from here: nothing in the
// engine is hard-coded to one released model.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "checkpoint/pyvalue.h"

namespace fastdemucs {

struct HTDemucsConfig {
    std::vector<std::string> sources;
    int audio_channels = 2;
    int samplerate = 44100;
    int64_t segment_num = 10, segment_den = 1;  // seconds, as a fraction
    int channels = 48;
    int channels_time = 0;  // 0 = same as channels
    double growth = 2;
    int nfft = 4096;
    int depth = 4;
    bool rewrite = true;
    double freq_emb = 0.2;  // weight of the frequency embedding; 0 = none
    double emb_scale = 10;
    int kernel_size = 8;
    int time_stride = 2;
    int stride = 4;
    int context = 1;
    int context_enc = 0;
    int norm_starts = 4;
    int norm_groups = 4;
    int dconv_mode = 1;
    int dconv_depth = 2;
    double dconv_comp = 8;
    int bottom_channels = 0;
    int t_layers = 5;
    double t_hidden_scale = 4.0;
    int t_heads = 8;
    bool t_norm_in = true;
    bool t_norm_first = true;
    bool t_norm_out = true;
    double t_max_period = 10000.0;
    bool t_layer_scale = true;
    bool t_gelu = true;
    double t_weight_pos_embed = 1.0;
    bool t_cross_first = false;

    int num_sources() const { return static_cast<int>(sources.size()); }
    int hop_length() const { return nfft / 4; }
    double segment_seconds() const { return double(segment_num) / double(segment_den); }
    // int(segment * samplerate), exactly as Python computes it on a Fraction.
    int64_t segment_samples() const { return segment_num * samplerate / segment_den; }
};

// Reads and validates kwargs. Options the released models don't use
// (Wiener filtering, cac=False, multi_freqs, sparse attention, t_emb other
// than 'sin', ...) throw Error "<where>: ... not supported".
HTDemucsConfig config_from_kwargs(const PyValue& kwargs, const std::string& where);

}  // namespace fastdemucs
