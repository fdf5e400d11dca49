// Pretrained models by name, as `demucs -n NAME` without --repo: the bag or
// single model is looked up in the official catalog (or on a mirror), its
// checkpoints are downloaded into the cache when missing, and the result is
// a BagSpec of local files, like resolve_local_model's.
#pragma once

#include <string>
#include <vector>

#include "engine/repo.h"
#include "remote/catalog.h"
#include "remote/remote_options.h"

namespace fastdemucs {

// Throws Error: "unknown model NAME", "model NAME is not supported yet (...)",
// download, checksum and cache failures.
BagSpec resolve_remote_model(const std::string& name, const RemoteOptions& options);

// Same, within a given catalog whose files live under options.root_url
// (the official one, a mirror's, or a test's).
BagSpec resolve_model_from_catalog(const std::string& name, const Catalog& catalog, const RemoteOptions& options);

// One line of --list-models.
struct CatalogEntry {
    enum class Kind { Bag, Single };
    std::string name;
    Kind kind = Kind::Single;
    std::vector<std::string> sources;  // stem names
    std::vector<std::string> files;    // SIG-CHECKSUM.th of its models
    bool cached = false;               // every file present in the cache (not verified)
    bool supported = false;            // runnable by this engine
};

// The official catalog: bags first, then single models, each with the
// supported ones first. Never touches the network.
std::vector<CatalogEntry> list_catalog(const RemoteOptions& options);

}  // namespace fastdemucs
