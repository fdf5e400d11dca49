// Channel conversion (the official convert_audio_channels) and resampling
// (libsoxr).
#include <soxr.h>

#include <cmath>
#include <vector>

#include "error.h"
#include "io/audio_file.h"

namespace fastdemucs {

Audio convert_channels(const Audio& audio, int channels) {
    if (channels <= 0) throw Error("invalid channel count " + std::to_string(channels));
    if (audio.channels == channels) return audio;
    Audio out;
    out.channels = channels;
    out.samples = audio.samples;
    out.samplerate = audio.samplerate;
    out.data.assign(static_cast<size_t>(channels) * audio.samples, 0.0f);
    if (channels == 1) {
        // The mean over channels, summed in order as torch's mean does in float.
        float* mono = out.channel(0);
        for (int c = 0; c < audio.channels; ++c) {
            const float* source = audio.channel(c);
            for (int64_t t = 0; t < audio.samples; ++t) mono[t] += source[t];
        }
        for (int64_t t = 0; t < audio.samples; ++t) mono[t] /= static_cast<float>(audio.channels);
    } else if (audio.channels == 1 || audio.channels > channels) {
        for (int c = 0; c < channels; ++c) {
            const float* source = audio.channel(audio.channels == 1 ? 0 : c);
            std::copy(source, source + audio.samples, out.channel(c));
        }
    } else {
        throw Error("the audio has " + std::to_string(audio.channels) + " channels, fewer than the " +
                    std::to_string(channels) + " needed, and is not mono");
    }
    return out;
}

Audio resample(const Audio& audio, int samplerate) {
    if (samplerate <= 0 || audio.samplerate <= 0)
        throw Error("cannot resample from " + std::to_string(audio.samplerate) + " Hz to " +
                    std::to_string(samplerate) + " Hz");
    if (audio.samplerate == samplerate) return audio;
    Audio out;
    out.channels = audio.channels;
    out.samplerate = samplerate;
    out.samples = static_cast<int64_t>(
        std::llround(static_cast<double>(audio.samples) * samplerate / audio.samplerate));
    out.data.assign(static_cast<size_t>(out.channels) * out.samples, 0.0f);
    if (audio.samples == 0 || out.samples == 0) return out;

    std::vector<const float*> inputs(audio.channels);
    std::vector<float*> outputs(out.channels);
    for (int c = 0; c < audio.channels; ++c) {
        inputs[c] = audio.channel(c);
        outputs[c] = out.channel(c);
    }
    const soxr_io_spec_t io = soxr_io_spec(SOXR_FLOAT32_S, SOXR_FLOAT32_S);
    const soxr_quality_spec_t quality = soxr_quality_spec(SOXR_VHQ, SOXR_LINEAR_PHASE);
    const soxr_runtime_spec_t runtime = soxr_runtime_spec(1);
    size_t used = 0, produced = 0;
    const soxr_error_t error =
        soxr_oneshot(audio.samplerate, samplerate, static_cast<unsigned>(audio.channels), inputs.data(),
                     static_cast<size_t>(audio.samples), &used, outputs.data(),
                     static_cast<size_t>(out.samples), &produced, &io, &quality, &runtime);
    if (error) throw Error(std::string("resampling failed: ") + error);
    // soxr's output length can differ from the rounded one by a sample: the
    // rest stays zero.
    return out;
}

}  // namespace fastdemucs
