// fastdemucs: music source separation with Demucs v4 (HTDemucs), loading the
// official checkpoints directly. This is the whole public API.
//
//   auto params = fastdemucs::load_default_params();
//   params.name = "htdemucs_6s"; params.repo = "/path/to/models";
//   auto model = fastdemucs::Separator::load(params);
//   fastdemucs::Audio mix = ...;                 // [channels, samples], float
//   auto opts = fastdemucs::separate_default_params();
//   fastdemucs::Stems stems = model->separate(mix, opts);  // [sources, channels, samples]
//
// Every failure throws fastdemucs::Error with a one-line message.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace fastdemucs {

class Error : public std::runtime_error {
public:
    explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// Planar float audio: data[c * samples + t].
struct Audio {
    int channels = 0;
    int64_t samples = 0;
    int samplerate = 44100;
    std::vector<float> data;
    float* channel(int c) { return data.data() + static_cast<int64_t>(c) * samples; }
    const float* channel(int c) const { return data.data() + static_cast<int64_t>(c) * samples; }
};

// Separated stems: data[(s * channels + c) * samples + t].
struct Stems {
    std::vector<std::string> names;
    int channels = 0;
    int64_t samples = 0;
    int samplerate = 44100;
    std::vector<float> data;
    const float* stem(int s) const { return data.data() + static_cast<int64_t>(s) * channels * samples; }
    float* stem(int s) { return data.data() + static_cast<int64_t>(s) * channels * samples; }
};

// Separated stems as 16-bit PCM, each stem's frames interleaved (as a WAV
// file holds them): data[(s * samples + t) * channels + c].
struct Pcm16Stems {
    std::vector<std::string> names;
    int channels = 0;
    int64_t samples = 0;
    int samplerate = 44100;
    std::vector<int16_t> data;
    const int16_t* stem(int s) const { return data.data() + static_cast<int64_t>(s) * channels * samples; }
};

// A mix already in GPU memory (Separator::separate_on_device): data is a
// device pointer (cudaMalloc'd or managed) on the separator's GPU, [channels,
// samples] float32.
struct DeviceAudio {
    const float* data = nullptr;
    int channels = 0;
    int64_t samples = 0;
    int samplerate = 44100;
};

// The official command's --clip-mode: rescale divides a stem by
// max(1.01 * peak, 1); clamp limits its samples to [-0.99, 0.99].
enum class ClipMode { Rescale, Clamp, None };

enum class DeviceKind { Cpu, Cuda };

// Arithmetic of the GPU backend. Fp32 is exact (no TF32); Fp16 / Bf16 use
// tensor cores with float32 accumulation and keep norms, softmax, the STFT
// and overlap-add in float32. The CPU backend always computes in float32.
enum class Precision { Fp32, Fp16, Bf16 };

struct LoadParams {
    std::string name = "htdemucs";  // bag name (NAME.yaml) or model signature
    std::string repo;               // local folder with .th / .yaml files; empty = pretrained models by name
    std::string checkpoint;         // or: one .th file, used directly
    DeviceKind device = DeviceKind::Cpu;
    int device_index = 0;
    Precision precision = Precision::Fp16;  // GPU only
    // GPU only: prepare the first separation at load time, so that it runs
    // at full speed: the forward of a full batch is captured as a CUDA graph
    // (kernels loaded, GEMM algorithms picked; nothing runs on the GPU), or,
    // without graphs, one forward of zeros runs. Worth it when something
    // else (reading the audio) runs meanwhile.
    bool warm_up = false;

    // Models by name (repo and checkpoint empty): the released weights are
    // downloaded once, verified and cached.
    std::string model_url;  // root URL of a mirror; empty: $FASTDEMUCS_MODEL_URL, else the official one
    std::string cache_dir;  // empty: torch.hub's ($TORCH_HOME/hub/checkpoints, ~/.cache/torch/hub/checkpoints)
    bool offline = false;   // never use the network: a model not in the cache is an error naming the file
    // Called once before each download starts (to tell the user what is fetched).
    std::function<void(const std::string& url, const std::string& path)> download_started;
    // Bytes done / total of the file being downloaded (total 0 while unknown).
    std::function<void(int64_t done, int64_t total)> download_progress;
    // Non-fatal problems (a damaged cached file being replaced); unset: stderr.
    std::function<void(const std::string& message)> warning;
};
LoadParams load_default_params();

struct Progress {
    int model_index = 0;   // within a bag
    int models = 1;
    int64_t chunks_done = 0;
    int64_t chunks_total = 0;
};

struct SeparateParams {
    int shifts = 1;              // random time shifts averaged (official default 1)
    bool split = true;           // chunk the track into segments
    double overlap = 0.25;       // between chunks, in [0, 1)
    double transition_power = 1.0;
    double segment = 0.0;        // seconds; 0 = the model's own (cannot exceed it)
    int threads = 0;             // CPU threads; 0 = all cores
    uint64_t seed = 0;           // for the shift offsets; 0 = random
    bool normalize = true;       // normalise by the mono mix's mean/std, as the CLI does
    int batch_size = 0;          // chunks per backend call; 0 = the backend's own choice
    std::function<void(const Progress&)> progress;
};
SeparateParams separate_default_params();

class Separator {
public:
    virtual ~Separator() = default;
    static std::unique_ptr<Separator> load(const LoadParams& params);

    virtual const std::vector<std::string>& sources() const = 0;
    virtual int samplerate() const = 0;
    virtual int audio_channels() const = 0;
    virtual double max_segment() const = 0;   // seconds
    virtual int num_models() const = 0;

    // mix: [audio_channels, samples] at samplerate().
    virtual Stems separate(const Audio& mix, const SeparateParams& params) const = 0;
    // The same separation as 16-bit PCM, sample for sample what the official
    // command writes to a 16-bit WAV: the clip mode applied per stem, then
    // torchaudio's (sox's) float -> int16 rounding. A GPU backend converts on
    // the device and downloads half the bytes of the float stems.
    virtual Pcm16Stems separate_pcm16(const Audio& mix, const SeparateParams& params, ClipMode clip) const = 0;
    // The same separation with the mix and the stems in the GPU's memory (a
    // separator loaded with DeviceKind::Cuda), for programs whose audio is
    // already there: stems is a device pointer to [sources, channels,
    // samples] float32 on the same GPU. The call runs on streams of its own:
    // the caller's writes of the mix, and its reads of the stems buffer's
    // old contents, must be finished (synchronised) when it starts; the
    // stems are written when it returns. A plain model runs from that memory
    // to that memory; a bag, or a track whose buffers do not fit the GPU,
    // goes through host memory. Throws Error on a CPU separator, or when
    // either buffer is not (whole) in that GPU's memory.
    virtual void separate_on_device(const DeviceAudio& mix, float* stems, const SeparateParams& params) const = 0;
};

// For a program that is done with the GPU: destroys the CUDA contexts that
// fastdemucs's GPU separators used (cudaDeviceReset on their devices), so
// that the driver's tear-down (~0.1 s on an H100) runs now — on a thread,
// overlapped with other work — rather than at exit. Every GPU Separator
// must be destroyed first, and nothing else in the process may still use
// those devices. Does nothing in a build without CUDA or when no GPU was used.
void release_gpus();

}  // namespace fastdemucs
