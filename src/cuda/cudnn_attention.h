// The attention core (cuda/attention.h) through cuDNN's fused scaled
// dot-product attention, in float16 / bfloat16: cuDNN 9's graph API through
// its header-only C++ frontend, libcudnn.so.9 opened at run time.
// The default where cuDNN is installed: its SDPA engines (wgmma on Hopper) do
// the ten attentions of an htdemucs_6s forward of 8 chunks in 1.88 ms with
// cuDNN 9.14 against 2.57 ms for our mma.sync kernel (CUDA-graph captured,
// in our interleaved-heads layout). cuDNN generates those kernels at run
// time (~80-100 ms of host time per shape, four shapes a forward), so each
// plan is serialised into a plan store on disk (cuda/plan_store.h) and read
// back by later processes in ~1 ms: only a machine's first run pays the
// 0.15-0.4 s (bench/results/h200-2026-11-28-session11-ab.log, session12).
// FASTDEMUCS_ATTENTION=tc (or simt / cublas) keeps our kernels. Where cuDNN
// cannot be loaded, or declines a shape, attention() runs our own kernels; a
// build without the frontend's headers (FASTDEMUCS_CUDNN OFF) has only those.
#pragma once

#include <memory>
#include <string>

#include "cuda/attention.h"
#include "cuda/common.h"

namespace fastdemucs::cuda {

// Loads cuDNN and plans one attention of this model's kind (float16 /
// bfloat16) on a handle of its own, then lets it go: the libraries' loading
// and set-up (~50 ms) on a start-up thread while the checkpoint is read.
// Never throws.
void warm_up_cudnn_attention(int device, DType t);

class CudnnAttention {
public:
    // Loads cuDNN and makes a handle on `device` (current on this thread);
    // never throws: available() says whether that worked.
    explicit CudnnAttention(int device);
    ~CudnnAttention();
    CudnnAttention(const CudnnAttention&) = delete;
    CudnnAttention& operator=(const CudnnAttention&) = delete;

    bool available() const;
    // Why it is not (empty when it is).
    const std::string& reason() const;

    // out = softmax(scale q k^T) v for a (ctx.gemm float16 / bfloat16): plans
    // the shape once (a plan per shape, kept), takes its workspace from the
    // arena (in dry mode too: then it only notes the shape for prepare())
    // and queues it on ctx.stream. Returns false, doing nothing, where cuDNN
    // is unavailable or has no plan for the shape.
    bool run(const Ctx& ctx, const AttentionArgs& a, float scale);
    // Plans the shapes of this batch size that dry runs have met: read from
    // the plan store where stored, else made in parallel and stored (each
    // costs ~80-100 ms of host time: made one after the other inside the
    // graph capture, the four took ~0.33 s; in parallel 0.15-0.4 s).
    void prepare(int64_t batch);
    // Attentions run so far, and plans read from the plan store (tests).
    int64_t runs() const;
    int64_t plans_read() const;

private:
    friend void warm_up_cudnn_attention(int device, DType t);
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// Whether this build has the cuDNN path (FASTDEMUCS_CUDNN).
bool cudnn_attention_built();

// Whether float16 / bfloat16 attention goes to cuDNN first: built with it
// and FASTDEMUCS_ATTENTION unset, "auto" or "cudnn" (our kernels: "tc",
// "simt", "cublas", "tc-v1").
bool cudnn_attention_chosen();


}  // namespace fastdemucs::cuda
