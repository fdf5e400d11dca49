// The model's weights on the device, uploaded once per backend: every
// tensor in float32 (norms, biases, scales, tables), and in float16 /
// bfloat16 backends the same image converted to the operand type (the conv,
// transposed-conv and linear weights are read from it; the few vectors in
// it are never used). Tap-major copies [kh * kw][cout][cin] of the rewrite
// conv weights conv_glu takes in float16 / bfloat16 (its layout), and with
// `with_taps` (the shifted-GEMM convolution, FASTDEMUCS_SHIFTED_CONV=1) of
// every stride-1 multi-tap conv weight (rewrites and DConv), in any type.
// In float16 / bfloat16, the encoders' conv weights also with their bias as
// one more column ([cout, biased_columns(K)], K = cin * kh * kw, zeros after
// the bias): the im2col operand's rows of ones then carry the bias through
// the GEMM (conv.h), which leaves no pass over the output for it.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "cuda/common.h"
#include "model/model.h"

namespace fastdemucs::cuda {

// Columns of a conv weight with its bias column: K + 1, rounded up to a
// multiple of 8 (16-byte rows in float16 / bfloat16).
inline int64_t biased_columns(int64_t K) { return (K + 1 + 7) / 8 * 8; }

class DeviceWeights {
public:
    DeviceWeights(const HTDemucsModel& model, DType gemm, bool with_taps);

    const float* f32(const std::string& name) const;
    const void* gemm(const std::string& name) const;  // original layout, operand type
    const void* taps(const std::string& name) const;  // per-tap layout, operand type
    bool has_taps(const std::string& name) const { return entry(name).taps >= 0; }
    // [cout, biased_columns(K)] with the bias, operand type; null where not made.
    const void* biased(const std::string& name) const;
    const std::vector<int64_t>& shape(const std::string& name) const;
    DType dtype() const { return dtype_; }
    size_t bytes() const { return f32_.bytes() + gemm_.bytes() + taps_.bytes() + biased_.bytes(); }

private:
    struct Entry {
        int64_t f32 = -1, taps = -1, biased = -1;  // element offsets (the operand copy shares f32's); -1 = absent
        std::vector<int64_t> shape;
    };
    const Entry& entry(const std::string& name) const;

    DType dtype_;
    std::map<std::string, Entry> entries_;
    DeviceBuffer f32_, gemm_, taps_, biased_;
};

}  // namespace fastdemucs::cuda
