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
    // LoadParams::warm_up: prepare for the first forward of a full batch
    // (may return before the device is done).
    virtual void warm_up() {}
    // Optional: the whole apply_model of one model on a track, in the
    // backend's own memory (engine/apply's host path is the reference):
    // mix [audio_channels, length] (host) -> out [sources, audio_channels,
    // length] (host; resized by the backend, which may do so while its device
    // works), normalised by the mono mix and de-normalised when
    // params.normalize is set. shift_offsets holds exactly params.shifts
    // offsets in [0, int(0.5 * samplerate)], drawn by the caller; params are
    // already validated. on_chunks (may be empty) is called with the number
    // of chunks done after each batch. Returns false when not provided (the
    // caller then runs the host path); throws Error on failure.
    // has_track_path() says beforehand whether it is provided.
    virtual bool has_track_path() const { return false; }
    virtual bool separate_track(const float* mix, int64_t length, const SeparateParams& params,
                                const std::vector<int64_t>& shift_offsets, std::vector<float>& out,
                                const std::function<void(int64_t)>& on_chunks) {
        (void)mix, (void)length, (void)params, (void)shift_offsets, (void)out, (void)on_chunks;
        return false;
    }
    // Optional, beside the track path: the same stems converted to 16-bit
    // PCM in the backend's memory (Separator::separate_pcm16, engine/pcm.h's
    // conversion): out [sources, length, audio_channels]. Returns false when
    // not provided or when the track path declines (the caller then converts
    // the float stems).
    virtual bool separate_track_pcm16(const float* mix, int64_t length, const SeparateParams& params,
                                      const std::vector<int64_t>& shift_offsets, ClipMode clip,
                                      std::vector<int16_t>& out, const std::function<void(int64_t)>& on_chunks) {
        (void)mix, (void)length, (void)params, (void)shift_offsets, (void)clip, (void)out, (void)on_chunks;
        return false;
    }
    // Optional, beside the track path: the same with mix and out in the
    // backend's device memory (Separator::separate_on_device), out [sources,
    // audio_channels, length] written in place. Returns false when not
    // provided or when the track path declines (nothing has run then).
    virtual bool separate_track_on_device(const float* mix, int64_t length, const SeparateParams& params,
                                          const std::vector<int64_t>& shift_offsets, float* out,
                                          const std::function<void(int64_t)>& on_chunks) {
        (void)mix, (void)length, (void)params, (void)shift_offsets, (void)out, (void)on_chunks;
        return false;
    }
    // Separator::separate_on_device's device memory: check_device_buffer
    // throws Error (naming `what`) unless `count` floats at p lie in the
    // backend's device memory; the copies carry its route through host
    // memory. A backend without device memory throws Error from each.
    virtual void check_device_buffer(const float* p, size_t count, const std::string& what) const {
        (void)p, (void)count, (void)what;
        throw no_device_memory();
    }
    virtual void copy_from_device(const float* device, size_t count, float* host) {
        (void)device, (void)count, (void)host;
        throw no_device_memory();
    }
    virtual void copy_to_device(const float* host, size_t count, float* device) {
        (void)host, (void)count, (void)device;
        throw no_device_memory();
    }

private:
    static Error no_device_memory() {
        return Error("separate_on_device needs a model loaded on a GPU (LoadParams::device = DeviceKind::Cuda; "
                     "-d cuda in the command)");
    }
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
// Creates the device's context (the driver's start-up, ~0.1-0.3 s), so that
// it can run on another thread while the checkpoint is read; errors are
// left for make_cuda_backend to report. Never throws.
void cuda_initialize(int device_index);
// Loads cuBLAS and cuFFT (opened at run time, not linked), to run on a
// thread of its own beside cuda_initialize. Never throws (a failure is
// reported by make_cuda_backend).
void cuda_load_libraries();
// Then, on the same thread while the model is read and uploaded: the GPU
// libraries' first-use costs (cuBLAS's first product, ~0.2 s of host
// time), which the first forward or graph capture would otherwise pay with
// the GPU idle. Never throws.
void cuda_warm_up_libraries(int device_index, Precision precision);
#endif

}  // namespace fastdemucs
