#include "remote/catalog.h"

#include <yaml-cpp/yaml.h>

#include <cctype>
#include <set>
#include <sstream>

#include "engine/bag_weights.h"
#include "error.h"

namespace fastdemucs {
namespace {

const std::vector<std::string> kFourStems = {"drums", "bass", "other", "vocals"};
const std::vector<std::string> kSixStems = {"drums", "bass", "other", "vocals", "guitar", "piano"};

RemoteFile file(const char* signature, const char* checksum, const char* folder, bool supported,
                const std::vector<std::string>& sources) {
    return RemoteFile{signature, checksum, folder, supported, sources};
}

std::vector<RemoteFile> official_files() {
    // Demucs v3 (mdx_final/): not HTDemucs, so listed only to name them as
    // known but unsupported.
    const char* const mdx_final[][2] = {
        {"0d19c1c6", "0f06f20e"}, {"5d2d6c55", "db83574e"}, {"7d865c68", "3d5dd56b"},
        {"7ecf8ec1", "70f50cc9"}, {"a1d90b5c", "ae9d2452"}, {"c511e2ab", "fe698775"},
        {"cfa93e08", "61801ae1"}, {"e51eebcc", "c1b80bdd"}, {"6b9c2ca1", "3fd82607"},
        {"b72baf4e", "8778635e"}, {"42e558d4", "196e0e1b"}, {"305bc58f", "18378783"},
        {"14fc6a69", "a89dd0ee"}, {"464b36d7", "e5a9386e"}, {"7fd6ef75", "a905dd85"},
        {"83fc094f", "4a16d450"}, {"1ef250f1", "592467ce"}, {"902315c2", "b39ce9c9"},
        {"9a6b4851", "03af0aa6"}, {"fa0cb7f9", "100d8bf4"},
    };
    std::vector<RemoteFile> files;
    for (const auto& entry : mdx_final) files.push_back(file(entry[0], entry[1], "mdx_final/", false, kFourStems));
    const char* ht = "hybrid_transformer/";
    files.push_back(file("955717e8", "8726e21a", ht, true, kFourStems));  // htdemucs
    files.push_back(file("f7e0c4bc", "ba3fe64a", ht, true, kFourStems));  // htdemucs_ft (drums)
    files.push_back(file("d12395a8", "e57c48e6", ht, true, kFourStems));  // htdemucs_ft (bass)
    files.push_back(file("92cfc3b6", "ef3bcb9c", ht, true, kFourStems));  // htdemucs_ft (other)
    files.push_back(file("04573f0d", "f3cf25b2", ht, true, kFourStems));  // htdemucs_ft (vocals)
    // Stored beside the transformers but an HDemucs (v3) model, the one of
    // hdemucs_mmi: refused up front rather than after a large download.
    files.push_back(file("75fc33f5", "1941ce65", ht, false, kFourStems));
    files.push_back(file("5c90dfd2", "34c22ccb", ht, true, kSixStems));  // htdemucs_6s
    return files;
}

std::vector<BagDefinition> official_bags() {
    const std::vector<std::vector<double>> identity4 = {
        {1, 0, 0, 0}, {0, 1, 0, 0}, {0, 0, 1, 0}, {0, 0, 0, 1}};
    std::vector<BagDefinition> bags = {
        {"htdemucs", {"955717e8"}, {}, 0.0},
        {"htdemucs_6s", {"5c90dfd2"}, {}, 0.0},
        {"htdemucs_ft", {"f7e0c4bc", "d12395a8", "92cfc3b6", "04573f0d"}, identity4, 0.0},
    };
    // Unsupported bags: their models are enough to name and list them; their
    // weights are left out since they are never resolved.
    const std::vector<std::pair<const char*, std::vector<std::string>>> unsupported = {
        {"hdemucs_mmi", {"75fc33f5"}},
        {"mdx", {"0d19c1c6", "7ecf8ec1", "c511e2ab", "7d865c68"}},
        {"mdx_extra", {"e51eebcc", "a1d90b5c", "5d2d6c55", "cfa93e08"}},
        {"mdx_q", {"6b9c2ca1", "b72baf4e", "42e558d4", "305bc58f"}},
        {"mdx_extra_q", {"83fc094f", "464b36d7", "14fc6a69", "7fd6ef75"}},
        {"repro_mdx_a", {"9a6b4851", "1ef250f1", "fa0cb7f9", "902315c2"}},
        {"repro_mdx_a_hybrid_only", {"fa0cb7f9", "902315c2", "fa0cb7f9", "902315c2"}},
        {"repro_mdx_a_time_only", {"9a6b4851", "9a6b4851", "1ef250f1", "1ef250f1"}},
    };
    for (const auto& [name, models] : unsupported) bags.push_back({name, models, {}, 44.0});
    return bags;
}

std::string trim(const std::string& text) {
    const auto begin = text.find_first_not_of(" \t\r");
    if (begin == std::string::npos) return "";
    const auto end = text.find_last_not_of(" \t\r");
    return text.substr(begin, end - begin + 1);
}

bool is_hex(const std::string& text) {
    if (text.empty()) return false;
    for (char c : text)
        if (!std::isxdigit(static_cast<unsigned char>(c)) || std::isupper(static_cast<unsigned char>(c)))
            return false;
    return true;
}

// "SIG-CHECKSUM.th" -> RemoteFile; the folder is set by the caller.
RemoteFile parse_file_name(const std::string& line, const std::string& where) {
    const std::string suffix = ".th";
    const auto dash = line.find('-');
    const bool shaped = line.size() > suffix.size() &&
                        line.compare(line.size() - suffix.size(), suffix.size(), suffix) == 0 &&
                        dash != std::string::npos && dash > 0 && line.find('-', dash + 1) == std::string::npos &&
                        line.find('/') == std::string::npos;
    RemoteFile parsed;
    if (shaped) {
        parsed.signature = line.substr(0, dash);
        parsed.checksum = line.substr(dash + 1, line.size() - suffix.size() - dash - 1);
    }
    if (!shaped || !is_hex(parsed.checksum))
        throw Error(where + ": bad line '" + line + "', expected SIG-CHECKSUM.th (CHECKSUM in lowercase hex)");
    return parsed;
}
}  // namespace

const RemoteFile* Catalog::find_file(const std::string& signature) const {
    for (const auto& entry : files)
        if (entry.signature == signature) return &entry;
    return nullptr;
}

const BagDefinition* Catalog::find_bag(const std::string& name) const {
    for (const auto& bag : bags)
        if (bag.name == name) return &bag;
    return nullptr;
}

bool Catalog::supports(const BagDefinition& bag) const {
    for (const auto& signature : bag.models) {
        const RemoteFile* entry = find_file(signature);
        if (!entry || !entry->supported) return false;
    }
    return true;
}

const Catalog& official_catalog() {
    static const Catalog catalog{official_files(), official_bags()};
    return catalog;
}

std::vector<RemoteFile> parse_file_list(const std::string& text, const std::string& where) {
    std::vector<RemoteFile> files;
    std::set<std::string> seen;
    std::string folder;
    std::istringstream lines(text);
    std::string raw;
    while (std::getline(lines, raw)) {
        const std::string line = trim(raw);
        if (line.empty() || line[0] == '#') continue;
        if (line.compare(0, 5, "root:") == 0) {
            folder = trim(line.substr(5));
            continue;
        }
        RemoteFile entry = parse_file_name(line, where);
        entry.folder = folder;
        if (!seen.insert(entry.signature).second)
            throw Error(where + ": signature " + entry.signature + " is listed twice");
        files.push_back(std::move(entry));
    }
    return files;
}

BagDefinition parse_bag_file(const std::string& name, const std::string& text, const std::string& where) {
    BagDefinition bag;
    bag.name = name;
    try {
        const YAML::Node root = YAML::Load(text);
        const YAML::Node models = root.IsMap() ? root["models"] : YAML::Node();
        if (!models || !models.IsSequence() || models.size() == 0)
            throw Error(where + ": 'models' must be a non-empty list of signatures");
        for (const auto& signature : models) bag.models.push_back(signature.as<std::string>());
        bag.weights = parse_bag_weights(root["weights"], bag.models.size(), where);
        const YAML::Node segment = root["segment"];
        if (segment && !segment.IsNull()) {
            bag.segment = segment.as<double>();
            if (!(bag.segment > 0)) throw Error(where + ": 'segment' must be positive");
        }
    } catch (const YAML::Exception& e) {
        throw Error("bad bag file " + where + ": " + e.what());
    }
    return bag;
}

}  // namespace fastdemucs
