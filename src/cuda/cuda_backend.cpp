// The HTDemucs forward pass on one CUDA GPU: a walk over the model plan,
// step for step the function of cpu/cpu_backend (the float32 oracle), and
// the whole apply_model of a track on the device (separate_track).
//
// Design notes
// ------------
// Files: common (errors, context, device buffers), arena (the workspace),
// kernels (norms, statistics, element-wise, layout, conv helpers), gemm
// (cuBLAS wrapper), conv (convolutions as GEMMs), spectral (cuFFT STFT /
// iSTFT), attention (tensor-core and SIMT fused kernels + cuBLAS path),
// transformer (the cross transformer), weights (upload), dconv (the thin
// DConv layers: three fused passes, or the row-resident kernel), track (the
// whole-track kernels: normalisation, chunk gather, overlap-add, shifts),
// staging (the track's upload through page-locked memory), profile
// (FASTDEMUCS_PROFILE), and this file (the walk, memory, graphs, the track
// loop).
//
// Memory layout. Activations are float32, NCHW as in PyTorch: the frequency
// branch [B, C, F, T], the time branch [B, C, 1, L]; the transformer works
// on token-major [B * tokens, C] with the batch folded into the rows. The
// chunks of a batch are processed together: convolutions are strided-batched
// GEMMs with the weights shared (stride 0), linear layers one GEMM over all
// rows. GEMM operands are the only values stored in reduced precision: in
// Fp16 / Bf16 mode the weights are converted once at load and activations
// are converted right before each GEMM by the kernel that prepares the
// operand anyway (im2col, LayerNorm, bias + GELU, attention output), with
// rows padded to 16 bytes (odd time-branch lengths would push cuBLAS off its
// tensor-core kernels; the GEMM then writes a padded output that the
// bias / activation pass crops). GEMMs accumulate in float32 into float32
// outputs (CUBLAS_COMPUTE_32F). In Fp32 mode the operands are float32 with
// CUBLAS_COMPUTE_32F and the default math mode: no TF32 anywhere. Norms,
// statistics (in double), softmax, STFT / iSTFT and overlap-add are float32
// or better in every mode; the attention of Fp16 / Bf16 runs on tensor
// cores with float32 scores and softmax, its probabilities rounded to
// float16 for the P V product (as FlashAttention-2 does).
//
// Libraries vs hand-written kernels. cuBLAS does every GEMM (convolutions,
// transposed convolutions, linear layers, the attention fallback), cuFFT the
// batched R2C / C2R transforms. Everything else is a hand-written kernel
// because it is memory-bound glue with model-specific index maps that no
// library offers: the STFT framing with its double reflect padding and frame
// trimming, the Hermitian fix-up before C2R and the overlap-add with the
// window envelope (fused with the final sum of the two branches),
// GroupNorm per group or per frequency row with statistics in double,
// GLU (+ LayerScale residual), the transposed-conv overlap-add with the
// decoder trim fused, token transposes, and the fused attention (online
// softmax, never materialising batch x heads x tokens^2 scores).
//
// What keeps the glue cheap (each was a measurable share of a forward):
// element-wise kernels index in 32 bits whenever the tensor allows (a 64-bit
// division by a runtime value is a long software sequence; every per-batch
// activation is < 2^31 values); GroupNorm computes its per-row affine
// {scale, shift} once per (item, channel, row) instead of a double sqrt and
// division per value; the transposed-conv overlap-add visits only the taps
// that land on an output (kernel / stride of them, not all); spectrogram
// packing and token layouts go through shared-memory tiles so that reads and
// writes are both coalesced. Stride-1 multi-tap convolutions (the decoders'
// 3x3 rewrites: about half of the model's convolution FLOPs, and the DConv
// 1x3) are im2col + one GEMM with aligned rows: the former "shifted GEMM"
// form (one GEMM per tap on shifted, hence misaligned, operands, re-reading
// and re-writing the float32 output per tap) kept cuBLAS off its fast
// kernels (FASTDEMUCS_SHIFTED_CONV=1 restores it, for comparison). In
// float16 / bfloat16 the outer decoders' rewrites (C <= 96) are instead one
// implicit GEMM each with the skip add and the GLU fused (cuda/conv_glu.h;
// FASTDEMUCS_CONV_GLU=0 restores im2col + cuBLAS + GLU for them).
//
// Workspace. All activation memory is one device allocation used as a stack
// (cuda/arena): each op takes its output and temporaries and releases the
// temporaries on return. Its size is measured, not guessed: a dry run of
// this very walk (ctx.dry: ops only take buffers, nothing is launched)
// gives the exact peak for a batch size. Per-chunk memory:
//     per_chunk = peak(B = 2) - peak(B = 1),  fixed = peak(1) - per_chunk
// (everything scales with B except the attention fallback's bounded score
// buffer and the column buffers once they reach their budget: the linear
// model then overestimates, which only makes max_batch() careful; the
// workspace itself is always the measured peak). The peak is reached in the outermost frequency decoder: all skip
// connections of both encoders (sum over layers of C_i * F_i * T, about
// 24 M values for htdemucs at 7.8 s) + the mix / stems / spectrogram
// buffers (7.6 M) + the outputs of the deeper decoders (about 22 M) + the
// outermost decoder's output z (24 x 2048 x 336 = 16.5 M) + its rewrite
// step: the rewritten input (8.3 M), the 3x3 conv's output (16.5 M) and the
// GLU input. Column buffers (im2col operands, transposed-conv columns) are
// taken for as many chunks at a time as fit 128 MiB, at least one: the 3x3
// rewrite's im2col operand (432 x 512 x 336 = 74 M values per chunk, 2-byte
// in Fp16 / Bf16) and the transposed conv's columns (192 x 512 x 336 = 33 M
// float32) are fixed buffers of one chunk each, not per-chunk memory. In
// all about 95 M values, ~0.4 GB per chunk for htdemucs_6s, plus ~0.3 GB
// fixed (estimates from the shapes; the dry run measures the real peak).
// max_batch() is
//     min(cap, (free + workspace held - reserve - fixed) / per_chunk)
// with reserve = 256 MiB + 2% of the card and cap = 8 (FASTDEMUCS_MAX_BATCH).
// The workspace is allocated on the first forward of a batch size that needs
// more than the current one, and reused by every later call.
//
// Two streams (float16 / bfloat16). The time branch's inner encoders and
// decoders and the time tokens' transformer layers run on a stream of their
// own (cuda/branch.h), beside the frequency branch's, which they meet only
// at the cross layers and the final sum: ~1.3 ms of a forward of 8 on the
// H200, where the small kernels of one branch fill what the other leaves
// idle. Their buffers come from a second stack growing down from the top of
// the workspace; the dry runs sum both stacks' peaks per phase (fork to
// join), and the branch is joined back before the outermost decoders, where
// the workspace peaks, so it needs no more memory than one stream. Not in
// float32 (its cuBLAS handle and workspace would take fp32's peak over
// 4 GiB for ~1 %), nor with taps or the profiler (one order).
// FASTDEMUCS_BRANCH_STREAMS=0: one stream; FASTDEMUCS_BRANCH_TRANSFORMER=0:
// the transformer's layers on the main stream.
//
// CUDA graphs. Every forward runs on the backend's own stream (and the time
// branch's, forked from it and joined back inside the forward); after the
// upload of the chunk batch nothing touches the host until the stems are
// downloaded. The first forward of a batch size runs eagerly (it also loads
// the kernels); the second is captured into a CUDA graph (addresses repeat:
// same arena, same order) and every later call replays it. warm_up()
// (LoadParams::warm_up, as the command loads) captures the graph of the
// full batch right away without running the forward: the forward's matrix
// products run once first on the idle arena (garbage in, garbage out) on a
// few threads, which loads cuBLAS's kernels, and the capture loads ours. Taps bypass the
// graph. FASTDEMUCS_NO_GRAPH=1 disables graphs; FASTDEMUCS_ATTENTION=cublas
// selects the cuBLAS attention path, =simt the float32-arithmetic fused
// kernel in every precision, =tc-v1 the first float16 tensor-core kernel,
// =tc our current tensor-core kernel (unset: cuDNN's fused attention first,
// cuda/cudnn_attention.h; FASTDEMUCS_PLAN_CACHE its plan store's folder).
// FASTDEMUCS_NARROW_GEMM_OUT=0 keeps every GEMM result in float32 (Ctx::narrow_gemm_out).
// FASTDEMUCS_BIAS_EPILOGUE=0: the linear layers' biases in passes of their own (Ctx::bias_epilogue).
// FASTDEMUCS_GELU_EPILOGUE=0: the feed-forward's and the encoders' exact GELU in passes of their own (Ctx::gelu_epilogue).
// FASTDEMUCS_BIASED_CONV=0: the encoders' biases in passes of their own, not carried by their GEMMs (Ctx::biased_conv).
// FASTDEMUCS_DIRECT_CONV=0: the time branch's first float16 / bfloat16 convolution through im2col + GEMM
// (Ctx::direct_conv).
// FASTDEMUCS_FREQ_ENCODER_MMA=0: the second frequency encoder's float16 / bfloat16 convolution through im2col + GEMM
// (Ctx::freq_encoder_mma).
// FASTDEMUCS_IM2COL_3X3=0: the 3x3 convolutions' im2col through the general runs kernel (Ctx::im2col_3x3).
// FASTDEMUCS_DCONV_SPLIT=0: a warp of the DConv's tensor-core passes takes every hidden tile / channel of
// its positions (Ctx::dconv_split_warps).
// FASTDEMUCS_FUSED_FREQ_EMB=0: the frequency embedding in a pass of its own (Ctx::fuse_freq_embedding).
// FASTDEMUCS_DOWNLOAD_RING=0: the stems copied into the caller's vector page-locked for the call
// instead of through the ring of page-locked slots (cuda/download_ring.h).
// FASTDEMUCS_CUDNN_AUTOTUNE=1: cuDNN's attention plans timed, the fastest kept (cuda/cudnn_attention.cpp).
// FASTDEMUCS_PACK_FROM_COLUMNS=0: the frequency decoders' outputs stored, then packed (Ctx::pack_from_columns).
// FASTDEMUCS_PACK_TIME_COLUMNS=0: the same for the time decoders (Ctx::pack_time_columns).
// FASTDEMUCS_FREQ_TRANSPOSED_MMA=0: the frequency decoders' columns, then their sums into the iSTFT's input
// or the next packed input, instead of one tensor-core kernel each (Ctx::freq_transposed_mma).
// FASTDEMUCS_GPU_TIMELINE=1 prints the track path's GPU time line (events).
// FASTDEMUCS_PROFILE=1 runs every forward eagerly and prints a per-block
// table (cuda/profile.h). FASTDEMUCS_IMPLICIT_CONV=1 runs the float16 /
// bfloat16 convolutions as implicit GEMMs (cuda/implicit_conv.h). FASTDEMUCS_THIN_DCONV=0 sends the thin DConv
// layers through the general convolution path instead of cuda/dconv.h's
// fused passes; FASTDEMUCS_DCONV_ROWS=0 leaves out its row-resident kernel
// (the frequency branch's outer DConvs then take the three passes per layer; in float32, and with
// FASTDEMUCS_TC_DCONV=0, which keeps the three passes' convolutions on CUDA cores in float16 / bfloat16:
// the tensor-core passes are faster than the row-resident kernel). FASTDEMUCS_TRACE=1 prints the start-up time line
// (engine/trace.h), =2 also each block of the graph capture and the host
// time spent in cuBLAS. FASTDEMUCS_NO_LIBRARY_WARM_UP=1 leaves cuBLAS's
// first product to the capture (cuda_warm_up_libraries; A/B runs).
// FASTDEMUCS_GEMM_PRIME: the threads that run the forward's products once
// before the warm-up's capture (prime_products; default 4, 0: none).
//
// The whole track (separate_track, engine/apply's host path on the device;
// FASTDEMUCS_HOST_APPLY=1 forces the host path). The track is uploaded once
// into the middle of a zero-padded buffer [C, L + 2 * max_shift] (the shift
// padding, max_shift = int(0.5 * samplerate)), through page-locked slots
// of 8 MB filled by up to 12 threads (cuda/staging.h: 2 slots for a
// process's first track, 8 from its third; FASTDEMUCS_STAGED_UPLOAD=0: a
// pageable copy); the mono-mix statistics are a
// device reduction in double (fixed grid: deterministic), the normalisation
// is applied in place. For each shift (or the one unshifted view) the chunks
// are gathered straight into the forward's input buffer in the arena
// (ChunkView::padded: centred, zeros beyond the signal, zeros up to the
// training length), the forward runs (graph replay), and its output is
// centre-trimmed, weighted and added into a view accumulator
// [S * C, L + max_shift] in chunk order; then divided by the summed weights,
// added into the shift average, divided by the shift count and
// de-normalised. Every float step uses explicitly rounded intrinsics in the
// host loop's order, so the path reproduces the host path exactly up to the
// order of the double sums of the statistics (and the batch composition of
// the forwards). With one shift or none the result is the view
// accumulator's window [skip, skip + L) itself, with two or more a separate
// accumulator holds the average. The stems go down once, in pieces: during
// the last (or only) shift, as soon as a batch's overlap-add is done, the
// samples before the next chunk's start are final; a second stream waits
// for that batch's event, finishes them (division, average,
// de-normalisation) and sends them to the host while the main stream runs
// the next batch: through the backend's ring of page-locked slots, whose
// thread copies each slot into the host output (cuda/download_ring.h), or,
// with FASTDEMUCS_DOWNLOAD_RING=0, straight into the host output page-locked
// for the call. The host output is allocated and faulted in (and, without
// the ring, page-locked) by a thread of its own while the GPU works; a copy
// lands once the faults have passed its range.
// For 16-bit stems (separate_track_pcm16, Separator::separate_pcm16) each
// finished region is clipped, rounded and interleaved into a 16-bit copy of
// the stems on the device and goes down the same way, half the bytes. Under
// clip mode rescale a stem's divisor needs its peak over the whole track,
// known only after the last batch; the regions are converted with the
// divisor 1 meanwhile (the stem's peak so far kept on the device), which is
// final for every stem whose peak stays under 1 / 1.01. Only a stem past it
// is converted and copied again, whole, after the last batch (converting
// everything after the last batch left ~4 ms of conversion and copies with
// the GPU otherwise idle).
// Nothing goes back up. A separator's separate_on_device
// (separate_track_on_device) takes the track from device memory instead
// and writes the finished stems into the caller's device buffer (which is
// then also the shifts' average): no staging, no downloads. Progress is
// reported one batch late (an event per batch), so the GPU always has the
// next batch queued. Device memory for a track of L samples (C channels,
// S sources), besides the workspace and the weights:
//     track   4 C (L + 2 max_shift)
//     view    4 S C (L + max_shift)      (4 S C L without shifts)
//     weights 4 (L + max_shift)          (the summed transition weights)
//     average 4 S C L                    (only with shifts >= 2 and a host output)
//     pcm16   2 S C L                    (only for 16-bit stems)
// For htdemucs_6s (S = 6, C = 2) one hour at 44.1 kHz (158.8 M samples) is
// 1.27 + 7.62 + 0.64 = 9.5 GB (17.2 GB with shifts >= 2; 16-bit stems add
// 3.8 GB), plus the workspace (~3.5 GB at batch 8 by the estimate above; the
// dry run has the exact figure): it fits an 80 GB card with room to spare
// (measured on the H200, the command's 16-bit stems: 16.2 GB in use at the
// peak, 1.5 s of separation in fp16). A 3-minute track takes 0.48 GB
// (shifts 0 or 1; 0.67 GB for 16-bit stems). The batch is max_batch()'s with the track's
// buffers set aside (the workspace shrinks if it must); when they and one
// chunk do not fit, or exceed FASTDEMUCS_TRACK_PATH_MAX_MIB, separate_track
// declines and engine/apply's host path streams the track through host
// memory (the GPU holding only the workspace), so any length runs.
// The buffers of a track up to 1 GiB are kept for the next call on the
// device (kept_track_buffer; a bag's models, run one after the other, take
// them in turn); larger ones are freed when the call returns.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <type_traits>
#include <vector>

#include <cuda.h>  // CUresult, CUdeviceptr (cuMemGetAddressRange through the runtime)

#include "cuda/arena.h"
#include "cuda/branch.h"
#include "cuda/common.h"
#include "cuda/conv.h"
#include "cuda/conv_glu.h"
#include "cuda/conv_glu_wgmma.h"
#include "cuda/cudnn_attention.h"
#include "cuda/dconv.h"
#include "cuda/freq_transposed.h"
#include "cuda/gemm.h"
#include "cuda/host_output.h"
#include "cuda/kernels.h"
#include "cuda/libraries.h"
#include "cuda/profile.h"
#include "cuda/spectral.h"
#include "cuda/staging.h"
#include "cuda/track.h"
#include "cuda/transformer.h"
#include "cuda/weights.h"
#include "engine/apply.h"
#include "engine/backend.h"
#include "engine/pcm.h"
#include "engine/trace.h"
#include "error.h"

namespace fastdemucs {
namespace cuda {
namespace {

constexpr size_t kCublasWorkspace = size_t(32) << 20;
// Threads that load the forward's cuBLAS kernels before its first capture (prime_products).
constexpr int kPrimeThreads = 4;

constexpr int kDefaultBatchCap = 8;

// One kept track-path buffer per device, taken by a call and given back on
// its return, up to 1 GiB (a track of ~8 minutes of htdemucs_6s stereo
// stems at 44.1 kHz): a bag's models, run one after the other, share it;
// calls running at once on other threads allocate their own. The device's
// last backend to go frees it (KeptBufferUse), and release_gpus() before
// the device is reset.
// Never destroyed: freeing device memory during the process's exit races the
// runtime's own teardown, and a backend may go after the statics do.
std::mutex& kept_mutex = *new std::mutex;
std::map<int, DeviceBuffer>& kept_buffers = *new std::map<int, DeviceBuffer>;
constexpr size_t kKeptTrackBytes = size_t(1) << 30;

DeviceBuffer take_kept_track_buffer(int device) {
    std::lock_guard<std::mutex> lock(kept_mutex);
    auto it = kept_buffers.find(device);
    if (it == kept_buffers.end()) return {};
    DeviceBuffer b = std::move(it->second);
    kept_buffers.erase(it);
    return b;
}

// Never throws (a destructor's): a buffer that cannot be kept is freed by the caller's.
void keep_track_buffer(int device, DeviceBuffer&& b) noexcept {
    if (b.bytes() > kKeptTrackBytes) return;
    try {
        std::lock_guard<std::mutex> lock(kept_mutex);
        DeviceBuffer& kept = kept_buffers[device];
        if (kept.bytes() < b.bytes()) kept = std::move(b);
    } catch (...) {
    }
}

// Backends alive per device: the last one to go frees the device's kept
// buffer (a host program that drops its models gets the memory back).
std::map<int, int>& kept_users = *new std::map<int, int>;

class KeptBufferUse {
public:
    explicit KeptBufferUse(int device) : device_(device) {
        std::lock_guard<std::mutex> lock(kept_mutex);
        kept_users[device_]++;
    }
    ~KeptBufferUse() {
        DeviceBuffer gone;  // freed after the lock is released
        std::lock_guard<std::mutex> lock(kept_mutex);
        if (--kept_users[device_] > 0) return;
        auto it = kept_buffers.find(device_);
        if (it == kept_buffers.end()) return;
        gone = std::move(it->second);
        kept_buffers.erase(it);
    }
    KeptBufferUse(const KeptBufferUse&) = delete;
    KeptBufferUse& operator=(const KeptBufferUse&) = delete;

private:
    int device_;
};

// FASTDEMUCS_GPU_TIMELINE=1: events at each step of the track path, printed
// (ms since the first) once the stems are down: the GPU's own time line,
// apart from the host's (FASTDEMUCS_TRACE), to see what lies between the
// forwards' kernels and the whole track's time.
class GpuTimeline {
public:
    GpuTimeline() : on_(env_flag("FASTDEMUCS_GPU_TIMELINE")) {}
    ~GpuTimeline() {
        for (auto& m : marks_) cudaEventDestroy(m.second);
    }
    GpuTimeline(const GpuTimeline&) = delete;
    GpuTimeline& operator=(const GpuTimeline&) = delete;
    void mark(const std::string& what, cudaStream_t stream) {
        if (!on_) return;
        cudaEvent_t e = nullptr;
        FD_CUDA(cudaEventCreate(&e));
        marks_.push_back({what, e});
        FD_CUDA(cudaEventRecord(e, stream));
    }
    // After both streams are synchronised.
    void print() const {
        if (!on_ || marks_.empty()) return;
        float prev = 0.0f;
        for (const auto& m : marks_) {
            float ms = 0.0f;
            FD_CUDA(cudaEventElapsedTime(&ms, marks_.front().second, m.second));
            std::fprintf(stderr, "gpu timeline: %8.3f ms (+%7.3f) %s\n", ms, ms - prev, m.first.c_str());
            prev = ms;
        }
    }

private:
    bool on_;
    std::vector<std::pair<std::string, cudaEvent_t>> marks_;
};

DType operand_type(Precision p) {
    switch (p) {
        case Precision::Fp32: return DType::F32;
        case Precision::Fp16: return DType::F16;
        case Precision::Bf16: return DType::BF16;
    }
    return DType::F32;
}

// Owners of the stream and the cuBLAS handle (so a throwing constructor leaks nothing).
struct StreamOwner {
    cudaStream_t stream = nullptr;
    StreamOwner() { FD_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking)); }
    ~StreamOwner() {
        if (stream) cudaStreamDestroy(stream);
    }
    StreamOwner(const StreamOwner&) = delete;
    StreamOwner& operator=(const StreamOwner&) = delete;
};

struct EventOwner {
    cudaEvent_t event = nullptr;
    EventOwner() { FD_CUDA(cudaEventCreateWithFlags(&event, cudaEventDisableTiming)); }
    ~EventOwner() {
        if (event) cudaEventDestroy(event);
    }
    EventOwner(const EventOwner&) = delete;
    EventOwner& operator=(const EventOwner&) = delete;
};

struct BlasOwner {
    cublasHandle_t handle = nullptr;
    BlasOwner() { FD_CUBLAS(blas_api().cublasCreate(&handle)); }
    ~BlasOwner() {
        if (handle) blas_api().cublasDestroy(handle);
    }
    BlasOwner(const BlasOwner&) = delete;
    BlasOwner& operator=(const BlasOwner&) = delete;
};

// The time branch's own stream: its layers run beside the frequency
// branch's (the two meet only in the cross-transformer and the final sum),
// with a cuBLAS handle and workspace of their own (one handle's workspace
// cannot serve two products at once) and the events that fork and join it.
struct BranchStream {
    StreamOwner stream;
    DeviceBuffer workspace{kCublasWorkspace, "the time branch's cuBLAS workspace"};
    BlasOwner blas;  // (destroyed before its workspace and stream)
    EventOwner fork, join;
};

// The bytes from p to the end of the device allocation holding it
// (cuMemGetAddressRange, reached through the runtime: no libcuda link);
// false where the driver cannot say.
bool allocation_room(const void* p, size_t* room) {
    using GetAddressRange = CUresult (*)(CUdeviceptr*, size_t*, CUdeviceptr);
    static const GetAddressRange get_range = [] {
        void* fn = nullptr;
        cudaDriverEntryPointQueryResult found{};
        if (cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &fn, 12000, cudaEnableDefault, &found) !=
                cudaSuccess ||
            found != cudaDriverEntryPointSuccess) {
            cudaGetLastError();
            fn = nullptr;
        }
        return reinterpret_cast<GetAddressRange>(fn);
    }();
    CUdeviceptr base = 0;
    size_t size = 0;
    const CUdeviceptr at = reinterpret_cast<CUdeviceptr>(p);
    if (!get_range || get_range(&base, &size, at) != CUDA_SUCCESS || at < base || at >= base + size) return false;
    *room = size_t(base + size - at);
    return true;
}

struct Io {
    float* in = nullptr;   // [B, C, L]: the mix, zero-padded to the training length
    float* out = nullptr;  // [B, S * C, L]: the stems
};

class CudaBackend final : public ModelBackend {
public:
    CudaBackend(std::shared_ptr<const HTDemucsModel> model, int device, Precision precision)
        : model_(std::move(model)), device_(device), kept_use_(device), dtype_(operand_type(precision)) {
        FD_CUDA(cudaSetDevice(device_));
        stream_ = std::make_unique<StreamOwner>();
        copy_stream_ = std::make_unique<StreamOwner>();
        for (auto& e : ready_) e = std::make_unique<EventOwner>();
        blas_ = std::make_unique<BlasOwner>();
        FD_CUBLAS(blas_api().cublasSetStream(blas_->handle, stream_->stream));
        // No TF32: default math with CUBLAS_COMPUTE_32F (set per call) never uses it.
        FD_CUBLAS(blas_api().cublasSetMathMode(blas_->handle, math_mode()));
        // A workspace of our own: cuBLAS then allocates nothing while a graph is captured.
        blas_workspace_ = DeviceBuffer(kCublasWorkspace, "the cuBLAS workspace");
        FD_CUBLAS(blas_api().cublasSetWorkspace(blas_->handle, blas_workspace_.get(), blas_workspace_.bytes()));
        trace_point("cuda: streams and cuBLAS");

        ctx_.shifted_conv = env_flag("FASTDEMUCS_SHIFTED_CONV");
        weights_ = std::make_unique<DeviceWeights>(*model_, dtype_, ctx_.shifted_conv);
        upload_dconv_tables();
        trace_point("cuda: weights uploaded");
        const auto& cfg = model_->config;
        length_ = cfg.segment_samples();
        spectral_ = std::make_unique<Spectral>(cfg.nfft, length_);
        trace_point("cuda: cuFFT plans");

        ctx_.stream = stream_->stream;
        ctx_.blas = blas_->handle;
        ctx_.gemm = dtype_;
        const std::string attention = env_string("FASTDEMUCS_ATTENTION");
        ctx_.fused_attention = attention != "cublas";
        int major = 0;
        FD_CUDA(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device_));
        // mma.sync m16n8k16 and cp.async: sm_80 on (else the SIMT kernel).
        ctx_.tensor_core_attention = attention != "simt" && major >= 8;
        ctx_.pipelined_attention = attention != "tc-v1";
        // cuDNN's fused attention first in float16 / bfloat16 (our kernels where it is not
        // installed, or with FASTDEMUCS_ATTENTION=tc: cuda/cudnn_attention.h).
        if (dtype_ != DType::F32 && cudnn_attention_chosen()) {
            cudnn_attention_ = std::make_unique<CudnnAttention>(device_);
            if (cudnn_attention_->available())
                ctx_.cudnn_attention = cudnn_attention_.get();
            else
                trace_point(("cuda: no cuDNN attention (" + cudnn_attention_->reason() + ")").c_str());
        }
        ctx_.implicit_conv = env_flag("FASTDEMUCS_IMPLICIT_CONV") && major >= 8;  // cp.async: sm_80 on
        ctx_.conv_glu = env_string("FASTDEMUCS_CONV_GLU") != "0" && major >= 8;  // cp.async, mma.sync
        ctx_.conv_glu_wgmma =
            ctx_.conv_glu && env_string("FASTDEMUCS_CONV_GLU_WGMMA") != "0" && conv_glu_wgmma_available(device_);
        ctx_.conv1x1_glu_wgmma = ctx_.conv_glu_wgmma && env_string("FASTDEMUCS_CONV1X1_WGMMA") != "0";
        ctx_.thin_dconv = env_string("FASTDEMUCS_THIN_DCONV") != "0";
        ctx_.dconv_rows = env_string("FASTDEMUCS_DCONV_ROWS") != "0";
        ctx_.tensor_core_dconv = env_string("FASTDEMUCS_TC_DCONV") != "0" && major >= 8;  // mma.sync m16n8k16
        ctx_.dconv_split_warps = env_string("FASTDEMUCS_DCONV_SPLIT") != "0";
        ctx_.decoder_writes_spectrum = env_string("FASTDEMUCS_SPECTRUM_FROM_COLUMNS") != "0";
        ctx_.freq_transposed_mma = env_string("FASTDEMUCS_FREQ_TRANSPOSED_MMA") != "0" && major >= 8;  // mma.sync
        ctx_.bias_epilogue = env_string("FASTDEMUCS_BIAS_EPILOGUE") != "0";
        ctx_.gelu_epilogue = env_string("FASTDEMUCS_GELU_EPILOGUE") != "0";
        ctx_.biased_conv = env_string("FASTDEMUCS_BIASED_CONV") != "0";
        ctx_.direct_conv = env_string("FASTDEMUCS_DIRECT_CONV") != "0";
        ctx_.freq_encoder_mma = env_string("FASTDEMUCS_FREQ_ENCODER_MMA") != "0" && major >= 8;  // mma.sync
        ctx_.im2col_3x3 = env_string("FASTDEMUCS_IM2COL_3X3") != "0";
        ctx_.fuse_freq_embedding = env_string("FASTDEMUCS_FUSED_FREQ_EMB") != "0";
        ctx_.pack_from_columns = env_string("FASTDEMUCS_PACK_FROM_COLUMNS") != "0";
        ctx_.pack_time_columns = env_string("FASTDEMUCS_PACK_TIME_COLUMNS") != "0";
        staged_upload_ = env_string("FASTDEMUCS_STAGED_UPLOAD") != "0";
        ctx_.narrow_gemm_out = env_string("FASTDEMUCS_NARROW_GEMM_OUT") != "0";
        graphs_enabled_ = !env_flag("FASTDEMUCS_NO_GRAPH");
        if (env_flag("FASTDEMUCS_PROFILE")) {
            profiler_ = std::make_unique<Profiler>();
            graphs_enabled_ = false;  // events per block need eager launches
        }
        const std::string cap = env_string("FASTDEMUCS_MAX_BATCH");
        batch_cap_ = cap.empty() ? kDefaultBatchCap : std::max(1, std::atoi(cap.c_str()));
        make_branch_stream();

        // Memory model from the dry runs of one and two chunks.
        const size_t one = measure(1), two = measure(2);
        per_chunk_ = two > one ? two - one : one;
        fixed_ = one > per_chunk_ ? one - per_chunk_ : 0;
        trace_point("cuda: memory model (dry runs)");
    }

    // The time branch's stream (BranchStream), where it can serve: float16 /
    // bfloat16 (in float32 its cuBLAS handle and workspace, ~0.1 GiB, would
    // take the peak over 4 GiB for ~1 % of its time), a model whose branches
    // meet only in the transformer (branch_fits), no profiler. Where it
    // cannot be made (no memory), one stream.
    void make_branch_stream() {
        branch_transformer_ = env_string("FASTDEMUCS_BRANCH_TRANSFORMER") != "0";
        if (dtype_ == DType::F32 || !branch_fits() || profiler_ || env_string("FASTDEMUCS_BRANCH_STREAMS") == "0")
            return;
        try {
            auto branch = std::make_unique<BranchStream>();
            FD_CUBLAS(blas_api().cublasSetStream(branch->blas.handle, branch->stream.stream));
            FD_CUBLAS(blas_api().cublasSetMathMode(branch->blas.handle, math_mode()));
            FD_CUBLAS(blas_api().cublasSetWorkspace(branch->blas.handle, branch->workspace.get(),
                                                    branch->workspace.bytes()));
            branch_ = std::move(branch);
        } catch (const Error& e) {
            cudaGetLastError();
            trace_point((std::string("cuda: one stream (") + e.what() + ")").c_str());
        }
    }

    static cublasMath_t math_mode() {
        return env_flag("FASTDEMUCS_CUBLAS_PEDANTIC") ? CUBLAS_PEDANTIC_MATH : CUBLAS_DEFAULT_MATH;
    }

    ~CudaBackend() override {
        cudaSetDevice(device_);
        if (stream_) cudaStreamSynchronize(stream_->stream);
        if (copy_stream_) cudaStreamSynchronize(copy_stream_->stream);
        destroy_graphs();
        cudaGetLastError();
    }

    const HTDemucsModel& model() const override { return *model_; }
    void set_threads(int) override {}

    static bool download_ring_wanted() {
        return !env_flag("FASTDEMUCS_NO_PIN") && env_string("FASTDEMUCS_DOWNLOAD_RING") != "0";
    }

    // Makes the download ring (cuda/download_ring.h: 6 page-locked slots of
    // 8 MB, copied out by three quarters of the cores, at most 12, or
    // FASTDEMUCS_RING_THREADS) on a thread; ring_pending_ gives
    // it, or the error that prevented it. Never throws: where no thread can
    // start, ring_pending_ stays empty (the track takes the locked path).
    void start_download_ring() noexcept {
        const int device = device_;
        try {
            ring_pending_ = on_device_thread(device, [device] {
                return std::make_unique<DownloadRing>(device, size_t(8) << 20, 6, copy_threads("FASTDEMUCS_RING_THREADS"));
            });
        } catch (const std::exception& e) {
            ring_pending_ = {};
            trace_point((std::string("cuda: no download ring (") + e.what() + ")").c_str());
        }
    }

    // make() on a thread of its own with `device` current; the future gives
    // its result or what it threw (a failure leaves no CUDA error behind for
    // the next call). Throws std::system_error where no thread can start.
    template <typename Make>
    static std::future<std::invoke_result_t<Make>> on_device_thread(int device, Make make) {
        return std::async(std::launch::async, [device, make] {
            struct ClearError {
                ~ClearError() { cudaGetLastError(); }
            } clear;
            FD_CUDA(cudaSetDevice(device));
            return make();
        });
    }

    // Host threads for the upload's and the ring's copies (cuda/copy_pool.h):
    // three quarters of the cores, at most 12 (16 cores: 12 threads copy
    // ~45-65 GB/s), or the count the environment variable `env` asks for.
    static int copy_threads(const char* env) {
        const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
        const int asked = std::atoi(env_string(env).c_str());
        return asked > 0 ? asked : int(std::min(cores - cores / 4, 12u));
    }

    // The track's upload staging (cuda/staging.h): `slots` page-locked slots
    // of 8 MB (FASTDEMUCS_UPLOAD_THREADS: its threads).
    static std::unique_ptr<UploadStaging> make_upload_staging(int slots) {
        return std::make_unique<UploadStaging>(size_t(2) << 20, slots, copy_threads("FASTDEMUCS_UPLOAD_THREADS"));
    }
    // A process's first track gets two slots (16 MB page-locked on the spot,
    // as the command's one track needs); its second starts the making of
    // eight (a 3-minute track whole: no copy waits for an earlier DMA) on a
    // thread, which later tracks take once made. Made at start-up instead,
    // the 64 MB held the command's graph capture back by ~0.05 s (their
    // page-locking and its 12 threads beside the capture's host work).
    static constexpr int kFirstStagingSlots = 2, kStagingSlots = 8;

    // This track's upload staging (null: a pageable copy), per the policy
    // above: the large one once made, else the small one (made here), and
    // the large one started on a second track.
    UploadStaging* upload_staging() {
        const bool again = tracks_++ > 0;
        if (!staged_upload_) return nullptr;
        try {
            if (staging_pending_.valid() &&
                (!staging_ || staging_pending_.wait_for(std::chrono::seconds(0)) == std::future_status::ready))
                staging_ = staging_pending_.get();
        } catch (const std::exception& e) {  // the large staging could not be made: the small one stays
            large_staging_failed_ = true;
            trace_point((std::string("cuda: no large upload staging (") + e.what() + ")").c_str());
        }
        try {
            if (!staging_) staging_ = make_upload_staging(kFirstStagingSlots);
        } catch (const std::exception& e) {  // no page-locked memory or thread: a pageable copy
            trace_point((std::string("cuda: no upload staging (") + e.what() + ")").c_str());
        }
        if (staging_ && staging_->slots() < kStagingSlots && !staging_pending_.valid() && again &&
            !large_staging_failed_)
            start_upload_staging();
        return staging_.get();
    }

    // Makes the large staging on a thread; staging_pending_ gives it or the
    // error that prevented it. Never throws: where no thread can start, the
    // tracks keep the small one.
    void start_upload_staging() noexcept {
        try {
            staging_pending_ = on_device_thread(device_, [] { return make_upload_staging(kStagingSlots); });
        } catch (const std::exception&) {
            staging_pending_ = {};
        }
    }

    // The forward at the batch size a long track gets, captured as a CUDA
    // graph without running it, after its matrix products ran once
    // (prime_products: cuBLAS loads each kernel at its first run, ~2.5 ms
    // apiece on the H200, ~0.1 s for the forward; cuBLAS's first use of each
    // kind of product, ~0.1 s more, is paid by the start-up thread:
    // cuda_warm_up_libraries); the capture then takes ~15 ms. Without graphs
    // (or when the capture fails) one eager forward of zeros does the loading instead.
    void warm_up() override {
        FD_CUDA(cudaSetDevice(device_));
        // The download ring's 48 MB are page-locked on a thread of their own
        // meanwhile (~10-25 ms of host time a process: made by the first
        // track, they held back its first batch).
        if (!download_ring_ && !ring_pending_.valid() && download_ring_wanted()) start_download_ring();  // never throws
        const int batch = max_batch();
        const bool capturing = graphs_enabled_ && !profiler_ && !graphs_.count(batch);
        const size_t need = measure(batch);
        if (trace_detailed()) trace_point("cuda: dry run of the warm-up's batch");
        // cuBLAS's kernels load on a thread (prime_products) while cuDNN's
        // plans are read here: both before the capture, neither waits for the
        // other. Not beside cuDNN's timing runs (FASTDEMUCS_CUDNN_AUTOTUNE):
        // the prime's products would skew them. The prime's handles go once
        // cuDNN's plans are read (their cublasDestroy would break the capture
        // a plan's warm load makes).
        GemmLeftovers primed;
        {
            struct Joined {
                std::thread t;
                ~Joined() {
                    if (t.joinable()) t.join();
                }
            } primer;
            if (capturing) {
                if (workspace_.bytes() < need) resize_workspace(need, "batch " + std::to_string(batch));
                try {
                    primer.t = std::thread([this, batch, &primed] {
                        if (cudaSetDevice(device_) == cudaSuccess) primed = prime_products(batch);
                        cudaGetLastError();
                    });
                } catch (const std::system_error&) {
                    primed = prime_products(batch);
                }
                if (primer.t.joinable() && env_flag("FASTDEMUCS_CUDNN_AUTOTUNE")) primer.t.join();
            }
            ensure_workspace(batch);
            if (trace_detailed()) trace_point("cuda: workspace for the warm-up's batch");
        }
        primed = GemmLeftovers();
        Ctx ctx = ctx_;
        ctx.arena = &arena_;
        if (capturing) capture(ctx, batch);
        if (graphs_.count(batch)) return;
        const Io io = alloc_io(ctx, batch);
        FD_CUDA(cudaMemsetAsync(io.in, 0, size_t(batch) * model_->config.audio_channels * length_ * sizeof(float),
                                ctx.stream));
        run_forward(ctx, batch);
    }

    int max_batch() const override {
        if (cudaSetDevice(device_) != cudaSuccess) {
            cudaGetLastError();
            return 1;
        }
        size_t free_b = 0, total_b = 0;
        if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
            cudaGetLastError();
            return 1;
        }
        const size_t reserve = (size_t(256) << 20) + total_b / 50;
        const size_t avail = free_b + workspace_.bytes();
        if (avail <= reserve + fixed_ + per_chunk_ || per_chunk_ == 0) return 1;
        const size_t fits = (avail - reserve - fixed_) / per_chunk_;
        return static_cast<int>(std::max<size_t>(1, std::min<size_t>(fits, size_t(batch_cap_))));
    }

    void forward(const float* mix, int batch, int64_t length, float* out, const TapFn& tap) override {
        const auto& cfg = model_->config;
        if (length > length_)
            throw Error("input of " + std::to_string(length) + " samples is longer than the model's segment (" +
                        std::to_string(length_) + ")");
        if (length <= 0 || batch <= 0) throw Error("forward: empty input");
        const int64_t C = cfg.audio_channels, S = cfg.num_sources(), L = length_;
        FD_CUDA(cudaSetDevice(device_));
        struct TapGuard {
            TapFn& slot;
            ~TapGuard() { slot = nullptr; }
        } guard{tap_};
        tap_ = tap;  // (before the workspace is measured: a tapped forward needs more)
        ensure_workspace(batch);
        Ctx ctx = ctx_;
        ctx.arena = &arena_;
        const cudaStream_t stream = ctx.stream;

        const Io io = alloc_io(ctx, batch);
        const size_t row = size_t(length) * sizeof(float), pitch = size_t(L) * sizeof(float);
        if (length < L)
            FD_CUDA(cudaMemset2DAsync(io.in + length, pitch, 0, size_t(L - length) * sizeof(float),
                                      size_t(batch * C), stream));
        FD_CUDA(cudaMemcpy2DAsync(io.in, pitch, mix, row, row, size_t(batch * C), cudaMemcpyHostToDevice, stream));
        run_forward(ctx, batch);
        FD_CUDA(cudaMemcpy2DAsync(out, row, io.out, pitch, row, size_t(batch * S * C), cudaMemcpyDeviceToHost, stream));
        FD_CUDA(cudaStreamSynchronize(stream));
    }

    bool has_track_path() const override { return true; }

    bool separate_track(const float* mix, int64_t length, const SeparateParams& params,
                        const std::vector<int64_t>& shift_offsets, std::vector<float>& out,
                        const std::function<void(int64_t)>& on_chunks) override {
        TrackOutput output;
        output.floats = &out;
        return run_track(mix, length, params, shift_offsets, output, on_chunks);
    }

    bool separate_track_pcm16(const float* mix, int64_t length, const SeparateParams& params,
                              const std::vector<int64_t>& shift_offsets, ClipMode clip, std::vector<int16_t>& out,
                              const std::function<void(int64_t)>& on_chunks) override {
        TrackOutput output;
        output.pcm16 = &out;
        output.clip = clip;
        return run_track(mix, length, params, shift_offsets, output, on_chunks);
    }

    bool separate_track_on_device(const float* mix, int64_t length, const SeparateParams& params,
                                  const std::vector<int64_t>& shift_offsets, float* out,
                                  const std::function<void(int64_t)>& on_chunks) override {
        TrackOutput output;
        output.device = out;
        return run_track(mix, length, params, shift_offsets, output, on_chunks);
    }

    // A caller's buffer of `count` floats must lie in this device's memory
    // (cudaMalloc'd or managed) whole: anything else is a one-line error,
    // not a fault inside a kernel.
    void check_device_buffer(const float* p, size_t count, const std::string& what) const override {
        FD_CUDA(cudaSetDevice(device_));
        cudaPointerAttributes a{};
        const cudaError_t e = cudaPointerGetAttributes(&a, p);
        if (e != cudaSuccess) cudaGetLastError();
        const std::string where = "the memory of GPU " + std::to_string(device_) + ", where the model was loaded";
        if (e != cudaSuccess ||
            !(a.type == cudaMemoryTypeManaged || (a.type == cudaMemoryTypeDevice && a.device == device_)))
            throw Error(what + " is not in " + where);
        size_t room = 0;
        if (allocation_room(p, &room) && room < count * sizeof(float))
            throw Error(what + " needs " + std::to_string(count) + " floats in " + where + "; its allocation holds " +
                        std::to_string(room / sizeof(float)) + " from there");
    }

    void copy_from_device(const float* device, size_t count, float* host) override {
        FD_CUDA(cudaSetDevice(device_));
        FD_CUDA(cudaMemcpy(host, device, count * sizeof(float), cudaMemcpyDeviceToHost));
    }

    void copy_to_device(const float* host, size_t count, float* device) override {
        FD_CUDA(cudaSetDevice(device_));
        FD_CUDA(cudaMemcpy(device, host, count * sizeof(float), cudaMemcpyHostToDevice));
    }

private:
    // Where the track path's stems go: floats [S, C, L], or 16-bit PCM
    // [S, L, C] converted on the device (half the bytes to fault in and
    // copy), both downloaded region by region while later batches run (a
    // stem that rescale divides converted and downloaded again at the end);
    // or floats [S, C, L] in device memory, written there region by region.
    struct TrackOutput {
        std::vector<float>* floats = nullptr;
        std::vector<int16_t>* pcm16 = nullptr;
        ClipMode clip = ClipMode::Rescale;
        float* device = nullptr;  // the stems in this device's memory (floats and pcm16 null); the mix is there too
    };

    bool run_track(const float* mix, int64_t length, const SeparateParams& params,
                   const std::vector<int64_t>& shift_offsets, const TrackOutput& output,
                   const std::function<void(int64_t)>& on_chunks) {
        const auto& cfg = model_->config;
        const int C = cfg.audio_channels;
        const int64_t S = cfg.num_sources(), SC = S * C, L = length;
        if (L <= 0) throw Error("the track is empty");
        if (int64_t(shift_offsets.size()) != int64_t(params.shifts))
            throw Error("internal error: separate_track needs one offset per shift");
        FD_CUDA(cudaSetDevice(device_));
        const cudaStream_t stream = stream_->stream;
        trace_point("cuda: track path starts");

        // The views and their chunks, as engine/apply cuts them.
        const int64_t max_shift = static_cast<int64_t>(0.5 * cfg.samplerate);
        const int64_t segment =
            params.segment > 0 ? static_cast<int64_t>(double(cfg.samplerate) * params.segment) : length_;
        if (segment < 1 || segment > length_) throw Error("internal error: segment outside the model's length");
        ChunkGrid g;
        g.total = L + 2 * max_shift;
        g.segment = g.valid = segment;  // the model sees exactly the segment around each chunk
        g.model_length = length_;
        g.stride = params.split ? static_cast<int64_t>((1.0 - params.overlap) * double(segment)) : segment;
        if (g.stride <= 0) throw Error("--overlap leaves no stride between chunks");
        struct Cut {
            int64_t start, length, skip;  // view start in the track buffer, view length, track start in the view
        };
        std::vector<Cut> cuts;
        if (params.shifts == 0) cuts.push_back({max_shift, L, 0});
        for (int64_t o : shift_offsets) {
            if (o < 0 || o > max_shift) throw Error("internal error: shift offset out of range");
            cuts.push_back({o, L + max_shift - o, max_shift - o});
        }
        int64_t max_jobs = 1;
        for (const Cut& cut : cuts) {
            if (!params.split && cut.length > segment)
                throw Error("the track (" + std::to_string(cut.length) +
                            " samples) is longer than the model's segment (" + std::to_string(segment) +
                            " samples): use split mode");
            g.view_length = cut.length;
            max_jobs = std::max(max_jobs, g.jobs());
        }
        const bool weighted = params.split;
        const float* weight_d = weighted ? transition_weights(segment, params.transition_power) : nullptr;
        const int64_t pitch = params.shifts == 0 ? L : L + max_shift;  // row length of the view accumulator

        // Device memory: one buffer for the track-sized arrays (see the design notes).
        size_t bytes = 0;
        auto take = [&bytes](size_t n) {
            const size_t at = bytes;
            bytes += (n + 255) / 256 * 256;
            return at;
        };
        const size_t at_track = take(size_t(C) * g.total * sizeof(float));
        const size_t at_view = take(size_t(SC) * pitch * sizeof(float));
        const size_t at_sum = take(weighted ? size_t(pitch) * sizeof(float) : 0);
        // (A device output is the shifts' accumulator itself.)
        const size_t at_acc = take(params.shifts >= 2 && !output.device ? size_t(SC) * L * sizeof(float) : 0);
        const size_t at_stats = take((2 + size_t(track_stats_partials())) * sizeof(double));
        const size_t at_peaks = take(output.pcm16 ? size_t(S) * sizeof(unsigned) : 0);
        const size_t at_pcm16 = take(output.pcm16 ? size_t(SC) * L * sizeof(int16_t) : 0);
        // The whole-track buffers grow with the track (9.5 GB for an hour of
        // htdemucs_6s); past FASTDEMUCS_TRACK_PATH_MAX_MIB, or where they and
        // one chunk do not fit the free memory, engine/apply's host path
        // streams the track through host memory instead (the GPU then holds
        // only the workspace: any length runs).
        const int64_t cap_mib = std::atoll(env_string("FASTDEMUCS_TRACK_PATH_MAX_MIB").c_str());
        if (cap_mib > 0 && bytes > size_t(cap_mib) << 20) {
            trace_point("cuda: the track's buffers exceed FASTDEMUCS_TRACK_PATH_MAX_MIB: host path");
            return false;
        }
        // The buffers a previous track of this device left (kept_track_buffer:
        // their cudaMalloc + cudaFree cost ~0.8 ms a call): reused when large
        // enough, freed before the memory is counted otherwise.
        DeviceBuffer buffer = take_kept_track_buffer(device_);
        if (buffer.bytes() < bytes) buffer.reset();
        // (A larger kept buffer stays whole: its size is what the track takes.)
        const int batch = track_batch(std::max(bytes, buffer.bytes()), buffer.bytes(), max_jobs, params.batch_size);
        if (batch == 0) {
            trace_point("cuda: the track's buffers do not fit the GPU: host path");
            return false;
        }
        if (!buffer.get()) {
            try {
                buffer = DeviceBuffer(bytes, "the track's buffers");
            } catch (const Error&) {  // out of memory after all (another process, fragmentation)
                trace_point("cuda: the track's buffers could not be allocated: host path");
                return false;
            }
        }
        struct Keep {  // runs after Drain below: the streams are done with the buffers
            DeviceBuffer& buffer;
            int device;
            ~Keep() { keep_track_buffer(device, std::move(buffer)); }
        } keep{buffer, device_};
        trace_point("cuda: track buffers allocated");
        char* base = buffer.as<char>();
        float* track = reinterpret_cast<float*>(base + at_track);
        float* view = reinterpret_cast<float*>(base + at_view);
        float* sum_weight = weighted ? reinterpret_cast<float*>(base + at_sum) : nullptr;
        float* acc = reinterpret_cast<float*>(base + at_acc);
        double* stats = reinterpret_cast<double*>(base + at_stats);
        double* partial = stats + 2;
        unsigned* peaks = reinterpret_cast<unsigned*>(base + at_peaks);
        int16_t* pcm16 = reinterpret_cast<int16_t*>(base + at_pcm16);  // [S, L, C]
        // On any exit the streams are drained before the buffers go.
        const cudaStream_t copy_stream = copy_stream_->stream;
        struct Drain {
            cudaStream_t a, b;
            ~Drain() {
                cudaStreamSynchronize(a);
                cudaStreamSynchronize(b);
                cudaGetLastError();
            }
        } drain{stream, copy_stream};
        ProgressPump progress(on_chunks);
        GpuTimeline timeline;
        timeline.mark("start", stream);

        // Upload once: the track in the middle of its zero padding.
        if (max_shift > 0) {
            FD_CUDA(cudaMemset2DAsync(track, size_t(g.total) * sizeof(float), 0, size_t(max_shift) * sizeof(float),
                                      size_t(C), stream));
            FD_CUDA(cudaMemset2DAsync(track + max_shift + L, size_t(g.total) * sizeof(float), 0,
                                      size_t(max_shift) * sizeof(float), size_t(C), stream));
        }
        UploadStaging* staging = output.device ? nullptr : upload_staging();
        if (staging) {
            staging->upload(track + max_shift, size_t(g.total), mix, size_t(L), size_t(L), size_t(C), stream);
        } else {
            FD_CUDA(cudaMemcpy2DAsync(track + max_shift, size_t(g.total) * sizeof(float), mix,
                                      size_t(L) * sizeof(float), size_t(L) * sizeof(float), size_t(C),
                                      output.device ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice, stream));
        }
        trace_point("cuda: upload staged");
        if (params.normalize) {
            track_stats(stream, track + max_shift, C, L, g.total, partial, stats);
            track_normalize(stream, track + max_shift, C, L, g.total, stats);
        }
        timeline.mark("track uploaded and normalised", stream);

        // The last (or only) shift is finished and downloaded (or written
        // into the device output) region by region on the copy stream as
        // soon as no later chunk touches it, while the next batch runs; a
        // host output vector is sized (zero-filled by the host) while the
        // first batches run.
        const double* st = params.normalize ? stats : nullptr;
        // The finished stems: the view's window itself when <= 1 shift (then
        // downloaded), a device output directly.
        float* result = output.device ? output.device : params.shifts <= 1 ? nullptr : acc;
        const int64_t result_pitch = result ? L : pitch;
        int64_t done = 0;  // track samples [0, done) finished on the device
        // The host output (381 MB for 3 minutes of 6 stems) is faulted in
        // and page-locked, piece by piece, by threads of their own while the
        // GPU works (cuda/host_output.h); on this thread that kept the GPU
        // idle ~0.1 s per track, and pageable copies crawl through a staging
        // buffer. Each row of a finished region (no later chunk touches it)
        // waits on the device until the pieces under it are ready; then its
        // copy is queued.
        // FASTDEMUCS_HOST_OUTPUT_PIECE_MIB: the pieces' size (default 32; one
        // piece larger than the output faults it all in, then locks it all).
        const int64_t piece_mib = std::atoll(env_string("FASTDEMUCS_HOST_OUTPUT_PIECE_MIB").c_str());
        const size_t piece_bytes = size_t(piece_mib > 0 ? piece_mib : 32) << 20;
        const bool pin = !env_flag("FASTDEMUCS_NO_PIN");
        // The copies go through the backend's download ring (cuda/download_ring.h)
        // unless FASTDEMUCS_DOWNLOAD_RING=0 (the output page-locked, as before it).
        DownloadRing* ring = nullptr;
        if (!output.device && download_ring_wanted()) {  // (never without pinning)
            if (!download_ring_) {
                if (!ring_pending_.valid()) start_download_ring();
                if (ring_pending_.valid()) {
                    try {
                        download_ring_ = ring_pending_.get();
                    } catch (const std::exception& e) {  // no page-locked memory or thread: the locked path
                        trace_point((std::string("cuda: no download ring (") + e.what() + ")").c_str());
                    }
                }
            }
            ring = download_ring_.get();
        }
        std::optional<HostOutput<float>> float_out;
        std::optional<HostOutput<int16_t>> pcm16_out;
        if (output.pcm16)
            pcm16_out.emplace(*output.pcm16, size_t(SC * L), device_, pin, copy_stream, piece_bytes, ring);
        else if (output.floats)
            float_out.emplace(*output.floats, size_t(SC * L), device_, pin, copy_stream, piece_bytes, ring);
        const float* finished = nullptr;  // the finished stems [SC, L], row pitch result_pitch
        struct RowCopy {
            const void* src;  // the range's first sample on the device (float or int16_t)
            size_t offset;    // in the output, in samples
            size_t count;
        };
        std::vector<RowCopy> waiting;  // finished on the device, not yet queued for download
        auto queue_into = [&waiting](auto& host, bool wait) {
            using T = typename std::decay_t<decltype(host)>::value_type;
            if (wait) host.wait();  // rethrows std::bad_alloc (with a ring: finish() does)
            const size_t ready = host.queueable();
            size_t kept = 0;
            for (const RowCopy& r : waiting) {
                if (r.offset + r.count <= ready)
                    host.copy_from_device(r.offset, static_cast<const T*>(r.src), r.count);
                else
                    waiting[kept++] = r;
            }
            waiting.resize(kept);
        };
        auto queue_copies = [&](bool wait) {
            if (float_out)
                queue_into(*float_out, wait);
            else if (pcm16_out)
                queue_into(*pcm16_out, wait);
        };
        if (pcm16_out && output.clip == ClipMode::Rescale)
            FD_CUDA(cudaMemsetAsync(peaks, 0, size_t(S) * sizeof(unsigned), copy_stream));
        auto download = [&](const Cut& cut, const ShiftStep& step, int64_t upto, cudaEvent_t ready) {
            upto = std::min(upto, L);
            if (upto <= done) return;
            float* dst = result ? result : view + cut.skip;
            FD_CUDA(cudaStreamWaitEvent(copy_stream, ready, 0));
            finish_shift(copy_stream, view, pitch, cut.skip, sum_weight, SC, done, upto, step, st, dst,
                         result_pitch);
            finished = dst;
            if (float_out) {
                for (int64_t row = 0; row < SC; row++)
                    waiting.push_back({dst + row * result_pitch + done, size_t(row * L + done), size_t(upto - done)});
            } else if (pcm16_out) {
                if (output.clip == ClipMode::Rescale)
                    stem_peaks(copy_stream, dst, int(S), C, done, upto - done, result_pitch, peaks);
                // Under rescale, provisional: the divisor 1 (null peaks).
                stems_to_pcm16(copy_stream, dst, int(S), C, result_pitch, done, upto - done, output.clip, nullptr,
                               pcm16, L);
                for (int64_t s = 0; s < S; s++) {
                    const size_t at = size_t((s * L + done) * C);
                    waiting.push_back({pcm16 + at, at, size_t((upto - done) * C)});
                }
            }
            queue_copies(false);
            done = upto;
        };

        Ctx ctx = ctx_;
        ctx.arena = &arena_;
        std::set<int> short_met;  // short batch sizes this track meets (short_batch_size)
        for (size_t s = 0; s < cuts.size(); s++) {
            const Cut& cut = cuts[s];
            g.view_start = cut.start;
            g.view_length = cut.length;
            ShiftStep step;
            step.shifts = params.shifts;
            step.first = s == 0;
            step.last = s + 1 == cuts.size();
            // (The view is not cleared: accumulate_chunks starts each position from its first chunk.)
            if (weighted) sum_weights(stream, g, weight_d, sum_weight);
            const int64_t jobs = g.jobs();
            int64_t pending = -1;  // track samples final after the previous batch (last shift)
            int slot = 0;
            for (int64_t first = 0; first < jobs; first += batch) {
                const int n = static_cast<int>(std::min<int64_t>(batch, jobs - first));
                const int run = n < batch && first > 0 ? short_batch_size(ctx, n, batch, short_met) : n;
                const Io io = alloc_io(ctx, run);
                gather_chunks(stream, track, C, g, first, n, io.in);
                timeline.mark("chunks " + std::to_string(first) + "+" + std::to_string(n) + " gathered", stream);
                run_forward(ctx, run);
                timeline.mark("forward of " + std::to_string(run), stream);
                accumulate_chunks(stream, io.out, SC, g, first, n, weighted ? weight_d : nullptr, view, pitch);
                if (step.last) {
                    FD_CUDA(cudaEventRecord(ready_[slot]->event, stream));
                    // The previous batch's region, while this batch runs.
                    if (pending >= 0) download(cut, step, pending, ready_[slot ^ 1]->event);
                    // View samples before the next chunk's start are final.
                    pending = first + n < jobs ? (first + n) * g.stride - cut.skip : L;
                    slot ^= 1;
                }
                progress.enqueued(n, stream);
            }
            if (step.last) {
                download(cut, step, pending, ready_[slot ^ 1]->event);
            } else {
                finish_shift(stream, view, pitch, cut.skip, sum_weight, SC, 0, L, step, st, result, L);
            }
        }
        short_batches_met_.insert(short_met.begin(), short_met.end());
        trace_point("cuda: every batch queued");
        timeline.mark("every batch done", stream);
        if (done != L) throw Error("internal error: the track was not finished whole");
        queue_copies(true);
        if (pcm16_out && output.clip == ClipMode::Rescale) {
            // The stems whose peak needs a divisor other than 1: converted
            // again, whole, and copied over their provisional copies. The
            // ring may still be reading the provisional values while the
            // conversion rewrites them (its copies are on a stream of its
            // own); what those copies land is overwritten by the whole
            // stem's, which the ring lands after them (jobs in order).
            std::vector<unsigned> peak_bits(size_t(S), 0u);
            FD_CUDA(cudaMemcpyAsync(peak_bits.data(), peaks, size_t(S) * sizeof(unsigned), cudaMemcpyDeviceToHost,
                                    copy_stream));
            FD_CUDA(cudaStreamSynchronize(copy_stream));
            for (int64_t s = 0; s < S; s++) {
                float peak = 0.0f;
                std::memcpy(&peak, &peak_bits[size_t(s)], sizeof(float));
                if (pcm::rescale_divisor(peak) == 1.0f) continue;
                stems_to_pcm16(copy_stream, finished + s * C * result_pitch, 1, C, result_pitch, 0, L,
                               ClipMode::Rescale, peaks + s, pcm16 + s * L * C, L);
                pcm16_out->copy_from_device(size_t(s * L * C), pcm16 + s * L * C, size_t(L * C));
            }
        }
        timeline.mark("every copy queued", copy_stream);
        FD_CUDA(cudaStreamSynchronize(copy_stream));
        FD_CUDA(cudaStreamSynchronize(stream));
        trace_point("cuda: streams synchronised");
        if (float_out) float_out->finish();  // the ring's copies landed (rethrows its failure)
        if (pcm16_out) pcm16_out->finish();
        timeline.print();
        trace_point("cuda: stems downloaded");
        if (float_out) float_out->release();
        if (pcm16_out) pcm16_out->release();
        trace_point("cuda: output unregistered");
        progress.flush();
        return true;
    }

    // ------------------------------------------------------------ memory, graphs

    // The workspace a forward of `batch` needs (its dry runs; kept by batch
    // size). With the time branch on its own stream (splits()), three dry
    // runs: one stream (the layout of forwards with taps or the profiler),
    // then the two stacks with the time branch's anywhere (their sum per
    // phase), then with it from the top of that (its fake addresses then in
    // the arena's range, for the prime of the recorded products).
    size_t measure(int batch) {
        // A tapped forward (tap_ set) stores the outputs that the others hand
        // to their consumers packed (decoder_packs_next, decoder_writes_spectrum):
        // its dry run is its own.
        std::map<int, size_t>& cache = tap_ ? measured_tapped_ : measured_;
        auto it = cache.find(batch);
        if (it != cache.end()) return it->second;
        Arena dry;
        Ctx ctx = ctx_;
        ctx.arena = &dry;
        ctx.dry = true;
        size_t need = 0;
        if (splits(ctx)) {
            dry.start_dry();
            const size_t one_stream = device_forward(ctx, batch, 0, false);
            dry.start_dry();
            need = std::max(one_stream, device_forward(ctx, batch, 0));
        }
        dry.start_dry();
        GemmRecord record;
        ctx.gemm_record = &record;
        need = std::max(need, device_forward(ctx, batch, need));
        if (!tap_) gemm_records_[batch] = std::move(record);
        if (trace_detailed())
            trace_point(("cuda: a forward of " + std::to_string(batch) + " needs " + std::to_string(need >> 20) +
                         " MiB of workspace")
                            .c_str());
        return cache[batch] = need;
    }

    void ensure_workspace(int batch) {
        const size_t need = measure(batch);
        if (cudnn_attention_) cudnn_attention_->prepare(batch);  // the shapes measure() met, planned in parallel
        if (workspace_.bytes() < need) resize_workspace(need, "batch " + std::to_string(batch));
        arena_.bind(workspace_.get(), workspace_.bytes());
    }

    void resize_workspace(size_t bytes, const std::string& what) {
        destroy_graphs();  // they point into the old workspace
        FD_CUDA(cudaStreamSynchronize(stream_->stream));
        workspace_.reset();
        arena_.bind(nullptr, 0);
        workspace_ = DeviceBuffer(bytes, what);
        arena_.bind(workspace_.get(), workspace_.bytes());
    }

    // The transition weights of (segment, power) on the device, kept for
    // the next track (their pow over a segment's 344 k samples took ~4 ms of
    // host time per track).
    const float* transition_weights(int64_t segment, double power) {
        if (transition_segment_ != segment || transition_power_ != power) {
            const std::vector<float> w = transition_weight(segment, power);
            transition_segment_ = -1;  // no stale key over a failed upload
            transition_.reset();
            DeviceBuffer values(w.size() * sizeof(float), "the transition weights");
            FD_CUDA(cudaMemcpyAsync(values.get(), w.data(), values.bytes(), cudaMemcpyHostToDevice, stream_->stream));
            FD_CUDA(cudaStreamSynchronize(stream_->stream));
            transition_ = std::move(values);
            transition_segment_ = segment, transition_power_ = power;
        }
        return transition_.as<float>();
    }

    // Chunks per forward for a whole track whose own buffers take
    // `track_bytes` (of which `track_held` already allocated, counted as
    // free): as max_batch() with that memory set aside, at most the
    // jobs of one view and params.batch_size. Sizes the workspace for it
    // (shrinking a larger one if the track's buffers need the room); 0 when
    // the buffers and one chunk do not fit (the caller takes the host path).
    int track_batch(size_t track_bytes, size_t track_held, int64_t max_jobs, int batch_size) {
        size_t free_b = 0, total_b = 0;
        device_memory(&free_b, &total_b);
        free_b += track_held;
        const size_t reserve = (size_t(256) << 20) + total_b / 50;
        const size_t avail = free_b + workspace_.bytes();
        const size_t one = measure(1);
        if (avail < reserve + track_bytes + one) return 0;
        const size_t room = avail - reserve - track_bytes;
        int64_t batch = per_chunk_ > 0 && room > fixed_ ? int64_t((room - fixed_) / per_chunk_) : 1;
        batch = std::min<int64_t>({batch, batch_cap_, max_jobs});
        if (batch_size > 0) batch = std::min<int64_t>(batch, batch_size);
        batch = std::max<int64_t>(batch, 1);
        while (batch > 1 && measure(int(batch)) > room) batch--;
        const size_t need = measure(int(batch));
        // Grow, or give back a larger workspace when the track's buffers need its memory.
        if (workspace_.bytes() < need || (workspace_.bytes() > need && free_b < track_bytes + reserve))
            resize_workspace(need, "batch " + std::to_string(batch));
        arena_.bind(workspace_.get(), workspace_.bytes());
        return int(batch);
    }

    // Reports finished batches to on_chunks one batch late, so the GPU
    // always has the next batch queued while the host waits.
    class ProgressPump {
    public:
        explicit ProgressPump(const std::function<void(int64_t)>& fn) : fn_(fn) {
            if (!fn_) return;
            for (auto& e : events_) FD_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
        }
        ~ProgressPump() {
            for (auto& e : events_)
                if (e) cudaEventDestroy(e);
        }
        ProgressPump(const ProgressPump&) = delete;
        ProgressPump& operator=(const ProgressPump&) = delete;
        void enqueued(int64_t n, cudaStream_t stream) {
            if (!fn_) return;
            FD_CUDA(cudaEventRecord(events_[head_], stream));
            counts_[head_] = n;
            head_ ^= 1;
            wait(head_);
        }
        void flush() {
            if (!fn_) return;
            wait(head_);
            wait(head_ ^ 1);
        }

    private:
        void wait(int slot) {
            if (counts_[slot] == 0) return;
            FD_CUDA(cudaEventSynchronize(events_[slot]));
            const int64_t n = counts_[slot];
            counts_[slot] = 0;
            fn_(n);
        }
        const std::function<void(int64_t)>& fn_;
        cudaEvent_t events_[2] = {nullptr, nullptr};
        int64_t counts_[2] = {0, 0};
        int head_ = 0;
    };

    // The forward of `batch` chunks already in the arena's input buffer:
    // eager on the first call of a batch size, captured on the second,
    // replayed after (taps always eager).
    void run_forward(const Ctx& ctx, int batch) {
        const bool use_graph = graphs_enabled_ && !tap_;
        if (use_graph && !graphs_.count(batch) && eager_done_.count(batch)) capture(ctx, batch);
        auto it = graphs_.find(batch);
        if (use_graph && it != graphs_.end()) {
            FD_CUDA(cudaGraphLaunch(it->second, ctx.stream));
        } else if (profiler_ && !tap_) {
            Ctx profiled = ctx;
            profiled.prof = profiler_.get();
            profiler_->begin_forward(ctx.stream, batch);
            device_forward(profiled, batch);
            profiler_->end_forward(ctx.stream);
            eager_done_.insert(batch);
        } else {
            device_forward(ctx, batch);
            eager_done_.insert(batch);
            if (trace_enabled()) trace_point(("cuda: eager forward of " + std::to_string(batch) + " queued").c_str());
        }
    }

    void destroy_graphs() {
        for (auto& kv : graphs_) cudaGraphExecDestroy(kv.second);
        graphs_.clear();
    }

    // The chunks a short last batch of n runs as (after full batches of
    // `batch`). In the first track of this process that meets n: as the
    // full batch, replaying its graph (the spare slots hold the previous
    // batch's chunks; items are independent and their outputs unused), since
    // an eager forward or a graph of n costs host time with the GPU waiting
    // (new GEMM shapes, cuDNN plans, the capture: ~0.1-0.4 s, against ~2 ms
    // of GPU time for 7 of 8 chunks). From the next track (a catalogue's) n
    // gets a graph of its own. `met`: the sizes this track has met (added
    // to short_batches_met_ when it ends, so a track's later shifts do not
    // count as a next track).
    int short_batch_size(const Ctx& ctx, int n, int batch, std::set<int>& met) {
        if (!graphs_enabled_ || tap_ || graphs_.count(n)) return n;
        if (!graphs_.count(batch)) return n;
        if (!short_batches_met_.count(n) || no_graph_.count(n)) {
            met.insert(n);
            return batch;
        }
        if (measure(n) > workspace_.bytes()) return batch;  // never expected: fewer chunks, less memory
        if (cudnn_attention_) cudnn_attention_->prepare(n);  // the shapes measure(n)'s dry run met
        // A capture that fails here leaves the other graphs on: n replays the full batch's.
        if (!capture(ctx, n, false)) {
            no_graph_.insert(n);
            return batch;
        }
        return n;
    }

    // The forward's matrix products at `batch` run once on the idle arena on
    // a few threads (cuda/gemm.h: prime_gemms), so that the capture finds
    // cuBLAS's kernels loaded. FASTDEMUCS_GEMM_PRIME: the threads (default 4,
    // 0 leaves the loads to the capture).
    GemmLeftovers prime_products(int batch) noexcept {
        try {
            const std::string wanted = env_string("FASTDEMUCS_GEMM_PRIME");
            const int threads = wanted.empty() ? kPrimeThreads : std::atoi(wanted.c_str());
            const auto record = gemm_records_.find(batch);
            const auto need = measured_.find(batch);
            if (threads <= 0 || record == gemm_records_.end() || need == measured_.end() ||
                workspace_.bytes() < need->second)
                return {};
            GemmLeftovers kept =
                prime_gemms(record->second, ctx_, device_, workspace_.get(), need->second, kCublasWorkspace, threads);
            if (trace_detailed())
                trace_point(("cuda: " + std::to_string(record->second.products.size()) + " products primed").c_str());
            return kept;
        } catch (const std::exception&) {
            return {};  // (the capture loads what is left)
        }
    }

    // Records the forward of `batch` chunks as a CUDA graph (nothing runs).
    // On failure false, and with `graphs_off_on_failure` graphs are off from
    // now on (the forward runs eagerly).
    bool capture(const Ctx& ctx, int batch, bool graphs_off_on_failure = true) {
        const cudaStream_t stream = ctx.stream;
        cudaGraph_t graph = nullptr;
        cudaGraphExec_t exec = nullptr;
        try {
            FD_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
            try {
                device_forward(ctx, batch);
            } catch (...) {
                cudaGraph_t partial = nullptr;
                cudaStreamEndCapture(stream, &partial);
                if (partial) cudaGraphDestroy(partial);
                cudaGetLastError();
                throw;
            }
            FD_CUDA(cudaStreamEndCapture(stream, &graph));
            if (trace_detailed())
                trace_point(("cuda: graph recorded (" + std::to_string(gemm_host_seconds()) +
                             " s in cuBLAS so far)").c_str());
            const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
            if (trace_detailed()) trace_point("cuda: graph instantiated");
            cudaGraphDestroy(graph);
            FD_CUDA(err);
        } catch (const Error& e) {
            // The eager path reports real errors itself.
            if (!graphs_off_on_failure) {
                trace_point(("cuda: no graph of " + std::to_string(batch) + " (" + e.what() + ")").c_str());
                return false;
            }
            std::fprintf(stderr, "fastdemucs: CUDA graph capture failed (%s); running without graphs\n", e.what());
            graphs_enabled_ = false;
            return false;
        }
        graphs_[batch] = exec;
        if (trace_enabled()) trace_point(("cuda: graph of " + std::to_string(batch) + " captured").c_str());
        return true;
    }

    // --------------------------------------------------------------- the forward

    Io alloc_io(const Ctx& ctx, int64_t B) const {
        const auto& cfg = model_->config;
        Arena& a = *ctx.arena;
        a.reset();
        Io io;
        io.in = a.alloc<float>(B * cfg.audio_channels * length_);
        io.out = a.alloc<float>(B * cfg.num_sources() * cfg.audio_channels * length_);
        return io;
    }

    // Whether the time branch's inner layers run on a stream of their own
    // (BranchStream), with buffers from a stack of their own growing down
    // from the top of the workspace (Arena), beside the frequency branch's.
    // Not with taps or the profiler (they want one order). A dry run splits
    // whatever the taps: the workspace it measures (kept by batch size) must
    // hold the split forwards too.
    bool splits(const Ctx& ctx) const { return branch_ && (ctx.dry || (!tap_ && !ctx.prof)); }
    // A model whose time branch has inner layers and meets the frequency
    // branch only in the transformer (not the older hybrid models' empty
    // time layer feeding the merge).
    bool branch_fits() const {
        const auto& plan = model_->plan;
        if (plan.tencoder.size() < 2) return false;
        for (const auto& t : plan.tencoder)
            if (t.empty) return false;
        for (const auto& t : plan.tdecoder)
            if (t.empty) return false;
        return true;
    }

    // Everything between upload and download; the same allocations in the
    // same order on every call. Returns the workspace it used (both stacks'
    // peaks summed per phase where the time branch splits off). `need`: the
    // workspace measure() found for B, where the time branch's stack starts
    // (0 in the dry run that first finds it: that stack then starts far
    // above the arena's fake addresses); `split` false keeps one stream.
    size_t device_forward(const Ctx& ctx, int64_t B) { return device_forward(ctx, B, measure(int(B))); }
    size_t device_forward(const Ctx& ctx, int64_t B, size_t need, bool split = true) {
        const auto& cfg = model_->config;
        Arena& arena = *ctx.arena;
        const Io io = alloc_io(ctx, B);
        arena.begin_phase();
        const int64_t C = cfg.audio_channels, S = cfg.num_sources(), L = length_;
        const int64_t T = spectral_->frames(), bins = spectral_->bins();

        DTensor x{arena.alloc<float>(B * 2 * C * bins * T), B, 2 * C, bins, T};
        profile_block(ctx, "stft + statistics");
        spectral_->stft(ctx, B, C, io.in, x.p);
        emit(ctx, "spec", x);
        double* spec_stats = arena.alloc<double>(2 * B);  // mean[B], std[B]
        Segments whole;
        whole.B = B, whole.W = 2 * C * bins * T;
        segment_stats(ctx, x.p, whole, Spread::UnbiasedStd, spec_stats, spec_stats + B);
        // Both inputs are normalised by their first encoders' im2col as it
        // reads them (InputNorm: one pass over each fewer), not here.
        double* spec_inv = arena.alloc<double>(B);
        inverse_std(ctx, spec_stats + B, B, spec_inv);
        const InputNorm spec_norm{spec_stats, spec_inv};

        DTensor xt{io.in, B, C, 1, L};
        double* time_stats = arena.alloc<double>(2 * B);
        whole.W = C * L;
        segment_stats(ctx, xt.p, whole, Spread::UnbiasedStd, time_stats, time_stats + B);
        double* time_inv = arena.alloc<double>(B);
        inverse_std(ctx, time_stats + B, B, time_inv);
        const InputNorm time_norm{time_stats, time_inv};

        // The time branch's inner layers: their own stack and stream.
        std::optional<Branch> time;
        if (split && splits(ctx)) {
            Ctx tctx = ctx;
            tctx.stream = branch_->stream.stream;
            tctx.blas = branch_->blas.handle;
            time.emplace(ctx, tctx, branch_->fork.event, branch_->join.event);
            if (ctx.dry)
                time->arena().start_dry(need ? arena.base() + need : Arena::dry_base() + (uint64_t(1) << 42), true);
            else if (need <= arena.capacity())
                time->arena().bind_down(arena.base() + need, need);
            else
                throw Error("internal error: a forward of " + std::to_string(B) + " outgrew the GPU workspace");
        } else {
            time.emplace(ctx);
        }

        SpectrumTarget spectrum;
        spectrum.stats = spec_stats;
        const bool direct = decoder_writes_spectrum(ctx);
        run_network(ctx, *time, x, xt, direct ? &spectrum : nullptr, spec_norm, time_norm);

        if (x.c != S * 2 * C || x.h != bins || x.w != T || xt.c != S * C || xt.h != 1 || xt.w != L)
            throw Error("internal error: unexpected output shapes of the network");
        profile_block(ctx, "istft + sum");
        if (direct)
            spectral_->istft_add_spectrum(ctx, B, S * C, spectrum.spec, xt.p, time_stats, io.out);
        else
            spectral_->istft_add(ctx, B, S * C, x.p, spec_stats, xt.p, time_stats, io.out);
        time->finish();
        return time->used();
    }

    // The last frequency decoder writing the iSTFT's input itself
    // (decoder_spectrum, else Spectral::spectrum_from_columns from its
    // columns): its output z is then never stored.
    struct SpectrumTarget {
        const double* stats = nullptr;  // the spectrogram's {mean[B], std[B]}
        cufftComplex* spec = nullptr;   // allocated by decoder_layer where z would be
    };
    // Where that applies: a plain transposed convolution (no GroupNorm after
    // it), no taps (they read z).
    bool decoder_writes_spectrum(const Ctx& ctx) const {
        const auto& decoders = model_->plan.decoder;
        if (!ctx.decoder_writes_spectrum || tap_ || decoders.empty()) return false;
        const DecoderLayerPlan& d = decoders.back();
        return d.freq && d.last && !d.norm && spectral_->spectrum_from_columns_fits(d.kernel, d.stride);
    }

    // A frequency decoder's transposed conv as freq_transposed.h's kernels
    // take it (its input's operand copy from the DConv); null where they do not.
    std::optional<FreqTransposedArgs> freq_transposed_args(const Ctx& ctx, const DTensor& x, const ConvWeight& tw,
                                                           const DecoderLayerPlan& d, const Planes& y_operand,
                                                           int64_t h0, int64_t rows) const {
        if (!ctx.freq_transposed_mma || !y_operand.p || y_operand.type != ctx.gemm || tw.kw != 1 || !d.freq)
            return std::nullopt;
        FreqTransposedArgs a;
        a.x = y_operand.p, a.ld = y_operand.ld, a.weight = tw.w, a.bias = tw.bias;
        a.B = x.b, a.H = x.h, a.T = x.w, a.rows = rows;
        a.cin = tw.cin, a.cout = tw.cout, a.kh = tw.kh, a.sh = d.stride, a.h0 = int(h0);
        return a;
    }

    // A frequency decoder writing the next one's rewrite input as conv_glu's
    // packed operand (conv_glu.h pack_columns): its output z is then never
    // stored, and the next decoder's skip is added there.
    struct PackedInput {
        const float* skip = nullptr;  // the next decoder's skip [B, C, Hc, W]
        void* xp = nullptr;           // allocated by decoder_layer where z would be
    };
    // Where that applies: d a plain frequency transposed conv with GELU (no
    // norm, not the last), next a frequency decoder whose rewrite conv_glu
    // takes; no taps (they read z).
    // The same between two decoders along W (ctx.pack_time_columns: the time branch's): d's transposed
    // conv of kernel 8, stride 4 (pack_columns_w), next's 1 x k rewrite on conv_glu.
    bool decoder_packs_next(const Ctx& ctx, const DecoderLayerPlan& d, const DecoderLayerPlan& next) const {
        if (tap_ || ctx.gemm == DType::F32 || d.freq != next.freq || d.norm || d.last || d.empty || next.empty ||
            !next.rewrite_kernel || next.norm)
            return false;
        ConvGeom g;
        g.pw = next.rewrite_kernel / 2;
        if (!d.freq)
            return ctx.pack_time_columns && d.kernel == 8 && d.stride == 4 &&
                   conv_glu_takes(ctx, conv_weight(next.prefix + "rewrite.", 1, next.rewrite_kernel), g) &&
                   pack_columns_w_fits(ctx, d.chout);
        g.ph = next.rewrite_kernel / 2;
        return ctx.pack_from_columns &&
               conv_glu_takes(ctx, conv_weight(next.prefix + "rewrite.", next.rewrite_kernel, next.rewrite_kernel), g) &&
               pack_columns_fits(ctx, d.chout, spectral_->frames());
    }

    // ctx: the frequency branch's and the shared layers'; time.ctx: the
    // time branch's inner layers' (device_forward). Its stream is forked
    // from ctx's after the first time encoder and after the transformer, and
    // joined back before the transformer and the outermost frequency
    // decoder. The outermost layers run on ctx, one after the other: the
    // outermost decoders are where the workspace peaks (with the time
    // branch's outer layers on its stream the workspace grew by ~0.2-0.3
    // GiB), and their kernels fill the GPU anyway (measured: no slower).
    // x and xt: the spectrogram and the mix before their normalisation (x_norm, xt_norm), which the
    // first encoders apply as they read them.
    void run_network(const Ctx& ctx, Branch& time, DTensor& x, DTensor& xt, SpectrumTarget* spectrum,
                     const InputNorm& x_norm, const InputNorm& xt_norm) {
        const auto& plan = model_->plan;
        const auto& cfg = model_->config;
        std::vector<DTensor> saved, saved_t;
        std::vector<int64_t> lengths, lengths_t;
        const Ctx& tctx = time.ctx();
        // The context of time layer `layer` (0 outermost) of an encoder or decoder.
        auto time_ctx = [&](size_t layer) -> const Ctx& { return layer > 0 ? tctx : ctx; };
        for (size_t idx = 0; idx < plan.encoder.size(); idx++) {
            lengths.push_back(x.w);
            const DTensor* inject = nullptr;
            DTensor injected;
            if (idx < plan.tencoder.size()) {
                const auto& tenc = plan.tencoder[idx];
                lengths_t.push_back(xt.w);
                profile_block(ctx, "tencoder." + std::to_string(idx));
                xt = encoder_layer(time_ctx(idx), tenc, xt, nullptr, nullptr, nullptr, idx == 0 ? &xt_norm : nullptr);
                if (idx == 0) time.fork();
                emit(ctx, "tencoder." + std::to_string(idx), xt);
                if (!tenc.empty) {
                    saved_t.push_back(xt);
                } else {
                    injected = xt;
                    inject = &injected;
                }
            }
            profile_block(ctx, "encoder." + std::to_string(idx));
            // The frequency embedding after the first encoder: added by its
            // rewrite's GLU pass where that takes it (no pass of its own),
            // never where a tap reads the encoder's output without it.
            FreqEmbedding emb;
            const bool embeds = idx == 0 && plan.freq_emb_rows;
            if (embeds) {
                emb.table = weights_->f32("freq_emb.embedding.weight");
                emb.F = plan.freq_emb_rows, emb.T = x.w;  // (T checked below, once the encoder has run)
                emb.k = float(cfg.freq_emb), emb.s = float(cfg.emb_scale);
            }
            bool emb_added = false;
            x = encoder_layer(ctx, plan.encoder[idx], x, inject, embeds && !tap_ && ctx.fuse_freq_embedding ? &emb : nullptr,
                              &emb_added, idx == 0 ? &x_norm : nullptr);
            emit(ctx, "encoder." + std::to_string(idx), x);  // (with a tap the embedding comes after)
            if (embeds) {
                if (x.h != plan.freq_emb_rows || x.c != plan.freq_emb_dim || x.w != emb.T)
                    throw Error("internal error: frequency embedding shape");
                if (!emb_added) add_freq_embedding(ctx, x.p, x.b, x.c, emb);
            }
            saved.push_back(x);
        }
        time.join();

        if (cfg.t_layers > 0) {
            const int64_t B = x.b, F = x.h, T = x.w;
            if (plan.bottom) {
                profile_block(ctx, "channel_upsamplers");
                x = conv1x1(ctx, DTensor{x.p, B, x.c, 1, F * T}, "channel_upsampler.");
                emit(ctx, "channel_upsampler", x);
                x = DTensor{x.p, B, x.c, F, T};
                xt = conv1x1(ctx, xt, "channel_upsampler_t.");
                emit(ctx, "channel_upsampler_t", xt);
            }
            if (!plan.bottom) {
                // x and xt are also the last skip connections: the transformer works on copies.
                DTensor xc = alloc(ctx, x.b, x.c, x.h, x.w), xtc = alloc(ctx, xt.b, xt.c, xt.h, xt.w);
                copy(ctx, xc.p, x.p, x.numel());
                copy(ctx, xtc.p, xt.p, xt.numel());
                x = xc, xt = xtc;
            }
            if (!transformer_) transformer_ = std::make_unique<CrossTransformer>(*model_, *weights_, F, T, xt.w);
            if (!transformer_->matches(F, T, xt.w)) throw Error("internal error: transformer shapes changed");
            if (x.c != plan.transformer_dim || xt.c != plan.transformer_dim || xt.h != 1)
                throw Error("internal error: transformer input shapes");
            if (branch_transformer_) {
                transformer_->run(ctx, time, B, x.p, xt.p);
            } else {
                Branch one_stream(ctx);
                transformer_->run(ctx, one_stream, B, x.p, xt.p);
            }
            emit(ctx, "crosstransformer.0", x);
            if (plan.bottom) {
                profile_block(ctx, "channel_downsamplers");
                x = conv1x1(ctx, DTensor{x.p, B, x.c, 1, F * T}, "channel_downsampler.");
                emit(ctx, "channel_downsampler", x);
                x = DTensor{x.p, B, x.c, F, T};
                xt = conv1x1(ctx, xt, "channel_downsampler_t.");
                emit(ctx, "channel_downsampler_t", xt);
            }
        }

        time.fork();
        const size_t offset = plan.decoder.size() - plan.tdecoder.size();
        PackedInput packed_input;  // this decoder's input, packed by the previous one (or none)
        PackedInput packed_input_t;  // the same for the time decoders
        for (size_t idx = 0; idx < plan.decoder.size(); idx++) {
            DTensor skip = saved.back();
            saved.pop_back();
            const bool t_here = idx >= offset;
            const bool need_pre = t_here && plan.tdecoder[idx - offset].empty;
            DTensor pre;
            profile_block(ctx, "decoder." + std::to_string(idx));
            const bool last = idx + 1 == plan.decoder.size();
            if (last) time.join();
            // The next frequency decoder's packed rewrite input made by this one (PackedInput).
            PackedInput next_input;
            if (!need_pre && !last && decoder_packs_next(ctx, plan.decoder[idx], plan.decoder[idx + 1]))
                next_input.skip = saved.back().p;
            x = decoder_layer(ctx, plan.decoder[idx], x, &skip, lengths.back(), need_pre ? &pre : nullptr,
                              last ? spectrum : nullptr, packed_input.xp, next_input.skip ? &next_input : nullptr);
            packed_input = next_input;
            lengths.pop_back();
            emit(ctx, "decoder." + std::to_string(idx) + ".0", x);
            if (t_here) {
                const auto& tdec = plan.tdecoder[idx - offset];
                const int64_t length_t = lengths_t.back();
                lengths_t.pop_back();
                profile_block(ctx, "tdecoder." + std::to_string(idx - offset));
                if (tdec.empty) {
                    // The frequency branch is down to one row: it feeds the time decoder.
                    if (pre.h != 1) throw Error("internal error: empty time decoder input has several rows");
                    xt = decoder_layer(ctx, tdec, pre, nullptr, length_t, nullptr);
                } else {
                    DTensor skip_t = saved_t.back();
                    saved_t.pop_back();
                    const Ctx& layer_ctx = time_ctx(plan.tdecoder.size() - 1 - (idx - offset));
                    // The next time decoder's packed rewrite input made by this one.
                    PackedInput next_t;
                    const size_t t_idx = idx - offset;
                    if (t_idx + 1 < plan.tdecoder.size() && !saved_t.empty() &&
                        decoder_packs_next(layer_ctx, tdec, plan.tdecoder[t_idx + 1]))
                        next_t.skip = saved_t.back().p;
                    xt = decoder_layer(layer_ctx, tdec, xt, &skip_t, length_t, nullptr, nullptr, packed_input_t.xp,
                                       next_t.skip ? &next_t : nullptr);
                    packed_input_t = next_t;
                }
                emit(ctx, "tdecoder." + std::to_string(idx - offset) + ".0", xt);
            }
        }
        time.join();
    }

    // ------------------------------------------------------------------- layers

    DTensor alloc(const Ctx& ctx, int64_t b, int64_t c, int64_t h, int64_t w) const {
        return DTensor{ctx.arena->alloc<float>(b * c * h * w), b, c, h, w};
    }

    // Weights of a convolution [cout, cin, kh, kw] (or [cout, cin, k] seen as [1, k]).
    ConvWeight conv_weight(const std::string& prefix, int kh, int kw) const {
        const std::string name = prefix + "weight";
        const auto& shape = weights_->shape(name);
        ConvWeight w;
        w.cout = int(shape[0]), w.cin = int(shape[1]), w.kh = kh, w.kw = kw;
        int64_t n = 1;
        for (auto d : shape) n *= d;
        if (n != int64_t(w.cout) * w.cin * kh * kw) throw Error("internal error: kernel size of " + name);
        w.w = weights_->gemm(name);
        if (weights_->has_taps(name)) w.taps = weights_->taps(name);
        w.bias = weights_->f32(prefix + "bias");
        w.biased = weights_->biased(name);
        w.w32 = weights_->f32(name);
        return w;
    }

    // Weights of a transposed convolution, stored [cin, cout, kh, kw].
    ConvWeight conv_tr_weight(const std::string& prefix, int kh, int kw) const {
        const std::string name = prefix + "weight";
        const auto& shape = weights_->shape(name);
        ConvWeight w;
        w.cin = int(shape[0]), w.cout = int(shape[1]), w.kh = kh, w.kw = kw;
        int64_t n = 1;
        for (auto d : shape) n *= d;
        if (n != int64_t(w.cout) * w.cin * kh * kw) throw Error("internal error: kernel size of " + name);
        w.w = weights_->gemm(name);
        w.bias = weights_->f32(prefix + "bias");
        return w;
    }

    static ConvWeight without_bias(ConvWeight w) {
        w.bias = nullptr;
        w.biased = nullptr;
        return w;
    }

    DTensor conv1x1(const Ctx& ctx, const DTensor& x, const std::string& prefix) const {
        const ConvWeight w = conv_weight(prefix, 1, 1);
        DTensor y = alloc(ctx, x.b, w.cout, x.h, x.w);
        conv2d(ctx, x, x.w, w, ConvGeom{}, y, Act::None);
        return y;
    }

    static Segments groups_of(const DTensor& t, int groups) {
        Segments s;
        s.B = t.b, s.C = t.c, s.G = groups, s.R = 1, s.W = t.h * t.w;
        return s;
    }
    static Segments rows_of(const DTensor& t) {
        Segments s;
        s.B = t.b, s.C = t.c, s.G = 1, s.R = t.h, s.W = t.w;
        return s;
    }

    // The thin DConv path's per-layer tables (cuda/dconv.h: the statistics
    // form, the in-convolution's weights and the tensor-core apply's B
    // fragments as their kernels read them), from
    // the host weights once per backend, for every residual layer of the
    // plan's DConvs that the fused path takes.
    void upload_dconv_tables() {
        std::vector<double> grams;
        std::vector<float> tables;
        auto add = [&](const std::string& prefix, const DConvPlan& d) {
            if (!d.present || !dconv_layer_thin_fits(d.channels, d.hidden)) return;
            for (size_t i = 0; i < d.dilations.size(); i++) {
                const std::string p = prefix + "dconv.layers." + std::to_string(i) + ".";
                const std::vector<double> gram = dconv_out_gram(model_->weight(p + "3.weight").data.data(),
                                                                model_->weight(p + "3.bias").data.data(), d.hidden,
                                                                2 * d.channels);
                const std::vector<float> table =
                    dconv_in_table(model_->weight(p + "0.weight").data.data(), d.hidden, d.channels);
                const std::vector<uint32_t> fragments =
                    dconv_out_fragments(model_->weight(p + "3.weight").data.data(), d.hidden, 2 * d.channels);
                const std::vector<uint32_t> in_fragments =
                    dconv_in_fragments(model_->weight(p + "0.weight").data.data(), d.hidden, d.channels);
                DConvTables& at = dconv_offsets_[p];
                at.gram = int64_t(grams.size());
                grams.insert(grams.end(), gram.begin(), gram.end());
                at.in_table = int64_t(tables.size());
                tables.insert(tables.end(), table.begin(), table.end());
                tables.resize((tables.size() + 3) / 4 * 4);  // each table on 16 bytes
                // The fragment tables' bits, in the same buffer (-1: none).
                auto append_bits = [&](const std::vector<uint32_t>& bits) {
                    if (bits.empty()) return int64_t(-1);
                    const int64_t offset = int64_t(tables.size());
                    tables.resize(tables.size() + bits.size());
                    std::memcpy(tables.data() + offset, bits.data(), bits.size() * sizeof(uint32_t));
                    return offset;
                };
                at.fragments = append_bits(fragments);
                at.in_fragments = append_bits(in_fragments);
            }
        };
        const ModelPlan& plan = model_->plan;
        for (const auto* layers : {&plan.encoder, &plan.tencoder})
            for (const EncoderLayerPlan& e : *layers) add(e.prefix, e.dconv);
        for (const auto* layers : {&plan.decoder, &plan.tdecoder})
            for (const DecoderLayerPlan& e : *layers) add(e.prefix, e.dconv);
        if (grams.empty()) return;
        grams_ = upload(grams.data(), grams.size() * sizeof(double), "the DConv statistics forms");
        in_tables_ = upload(tables.data(), tables.size() * sizeof(float), "the DConv weight tables");
    }

    // The float32 weights of DConv residual layer `p` for cuda/dconv.h.
    DConvLayerWeights thin_dconv_weights(const DConvPlan& d, const std::string& p, int dilation) const {
        const std::vector<int64_t> in_shape = {d.hidden, d.channels, 3}, out_shape = {2 * d.channels, d.hidden, 1};
        if (weights_->shape(p + "0.weight") != in_shape || weights_->shape(p + "3.weight") != out_shape)
            throw Error("internal error: DConv weight shapes of " + p);
        DConvLayerWeights w;
        w.channels = d.channels, w.hidden = d.hidden, w.dilation = dilation;
        w.in_bias = weights_->f32(p + "0.bias");
        w.in_norm_weight = weights_->f32(p + "1.weight"), w.in_norm_bias = weights_->f32(p + "1.bias");
        w.out_weight = weights_->f32(p + "3.weight"), w.out_bias = weights_->f32(p + "3.bias");
        w.out_norm_weight = weights_->f32(p + "4.weight"), w.out_norm_bias = weights_->f32(p + "4.bias");
        w.scale = weights_->f32(p + "6.scale");
        const auto at = dconv_offsets_.find(p);
        if (at == dconv_offsets_.end()) throw Error("internal error: no DConv tables for " + p);
        w.out_gram = grams_.as<double>() + at->second.gram;
        w.in_table = in_tables_.as<float>() + at->second.in_table;
        auto bits = [&](int64_t offset) {
            return offset < 0 ? nullptr : reinterpret_cast<const uint32_t*>(in_tables_.as<float>() + offset);
        };
        w.out_fragments = bits(at->second.fragments);
        w.in_fragments = bits(at->second.in_fragments);
        return w;
    }

    // DConv: residual branches over time, every frequency row on its own.
    // Thin layers (hidden <= 32) take cuda/dconv.h's three passes; the
    // others im2col / GEMM convolutions and the norm kernels.
    // x through the DConv's residual layers (in place). `copy` (or null): the
    // result also as the next layer's GEMM operand (see Planes), written by the
    // last layer's apply pass where it can, else converted at the end.
    void dconv(const Ctx& ctx, const DConvPlan& d, const std::string& prefix, const DTensor& x,
               const Planes* copy = nullptr) const {
        if (x.c != d.channels) throw Error("internal error: DConv channels");
        const int depth = int(d.dilations.size());
        // (dconv_layer_thin_fits: the layers whose tables upload_dconv_tables made)
        // With the three passes' convolutions on the tensor cores (float16 /
        // bfloat16) the float32 row-resident kernel, on CUDA cores, is the
        // slower one (whole track 0.1070 / 0.1074 -> 0.1066 / 0.1060 s without
        // it, H200 A/B): there the tensor-core row-resident kernel serves.
        bool tensor_cores = true;
        for (int dilation : d.dilations)
            tensor_cores = tensor_cores && dconv_tensor_cores_take(ctx, d.channels, d.hidden, dilation);
        const bool thin = ctx.thin_dconv && dconv_layer_thin_fits(d.channels, d.hidden);
        const bool rows = thin && ctx.dconv_rows;
        std::vector<DConvLayerWeights> layers;
        if (thin)
            for (int i = 0; i < depth; i++)
                layers.push_back(thin_dconv_weights(d, prefix + "dconv.layers." + std::to_string(i) + ".",
                                                    d.dilations[size_t(i)]));
        // The tensor-core row-resident kernel where the row fits (the
        // frequency branch's outer DConvs), else the three passes.
        if (rows && tensor_cores && dconv_rows_tc_fit(ctx, layers.data(), depth, x.w)) {
            dconv_rows_tc(ctx, layers.data(), depth, x.p, x.b, x.h, x.w, copy);
            return;
        }
        if (rows && !tensor_cores && dconv_rows_fit(d.channels, d.hidden, x.w, depth)) {
            dconv_rows(ctx, layers.data(), depth, x.p, x.b, x.h, x.w);
            if (copy) convert_rows(ctx, x.p, copy->p, copy->type, x.b * x.c, x.h * x.w, copy->ld);
            return;
        }
        bool copied = false;
        for (size_t i = 0; i < d.dilations.size(); i++) {
            const std::string p = prefix + "dconv.layers." + std::to_string(i) + ".";
            if (thin) {
                const bool last = i + 1 == d.dilations.size();
                dconv_layer_thin(ctx, layers[i], x.p, x.b, x.h, x.w, last ? copy : nullptr);
                copied = last && copy;
                continue;
            }
            ArenaScope scope(*ctx.arena);
            ConvGeom g;
            g.dw = d.dilations[i], g.pw = d.dilations[i];
            // The convolutions' biases are folded into the norms that follow them.
            DTensor h = alloc(ctx, x.b, d.hidden, x.h, x.w);
            const ConvWeight w0 = conv_weight(p + "0.", 1, 3);
            conv2d(ctx, x, x.w, without_bias(w0), g, h, Act::None);
            group_norm(ctx, h.p, rows_of(h), weights_->f32(p + "1.weight"), weights_->f32(p + "1.bias"), 1e-5f,
                       Act::Gelu, w0.bias);
            DTensor y = alloc(ctx, x.b, 2 * d.channels, x.h, x.w);
            const ConvWeight w3 = conv_weight(p + "3.", 1, 1);
            conv2d(ctx, h, h.w, without_bias(w3), ConvGeom{}, y, Act::None);
            group_norm_glu_residual(ctx, y.p, x.p, x.b, x.c, x.h, x.w, weights_->f32(p + "4.weight"),
                                    weights_->f32(p + "4.bias"), 1e-5f, w3.bias, weights_->f32(p + "6.scale"));
        }
        if (copy && !copied) convert_rows(ctx, x.p, copy->p, copy->type, x.b * x.c, x.h * x.w, copy->ld);
    }

    // A GEMM operand buffer for x's shape (float16 / bfloat16 planes of operand_ld) from the arena.
    Planes operand_planes(const Ctx& ctx, const DTensor& x) const {
        const int64_t ld = operand_ld(ctx, x.h * x.w);
        return {ctx.arena->alloc_bytes(size_t(x.b * x.c * ld) * dtype_bytes(ctx.gemm)), ctx.gemm, ld};
    }

    // rewrite conv -> norm -> GLU into out (chout channels). Square kernel over (F, T) in the frequency branch.
    // `skip` (the decoders' skip connection, or null) is added to x first; x may change.
    // x_operand (or null): x as a GEMM operand already, for a pointwise rewrite (see conv2d_glu).
    // x_packed (or null): x + skip already packed for conv_glu (PackedInput).
    // emb (or null): a frequency embedding added to out; returns whether it
    // was (the GLU's pass adds it; conv_glu's paths do not).
    bool rewrite(const Ctx& ctx, bool freq, int kernel, bool norm, int groups, const std::string& prefix,
                 const std::string& norm_name, const DTensor& x, const float* skip, const DTensor& out,
                 const void* x_operand = nullptr, const void* x_packed = nullptr,
                 const FreqEmbedding* emb = nullptr) const {
        ArenaScope scope(*ctx.arena);
        ConvGeom g;
        g.pw = kernel / 2;
        if (freq) g.ph = kernel / 2;
        const ConvWeight w = conv_weight(prefix + "rewrite.", freq ? kernel : 1, kernel);
        if (x_packed) {
            if (norm || !conv_glu_takes(ctx, w, g)) throw Error("internal error: rewrite: a packed input conv_glu declines");
            conv_glu_packed(ctx, x_packed, x, w, out);
            return false;
        }
        if (skip && x_operand) throw Error("internal error: rewrite: the skip would leave x's operand stale");
        if (!norm && conv_glu_takes(ctx, w, g)) {
            conv_glu(ctx, x, skip, w, out);
            return false;
        }
        if (skip) add(ctx, x.p, skip, x.numel());
        int64_t Ho = 0, Wo = 0;
        conv_output_size(x.h, x.w, w, g, &Ho, &Wo);
        if (!norm && conv2d_glu(ctx, x, w, g, out, x_operand, emb)) return true;
        DTensor y = alloc(ctx, x.b, w.cout, Ho, Wo);
        // The convolution's bias goes to the norm or the GLU (no pass of its own).
        conv2d(ctx, x, x.w, without_bias(w), g, y, Act::None);
        if (norm)
            group_norm(ctx, y.p, groups_of(y, groups), weights_->f32(prefix + norm_name + "weight"),
                       weights_->f32(prefix + norm_name + "bias"), 1e-5f, Act::None, w.bias);
        if (out.c * 2 != y.c || out.h != Ho || out.w != Wo || out.b != y.b)
            throw Error("internal error: rewrite output shape");
        glu(ctx, y.p, DType::F32, 0, out.p, y.b, out.c, Ho * Wo, norm ? nullptr : w.bias, emb);
        return true;
    }

    // `emb` (or null): a frequency embedding to add to the output; *emb_added
    // says whether the layer's last pass added it (else the caller must).
    // in_norm (or null): x is the model's input before its normalisation (conv2d's in_norm).
    DTensor encoder_layer(const Ctx& ctx, const EncoderLayerPlan& e, const DTensor& x, const DTensor* inject,
                          const FreqEmbedding* emb = nullptr, bool* emb_added = nullptr,
                          const InputNorm* in_norm = nullptr) const {
        if (emb_added) *emb_added = false;
        ConvGeom g;
        int64_t Wl = x.w;
        if (e.freq) {
            g.sh = e.stride, g.ph = e.pad;
        } else {
            g.sw = e.stride, g.pw = e.pad;
            if (x.w % e.stride != 0) Wl = x.w + e.stride - x.w % e.stride;  // zero-pad the time axis to the stride
        }
        const ConvWeight w = conv_weight(e.prefix + "conv.", e.freq ? e.kernel : 1, e.freq ? 1 : e.kernel);
        if (w.cin != x.c || w.cout != e.chout) throw Error("internal error: " + e.prefix + " channels");
        int64_t Ho = 0, Wo = 0;
        conv_output_size(x.h, Wl, w, g, &Ho, &Wo);
        DTensor out = alloc(ctx, x.b, e.chout, Ho, Wo);
        ArenaScope scope(*ctx.arena);
        const bool fuse_gelu = !e.empty && !inject && !e.norm;
        const bool rewrites = !e.empty && e.rewrite_kernel;
        DTensor y = rewrites ? alloc(ctx, x.b, e.chout, Ho, Wo) : out;
        conv2d(ctx, x, Wl, w, g, y, fuse_gelu ? Act::Gelu : Act::None, in_norm);
        if (e.empty) return out;
        if (inject) {
            if (inject->b != y.b || inject->c != y.c || inject->h != 1 || inject->w != y.w)
                throw Error("internal error: injected time branch shape");
            add_rows(ctx, y.p, inject->p, y.b * y.c, y.h, y.w);
        }
        if (e.norm) {
            group_norm(ctx, y.p, groups_of(y, e.norm_groups), weights_->f32(e.prefix + "norm1.weight"),
                       weights_->f32(e.prefix + "norm1.bias"), 1e-5f, Act::Gelu);
        } else if (!fuse_gelu) {
            gelu(ctx, y.p, y.numel());
        }
        // A pointwise rewrite's GEMM (conv2d_glu) reads the DConv's output: the DConv writes that operand too.
        Planes y_operand;
        if (e.dconv.present) {
            const bool copy = rewrites && e.rewrite_kernel == 1 && !e.norm &&
                              conv2d_glu_takes(ctx, conv_weight(e.prefix + "rewrite.", 1, 1), ConvGeom{});
            if (copy) y_operand = operand_planes(ctx, y);
            dconv(ctx, e.dconv, e.prefix, y, copy ? &y_operand : nullptr);
        }
        if (rewrites) {
            const bool added = rewrite(ctx, e.freq, e.rewrite_kernel, e.norm, e.norm_groups, e.prefix, "norm2.", y,
                                       nullptr, out, y_operand.p, nullptr, emb);
            if (emb_added) *emb_added = added && emb;
        }
        return out;
    }

    // Returns z; `pre` (if given) receives the input of the transposed conv,
    // which then stays allocated. `spectrum` (or null): the transposed conv's
    // columns go to the iSTFT's input instead (SpectrumTarget; z.p is then null).
    // `x_packed` (or null): x + skip already packed for the rewrite by the
    // previous decoder (x.p then unused); `packed` (or null): this decoder's
    // output goes to the next one's packed input instead (PackedInput; z.p
    // is then null).
    DTensor decoder_layer(const Ctx& ctx, const DecoderLayerPlan& d, const DTensor& x, const DTensor* skip,
                          int64_t length, DTensor* pre, SpectrumTarget* spectrum = nullptr,
                          const void* x_packed = nullptr, PackedInput* packed = nullptr) const {
        const int kh = d.freq ? d.kernel : 1, kw = d.freq ? 1 : d.kernel;
        const int sh = d.freq ? d.stride : 1, sw = d.freq ? 1 : d.stride;
        const ConvWeight tw = conv_tr_weight(d.prefix + "conv_tr.", kh, kw);
        if (tw.cin != x.c || tw.cout != d.chout) throw Error("internal error: " + d.prefix + " channels");
        const int64_t Hf = (x.h - 1) * sh + kh, Wf = (x.w - 1) * sw + kw;
        int64_t h0 = 0, Hc = Hf, w0 = 0, Wc = Wf;
        if (d.freq) {
            h0 = d.pad, Hc = Hf - 2 * d.pad;
        } else {
            w0 = d.pad, Wc = length;
            if (w0 + Wc > Wf) throw Error("internal error: " + d.prefix + " output shorter than the skip length");
        }
        DTensor z;
        if (spectrum) {
            if (!d.freq || d.norm || !d.last || pre || kw != 1 || sw != 1 || Hc != spectral_->bins() ||
                x.w != spectral_->frames() || Wc != x.w || d.chout % 2 != 0)
                throw Error("internal error: " + d.prefix + " cannot write the iSTFT's input");
            spectrum->spec = spectral_->alloc_spectrum(ctx, x.b, d.chout / 2);
            z = DTensor{nullptr, x.b, d.chout, Hc, Wc};
        } else if (packed) {
            const bool fits = d.freq ? kw == 1 && sw == 1 && Wc == x.w && pack_columns_fits(ctx, d.chout, Wc)
                                     : kh == 1 && sh == 1 && x.h == 1 && kw == 8 && sw == 4 &&
                                           pack_columns_w_fits(ctx, d.chout);
            if (!fits || d.norm || d.last || pre)
                throw Error("internal error: " + d.prefix + " cannot write the next decoder's packed input");
            packed->xp = ctx.arena->alloc_bytes(conv_glu_packed_bytes(ctx, x.b, d.chout, Hc * Wc));
            z = DTensor{nullptr, x.b, d.chout, Hc, Wc};
        } else {
            z = alloc(ctx, x.b, d.chout, Hc, Wc);
        }
        const bool rewrites = !d.empty && d.rewrite_kernel;
        // The rewritten input outlives this call only when it is asked for.
        DTensor y = x;
        if (rewrites && pre) y = alloc(ctx, x.b, x.c, x.h, x.w);
        ArenaScope scope(*ctx.arena);
        if (rewrites && !pre) y = alloc(ctx, x.b, x.c, x.h, x.w);
        // The transposed conv's GEMM reads the DConv's output: the DConv writes that operand too.
        Planes y_operand;
        if (!d.empty) {
            if (!skip || skip->numel() != x.numel()) throw Error("internal error: " + d.prefix + " skip shape");
            if (x_packed && !rewrites) throw Error("internal error: " + d.prefix + " packed input without a rewrite");
            if (rewrites)
                rewrite(ctx, d.freq, d.rewrite_kernel, d.norm, d.norm_groups, d.prefix, "norm1.", x, skip->p, y,
                        nullptr, x_packed);
            else
                add(ctx, x.p, skip->p, x.numel());
            if (d.dconv.present) {
                if (ctx.gemm != DType::F32) y_operand = operand_planes(ctx, y);
                dconv(ctx, d.dconv, d.prefix, y, y_operand.p ? &y_operand : nullptr);
            }
        }
        const Act act = d.last ? Act::None : Act::Gelu;
        const std::optional<FreqTransposedArgs> ft = freq_transposed_args(ctx, x, tw, d, y_operand, h0, Hc);
        if (d.norm) {
            // GroupNorm sees the untrimmed output.
            DTensor full = alloc(ctx, x.b, d.chout, Hf, Wf);
            conv_transpose2d(ctx, y, tw, sh, sw, 0, 0, full, Act::None, y_operand.p);
            group_norm(ctx, full.p, groups_of(full, d.norm_groups), weights_->f32(d.prefix + "norm2.weight"),
                       weights_->f32(d.prefix + "norm2.bias"), 1e-5f, Act::None);
            crop_act(ctx, full.p, z.p, full.b * full.c, Hf, Wf, h0, Hc, w0, Wc, act);
        } else if (spectrum && ft && decoder_spectrum_fits(ctx, *ft)) {
            decoder_spectrum(ctx, *ft, spectrum->stats, spectrum->spec);
        } else if (packed && ft && act == Act::Gelu && decoder_packed_fits(ctx, *ft)) {
            decoder_packed(ctx, *ft, packed->skip, packed->xp);
        } else if (spectrum) {
            const ColumnSink sink = [&](const void* cols, DType ct, int64_t ld, int64_t b0, int64_t nb) {
                spectral_->spectrum_from_columns(ctx, cols, ct, ld, tw.bias, x.b, b0, nb, d.chout / 2, x.h, kh, sh, h0,
                                                 spectrum->stats, spectrum->spec);
            };
            conv_transpose2d(ctx, y, tw, sh, sw, h0, w0, z, act, y_operand.p, &sink);
        } else if (packed) {
            // The activation goes in the sink (a sink takes the columns before it).
            const ColumnSink sink = [&](const void* cols, DType ct, int64_t ld, int64_t b0, int64_t nb) {
                if (d.freq)
                    pack_columns(ctx, cols, ct, ld, tw.bias, act, b0, nb, d.chout, x.h, x.w, kh, sh, h0, Hc,
                                 packed->skip, packed->xp);
                else
                    pack_columns_w(ctx, cols, ct, ld, tw.bias, act, b0, nb, d.chout, x.w, w0, Wc, packed->skip,
                                   packed->xp);
            };
            conv_transpose2d(ctx, y, tw, sh, sw, h0, w0, z, Act::None, y_operand.p, &sink);
        } else {
            conv_transpose2d(ctx, y, tw, sh, sw, h0, w0, z, act, y_operand.p);
        }
        if (pre) *pre = y;
        return z;
    }

    // Copies a block's output to the host for a tap (never inside a graph).
    void emit(const Ctx& ctx, const std::string& name, const DTensor& t) const {
        if (!tap_ || ctx.dry) return;
        FD_CUDA(cudaStreamSynchronize(ctx.stream));
        std::vector<float> host(size_t(t.numel()));
        FD_CUDA(cudaMemcpy(host.data(), t.p, host.size() * sizeof(float), cudaMemcpyDeviceToHost));
        tap_(name, {t.b, t.c, t.h, t.w}, host.data());
    }

    std::shared_ptr<const HTDemucsModel> model_;
    int device_;
    KeptBufferUse kept_use_;  // (the device's kept track buffer goes with its last backend)
    DType dtype_;
    int64_t length_ = 0;
    // Destroyed in reverse: the cuBLAS handle before its workspace, both before the stream.
    std::unique_ptr<StreamOwner> stream_;
    std::unique_ptr<StreamOwner> copy_stream_;  // the whole-track path's finishing and downloads
    std::unique_ptr<EventOwner> ready_[2];  // a batch's overlap-add is done (whole-track path)
    DeviceBuffer blas_workspace_;
    std::unique_ptr<BlasOwner> blas_;
    // The time branch's stream (null: one stream, make_branch_stream); destroyed
    // after cuDNN's handle, which may last have run on it.
    std::unique_ptr<BranchStream> branch_;
    bool branch_transformer_ = true;  // the time tokens' transformer layers on the branch too
    std::unique_ptr<CudnnAttention> cudnn_attention_;  // (null: our attention kernels)
    std::unique_ptr<DeviceWeights> weights_;
    DeviceBuffer grams_;      // thin DConv statistics forms (upload_dconv_tables)
    DeviceBuffer in_tables_;  // thin DConv in-convolution weight tables and apply fragments
    struct DConvTables {
        int64_t gram = 0, in_table = 0, fragments = -1, in_fragments = -1;  // offsets in grams_ and in_tables_
    };
    std::map<std::string, DConvTables> dconv_offsets_;  // by DConv layer prefix
    DeviceBuffer transition_;  // transition_weights() of (transition_segment_, transition_power_)
    int64_t transition_segment_ = -1;
    double transition_power_ = 0.0;
    bool staged_upload_ = true;                   // the track through UploadStaging (else a pageable copy)
    std::unique_ptr<UploadStaging> staging_;      // the first track's small one, then staging_pending_'s
    std::future<std::unique_ptr<UploadStaging>> staging_pending_;  // the large one, started by the second track
    int64_t tracks_ = 0;                          // tracks the track path has started
    bool large_staging_failed_ = false;           // (not tried again)
    std::unique_ptr<DownloadRing> download_ring_;  // made for the first track (FASTDEMUCS_DOWNLOAD_RING)
    // The ring on its way (warm_up starts it early); destroyed before download_ring_.
    std::future<std::unique_ptr<DownloadRing>> ring_pending_;
    std::unique_ptr<Spectral> spectral_;
    std::unique_ptr<CrossTransformer> transformer_;
    std::unique_ptr<Profiler> profiler_;
    DeviceBuffer workspace_;
    Arena arena_;
    Ctx ctx_;
    TapFn tap_;
    bool graphs_enabled_ = true;
    int batch_cap_ = kDefaultBatchCap;
    size_t per_chunk_ = 0, fixed_ = 0;
    std::map<int, size_t> measured_, measured_tapped_;
    std::map<int, GemmRecord> gemm_records_;  // the products each measured batch size met
    std::map<int, cudaGraphExec_t> graphs_;
    std::set<int> eager_done_;
    std::set<int> short_batches_met_;  // short last batches met by earlier tracks (short_batch_size)
    std::set<int> no_graph_;           // short batch sizes whose capture failed (they replay the full graph)
};

}  // namespace
}  // namespace cuda

int cuda_device_count() {
    int n = 0;
    const cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

void cuda_initialize(int device_index) {
    if (cudaSetDevice(device_index) == cudaSuccess) cudaFree(nullptr);
    cudaGetLastError();
    trace_point("CUDA context created (start-up thread)");
}

void cuda_load_libraries() {
    cuda::preload_cuda_libraries();
    trace_point("cuBLAS and cuFFT loaded");
}

void cuda_warm_up_libraries(int device_index, Precision precision) {
    if (cuda::env_flag("FASTDEMUCS_NO_LIBRARY_WARM_UP")) return;
    if (cudaSetDevice(device_index) != cudaSuccess) {
        cudaGetLastError();
        return;
    }
    // cuDNN's first attention plan (where chosen) on a thread of its own, beside cuBLAS's first product.
    std::thread cudnn;
    if (cuda::cudnn_attention_chosen() && precision != Precision::Fp32) {
        try {
            cudnn = std::thread([device_index, precision] {
                cuda::warm_up_cudnn_attention(device_index, cuda::operand_type(precision));
                trace_point("cuDNN warmed up (start-up thread)");
            });
        } catch (const std::system_error&) {
        }
    }
    // Its handles go only after cuDNN's warm-up (cublasDestroy would break that thread's capture).
    cuda::GemmLeftovers kept = cuda::warm_up_gemm_library(cuda::operand_type(precision));
    trace_point("cuBLAS warmed up (start-up thread)");
    if (cudnn.joinable()) cudnn.join();
}

namespace {
// The devices GPU backends were made on, for release_gpus().
std::mutex used_devices_mutex;
std::set<int> used_devices;
}  // namespace

void release_gpus() {
    {
        std::lock_guard<std::mutex> lock(cuda::kept_mutex);
        cuda::kept_buffers.clear();
    }
    cuda::release_gemm_handles();
    std::lock_guard<std::mutex> lock(used_devices_mutex);
    for (int device : used_devices)
        if (cudaSetDevice(device) == cudaSuccess) cudaDeviceReset();
    cudaGetLastError();
    used_devices.clear();
}

std::unique_ptr<ModelBackend> make_cuda_backend(std::shared_ptr<const HTDemucsModel> model, int device_index,
                                                Precision precision) {
    int n = 0;
    const cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        cudaGetLastError();
        throw Error(std::string("no CUDA device available (") + cudaGetErrorString(err) + ")");
    }
    if (n == 0) throw Error("no CUDA device available");
    if (device_index < 0 || device_index >= n)
        throw Error("CUDA device " + std::to_string(device_index) + " not found (" + std::to_string(n) +
                    (n == 1 ? " device)" : " devices)"));
    if (!model) throw Error("no model to run");
    {
        std::lock_guard<std::mutex> lock(used_devices_mutex);
        used_devices.insert(device_index);
    }
    return std::make_unique<cuda::CudaBackend>(std::move(model), device_index, precision);
}

}  // namespace fastdemucs
