// Inference semantics of the official `apply_model` and `separate`: split
// into overlapping chunks blended with a triangular weight, random time
// shifts averaged, bags of models mixed by their weights matrix, and the
// input normalised by the mono mix's statistics. Backend-agnostic: chunks
// are gathered into batches and handed to ModelBackend::forward.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "engine/backend.h"
#include "fastdemucs/fastdemucs.h"

namespace fastdemucs {

struct BagMember {
    std::unique_ptr<ModelBackend> backend;
    std::vector<double> weights;  // one per source
};

// Separator::separate_pcm16's request: when the bag is one plain model
// whose backend converts on its own device (ModelBackend::separate_track_pcm16),
// separate_with_bag fills `stems` ([S, L, C]), sets `done` and returns no floats.
struct Pcm16Request {
    ClipMode clip = ClipMode::Rescale;
    std::vector<int16_t> stems;
    bool done = false;
};

// mix [C, L] -> stems [S, C, L]. Throws Error on invalid options.
std::vector<float> separate_with_bag(const std::vector<BagMember>& bag, const float* mix, int channels,
                                     int64_t length, const SeparateParams& params, Pcm16Request* pcm16 = nullptr);

// separate_with_bag with mix [C, L] and stems [S, C, L] in the backends'
// device memory (Separator::separate_on_device): a plain model runs its
// device track path; a bag, or a track the path declines, goes through host
// memory (the same stems either way).
void separate_with_bag_on_device(const std::vector<BagMember>& bag, const float* mix, int channels, int64_t length,
                                 const SeparateParams& params, float* stems);

// One model, no normalisation: the official apply_model(model, mix[None]).
// `shift_offsets` replaces the random offsets when not empty (tests).
// Runs ModelBackend::separate_track when the backend provides it (unless
// FASTDEMUCS_HOST_APPLY=1), else the host path here: both use the same offsets.
std::vector<float> apply_single_model(ModelBackend& backend, const float* mix, int channels, int64_t length,
                                      const SeparateParams& params, const std::vector<int64_t>& shift_offsets,
                                      const std::function<void(int64_t)>& on_chunks = nullptr);

// One member of a bag: apply_single_model framed by the CLI's normalisation
// when params.normalize is set ((mix - mean) / (std + 1e-8) of the mono mix,
// undone on the stems), so that a backend can do all of it in its own memory.
std::vector<float> separate_single_model(ModelBackend& backend, const float* mix, int channels, int64_t length,
                                         const SeparateParams& params, const std::vector<int64_t>& shift_offsets,
                                         const std::function<void(int64_t)>& on_chunks = nullptr);

// The official split's chunk starts and its blending weight, exposed for tests.
std::vector<int64_t> chunk_offsets(int64_t length, int64_t segment_length, double overlap);
std::vector<float> transition_weight(int64_t segment_length, double transition_power);

// Number of model forwards apply_single_model will run (for progress).
int64_t count_chunks(int64_t length, int64_t segment_length, const SeparateParams& params, int samplerate);

}  // namespace fastdemucs
