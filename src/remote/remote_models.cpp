#include "remote/remote_models.h"

#include <algorithm>

#include "error.h"
#include "remote/download.h"
#include "remote/model_cache.h"

namespace fastdemucs {
namespace {

Error unsupported_model(const std::string& name) {
    return Error("model " + name + " is not supported yet (only HTDemucs models: htdemucs, htdemucs_6s, htdemucs_ft)");
}

// Names sent to a mirror become URL paths: keep them to plain file names.
bool is_plain_name(const std::string& name) {
    if (name.empty() || name[0] == '.') return false;
    return std::all_of(name.begin(), name.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
               c == '-' || c == '.';
    });
}

bool is_not_found(const DownloadFailure& failure) {
    return failure.http_status() == 404 || failure.http_status() == 410;
}

// The mirror's files.txt, empty when the mirror has none.
std::vector<RemoteFile> fetch_mirror_files(const std::string& root) {
    const std::string url = root + "files.txt";
    try {
        return parse_file_list(download_text(url), url);
    } catch (const DownloadFailure& failure) {
        if (is_not_found(failure)) return {};
        throw;
    }
}

// What a mirror knows about `name`: its files.txt, plus NAME.yaml unless the
// name is one of the listed signatures (a signature wins over a bag, as in the
// official repo). Signatures the mirror does not list fall back to the official
// ones, which a mirror keeps in the official layout.
Catalog fetch_mirror_catalog(const std::string& name, const RemoteOptions& options) {
    const std::string& root = options.root_url;
    const std::string not_here = "unknown model " + name + ": neither a built-in model nor ";
    if (!is_plain_name(name)) throw Error("unknown model " + name);
    if (options.offline) throw Error(not_here + "known without asking the mirror " + root + " (offline mode)");
    Catalog mirror;
    try {
        mirror.files = fetch_mirror_files(root);
        if (!mirror.find_file(name)) {
            const std::string url = root + name + ".yaml";
            try {
                mirror.bags.push_back(parse_bag_file(name, download_text(url), url));
            } catch (const DownloadFailure& failure) {
                if (!is_not_found(failure)) throw;
                throw Error(not_here + "a signature in " + root + "files.txt or a bag at " + url);
            }
        }
    } catch (const DownloadFailure& failure) {
        throw Error("cannot look up model " + name + " on the mirror " + root + ": " + failure.what());
    }
    for (const auto& official : official_catalog().files)
        if (!mirror.find_file(official.signature)) mirror.files.push_back(official);
    return mirror;
}

const RemoteFile& bag_member(const Catalog& catalog, const BagDefinition& bag, const std::string& signature,
                             const std::string& root) {
    const RemoteFile* file = catalog.find_file(signature);
    if (!file) throw Error("bag " + bag.name + " uses model " + signature + ", which " + root + "files.txt does not list");
    if (!file->supported) throw unsupported_model(bag.name);
    return *file;
}

std::string local_copy(const RemoteFile& file, const RemoteOptions& options) {
    // The file's folder is relative to whichever root is in force, so an
    // overridden root must keep the official layout (hybrid_transformer/...).
    const CachedFileRequest request{file.file_name(), file.checksum, options.root_url + file.folder + file.file_name()};
    return ensure_cached(request, options);
}

CatalogEntry bag_entry(const Catalog& catalog, const BagDefinition& bag, const std::string& cache_dir) {
    CatalogEntry entry;
    entry.name = bag.name;
    entry.kind = CatalogEntry::Kind::Bag;
    entry.supported = catalog.supports(bag);
    entry.cached = true;
    for (const auto& signature : bag.models) {
        const RemoteFile* file = catalog.find_file(signature);
        if (!file) {
            entry.cached = false;
            continue;
        }
        if (entry.sources.empty()) entry.sources = file->sources;
        if (std::find(entry.files.begin(), entry.files.end(), file->file_name()) == entry.files.end())
            entry.files.push_back(file->file_name());
        entry.cached = entry.cached && is_cached(cache_dir, file->file_name());
    }
    return entry;
}

CatalogEntry single_entry(const RemoteFile& file, const std::string& cache_dir) {
    CatalogEntry entry;
    entry.name = file.signature;
    entry.kind = CatalogEntry::Kind::Single;
    entry.sources = file.sources;
    entry.files = {file.file_name()};
    entry.cached = is_cached(cache_dir, file.file_name());
    entry.supported = file.supported;
    return entry;
}

}  // namespace

BagSpec resolve_model_from_catalog(const std::string& name, const Catalog& catalog, const RemoteOptions& options) {
    const RemoteOptions resolved = resolve_options(options);
    BagSpec spec;
    spec.name = name;
    if (const RemoteFile* single = catalog.find_file(name)) {
        if (!single->supported) throw unsupported_model(name);
        spec.checkpoints.push_back(local_copy(*single, resolved));
        return spec;
    }
    const BagDefinition* bag = catalog.find_bag(name);
    if (!bag) throw Error("unknown model " + name);
    // Check every member before downloading any, so an unsupported bag costs nothing.
    std::vector<const RemoteFile*> members;
    for (const auto& signature : bag->models) members.push_back(&bag_member(catalog, *bag, signature, resolved.root_url));
    for (const RemoteFile* member : members) spec.checkpoints.push_back(local_copy(*member, resolved));
    spec.weights = bag->weights;
    spec.segment = bag->segment;
    return spec;
}

BagSpec resolve_remote_model(const std::string& name, const RemoteOptions& options) {
    const RemoteOptions resolved = resolve_options(options);
    const Catalog& official = official_catalog();
    // Built-in names never ask a mirror for their definition: an overridden
    // root is taken to be a copy of the official layout, so htdemucs comes from
    // ROOT + "hybrid_transformer/955717e8-8726e21a.th" there, and a fully
    // cached built-in model needs no network at all.
    if (official.find_file(name) || official.find_bag(name)) return resolve_model_from_catalog(name, official, resolved);
    if (!is_mirror_root(resolved.root_url)) throw Error("unknown model " + name);
    return resolve_model_from_catalog(name, fetch_mirror_catalog(name, resolved), resolved);
}

std::vector<CatalogEntry> list_catalog(const RemoteOptions& options) {
    const RemoteOptions resolved = resolve_options(options);
    const Catalog& catalog = official_catalog();
    std::vector<CatalogEntry> entries;
    for (const auto& bag : catalog.bags) entries.push_back(bag_entry(catalog, bag, resolved.cache_dir));
    for (const auto& file : catalog.files) entries.push_back(single_entry(file, resolved.cache_dir));
    std::stable_sort(entries.begin(), entries.end(), [](const CatalogEntry& a, const CatalogEntry& b) {
        if (a.kind != b.kind) return a.kind == CatalogEntry::Kind::Bag;
        return a.supported && !b.supported;
    });
    return entries;
}

}  // namespace fastdemucs
