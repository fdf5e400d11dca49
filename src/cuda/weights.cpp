#include "cuda/weights.h"

#include <algorithm>

#include "cuda/conv_glu.h"
#include "cuda/kernels.h"
#include "error.h"

namespace fastdemucs::cuda {
namespace {

constexpr int64_t kAlignElems = 64;  // 256 bytes in float32

int64_t aligned(int64_t n) { return (n + kAlignElems - 1) / kAlignElems * kAlignElems; }

bool ends_with(const std::string& s, const std::string& tail) {
    return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// Weights of stride-1 convolutions with more than one tap that get a
// tap-major copy: for the shifted GEMMs (`shifted`) every rewrite conv and
// the first conv of each DConv layer; in float16 / bfloat16 the rewrites
// that conv_glu takes.
bool tap_major_copy(const std::string& name, const std::vector<int64_t>& shape, bool shifted, DType gemm) {
    if (shape.size() < 3) return false;
    int64_t taps = 1;
    for (size_t i = 2; i < shape.size(); i++) taps *= shape[i];
    if (taps <= 1) return false;
    if (ends_with(name, ".rewrite.weight")) return shifted || (gemm != DType::F32 && conv_glu_channels_fit(shape[1]));
    return shifted && name.find(".dconv.layers.") != std::string::npos && ends_with(name, ".0.weight");
}

// The bias of an encoder conv weight (encoder.N.conv / tencoder.N.conv)
// that gets a copy with its bias as a column, in float16 / bfloat16; null
// for every other weight.
const std::vector<float>* biased_copy_bias(const std::string& name, const std::vector<int64_t>& shape,
                                           const HTDemucsModel& model, DType gemm) {
    if (gemm == DType::F32 || shape.size() < 3 || !ends_with(name, ".conv.weight")) return nullptr;
    if (name.rfind("encoder.", 0) != 0 && name.rfind("tencoder.", 0) != 0) return nullptr;
    const auto bias = model.weights.find(name.substr(0, name.size() - 6) + "bias");
    return bias != model.weights.end() && bias->second.numel() == shape[0] ? &bias->second.data : nullptr;
}

// A float32 staging image on the device converted into `out` (operand type).
void convert_image(const DeviceBuffer& staging, DeviceBuffer& out, DType dt, int64_t n, const std::string& what) {
    out = DeviceBuffer(size_t(n) * dtype_bytes(dt), what);
    Ctx ctx;  // default stream, synchronised by the caller
    convert(ctx, staging.as<float>(), out.get(), dt, n);
}

}  // namespace

DeviceWeights::DeviceWeights(const HTDemucsModel& model, DType gemm, bool with_taps) : dtype_(gemm) {
    // Tensors go up one by one straight from the model's host vectors (no
    // host image: building one faulted in and copied ~200 MB per load).
    int64_t total = 0, total_taps = 0;
    for (const auto& kv : model.weights) {
        Entry e;
        e.shape = kv.second.shape;
        e.f32 = total;
        total += aligned(kv.second.numel());
        if (tap_major_copy(kv.first, e.shape, with_taps, gemm)) {
            e.taps = total_taps;
            total_taps += aligned(kv.second.numel());
        }
        entries_[kv.first] = std::move(e);
    }
    f32_ = DeviceBuffer(size_t(total) * sizeof(float), "the model weights");
    FD_CUDA(cudaMemset(f32_.get(), 0, f32_.bytes()));
    for (const auto& kv : model.weights) {
        const std::vector<float>& d = kv.second.data;
        FD_CUDA(cudaMemcpy(f32_.as<float>() + entries_.at(kv.first).f32, d.data(), d.size() * sizeof(float),
                           cudaMemcpyHostToDevice));
    }
    if (gemm != DType::F32) convert_image(f32_, gemm_, gemm, total, "the model weights");
    // The biased copies: [cout, K] | bias | zeros, made on the host (a few
    // hundred KB), converted on the device.
    std::vector<float> biased;
    for (const auto& kv : model.weights) {
        Entry& e = entries_.at(kv.first);
        const std::vector<float>* bias = biased_copy_bias(kv.first, e.shape, model, gemm);
        if (!bias) continue;
        const std::vector<float>& b = *bias;
        const int64_t cout = e.shape[0], K = kv.second.numel() / cout, Kb = biased_columns(K);
        e.biased = int64_t(biased.size());
        biased.resize(size_t(aligned(e.biased + cout * Kb)), 0.0f);
        for (int64_t o = 0; o < cout; o++) {
            std::copy_n(kv.second.data.begin() + o * K, K, biased.begin() + e.biased + o * Kb);
            biased[size_t(e.biased + o * Kb + K)] = b[size_t(o)];
        }
    }
    if (!biased.empty()) {
        DeviceBuffer staging(biased.size() * sizeof(float), "the biased conv weights");
        FD_CUDA(cudaMemcpy(staging.get(), biased.data(), staging.bytes(), cudaMemcpyHostToDevice));
        convert_image(staging, biased_, gemm, int64_t(biased.size()), "the biased conv weights");
        FD_CUDA(cudaDeviceSynchronize());  // before the staging goes
    }
    if (total_taps > 0) {
        taps_ = DeviceBuffer(size_t(total_taps) * dtype_bytes(gemm), "the per-tap weights");
        FD_CUDA(cudaMemset(taps_.get(), 0, taps_.bytes()));
        Ctx ctx;  // default stream, synchronised below
        for (const auto& kv : model.weights) {
            const Entry& e = entries_.at(kv.first);
            if (e.taps < 0) continue;
            const int64_t cout = e.shape[0], cin = e.shape[1], taps = kv.second.numel() / (cout * cin);
            conv_weight_taps(ctx, f32_.as<float>() + e.f32, offset(taps_.get(), e.taps, gemm), gemm, cout, cin, taps);
        }
    }
    FD_CUDA(cudaDeviceSynchronize());
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
    return offset(gemm_.get(), e.f32, dtype_);
}

const void* DeviceWeights::taps(const std::string& name) const {
    const Entry& e = entry(name);
    if (e.taps < 0) throw Error("internal error: no per-tap copy of weight " + name);
    return offset(taps_.get(), e.taps, dtype_);
}

const void* DeviceWeights::biased(const std::string& name) const {
    const Entry& e = entry(name);
    return e.biased < 0 ? nullptr : offset(biased_.get(), e.biased, dtype_);
}

const std::vector<int64_t>& DeviceWeights::shape(const std::string& name) const { return entry(name).shape; }

}  // namespace fastdemucs::cuda
