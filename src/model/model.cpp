#include "model/model.h"

#include "error.h"

namespace fastdemucs {

const HostTensor& HTDemucsModel::weight(const std::string& name) const {
    auto it = weights.find(name);
    if (it == weights.end()) throw Error(path + ": missing tensor " + name);
    return it->second;
}

std::shared_ptr<const HTDemucsModel> make_htdemucs(Checkpoint checkpoint) {
    auto model = std::make_shared<HTDemucsModel>();
    model->path = checkpoint.path;
    if (!checkpoint.kwargs) throw Error(checkpoint.path + ": checkpoint has no kwargs");
    model->config = config_from_kwargs(*checkpoint.kwargs, checkpoint.path);
    try {
        model->plan = make_plan(model->config);
    } catch (const Error& e) {
        throw Error(checkpoint.path + ": " + e.what());
    }
    check_state(checkpoint.state, weight_manifest(model->config, model->plan), checkpoint.path);
    model->weights = std::move(checkpoint.state);
    return model;
}

std::shared_ptr<const HTDemucsModel> load_htdemucs(const std::string& path) {
    return make_htdemucs(read_checkpoint(path));
}

}  // namespace fastdemucs
