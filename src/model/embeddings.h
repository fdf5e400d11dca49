// The transformer's fixed sinusoidal position embeddings, computed in double
// and rounded once: they are part of the model description, shared by every
// backend.
#pragma once

#include <cstdint>
#include <vector>

namespace fastdemucs {

// [length, dim]: cos(pos / period^(i / (dim/2 - 1))) for i < dim/2, then the sines.
std::vector<float> sin_embedding_1d(int64_t length, int64_t dim, double max_period);

// [dim, height, width]: the first half of the channels encodes the width
// (time) position, the second half the height (frequency), sin/cos interleaved.
std::vector<float> sin_embedding_2d(int64_t dim, int64_t height, int64_t width, double max_period);

}  // namespace fastdemucs
