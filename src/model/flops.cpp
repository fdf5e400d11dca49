#include "model/flops.h"

#include <cmath>
#include <vector>

namespace fastdemucs {
namespace {

double dconv_flops(const DConvPlan& d, double positions) {
    if (!d.present) return 0;
    double per_layer = 2.0 * d.hidden * d.channels * 3 + 2.0 * (2 * d.channels) * d.hidden;
    return per_layer * d.dilations.size() * positions;
}

}  // namespace

FlopCount count_forward_flops(const HTDemucsConfig& c, const ModelPlan& plan) {
    FlopCount f;
    const int64_t length = c.segment_samples();
    const int64_t hop = c.hop_length();
    int64_t frames = (length + hop - 1) / hop;
    int64_t freqs = c.nfft / 2;
    int64_t time_len = length;
    const double fft = 5.0 * c.nfft * std::log2(double(c.nfft)) / 2;  // one real FFT of nfft points
    f.spectral += fft * frames * c.audio_channels;                      // STFT
    f.spectral += fft * (frames + 4) * c.audio_channels * c.num_sources();  // iSTFT

    std::vector<int64_t> time_sizes;  // time-branch input length of each encoder
    for (size_t i = 0; i < plan.encoder.size(); i++) {
        const auto& e = plan.encoder[i];
        if (i < plan.tencoder.size()) {
            const auto& t = plan.tencoder[i];
            time_sizes.push_back(time_len);
            int64_t padded = time_len + (time_len % t.stride ? t.stride - time_len % t.stride : 0);
            int64_t out = (padded + 2 * t.pad - t.kernel) / t.stride + 1;
            f.convolutions += 2.0 * t.chout * t.chin * t.kernel * out;
            if (!t.empty) {
                f.convolutions += dconv_flops(t.dconv, double(out));
                if (t.rewrite_kernel) f.convolutions += 2.0 * (2 * t.chout) * t.chout * t.rewrite_kernel * out;
            }
            time_len = out;
        }
        int64_t fout = e.freq ? (freqs + 2 * e.pad - e.kernel) / e.stride + 1 : 1;
        int64_t tout = e.freq ? frames : (frames + 2 * e.pad - e.kernel) / e.stride + 1;
        f.convolutions += 2.0 * e.chout * e.chin * e.kernel * fout * tout;
        f.convolutions += dconv_flops(e.dconv, double(fout) * tout);
        if (e.rewrite_kernel) {
            const double taps = e.freq ? e.rewrite_kernel * e.rewrite_kernel : e.rewrite_kernel;
            f.convolutions += 2.0 * (2 * e.chout) * e.chout * taps * fout * tout;
        }
        freqs = fout;
        frames = tout;
    }

    if (c.t_layers > 0) {
        const double d = plan.transformer_dim, h = plan.transformer_hidden;
        const double n1 = double(freqs) * frames, n2 = double(time_len);
        if (plan.bottom) f.convolutions += 2 * 2.0 * plan.transformer_in_channels * d * (n1 + n2);
        for (const auto& layer : plan.layers) {
            // Both branches: frequency tokens (n1) and time tokens (n2).
            for (int branch = 0; branch < 2; branch++) {
                const double n = branch == 0 ? n1 : n2, m = layer.cross ? (branch == 0 ? n2 : n1) : n;
                f.projections += 2.0 * n * d * d * 2 + 2.0 * m * d * d * 2;  // q and out; k and v
                f.projections += 2.0 * n * d * h * 2;                        // feed-forward
                f.attention += 2.0 * 2.0 * n * m * d;
            }
        }
    }

    for (size_t i = 0; i < plan.decoder.size(); i++) {
        const auto& d = plan.decoder[i];
        const double positions = double(freqs) * frames;
        if (!d.empty) {
            if (d.rewrite_kernel) {
                const double taps = d.freq ? d.rewrite_kernel * d.rewrite_kernel : d.rewrite_kernel;
                f.convolutions += 2.0 * (2 * d.chin) * d.chin * taps * positions;
            }
            f.convolutions += dconv_flops(d.dconv, positions);
        }
        f.convolutions += 2.0 * d.chin * d.chout * d.kernel * positions;
        freqs = d.freq ? (freqs - 1) * d.stride + d.kernel - 2 * d.pad : freqs;
    }
    for (size_t i = 0; i < plan.tdecoder.size(); i++) {
        const auto& d = plan.tdecoder[i];
        const int64_t in_len = i == 0 ? time_len : time_sizes[time_sizes.size() - i];
        if (!d.empty) {
            if (d.rewrite_kernel) f.convolutions += 2.0 * (2 * d.chin) * d.chin * d.rewrite_kernel * in_len;
            f.convolutions += dconv_flops(d.dconv, double(in_len));
        }
        f.convolutions += 2.0 * d.chin * d.chout * d.kernel * in_len;
    }
    return f;
}

}  // namespace fastdemucs
