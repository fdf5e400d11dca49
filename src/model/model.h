// One loaded HTDemucs model: its config, its module plan and its weights
// (float32, read-only). Shared by every backend and every run.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "checkpoint/checkpoint.h"
#include "model/config.h"
#include "model/plan.h"

namespace fastdemucs {

struct HTDemucsModel {
    std::string path;
    HTDemucsConfig config;
    ModelPlan plan;
    std::map<std::string, HostTensor> weights;

    // Throws Error if absent (cannot happen after check_state).
    const HostTensor& weight(const std::string& name) const;
    const float* data(const std::string& name) const { return weight(name).data.data(); }
};

// Reads the checkpoint, derives config and plan, checks every tensor.
std::shared_ptr<const HTDemucsModel> load_htdemucs(const std::string& path);
// Same from an already-read checkpoint (moved in).
std::shared_ptr<const HTDemucsModel> make_htdemucs(Checkpoint checkpoint);

}  // namespace fastdemucs
