// Conversion of raw torch storage bytes (little-endian) to float32 tensors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace fastdemucs {

enum class StorageType { Half, BFloat16, Float, Double };

// "torch HalfStorage" -> Half, ...; false for storage types we cannot read.
bool storage_type_from_name(const std::string& global_name, StorageType* out);
size_t storage_element_size(StorageType type);
const char* storage_type_name(StorageType type);  // "float16", ...

// IEEE binary16 -> binary32, exact for every input (subnormals, inf, nan).
float half_to_float(uint16_t h);
// bfloat16 is the top half of a binary32.
float bfloat16_to_float(uint16_t h);

// Copies the strided view (offset, size, stride; in elements) of a storage
// into `out` (numel floats, C order). The caller has checked that the view
// lies inside the storage.
void gather_as_float(StorageType type, const uint8_t* storage, int64_t offset,
                     const std::vector<int64_t>& size, const std::vector<int64_t>& stride, float* out);

}  // namespace fastdemucs
