#include "checkpoint/tensor_data.h"

#include <cstring>

namespace fastdemucs {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "storage bytes are read in place as little-endian values");

bool storage_type_from_name(const std::string& global_name, StorageType* out) {
    if (global_name == "torch HalfStorage") *out = StorageType::Half;
    else if (global_name == "torch BFloat16Storage") *out = StorageType::BFloat16;
    else if (global_name == "torch FloatStorage") *out = StorageType::Float;
    else if (global_name == "torch DoubleStorage") *out = StorageType::Double;
    else return false;
    return true;
}

size_t storage_element_size(StorageType type) {
    switch (type) {
        case StorageType::Half:
        case StorageType::BFloat16: return 2;
        case StorageType::Float: return 4;
        case StorageType::Double: return 8;
    }
    return 0;
}

const char* storage_type_name(StorageType type) {
    switch (type) {
        case StorageType::Half: return "float16";
        case StorageType::BFloat16: return "bfloat16";
        case StorageType::Float: return "float32";
        case StorageType::Double: return "float64";
    }
    return "?";
}

static float bits_to_float(uint32_t bits) {
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

float half_to_float(uint16_t h) {
    uint32_t sign = uint32_t(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    if (exponent == 0x1f) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));  // inf, nan (payload kept)
    if (exponent != 0) return bits_to_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
    // Zero or subnormal: mantissa * 2^-24, exact in float32 (at most 10 bits).
    float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return sign ? -magnitude : magnitude;
}

float bfloat16_to_float(uint16_t h) { return bits_to_float(uint32_t(h) << 16); }

namespace {

template <typename T>
T load(const uint8_t* p) {
    T v;
    std::memcpy(&v, p, sizeof v);  // storage bytes need not be aligned
    return v;
}

struct HalfLoader {
    static constexpr size_t size = 2;
    static float get(const uint8_t* p) { return half_to_float(load<uint16_t>(p)); }
};
struct BFloat16Loader {
    static constexpr size_t size = 2;
    static float get(const uint8_t* p) { return bfloat16_to_float(load<uint16_t>(p)); }
};
struct FloatLoader {
    static constexpr size_t size = 4;
    static float get(const uint8_t* p) { return load<float>(p); }
};
struct DoubleLoader {
    static constexpr size_t size = 8;
    static float get(const uint8_t* p) { return static_cast<float>(load<double>(p)); }
};

// Converts `count` elements `step` elements apart, starting at element `at`.
template <typename Loader>
void convert_run(const uint8_t* storage, int64_t at, int64_t step, int64_t count, float* out) {
    const uint8_t* p = storage + at * static_cast<int64_t>(Loader::size);
    const int64_t byte_step = step * static_cast<int64_t>(Loader::size);
    if (step == 1) {
        for (int64_t k = 0; k < count; ++k) out[k] = Loader::get(p + k * static_cast<int64_t>(Loader::size));
    } else {
        for (int64_t k = 0; k < count; ++k) out[k] = Loader::get(p + k * byte_step);
    }
}

bool is_c_contiguous(const std::vector<int64_t>& size, const std::vector<int64_t>& stride) {
    int64_t expected = 1;
    for (size_t d = size.size(); d-- > 0;) {
        if (size[d] != 1 && stride[d] != expected) return false;  // size-1 dims may have any stride
        expected *= size[d];
    }
    return true;
}

// Walks the outer dimensions like an odometer, converting one run of the
// innermost dimension at a time.
template <typename Loader>
void gather(const uint8_t* storage, int64_t offset, const std::vector<int64_t>& size,
            const std::vector<int64_t>& stride, float* out) {
    int64_t numel = 1;
    for (int64_t d : size) numel *= d;
    if (numel == 0) return;
    if (is_c_contiguous(size, stride)) {
        convert_run<Loader>(storage, offset, 1, numel, out);
        return;
    }
    const size_t inner_dim = size.size() - 1;  // ndim >= 1 here: a scalar is contiguous
    const int64_t inner = size[inner_dim];
    std::vector<int64_t> index(inner_dim, 0);
    int64_t at = offset;
    for (int64_t done = 0; done < numel; done += inner) {
        convert_run<Loader>(storage, at, stride[inner_dim], inner, out + done);
        for (size_t d = inner_dim; d-- > 0;) {
            at += stride[d];
            if (++index[d] < size[d]) break;
            at -= stride[d] * size[d];
            index[d] = 0;
        }
    }
}

}  // namespace

void gather_as_float(StorageType type, const uint8_t* storage, int64_t offset,
                     const std::vector<int64_t>& size, const std::vector<int64_t>& stride, float* out) {
    switch (type) {
        case StorageType::Half: gather<HalfLoader>(storage, offset, size, stride, out); break;
        case StorageType::BFloat16: gather<BFloat16Loader>(storage, offset, size, stride, out); break;
        case StorageType::Float: gather<FloatLoader>(storage, offset, size, stride, out); break;
        case StorageType::Double: gather<DoubleLoader>(storage, offset, size, stride, out); break;
    }
}

}  // namespace fastdemucs
