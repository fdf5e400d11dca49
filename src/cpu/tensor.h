// A dense float32 tensor on the host, C order. The CPU backend's only
// activation type; shapes are spelled out in comments at each use.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <vector>

namespace fastdemucs::cpu {

struct Tensor {
    std::vector<int64_t> shape;
    std::vector<float> data;

    Tensor() = default;
    explicit Tensor(std::vector<int64_t> s, float fill = 0.0f) : shape(std::move(s)), data(count(shape), fill) {}

    static int64_t count(const std::vector<int64_t>& s) {
        int64_t n = 1;
        for (auto d : s) n *= d;
        return n;
    }
    int64_t numel() const { return static_cast<int64_t>(data.size()); }
    int64_t dim(int i) const { return shape[i < 0 ? shape.size() + i : i]; }
    int rank() const { return static_cast<int>(shape.size()); }
    float* ptr() { return data.data(); }
    const float* ptr() const { return data.data(); }
    // Same data, another shape of the same element count.
    Tensor reshaped(std::vector<int64_t> s) && {
        Tensor t;
        t.shape = std::move(s);
        t.data = std::move(data);
        return t;
    }
};

}  // namespace fastdemucs::cpu
