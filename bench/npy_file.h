// Writes a float32 array as a NumPy .npy file (optionally stored as
// float16), for the GPU bench tools' outputs compared here with NumPy.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "error.h"

namespace fastdemucs_bench {

inline void write_npy(const std::string& path, const float* data, std::vector<int64_t> shape, bool as_half) {
    std::string dims;
    int64_t n = 1;
    for (auto d : shape) dims += std::to_string(d) + ", ", n *= d;
    std::string header = std::string("{'descr': '") + (as_half ? "<f2" : "<f4") +
                         "', 'fortran_order': False, 'shape': (" + dims + "), }";
    while ((10 + header.size() + 1) % 64) header += ' ';
    header += '\n';
    std::ofstream f(path, std::ios::binary);
    f.write("\x93NUMPY\x01\x00", 8);
    const uint16_t len = static_cast<uint16_t>(header.size());
    f.write(reinterpret_cast<const char*>(&len), 2);
    f.write(header.data(), header.size());
    if (as_half) {
        std::vector<__half> h(n);
        for (int64_t i = 0; i < n; i++) h[i] = __float2half(data[i]);
        f.write(reinterpret_cast<const char*>(h.data()), n * sizeof(__half));
    } else {
        f.write(reinterpret_cast<const char*>(data), n * sizeof(float));
    }
    if (!f) throw fastdemucs::Error("cannot write " + path);
}

}  // namespace fastdemucs_bench
