// Local model folder resolution, with the same rules as the official
// `demucs --repo DIR`: every `SIG.th` / `SIG-CHECKSUM.th` is a single model,
// every `NAME.yaml` is a bag of models; a single model wins over a bag of the
// same name.
#include "engine/repo.h"

#include <openssl/evp.h>

#include <yaml-cpp/yaml.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <system_error>

#include "engine/bag_weights.h"
#include "error.h"

namespace fastdemucs {
namespace {

namespace fs = std::filesystem;

struct ModelFile {
    std::string path;
    std::string checksum;  // empty when the file is named SIG.th
};

struct RepoScan {
    std::map<std::string, ModelFile> models;  // by signature
    std::map<std::string, std::string> bags;  // yaml path by bag name
};

// Python's Path.suffix / Path.stem: a leading dot does not start a suffix.
void split_suffix(const std::string& filename, std::string& stem, std::string& suffix) {
    const auto dot = filename.rfind('.');
    if (dot == std::string::npos || dot == 0) {
        stem = filename;
        suffix.clear();
    } else {
        stem = filename.substr(0, dot);
        suffix = filename.substr(dot);
    }
}

void add_model_file(RepoScan& scan, const fs::path& file, const std::string& stem) {
    ModelFile model{file.string(), {}};
    std::string signature = stem;
    const auto dash = stem.find('-');
    if (dash != std::string::npos) {
        if (stem.find('-', dash + 1) != std::string::npos)
            throw Error("bad model file name " + file.string() +
                        ": expected SIG.th or SIG-CHECKSUM.th");
        signature = stem.substr(0, dash);
        model.checksum = stem.substr(dash + 1);
    }
    if (scan.models.count(signature))
        throw Error("duplicate models for signature " + signature + " in " +
                    file.parent_path().string() + ": delete all but one");
    scan.models[signature] = model;
}

RepoScan scan_repo(const std::string& repo_dir) {
    std::error_code ec;
    if (repo_dir.empty() || !fs::is_directory(repo_dir, ec))
        throw Error(repo_dir + " must exist and be a directory");
    RepoScan scan;
    fs::directory_iterator it(repo_dir, ec);
    if (ec) throw Error("cannot list " + repo_dir + ": " + ec.message());
    for (; it != fs::directory_iterator(); it.increment(ec)) {
        if (ec) throw Error("cannot list " + repo_dir + ": " + ec.message());
        std::error_code type_ec;
        if (!it->is_regular_file(type_ec)) continue;
        std::string stem, suffix;
        split_suffix(it->path().filename().string(), stem, suffix);
        if (suffix == ".th")
            add_model_file(scan, it->path(), stem);
        else if (suffix == ".yaml")
            scan.bags[stem] = it->path().string();
    }
    return scan;
}

// The checkpoint path for a signature, checksum verified when the name has one.
std::string model_path(const RepoScan& scan, const std::string& signature,
                       const std::string& repo_dir) {
    const auto found = scan.models.find(signature);
    if (found == scan.models.end())
        throw Error("no model file for signature " + signature + " in " + repo_dir);
    if (!found->second.checksum.empty()) verify_checksum(found->second.path, found->second.checksum);
    return found->second.path;
}

BagSpec load_bag(const std::string& name, const std::string& yaml_path, const RepoScan& scan,
                 const std::string& repo_dir) {
    YAML::Node root;
    try {
        root = YAML::LoadFile(yaml_path);
    } catch (const YAML::Exception& e) {
        throw Error("bad bag file " + yaml_path + ": " + e.what());
    }
    BagSpec bag;
    bag.name = name;
    try {
        const YAML::Node models = root.IsMap() ? root["models"] : YAML::Node();
        if (!models || !models.IsSequence() || models.size() == 0)
            throw Error(yaml_path + ": 'models' must be a non-empty list of signatures");
        for (const auto& signature : models)
            bag.checkpoints.push_back(model_path(scan, signature.as<std::string>(), repo_dir));
        bag.weights = parse_bag_weights(root["weights"], bag.checkpoints.size(), yaml_path);
        const YAML::Node segment = root["segment"];
        if (segment && !segment.IsNull()) {
            bag.segment = segment.as<double>();
            if (!(bag.segment > 0)) throw Error(yaml_path + ": 'segment' must be positive");
        }
    } catch (const YAML::Exception& e) {
        throw Error("bad bag file " + yaml_path + ": " + e.what());
    }
    return bag;
}

std::string to_hex(const unsigned char* bytes, unsigned int size) {
    static const char digits[] = "0123456789abcdef";
    std::string hex;
    hex.reserve(size * 2);
    for (unsigned int i = 0; i < size; ++i) {
        hex.push_back(digits[bytes[i] >> 4]);
        hex.push_back(digits[bytes[i] & 15]);
    }
    return hex;
}

}  // namespace

BagSpec resolve_local_model(const std::string& name, const std::string& repo_dir) {
    const RepoScan scan = scan_repo(repo_dir);
    if (scan.models.count(name)) {
        BagSpec single;
        single.name = name;
        single.checkpoints.push_back(model_path(scan, name, repo_dir));
        return single;
    }
    const auto bag = scan.bags.find(name);
    if (bag == scan.bags.end())
        throw Error("unknown model " + name + " in " + repo_dir +
                    ": neither a single model signature nor a bag of models");
    return load_bag(name, bag->second, scan, repo_dir);
}

std::string sha256_file(const std::string& path) {
    std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
    if (!file) throw Error("cannot open " + path);
    std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
    if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1)
        throw Error("sha256: cannot initialise OpenSSL digest");
    // Streamed: checkpoints can be hundreds of MB.
    std::vector<unsigned char> buffer(1 << 20);
    size_t got;
    while ((got = std::fread(buffer.data(), 1, buffer.size(), file.get())) > 0)
        if (EVP_DigestUpdate(ctx.get(), buffer.data(), got) != 1)
            throw Error("sha256: digest update failed for " + path);
    if (std::ferror(file.get())) throw Error("cannot read " + path);
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int size = 0;
    if (EVP_DigestFinal_ex(ctx.get(), digest, &size) != 1)
        throw Error("sha256: digest final failed for " + path);
    return to_hex(digest, size);
}

void verify_checksum(const std::string& path, const std::string& prefix) {
    const std::string actual = sha256_file(path).substr(0, prefix.size());
    if (actual != prefix)
        throw Error("invalid checksum for file " + path + ": expected " + prefix + " but got " +
                    actual);
}

}  // namespace fastdemucs
