// The `weights:` entry of a bag's yaml (a local NAME.yaml or the catalog's
// files): one list of per-source weights per model, as the official BagOfModels takes.
#pragma once

#include <yaml-cpp/yaml.h>

#include <string>
#include <vector>

namespace fastdemucs {

// [models][sources]; empty when the node is absent or null. Throws Error
// (prefixed with `where`) when it is not one non-empty numeric list per
// model, all of the same length.
std::vector<std::vector<double>> parse_bag_weights(const YAML::Node& node, size_t num_models,
                                                   const std::string& where);

}  // namespace fastdemucs
