// The one interface every compute backend implements: run one HTDemucs model
// on a batch of chunks. Chunking, shifts, bags and normalisation live above
// it (engine/apply), shared by all backends.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "fastdemucs/fastdemucs.h"
#include "model/model.h"

namespace fastdemucs {

// Called with the output of each block (named as in the official module
// tree: "encoder.0", "tencoder.0", "crosstransformer.0", "decoder.0.0", ...)
// so that tests can check a forward block by block.
using TapFn = std::function<void(const std::string& name, const std::vector<int64_t>& shape, const float* data)>;

class ModelBackend {
public:
    virtual ~ModelBackend() = default;
    virtual const HTDemucsModel& model() const = 0;
    // mix [batch, audio_channels, length] -> out [batch, sources, audio_channels, length],
    // length <= the model's training length (shorter input is zero-padded
    // at the end and the output trimmed back, as the official forward does).
    virtual void forward(const float* mix, int batch, int64_t length, float* out, const TapFn& tap = nullptr) = 0;
    // Largest batch worth sending at once (memory bound).
    virtual int max_batch() const = 0;
    // CPU threads to use from now on (0 = all cores).
    virtual void set_threads(int threads) = 0;
};

#ifdef FASTDEMUCS_WITH_CPU
std::unique_ptr<ModelBackend> make_cpu_backend(std::shared_ptr<const HTDemucsModel> model, int threads);
#endif
#ifdef FASTDEMUCS_WITH_CUDA
// Throws Error when the device is missing or out of memory.
std::unique_ptr<ModelBackend> make_cuda_backend(std::shared_ptr<const HTDemucsModel> model, int device_index,
                                                Precision precision);
// Number of usable CUDA devices (0 without a driver or GPU); never throws.
int cuda_device_count();
#endif

}  // namespace fastdemucs
