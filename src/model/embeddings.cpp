#include "model/embeddings.h"

#include <cmath>

namespace fastdemucs {

std::vector<float> sin_embedding_1d(int64_t length, int64_t dim, double max_period) {
    const int64_t half = dim / 2;
    std::vector<float> emb(length * dim);
    for (int64_t t = 0; t < length; t++)
        for (int64_t i = 0; i < half; i++) {
            const double phase = double(t) / std::pow(max_period, double(i) / double(half - 1));
            emb[t * dim + i] = float(std::cos(phase));
            emb[t * dim + half + i] = float(std::sin(phase));
        }
    return emb;
}

std::vector<float> sin_embedding_2d(int64_t dim, int64_t height, int64_t width, double max_period) {
    const int64_t half = dim / 2;
    std::vector<float> pe(dim * height * width);
    for (int64_t j = 0; 2 * j < half; j++) {
        const double freq = std::exp(double(2 * j) * -(std::log(max_period) / double(half)));
        for (int64_t h = 0; h < height; h++)
            for (int64_t w = 0; w < width; w++) {
                const int64_t at = h * width + w;
                pe[(2 * j) * height * width + at] = float(std::sin(w * freq));
                pe[(2 * j + 1) * height * width + at] = float(std::cos(w * freq));
                pe[(half + 2 * j) * height * width + at] = float(std::sin(h * freq));
                pe[(half + 2 * j + 1) * height * width + at] = float(std::cos(h * freq));
            }
    }
    return pe;
}

}  // namespace fastdemucs
