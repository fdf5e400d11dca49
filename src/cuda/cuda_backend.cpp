// The HTDemucs forward pass on one CUDA GPU: a walk over the model plan,
// step for step the function of cpu/cpu_backend (the float32 oracle).
//
// Design notes
// ------------
// Files: common (errors, context, device buffers), arena (the workspace),
// kernels (norms, statistics, element-wise, layout, conv helpers), gemm
// (cuBLAS wrapper), conv (convolutions as GEMMs), spectral (cuFFT STFT /
// iSTFT), attention (fused kernel + cuBLAS path), transformer (the cross
// transformer), weights (upload), and this file (the walk, memory, graphs).
//
// Memory layout. Activations are float32, NCHW as in PyTorch: the frequency
// branch [B, C, F, T], the time branch [B, C, 1, L]; the transformer works
// on token-major [B * tokens, C] with the batch folded into the rows. The
// chunks of a batch are processed together: convolutions are strided-batched
// GEMMs with the weights shared (stride 0), linear layers one GEMM over all
// rows. GEMM operands are the only values stored in reduced precision: in
// Fp16 / Bf16 mode the weights are converted once at load and activations
// are converted right before each GEMM by the kernel that prepares the
// operand anyway (im2col, padding, LayerNorm, bias + GELU, attention
// output); GEMMs accumulate in float32 into float32 outputs
// (CUBLAS_COMPUTE_32F). In Fp32 mode the operands are float32 with
// CUBLAS_COMPUTE_32F and the default math mode: no TF32 anywhere. Norms,
// statistics (in double), softmax, STFT / iSTFT and overlap-add are float32
// or better in every mode.
//
// Libraries vs hand-written kernels. cuBLAS does every GEMM (convolutions,
// transposed convolutions, linear layers, the attention fallback), cuFFT the
// batched R2C / C2R transforms. Everything else is a hand-written kernel
// because it is memory-bound glue with model-specific index maps that no
// library offers: the STFT framing with its double reflect padding and frame
// trimming, the Hermitian fix-up before C2R and the overlap-add with the
// window envelope (fused with the final sum of the two branches),
// GroupNorm per group or per frequency row with double two-pass statistics,
// GLU (+ LayerScale residual), the transposed-conv overlap-add with the
// decoder trim fused, token transposes, and the fused attention (online
// softmax, never materialising batch x heads x tokens^2 scores).
//
// Workspace. All activation memory is one device allocation used as a stack
// (cuda/arena): each op takes its output and temporaries and releases the
// temporaries on return. Its size is measured, not guessed: a dry run of
// this very walk (ctx.dry: ops only take buffers, nothing is launched)
// gives the exact peak for a batch size. Per-chunk memory:
//     per_chunk = peak(B = 2) - peak(B = 1),  fixed = peak(1) - per_chunk
// (everything scales with B except the attention fallback's bounded score
// buffer). The peak is reached in the outermost frequency decoder: all skip
// connections of both encoders (sum over layers of C_i * F_i * T, about
// 24 M values for htdemucs at 7.8 s) + the mix / stems / spectrogram
// buffers (7.6 M) + the outputs of the deeper decoders (about 22 M) + the outermost
// decoder's output z (24 x 2048 x 336 = 16.5 M) + its rewrite step: the
// rewritten input (8.3 M), the 3x3 conv's padded operand (8.3 M) and its
// padded-width output (16.6 M) and the GLU input (16.5 M); the transposed
// conv's column buffer (C_out * K * F_in * T = 192 x 512 x 336 = 33 M)
// comes right after and is smaller. In all about 120 M values, ~0.5 GB per
// chunk in Fp32 for htdemucs_6s (a bit less in Fp16 / Bf16, whose padded
// and im2col operands are 2-byte). max_batch() is
//     min(cap, (free + workspace held - reserve - fixed) / per_chunk)
// with reserve = 256 MiB + 2% of the card and cap = 8 (FASTDEMUCS_MAX_BATCH).
// The workspace is allocated on the first forward of a batch size that needs
// more than the current one, and reused by every later call.
//
// CUDA graphs. Every forward runs on the backend's own stream; after the
// upload of the chunk batch nothing touches the host until the stems are
// downloaded. The first forward of a batch size runs eagerly (it also loads
// the kernels); the second is captured into a CUDA graph (addresses repeat:
// same arena, same order) and every later call replays it. Taps bypass the
// graph. FASTDEMUCS_NO_GRAPH=1 disables graphs; FASTDEMUCS_ATTENTION=cublas
// selects the cuBLAS attention path.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "cuda/arena.h"
#include "cuda/common.h"
#include "cuda/conv.h"
#include "cuda/kernels.h"
#include "cuda/spectral.h"
#include "cuda/transformer.h"
#include "cuda/weights.h"
#include "engine/backend.h"
#include "error.h"

namespace fastdemucs {
namespace cuda {
namespace {

constexpr size_t kCublasWorkspace = size_t(32) << 20;
constexpr int kDefaultBatchCap = 8;

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

struct BlasOwner {
    cublasHandle_t handle = nullptr;
    BlasOwner() { FD_CUBLAS(cublasCreate(&handle)); }
    ~BlasOwner() {
        if (handle) cublasDestroy(handle);
    }
    BlasOwner(const BlasOwner&) = delete;
    BlasOwner& operator=(const BlasOwner&) = delete;
};

struct Io {
    float* in = nullptr;   // [B, C, L]: the mix, zero-padded to the training length
    float* out = nullptr;  // [B, S * C, L]: the stems
};

class CudaBackend final : public ModelBackend {
public:
    CudaBackend(std::shared_ptr<const HTDemucsModel> model, int device, Precision precision)
        : model_(std::move(model)), device_(device), dtype_(operand_type(precision)) {
        FD_CUDA(cudaSetDevice(device_));
        stream_ = std::make_unique<StreamOwner>();
        blas_ = std::make_unique<BlasOwner>();
        FD_CUBLAS(cublasSetStream(blas_->handle, stream_->stream));
        // No TF32: default math with CUBLAS_COMPUTE_32F (set per call) never uses it.
        FD_CUBLAS(cublasSetMathMode(blas_->handle, env_flag("FASTDEMUCS_CUBLAS_PEDANTIC") ? CUBLAS_PEDANTIC_MATH
                                                                                           : CUBLAS_DEFAULT_MATH));
        // A workspace of our own: cuBLAS then allocates nothing while a graph is captured.
        blas_workspace_ = DeviceBuffer(kCublasWorkspace, "the cuBLAS workspace");
        FD_CUBLAS(cublasSetWorkspace(blas_->handle, blas_workspace_.get(), blas_workspace_.bytes()));

        weights_ = std::make_unique<DeviceWeights>(*model_, dtype_);
        const auto& cfg = model_->config;
        length_ = cfg.segment_samples();
        spectral_ = std::make_unique<Spectral>(cfg.nfft, length_);

        ctx_.stream = stream_->stream;
        ctx_.blas = blas_->handle;
        ctx_.gemm = dtype_;
        ctx_.fused_attention = env_string("FASTDEMUCS_ATTENTION") != "cublas";
        graphs_enabled_ = !env_flag("FASTDEMUCS_NO_GRAPH");
        const std::string cap = env_string("FASTDEMUCS_MAX_BATCH");
        batch_cap_ = cap.empty() ? kDefaultBatchCap : std::max(1, std::atoi(cap.c_str()));

        // Memory model from two dry runs.
        const size_t one = measure(1), two = measure(2);
        per_chunk_ = two > one ? two - one : one;
        fixed_ = one > per_chunk_ ? one - per_chunk_ : 0;
    }

    ~CudaBackend() override {
        cudaSetDevice(device_);
        if (stream_) cudaStreamSynchronize(stream_->stream);
        destroy_graphs();
        cudaGetLastError();
    }

    const HTDemucsModel& model() const override { return *model_; }
    void set_threads(int) override {}

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

        struct TapGuard {
            TapFn& slot;
            ~TapGuard() { slot = nullptr; }
        } guard{tap_};
        tap_ = tap;
        const bool use_graph = graphs_enabled_ && !tap;
        auto it = graphs_.find(batch);
        if (use_graph && it != graphs_.end()) {
            FD_CUDA(cudaGraphLaunch(it->second, stream));
        } else if (use_graph && eager_done_.count(batch)) {
            capture_and_launch(ctx, batch);
        } else {
            device_forward(ctx, batch);
            eager_done_.insert(batch);
        }
        FD_CUDA(cudaMemcpy2DAsync(out, row, io.out, pitch, row, size_t(batch * S * C), cudaMemcpyDeviceToHost, stream));
        FD_CUDA(cudaStreamSynchronize(stream));
    }

private:
    // ------------------------------------------------------------ memory, graphs

    size_t measure(int batch) {
        auto it = measured_.find(batch);
        if (it != measured_.end()) return it->second;
        Arena dry;
        dry.start_dry();
        Ctx ctx = ctx_;
        ctx.arena = &dry;
        ctx.dry = true;
        device_forward(ctx, batch);
        return measured_[batch] = dry.peak();
    }

    void ensure_workspace(int batch) {
        const size_t need = measure(batch);
        if (workspace_.bytes() < need) {
            destroy_graphs();  // they point into the old workspace
            FD_CUDA(cudaStreamSynchronize(stream_->stream));
            workspace_.reset();
            arena_.bind(nullptr, 0);
            workspace_ = DeviceBuffer(need, "batch " + std::to_string(batch));
        }
        arena_.bind(workspace_.get(), workspace_.bytes());
    }

    void destroy_graphs() {
        for (auto& kv : graphs_) cudaGraphExecDestroy(kv.second);
        graphs_.clear();
    }

    void capture_and_launch(const Ctx& ctx, int batch) {
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
            const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
            cudaGraphDestroy(graph);
            FD_CUDA(err);
        } catch (const Error& e) {
            // Run without graphs from now on; the eager path reports real errors itself.
            std::fprintf(stderr, "fastdemucs: CUDA graph capture failed (%s); running without graphs\n", e.what());
            graphs_enabled_ = false;
            device_forward(ctx, batch);
            return;
        }
        graphs_[batch] = exec;
        FD_CUDA(cudaGraphLaunch(exec, stream));
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

    // Everything between upload and download; the same allocations in the same order on every call.
    void device_forward(const Ctx& ctx, int64_t B) {
        const auto& cfg = model_->config;
        Arena& arena = *ctx.arena;
        const Io io = alloc_io(ctx, B);
        const int64_t C = cfg.audio_channels, S = cfg.num_sources(), L = length_;
        const int64_t T = spectral_->frames(), bins = spectral_->bins();

        DTensor x{arena.alloc<float>(B * 2 * C * bins * T), B, 2 * C, bins, T};
        spectral_->stft(ctx, B, C, io.in, x.p);
        emit(ctx, "spec", x);
        double* spec_stats = arena.alloc<double>(2 * B);  // mean[B], std[B]
        Segments whole;
        whole.B = B, whole.W = 2 * C * bins * T;
        segment_stats(ctx, x.p, whole, Spread::UnbiasedStd, spec_stats, spec_stats + B);
        normalize(ctx, x.p, B, whole.W, spec_stats, spec_stats + B);

        DTensor xt{io.in, B, C, 1, L};
        double* time_stats = arena.alloc<double>(2 * B);
        whole.W = C * L;
        segment_stats(ctx, xt.p, whole, Spread::UnbiasedStd, time_stats, time_stats + B);
        normalize(ctx, xt.p, B, whole.W, time_stats, time_stats + B);

        run_network(ctx, x, xt);

        if (x.c != S * 2 * C || x.h != bins || x.w != T || xt.c != S * C || xt.h != 1 || xt.w != L)
            throw Error("internal error: unexpected output shapes of the network");
        spectral_->istft_add(ctx, B, S * C, x.p, spec_stats, xt.p, time_stats, io.out);
    }

    void run_network(const Ctx& ctx, DTensor& x, DTensor& xt) {
        const auto& plan = model_->plan;
        const auto& cfg = model_->config;
        std::vector<DTensor> saved, saved_t;
        std::vector<int64_t> lengths, lengths_t;
        for (size_t idx = 0; idx < plan.encoder.size(); idx++) {
            lengths.push_back(x.w);
            const DTensor* inject = nullptr;
            DTensor injected;
            if (idx < plan.tencoder.size()) {
                const auto& tenc = plan.tencoder[idx];
                lengths_t.push_back(xt.w);
                xt = encoder_layer(ctx, tenc, xt, nullptr);
                emit(ctx, "tencoder." + std::to_string(idx), xt);
                if (!tenc.empty) {
                    saved_t.push_back(xt);
                } else {
                    injected = xt;
                    inject = &injected;
                }
            }
            x = encoder_layer(ctx, plan.encoder[idx], x, inject);
            emit(ctx, "encoder." + std::to_string(idx), x);
            if (idx == 0 && plan.freq_emb_rows) {
                if (x.h != plan.freq_emb_rows || x.c != plan.freq_emb_dim)
                    throw Error("internal error: frequency embedding shape");
                add_freq_embedding(ctx, x.p, weights_->f32("freq_emb.embedding.weight"), x.b, x.c, x.h, x.w,
                                   float(cfg.freq_emb), float(cfg.emb_scale));
            }
            saved.push_back(x);
        }

        if (cfg.t_layers > 0) {
            const int64_t B = x.b, F = x.h, T = x.w;
            if (plan.bottom) {
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
            transformer_->run(ctx, B, x.p, xt.p);
            emit(ctx, "crosstransformer.0", x);
            if (plan.bottom) {
                x = conv1x1(ctx, DTensor{x.p, B, x.c, 1, F * T}, "channel_downsampler.");
                emit(ctx, "channel_downsampler", x);
                x = DTensor{x.p, B, x.c, F, T};
                xt = conv1x1(ctx, xt, "channel_downsampler_t.");
                emit(ctx, "channel_downsampler_t", xt);
            }
        }

        const size_t offset = plan.decoder.size() - plan.tdecoder.size();
        for (size_t idx = 0; idx < plan.decoder.size(); idx++) {
            DTensor skip = saved.back();
            saved.pop_back();
            const bool t_here = idx >= offset;
            const bool need_pre = t_here && plan.tdecoder[idx - offset].empty;
            DTensor pre;
            x = decoder_layer(ctx, plan.decoder[idx], x, &skip, lengths.back(), need_pre ? &pre : nullptr);
            lengths.pop_back();
            emit(ctx, "decoder." + std::to_string(idx) + ".0", x);
            if (t_here) {
                const auto& tdec = plan.tdecoder[idx - offset];
                const int64_t length_t = lengths_t.back();
                lengths_t.pop_back();
                if (tdec.empty) {
                    // The frequency branch is down to one row: it feeds the time decoder.
                    if (pre.h != 1) throw Error("internal error: empty time decoder input has several rows");
                    xt = decoder_layer(ctx, tdec, pre, nullptr, length_t, nullptr);
                } else {
                    DTensor skip_t = saved_t.back();
                    saved_t.pop_back();
                    xt = decoder_layer(ctx, tdec, xt, &skip_t, length_t, nullptr);
                }
                emit(ctx, "tdecoder." + std::to_string(idx - offset) + ".0", xt);
            }
        }
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

    // DConv: residual branches over time, every frequency row on its own.
    void dconv(const Ctx& ctx, const DConvPlan& d, const std::string& prefix, const DTensor& x) const {
        if (x.c != d.channels) throw Error("internal error: DConv channels");
        for (size_t i = 0; i < d.dilations.size(); i++) {
            const std::string p = prefix + "dconv.layers." + std::to_string(i) + ".";
            ArenaScope scope(*ctx.arena);
            ConvGeom g;
            g.dw = d.dilations[i], g.pw = d.dilations[i];
            DTensor h = alloc(ctx, x.b, d.hidden, x.h, x.w);
            conv2d(ctx, x, x.w, conv_weight(p + "0.", 1, 3), g, h, Act::None);
            group_norm(ctx, h.p, rows_of(h), weights_->f32(p + "1.weight"), weights_->f32(p + "1.bias"), 1e-5f,
                       Act::Gelu);
            DTensor y = alloc(ctx, x.b, 2 * d.channels, x.h, x.w);
            conv2d(ctx, h, h.w, conv_weight(p + "3.", 1, 1), ConvGeom{}, y, Act::None);
            group_norm(ctx, y.p, rows_of(y), weights_->f32(p + "4.weight"), weights_->f32(p + "4.bias"), 1e-5f,
                       Act::None);
            glu_residual(ctx, y.p, x.p, weights_->f32(p + "6.scale"), x.b, x.c, x.h * x.w);
        }
    }

    // rewrite conv -> norm -> GLU into out (chout channels). Square kernel over (F, T) in the frequency branch.
    void rewrite(const Ctx& ctx, bool freq, int kernel, bool norm, int groups, const std::string& prefix,
                 const std::string& norm_name, const DTensor& x, const DTensor& out) const {
        ArenaScope scope(*ctx.arena);
        ConvGeom g;
        g.pw = kernel / 2;
        if (freq) g.ph = kernel / 2;
        const ConvWeight w = conv_weight(prefix + "rewrite.", freq ? kernel : 1, kernel);
        int64_t Ho = 0, Wo = 0;
        conv_output_size(x.h, x.w, w, g, &Ho, &Wo);
        DTensor y = alloc(ctx, x.b, w.cout, Ho, Wo);
        conv2d(ctx, x, x.w, w, g, y, Act::None);
        if (norm)
            group_norm(ctx, y.p, groups_of(y, groups), weights_->f32(prefix + norm_name + "weight"),
                       weights_->f32(prefix + norm_name + "bias"), 1e-5f, Act::None);
        if (out.c * 2 != y.c || out.h != Ho || out.w != Wo || out.b != y.b)
            throw Error("internal error: rewrite output shape");
        glu(ctx, y.p, out.p, y.b, out.c, Ho * Wo);
    }

    DTensor encoder_layer(const Ctx& ctx, const EncoderLayerPlan& e, const DTensor& x, const DTensor* inject) const {
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
        conv2d(ctx, x, Wl, w, g, y, fuse_gelu ? Act::Gelu : Act::None);
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
        if (e.dconv.present) dconv(ctx, e.dconv, e.prefix, y);
        if (rewrites) rewrite(ctx, e.freq, e.rewrite_kernel, e.norm, e.norm_groups, e.prefix, "norm2.", y, out);
        return out;
    }

    // Returns z; `pre` (if given) receives the input of the transposed conv,
    // which then stays allocated.
    DTensor decoder_layer(const Ctx& ctx, const DecoderLayerPlan& d, const DTensor& x, const DTensor* skip,
                          int64_t length, DTensor* pre) const {
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
        DTensor z = alloc(ctx, x.b, d.chout, Hc, Wc);
        const bool rewrites = !d.empty && d.rewrite_kernel;
        // The rewritten input outlives this call only when it is asked for.
        DTensor y = x;
        if (rewrites && pre) y = alloc(ctx, x.b, x.c, x.h, x.w);
        ArenaScope scope(*ctx.arena);
        if (rewrites && !pre) y = alloc(ctx, x.b, x.c, x.h, x.w);
        if (!d.empty) {
            if (!skip || skip->numel() != x.numel()) throw Error("internal error: " + d.prefix + " skip shape");
            add(ctx, x.p, skip->p, x.numel());
            if (rewrites) rewrite(ctx, d.freq, d.rewrite_kernel, d.norm, d.norm_groups, d.prefix, "norm1.", x, y);
            if (d.dconv.present) dconv(ctx, d.dconv, d.prefix, y);
        }
        const Act act = d.last ? Act::None : Act::Gelu;
        if (d.norm) {
            // GroupNorm sees the untrimmed output.
            DTensor full = alloc(ctx, x.b, d.chout, Hf, Wf);
            conv_transpose2d(ctx, y, tw, sh, sw, 0, 0, full, Act::None);
            group_norm(ctx, full.p, groups_of(full, d.norm_groups), weights_->f32(d.prefix + "norm2.weight"),
                       weights_->f32(d.prefix + "norm2.bias"), 1e-5f, Act::None);
            crop_act(ctx, full.p, z.p, full.b * full.c, Hf, Wf, h0, Hc, w0, Wc, act);
        } else {
            conv_transpose2d(ctx, y, tw, sh, sw, h0, w0, z, act);
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
    DType dtype_;
    int64_t length_ = 0;
    // Destroyed in reverse: the cuBLAS handle before its workspace, both before the stream.
    std::unique_ptr<StreamOwner> stream_;
    DeviceBuffer blas_workspace_;
    std::unique_ptr<BlasOwner> blas_;
    std::unique_ptr<DeviceWeights> weights_;
    std::unique_ptr<Spectral> spectral_;
    std::unique_ptr<CrossTransformer> transformer_;
    DeviceBuffer workspace_;
    Arena arena_;
    Ctx ctx_;
    TapFn tap_;
    bool graphs_enabled_ = true;
    int batch_cap_ = kDefaultBatchCap;
    size_t per_chunk_ = 0, fixed_ = 0;
    std::map<int, size_t> measured_;
    std::map<int, cudaGraphExec_t> graphs_;
    std::set<int> eager_done_;
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
    return std::make_unique<cuda::CudaBackend>(std::move(model), device_index, precision);
}

}  // namespace fastdemucs
