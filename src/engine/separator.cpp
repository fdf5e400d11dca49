// Separator: the public face of the engine. Loads a model or a bag, builds a
// backend per model, and runs the official separation semantics.
#include <future>
#include <thread>

#include "engine/apply.h"
#include "engine/pcm.h"
#include "engine/repo.h"
#include "engine/trace.h"
#include "remote/remote_models.h"
#include "error.h"
#include "fastdemucs/fastdemucs.h"

namespace fastdemucs {
namespace {

class BagSeparator final : public Separator {
public:
    explicit BagSeparator(std::vector<BagMember> bag) : bag_(std::move(bag)) {
        const auto& first = bag_[0].backend->model();
        for (const auto& m : bag_) {
            const auto& cfg = m.backend->model().config;
            if (cfg.sources != first.config.sources || cfg.samplerate != first.config.samplerate ||
                cfg.audio_channels != first.config.audio_channels)
                throw Error(m.backend->model().path + ": its sources, sample rate or channels differ from " +
                            first.path + "'s, so they cannot form a bag");
            if (!m.weights.empty() && m.weights.size() != cfg.sources.size())
                throw Error("the bag's weights list has " + std::to_string(m.weights.size()) + " values for " +
                            std::to_string(cfg.sources.size()) + " sources");
        }
    }

    const std::vector<std::string>& sources() const override { return bag_[0].backend->model().config.sources; }
    int samplerate() const override { return bag_[0].backend->model().config.samplerate; }
    int audio_channels() const override { return bag_[0].backend->model().config.audio_channels; }
    int num_models() const override { return static_cast<int>(bag_.size()); }
    double max_segment() const override {
        double best = 1e300;
        for (const auto& m : bag_) best = std::min(best, m.backend->model().config.segment_seconds());
        return best;
    }

    Stems separate(const Audio& mix, const SeparateParams& params) const override {
        Stems stems = stems_for<Stems>(mix);
        stems.data = separate_with_bag(bag_, mix.data.data(), mix.channels, mix.samples, params);
        return stems;
    }

    Pcm16Stems separate_pcm16(const Audio& mix, const SeparateParams& params, ClipMode clip) const override {
        Pcm16Stems stems = stems_for<Pcm16Stems>(mix);
        Pcm16Request request;
        request.clip = clip;
        std::vector<float> floats = separate_with_bag(bag_, mix.data.data(), mix.channels, mix.samples, params, &request);
        if (request.done) {
            stems.data = std::move(request.stems);
        } else {
            stems.data = pcm::convert_stems(floats.data(), int(stems.names.size()), mix.channels, mix.samples, clip);
        }
        return stems;
    }

    void separate_on_device(const DeviceAudio& mix, float* stems, const SeparateParams& params) const override {
        check_mix(mix.channels, mix.samplerate);
        if (!mix.data || !stems) throw Error("separate_on_device: the mix or the stems pointer is null");
        separate_with_bag_on_device(bag_, mix.data, mix.channels, mix.samples, params, stems);
    }

private:
    // The (empty) stems of a separation of `mix`, once the mix is checked:
    // Stems or Pcm16Stems, which share these fields.
    template <typename Out>
    Out stems_for(const Audio& mix) const {
        check_mix(mix);
        Out stems;
        stems.names = sources();
        stems.channels = mix.channels;
        stems.samples = mix.samples;
        stems.samplerate = mix.samplerate;
        return stems;
    }

    void check_mix(const Audio& mix) const {
        check_mix(mix.channels, mix.samplerate);
        if (int64_t(mix.data.size()) != int64_t(mix.channels) * mix.samples)
            throw Error("audio buffer size does not match channels x samples");
    }

    void check_mix(int channels, int rate) const {
        if (channels != audio_channels())
            throw Error("the model expects " + std::to_string(audio_channels()) + " channels, got " +
                        std::to_string(channels));
        if (rate != samplerate())
            throw Error("the model expects audio at " + std::to_string(samplerate()) + " Hz, got " +
                        std::to_string(rate) + " Hz");
    }

    std::vector<BagMember> bag_;
};

}  // namespace

// The backend the load parameters ask for, or a clear error when this build lacks it.
std::unique_ptr<ModelBackend> make_backend(std::shared_ptr<const HTDemucsModel> model, const LoadParams& params) {
    if (params.device == DeviceKind::Cuda) {
#ifdef FASTDEMUCS_WITH_CUDA
        return make_cuda_backend(std::move(model), params.device_index, params.precision);
#else
        throw Error("this build of fastdemucs has no CUDA backend; use -d cpu");
#endif
    }
#ifdef FASTDEMUCS_WITH_CPU
    return make_cpu_backend(std::move(model), 0);
#else
    throw Error("this build of fastdemucs has no CPU backend; use -d cuda");
#endif
}

#ifndef FASTDEMUCS_WITH_CUDA
void release_gpus() {}
#endif

LoadParams load_default_params() { return LoadParams{}; }
SeparateParams separate_default_params() { return SeparateParams{}; }

std::unique_ptr<Separator> Separator::load(const LoadParams& params) {
#ifdef FASTDEMUCS_WITH_CUDA
    // The driver starts while the model is found and read, then the GPU
    // libraries warm up while it is uploaded; cuBLAS and cuFFT load on a
    // thread of their own meanwhile (both joined on every exit, before the
    // promise they use goes).
    std::promise<void> context_created;
    std::future<void> context_ready = context_created.get_future();
    std::thread cuda_start, cuda_libraries;
    struct Join {
        std::thread& a;
        std::thread& b;
        ~Join() {
            if (a.joinable()) a.join();
            if (b.joinable()) b.join();
        }
    } join{cuda_start, cuda_libraries};
    if (params.device == DeviceKind::Cuda) {
        cuda_libraries = std::thread(cuda_load_libraries);
        cuda_start = std::thread([&context_created, device = params.device_index, precision = params.precision] {
            cuda_initialize(device);
            context_created.set_value();
            cuda_warm_up_libraries(device, precision);
        });
    }
#endif
    BagSpec spec;
    if (!params.checkpoint.empty()) {
        spec.name = params.checkpoint;
        spec.checkpoints = {params.checkpoint};
    } else if (!params.repo.empty()) {
        spec = resolve_local_model(params.name, params.repo);
    } else {
        RemoteOptions remote;
        remote.root_url = params.model_url;
        remote.cache_dir = params.cache_dir;
        remote.offline = params.offline;
        remote.progress = params.download_progress;
        remote.download_started = params.download_started;
        remote.warning = params.warning;
        spec = resolve_remote_model(params.name, remote);
    }
    if (!spec.weights.empty() && spec.weights.size() != spec.checkpoints.size())
        throw Error(spec.name + ": the bag has " + std::to_string(spec.weights.size()) + " weight lists for " +
                    std::to_string(spec.checkpoints.size()) + " models");
    std::vector<BagMember> bag;
    for (size_t i = 0; i < spec.checkpoints.size(); i++) {
        BagMember m;
        auto model = load_htdemucs(spec.checkpoints[i]);
        trace_point("checkpoint read");
#ifdef FASTDEMUCS_WITH_CUDA
        if (cuda_start.joinable()) {
            context_ready.wait();
            trace_point("CUDA context ready");
        }
#endif
        m.backend = make_backend(std::move(model), params);
        trace_point("backend ready");
#ifdef FASTDEMUCS_WITH_CUDA
        if (cuda_start.joinable()) cuda_start.join();
#endif
        if (params.warm_up) {
            m.backend->warm_up();
            trace_point("backend warmed up");
        }
        if (!spec.weights.empty()) m.weights = spec.weights[i];
        bag.push_back(std::move(m));
    }
    return std::make_unique<BagSeparator>(std::move(bag));
}

}  // namespace fastdemucs
