#include "engine/apply.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>

#include "error.h"

namespace fastdemucs {
namespace {

// A window [offset, offset + length) into a signal [C, total] that reads
// zeros outside it: the official TensorChunk. Padding a chunk takes real
// neighbouring samples where the underlying signal has them.
struct ChunkView {
    const float* base = nullptr;
    int channels = 0;
    int64_t total = 0;
    int64_t offset = 0;
    int64_t length = 0;

    ChunkView sub(int64_t start, int64_t len) const {
        ChunkView v = *this;
        v.offset = offset + start;
        v.length = std::min(length - start, len);
        return v;
    }
    // [C, target], centred on the chunk, zero beyond the underlying signal.
    std::vector<float> padded(int64_t target) const {
        const int64_t delta = target - length;
        const int64_t start = offset - delta / 2;
        std::vector<float> out(int64_t(channels) * target, 0.0f);
        const int64_t lo = std::max<int64_t>(0, start), hi = std::min(total, start + target);
        for (int c = 0; c < channels && hi > lo; c++)
            std::memcpy(out.data() + c * target + (lo - start), base + c * total + lo, (hi - lo) * sizeof(float));
        return out;
    }
};

// One chunk to separate: where it starts in the view and how many samples of
// it to keep (the model always sees valid_length samples around it).
struct Job {
    int64_t offset;
    int64_t length;
};

int64_t segment_length_of(const ModelBackend& backend, const SeparateParams& params) {
    const auto& cfg = backend.model().config;
    if (params.segment > 0) return static_cast<int64_t>(double(cfg.samplerate) * params.segment);
    return cfg.segment_samples();
}

// Runs the jobs through the backend in batches, handing each chunk's
// centre-trimmed output [S, C, job.length] to `consume` as soon as its batch
// is done: only one batch of chunks is ever held, whatever the track length.
void run_jobs(ModelBackend& backend, const ChunkView& mix, const std::vector<Job>& jobs, int64_t valid_length,
              const std::function<void(const Job&, const float*)>& consume,
              const std::function<void(int64_t)>& on_chunks) {
    const auto& cfg = backend.model().config;
    const int C = cfg.audio_channels, S = cfg.num_sources();
    const size_t batch = std::max(1, backend.max_batch());
    std::vector<float> in, out, trimmed;
    for (size_t first = 0; first < jobs.size(); first += batch) {
        const size_t n = std::min(batch, jobs.size() - first);
        in.resize(n * C * valid_length);
        out.resize(n * S * C * valid_length);
        for (size_t j = 0; j < n; j++) {
            const std::vector<float> padded = mix.sub(jobs[first + j].offset, jobs[first + j].length).padded(valid_length);
            std::memcpy(in.data() + j * C * valid_length, padded.data(), padded.size() * sizeof(float));
        }
        backend.forward(in.data(), static_cast<int>(n), valid_length, out.data());
        for (size_t j = 0; j < n; j++) {
            // Official center_trim: the extra sample of an odd difference goes on the right.
            const int64_t keep = jobs[first + j].length, left = (valid_length - keep) / 2;
            trimmed.resize(int64_t(S) * C * keep);
            for (int64_t sc = 0; sc < int64_t(S) * C; sc++)
                std::memcpy(trimmed.data() + sc * keep, out.data() + (j * S * C + sc) * valid_length + left,
                            keep * sizeof(float));
            consume(jobs[first + j], trimmed.data());
        }
        if (on_chunks) on_chunks(static_cast<int64_t>(n));
    }
}

// apply_model on one view with shifts already handled: split or not.
// Returns [S, C, mix.length].
std::vector<float> apply_view(ModelBackend& backend, const ChunkView& mix, const SeparateParams& params,
                              const std::function<void(int64_t)>& on_chunks) {
    const auto& cfg = backend.model().config;
    const int C = cfg.audio_channels, S = cfg.num_sources();
    const int64_t length = mix.length;
    const int64_t segment_length = segment_length_of(backend, params);
    // Without a segment override the model pads to its training length itself.
    const int64_t valid_length = params.segment > 0 ? segment_length : cfg.segment_samples();
    std::vector<float> out(int64_t(S) * C * length, 0.0f);

    if (!params.split) {
        if (length > valid_length)
            throw Error("the track (" + std::to_string(length) + " samples) is longer than the model's segment (" +
                        std::to_string(valid_length) + " samples): use split mode");
        run_jobs(backend, mix, {{0, length}}, valid_length,
                 [&](const Job&, const float* r) { std::copy(r, r + out.size(), out.begin()); }, on_chunks);
        return out;
    }

    std::vector<Job> jobs;
    for (int64_t offset : chunk_offsets(length, segment_length, params.overlap))
        jobs.push_back({offset, mix.sub(offset, segment_length).length});
    const std::vector<float> weight = transition_weight(segment_length, params.transition_power);
    std::vector<float> sum_weight(length, 0.0f);
    run_jobs(backend, mix, jobs, valid_length, [&](const Job& job, const float* r) {
        for (int64_t sc = 0; sc < int64_t(S) * C; sc++) {
            float* o = out.data() + sc * length + job.offset;
            const float* rr = r + sc * job.length;
            for (int64_t i = 0; i < job.length; i++) o[i] += weight[i] * rr[i];
        }
        for (int64_t i = 0; i < job.length; i++) sum_weight[job.offset + i] += weight[i];
    }, on_chunks);
    for (int64_t sc = 0; sc < int64_t(S) * C; sc++)
        for (int64_t i = 0; i < length; i++) out[sc * length + i] /= sum_weight[i];
    return out;
}

void check_params(const ModelBackend& backend, const SeparateParams& params) {
    const auto& cfg = backend.model().config;
    if (params.shifts < 0) throw Error("--shifts must be >= 0");
    if (!(params.overlap >= 0.0 && params.overlap < 1.0)) throw Error("--overlap must be in [0, 1)");
    if (params.transition_power < 1.0) throw Error("transition_power must be >= 1");
    if (params.segment < 0) throw Error("--segment must be positive");
    if (params.segment > 0 && params.segment > cfg.segment_seconds() + 1e-9)
        throw Error("cannot use a Transformer model with a longer segment than it was trained for; maximum segment is " +
                    std::to_string(cfg.segment_seconds()) + " s");
    if (params.segment > 0 && segment_length_of(backend, params) < 2)
        throw Error("--segment is too short");
}

}  // namespace

std::vector<int64_t> chunk_offsets(int64_t length, int64_t segment_length, double overlap) {
    const int64_t stride = static_cast<int64_t>((1.0 - overlap) * double(segment_length));
    if (stride <= 0) throw Error("--overlap leaves no stride between chunks");
    std::vector<int64_t> offsets;
    for (int64_t o = 0; o < length; o += stride) offsets.push_back(o);
    return offsets;
}

std::vector<float> transition_weight(int64_t segment_length, double transition_power) {
    // A triangle 1, 2, ..., peak, ..., 2, 1 scaled to a maximum of 1, then raised to the power.
    std::vector<float> w(segment_length);
    const int64_t half = segment_length / 2;
    for (int64_t i = 0; i < half; i++) w[i] = float(i + 1);
    for (int64_t i = half; i < segment_length; i++) w[i] = float(segment_length - i);
    const float peak = *std::max_element(w.begin(), w.end());
    for (auto& v : w) v = std::pow(v / peak, float(transition_power));
    return w;
}

int64_t count_chunks(int64_t length, int64_t segment_length, const SeparateParams& params, int samplerate) {
    if (params.shifts > 0) {
        // Each shifted copy is at most length + max_shift long; count the worst case.
        const int64_t max_shift = static_cast<int64_t>(0.5 * samplerate);
        SeparateParams once = params;
        once.shifts = 0;
        return params.shifts * count_chunks(length + max_shift, segment_length, once, samplerate);
    }
    if (!params.split) return 1;
    return static_cast<int64_t>(chunk_offsets(length, segment_length, params.overlap).size());
}

namespace {

bool host_apply_forced() {
    const char* v = std::getenv("FASTDEMUCS_HOST_APPLY");
    return v && *v && std::strcmp(v, "0") != 0 && std::strcmp(v, "false") != 0 && std::strcmp(v, "no") != 0;
}

// Checks everything the host path would refuse, before any work: the
// parameters, the channels, and (without split) the length of every view.
// Returns the shift offsets: `given` first, then drawn from the seed, in the
// order the host path has always drawn them.
std::vector<int64_t> prepare(const ModelBackend& backend, int channels, int64_t length, const SeparateParams& params,
                             const std::vector<int64_t>& given) {
    const auto& cfg = backend.model().config;
    check_params(backend, params);
    if (channels != cfg.audio_channels)
        throw Error("the model expects " + std::to_string(cfg.audio_channels) + " channels, got " +
                    std::to_string(channels));
    if (length <= 0) throw Error("the track is empty");
    std::vector<int64_t> offsets;
    const int64_t max_shift = static_cast<int64_t>(0.5 * cfg.samplerate);
    if (params.shifts > 0) {
        std::mt19937_64 rng(params.seed ? params.seed : std::random_device{}());
        std::uniform_int_distribution<int64_t> pick(0, max_shift);
        for (int shift = 0; shift < params.shifts; shift++) {
            const int64_t offset = shift < int(given.size()) ? given[shift] : pick(rng);
            if (offset < 0 || offset > max_shift)
                throw Error("shift offset " + std::to_string(offset) + " outside [0, " + std::to_string(max_shift) +
                            "]");
            offsets.push_back(offset);
        }
    }
    if (!params.split) {
        const int64_t valid_length = params.segment > 0 ? segment_length_of(backend, params) : cfg.segment_samples();
        std::vector<int64_t> views;
        if (offsets.empty()) views.push_back(length);
        for (int64_t o : offsets) views.push_back(length + max_shift - o);
        for (int64_t n : views)
            if (n > valid_length)
                throw Error("the track (" + std::to_string(n) + " samples) is longer than the model's segment (" +
                            std::to_string(valid_length) + " samples): use split mode");
    }
    return offsets;
}

// apply_model on the host (chunks gathered here, one backend call per batch).
std::vector<float> host_apply(ModelBackend& backend, const float* mix, int channels, int64_t length,
                              const SeparateParams& params, const std::vector<int64_t>& offsets,
                              const std::function<void(int64_t)>& on_chunks) {
    const auto& cfg = backend.model().config;
    ChunkView whole{mix, channels, length, 0, length};
    if (params.shifts == 0) return apply_view(backend, whole, params, on_chunks);

    // Shift trick: pad by max_shift each side, cut at a random offset,
    // separate, undo the shift, average.
    const int S = cfg.num_sources();
    const int64_t max_shift = static_cast<int64_t>(0.5 * cfg.samplerate);
    const int64_t padded_len = length + 2 * max_shift;
    const std::vector<float> padded = whole.padded(padded_len);
    SeparateParams inner = params;
    inner.shifts = 0;
    std::vector<float> acc(int64_t(S) * channels * length, 0.0f);
    for (int shift = 0; shift < params.shifts; shift++) {
        const int64_t offset = offsets[shift];
        ChunkView shifted{padded.data(), channels, padded_len, offset, length + max_shift - offset};
        std::vector<float> res = apply_view(backend, shifted, inner, on_chunks);
        const int64_t n = shifted.length, skip = max_shift - offset;
        for (int64_t sc = 0; sc < int64_t(S) * channels; sc++)
            for (int64_t i = 0; i < length; i++) acc[sc * length + i] += res[sc * n + skip + i];
    }
    for (auto& v : acc) v /= float(params.shifts);
    return acc;
}

// The backend's own whole-track path if it has one, else the host path
// framed by the normalisation (params.normalize).
std::vector<float> run_model(ModelBackend& backend, const float* mix, int channels, int64_t length,
                             const SeparateParams& params, const std::vector<int64_t>& offsets,
                             const std::function<void(int64_t)>& on_chunks) {
    const int S = backend.model().config.num_sources();
    if (backend.has_track_path() && !host_apply_forced()) {
        std::vector<float> out;
        if (backend.separate_track(mix, length, params, offsets, out, on_chunks)) {
            if (int64_t(out.size()) != int64_t(S) * channels * length)
                throw Error("internal error: the backend's track path returned a wrong size");
            return out;
        }
    }
    if (!params.normalize) return host_apply(backend, mix, channels, length, params, offsets, on_chunks);

    // The official CLI normalises by the mono mix: (wav - mean) / (std + 1e-8), std unbiased.
    // Two passes recompute each mono sample (channels added in order, in
    // double) instead of storing them: 8 bytes a sample (1.3 GB an hour) less.
    auto mono = [&](int64_t i) {
        double v = 0.0;
        for (int c = 0; c < channels; c++) v += mix[c * length + i];
        return v / channels;
    };
    double sum = 0.0;
    for (int64_t i = 0; i < length; i++) sum += mono(i);
    const double mean = sum / length;
    double var = 0.0;
    for (int64_t i = 0; i < length; i++) {
        const double d = mono(i) - mean;
        var += d * d;
    }
    const double scale = (length > 1 ? std::sqrt(var / double(length - 1)) : 0.0) + 1e-8;
    std::vector<float> normalized(mix, mix + int64_t(channels) * length);
    for (auto& v : normalized) v = float((v - mean) / scale);
    std::vector<float> out = host_apply(backend, normalized.data(), channels, length, params, offsets, on_chunks);
    for (auto& v : out) v = float(double(v) * scale + mean);
    return out;
}

// The progress of a separation by `bag`, before its first chunk.
Progress progress_of(const std::vector<BagMember>& bag, int64_t length, const SeparateParams& params) {
    if (bag.empty()) throw Error("no model to run");
    if (length <= 0) throw Error("the track is empty");
    Progress progress;
    progress.models = static_cast<int>(bag.size());
    for (const auto& member : bag)
        progress.chunks_total += count_chunks(length, segment_length_of(*member.backend, params), params,
                                              member.backend->model().config.samplerate);
    return progress;
}

// One model of weight 1 (a plain model): its stems are the result (a bag's
// weighted mean would only add 0 and divide by 1).
bool is_plain(const std::vector<BagMember>& bag) {
    bool plain = bag.size() == 1;
    for (double w : bag[0].weights) plain = plain && w == 1.0;
    return plain;
}

// Model m of the bag starts: its backend's threads set, and the callback
// that adds its chunks to `progress` and reports it.
std::function<void(int64_t)> start_member(const std::vector<BagMember>& bag, size_t m, Progress& progress,
                                          const SeparateParams& params) {
    progress.model_index = static_cast<int>(m);
    bag[m].backend->set_threads(params.threads);
    return [&progress, &params](int64_t n) {
        progress.chunks_done += n;
        if (params.progress) params.progress(progress);
    };
}

}  // namespace

std::vector<float> apply_single_model(ModelBackend& backend, const float* mix, int channels, int64_t length,
                                      const SeparateParams& params, const std::vector<int64_t>& shift_offsets,
                                      const std::function<void(int64_t)>& on_chunks) {
    const std::vector<int64_t> offsets = prepare(backend, channels, length, params, shift_offsets);
    SeparateParams plain = params;
    plain.normalize = false;
    return run_model(backend, mix, channels, length, plain, offsets, on_chunks);
}

std::vector<float> separate_single_model(ModelBackend& backend, const float* mix, int channels, int64_t length,
                                         const SeparateParams& params, const std::vector<int64_t>& shift_offsets,
                                         const std::function<void(int64_t)>& on_chunks) {
    const std::vector<int64_t> offsets = prepare(backend, channels, length, params, shift_offsets);
    return run_model(backend, mix, channels, length, params, offsets, on_chunks);
}

std::vector<float> separate_with_bag(const std::vector<BagMember>& bag, const float* mix, int channels,
                                     int64_t length, const SeparateParams& params, Pcm16Request* pcm16) {
    Progress progress = progress_of(bag, length, params);
    const int S = bag[0].backend->model().config.num_sources();
    if (is_plain(bag)) {
        const auto on_chunks = start_member(bag, 0, progress, params);
        ModelBackend& backend = *bag[0].backend;
        if (pcm16 && backend.has_track_path() && !host_apply_forced()) {
            const std::vector<int64_t> offsets = prepare(backend, channels, length, params, {});
            pcm16->done =
                backend.separate_track_pcm16(mix, length, params, offsets, pcm16->clip, pcm16->stems, on_chunks);
            if (pcm16->done) {
                if (int64_t(pcm16->stems.size()) != int64_t(S) * channels * length)
                    throw Error("internal error: the backend's 16-bit track path returned a wrong size");
                return {};
            }
        }
        return separate_single_model(backend, mix, channels, length, params, {}, on_chunks);
    }

    // Each model normalises the raw mix by the same statistics and returns
    // de-normalised stems: their weighted mean is the official bag's result.
    std::vector<float> estimate(int64_t(S) * channels * length, 0.0f);
    std::vector<double> totals(S, 0.0);
    for (size_t m = 0; m < bag.size(); m++) {
        const auto on_chunks = start_member(bag, m, progress, params);
        SeparateParams member_params = params;
        // Each model draws its own shifts, as the official bag does.
        if (params.seed) member_params.seed = params.seed + 1000003ULL * m;
        std::vector<float> out = separate_single_model(*bag[m].backend, mix, channels, length, member_params, {},
                                                       on_chunks);
        for (int s = 0; s < S; s++) {
            const double w = bag[m].weights.empty() ? 1.0 : bag[m].weights[s];
            totals[s] += w;
            const float wf = float(w);
            for (int64_t i = 0; i < int64_t(channels) * length; i++)
                estimate[s * channels * length + i] += wf * out[s * channels * length + i];
        }
    }
    for (int s = 0; s < S; s++) {
        if (totals[s] == 0.0) throw Error("the bag's weights for source " + std::to_string(s) + " sum to zero");
        for (int64_t i = 0; i < int64_t(channels) * length; i++) {
            float& v = estimate[s * channels * length + i];
            v = float(v / totals[s]);
        }
    }
    return estimate;
}

void separate_with_bag_on_device(const std::vector<BagMember>& bag, const float* mix, int channels, int64_t length,
                                 const SeparateParams& params, float* stems) {
    Progress progress = progress_of(bag, length, params);
    ModelBackend& backend = *bag[0].backend;
    const size_t mix_count = size_t(channels) * size_t(length);
    backend.check_device_buffer(mix, mix_count, "the mix");
    backend.check_device_buffer(stems, mix_count * size_t(backend.model().config.num_sources()), "the stems");
    // Through host memory: a bag mixes its members' stems there, and a track
    // whose buffers do not fit the GPU streams through it.
    auto through_host = [&](const auto& separate) {
        std::vector<float> host(mix_count);
        backend.copy_from_device(mix, host.size(), host.data());
        const std::vector<float> out = separate(host.data());
        backend.copy_to_device(out.data(), out.size(), stems);
    };
    if (!is_plain(bag)) {
        through_host([&](const float* host) { return separate_with_bag(bag, host, channels, length, params); });
        return;
    }
    const auto on_chunks = start_member(bag, 0, progress, params);
    const std::vector<int64_t> offsets = prepare(backend, channels, length, params, {});
    if (backend.has_track_path() && !host_apply_forced() &&
        backend.separate_track_on_device(mix, length, params, offsets, stems, on_chunks))
        return;
    // The shift offsets already drawn and the same progress: the stems of separate() with them.
    through_host(
        [&](const float* host) { return run_model(backend, host, channels, length, params, offsets, on_chunks); });
}

}  // namespace fastdemucs
