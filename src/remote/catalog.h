// What a model repository holds: checkpoint files by signature and bags of
// models by name. The official repository's contents are built in (they
// mirror the official remote/files.txt and remote/*.yaml); a mirror's are read
// from its own files.txt and NAME.yaml, in the same formats.
#pragma once

#include <string>
#include <vector>

namespace fastdemucs {

// One checkpoint, stored at ROOT + folder + SIG-CHECKSUM.th.
struct RemoteFile {
    std::string signature;
    std::string checksum;              // leading hex digits of the file's sha256
    std::string folder;                // relative to the root URL: "" or "sub/"
    bool supported = true;             // false: an architecture we do not run yet
    std::vector<std::string> sources;  // stem names, when known
    std::string file_name() const { return signature + "-" + checksum + ".th"; }
};

// A bag of models, as in the official NAME.yaml files.
struct BagDefinition {
    std::string name;
    std::vector<std::string> models;           // signatures, in order
    std::vector<std::vector<double>> weights;  // [models][sources]; empty = all ones
    double segment = 0.0;                      // 0 = none
};

struct Catalog {
    std::vector<RemoteFile> files;
    std::vector<BagDefinition> bags;

    const RemoteFile* find_file(const std::string& signature) const;  // null if absent
    const BagDefinition* find_bag(const std::string& name) const;     // null if absent
    // True when every model of the bag is listed and supported.
    bool supports(const BagDefinition& bag) const;
};

// The official repository at kOfficialRootUrl.
const Catalog& official_catalog();

// Parses a files.txt: blank lines and '#' comments are skipped, "root: sub/"
// sets the folder of the lines after it, every other line is SIG-CHECKSUM.th.
// `where` names the source in error messages.
std::vector<RemoteFile> parse_file_list(const std::string& text, const std::string& where);

// Parses a bag file: `models:` (list of signatures), optional `weights:` (one
// list per model) and `segment:` (seconds).
BagDefinition parse_bag_file(const std::string& name, const std::string& text, const std::string& where);

}  // namespace fastdemucs
