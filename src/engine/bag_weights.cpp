#include "engine/bag_weights.h"

#include "error.h"

namespace fastdemucs {

std::vector<std::vector<double>> parse_bag_weights(const YAML::Node& node, size_t num_models,
                                                   const std::string& where) {
    std::vector<std::vector<double>> weights;
    if (!node || node.IsNull()) return weights;
    if (!node.IsSequence() || node.size() != num_models)
        throw Error(where + ": 'weights' must be a list of one list per model");
    for (const auto& row : node) {
        if (!row.IsSequence() || row.size() == 0)
            throw Error(where + ": each entry of 'weights' must be a list of numbers");
        std::vector<double> values;
        for (const auto& value : row) values.push_back(value.as<double>());
        if (!weights.empty() && values.size() != weights.front().size())
            throw Error(where + ": all rows of 'weights' must have the same length");
        weights.push_back(std::move(values));
    }
    return weights;
}

}  // namespace fastdemucs
