#include "cuda/weights.h"

#include <algorithm>

#include "cuda/kernels.h"
#include "error.h"

namespace fastdemucs::cuda {
namespace {

constexpr int64_t kAlignElems = 64;  // 256 bytes in float32

int64_t aligned(int64_t n) { return (n + kAlignElems - 1) / kAlignElems * kAlignElems; }

bool ends_with(const std::string& s, const std::string& tail) {
    return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// Weights of stride-1 convolutions with more than one tap: the rewrite
// convs and the first conv of each DConv layer.
bool shifted_conv(const std::string& name, const std::vector<int64_t>& shape) {
    if (shape.size() < 3) return false;
    int64_t taps = 1;
    for (size_t i = 2; i < shape.size(); i++) taps *= shape[i];
    if (taps <= 1) return false;
    return ends_with(name, ".rewrite.weight") || (name.find(".dconv.layers.") != std::string::npos && ends_with(name, ".0.weight"));
}

}  // namespace

DeviceWeights::DeviceWeights(const HTDemucsModel& model, DType gemm) : dtype_(gemm) {
    // Layout every tensor in one float32 image, and the GEMM copies in another.
    std::vector<float> host32, host_gemm;
    int64_t total32 = 0, total_gemm = 0;
    for (const auto& kv : model.weights) {
        Entry e;
        e.shape = kv.second.shape;
        e.f32 = total32;
        total32 += aligned(kv.second.numel());
        const bool operand = e.shape.size() >= 2 && kv.first != "freq_emb.embedding.weight";
        if (operand && gemm != DType::F32) {
            e.gemm = total_gemm;
            total_gemm += aligned(kv.second.numel());
        }
        if (shifted_conv(kv.first, e.shape)) {
            e.taps = total_gemm;
            total_gemm += aligned(kv.second.numel());
        }
        entries_[kv.first] = std::move(e);
    }
    host32.assign(size_t(total32), 0.0f);
    host_gemm.assign(size_t(total_gemm), 0.0f);
    for (const auto& kv : model.weights) {
        const Entry& e = entries_.at(kv.first);
        const std::vector<float>& d = kv.second.data;
        std::copy(d.begin(), d.end(), host32.begin() + e.f32);
        if (e.gemm >= 0) std::copy(d.begin(), d.end(), host_gemm.begin() + e.gemm);
        if (e.taps >= 0) {
            const int64_t cout = e.shape[0], cin = e.shape[1], taps = int64_t(d.size()) / (cout * cin);
            float* dst = host_gemm.data() + e.taps;
            for (int64_t co = 0; co < cout; co++)
                for (int64_t ci = 0; ci < cin; ci++)
                    for (int64_t t = 0; t < taps; t++) dst[(t * cout + co) * cin + ci] = d[(co * cin + ci) * taps + t];
        }
    }
    f32_ = upload(host32.data(), host32.size() * sizeof(float), "the model weights");
    if (total_gemm > 0) {
        if (gemm == DType::F32) {
            gemm_ = upload(host_gemm.data(), host_gemm.size() * sizeof(float), "the model weights");
        } else {
            DeviceBuffer staging = upload(host_gemm.data(), host_gemm.size() * sizeof(float), "the model weights");
            gemm_ = DeviceBuffer(size_t(total_gemm) * dtype_bytes(gemm), "the model weights");
            Ctx ctx;  // default stream, synchronised below
            convert(ctx, staging.as<float>(), gemm_.get(), gemm, total_gemm);
            FD_CUDA(cudaDeviceSynchronize());
        }
    }
}

const DeviceWeights::Entry& DeviceWeights::entry(const std::string& name) const {
    auto it = entries_.find(name);
    if (it == entries_.end()) throw Error("internal error: no device weight " + name);
    return it->second;
}

const float* DeviceWeights::f32(const std::string& name) const { return f32_.as<float>() + entry(name).f32; }

const void* DeviceWeights::gemm(const std::string& name) const {
    const Entry& e = entry(name);
    if (dtype_ == DType::F32) return f32_.as<float>() + e.f32;
    if (e.gemm < 0) throw Error("internal error: no GEMM copy of weight " + name);
    return offset(gemm_.get(), e.gemm, dtype_);
}

const void* DeviceWeights::taps(const std::string& name) const {
    const Entry& e = entry(name);
    if (e.taps < 0) throw Error("internal error: no per-tap copy of weight " + name);
    return offset(gemm_.get(), e.taps, dtype_);
}

const std::vector<int64_t>& DeviceWeights::shape(const std::string& name) const { return entry(name).shape; }

}  // namespace fastdemucs::cuda
