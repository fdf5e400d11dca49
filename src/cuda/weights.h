// The model's weights on the device, uploaded once per backend: every
// tensor in float32 (norms, biases, scales, tables), and in float16 /
// bfloat16 backends the same image converted to the operand type (the conv,
// transposed-conv and linear weights are read from it; the few vectors in
// it are never used). Tap-major copies [kh * kw][cout][cin] of the rewrite
// conv weights conv_glu takes in float16 / bfloat16 (its layout), and with
// `with_taps` (the shifted-GEMM convolution, FASTDEMUCS_SHIFTED_CONV=1) of
// every stride-1 multi-tap conv weight (rewrites and DConv), in any type.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "cuda/common.h"
#include "model/model.h"

namespace fastdemucs::cuda {

class DeviceWeights {
public:
    DeviceWeights(const HTDemucsModel& model, DType gemm, bool with_taps);

    const float* f32(const std::string& name) const;
    const void* gemm(const std::string& name) const;  // original layout, operand type
    const void* taps(const std::string& name) const;  // per-tap layout, operand type
    bool has_taps(const std::string& name) const { return entry(name).taps >= 0; }
    const std::vector<int64_t>& shape(const std::string& name) const;
    DType dtype() const { return dtype_; }
    size_t bytes() const { return f32_.bytes() + gemm_.bytes() + taps_.bytes(); }

private:
    struct Entry {
        int64_t f32 = -1, taps = -1;  // element offsets (the operand copy shares f32's); -1 = absent
        std::vector<int64_t> shape;
    };
    const Entry& entry(const std::string& name) const;

    DType dtype_;
    std::map<std::string, Entry> entries_;
    DeviceBuffer f32_, gemm_, taps_;
};

}  // namespace fastdemucs::cuda
