// `fastdemucs export`: resolves the model like separation does, writes one
// checked ONNX file per model (and the bag's JSON), atomically.
#include "export/export.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iomanip>
#include <sstream>

#include "engine/repo.h"
#include "error.h"
#include "remote/remote_models.h"

namespace fastdemucs {
namespace {

namespace fs = std::filesystem;

// Fails before any work when `path` cannot be created: its folder must exist
// and be writable, and `path` must not be a folder.
void check_writable(const fs::path& path) {
    const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
    std::error_code ec;
    if (!fs::is_directory(dir, ec))
        throw Error("cannot write " + path.string() + ": " + dir.string() + " is not an existing folder");
    if (::access(dir.c_str(), W_OK | X_OK) != 0)
        throw Error("cannot write " + path.string() + ": " + dir.string() + " is not writable");
    if (fs::is_directory(path, ec)) throw Error("cannot write " + path.string() + ": it is a folder");
}

// A file written under a temporary name beside its destination, renamed by
// commit(); removed if never committed.
class PendingFile {
public:
    explicit PendingFile(const fs::path& dest) : dest_(dest) {
        std::string pattern = dest.string() + ".tmp-XXXXXX";
        std::vector<char> buf(pattern.begin(), pattern.end());
        buf.push_back('\0');
        const int fd = ::mkstemp(buf.data());
        if (fd < 0) throw Error("cannot write " + dest.string() + ": " + std::strerror(errno));
        temp_ = buf.data();
        fd_ = fd;
    }
    PendingFile(const PendingFile&) = delete;
    PendingFile& operator=(const PendingFile&) = delete;
    ~PendingFile() {
        if (fd_ >= 0) ::close(fd_);
        if (!temp_.empty()) ::unlink(temp_.c_str());
    }
    void write(const std::string& bytes) {
        size_t done = 0;
        while (done < bytes.size()) {
            const ssize_t n = ::write(fd_, bytes.data() + done, bytes.size() - done);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) throw Error("cannot write " + dest_.string() + ": " + std::strerror(errno));
            done += size_t(n);
        }
        if (::fsync(fd_) != 0 || ::close(fd_) != 0) {
            fd_ = -1;
            throw Error("cannot write " + dest_.string() + ": " + std::strerror(errno));
        }
        fd_ = -1;
        // mkstemp creates 0600; make it an ordinary file.
        const mode_t mask = ::umask(0);
        ::umask(mask);
        ::chmod(temp_.c_str(), 0666 & ~mask);
    }
    void commit() {
        if (std::rename(temp_.c_str(), dest_.c_str()) != 0)
            throw Error("cannot write " + dest_.string() + ": " + std::strerror(errno));
        temp_.clear();
    }

private:
    fs::path dest_;
    std::string temp_;
    int fd_ = -1;
};

std::string json_string(const std::string& s) {
    std::string out = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') out += '\\', out += c;
        else if (static_cast<unsigned char>(c) < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", c);
            out += buf;
        } else out += c;
    }
    return out + "\"";
}

std::string json_number(double v) {
    std::ostringstream s;
    s << std::setprecision(17) << v;
    return s.str();
}

}  // namespace

ExportResult export_onnx(const ExportParams& params) {
    check_export_options(params.opset, params.batch);
    if (params.output.empty()) throw Error("export needs an output file: -o MODEL.onnx");
    const fs::path output(params.output);
    check_writable(output);

    BagSpec spec;
    if (!params.repo.empty()) {
        spec = resolve_local_model(params.name, params.repo);
    } else {
        RemoteOptions remote;
        remote.root_url = params.model_url;
        remote.cache_dir = params.cache_dir;
        remote.offline = params.offline;
        spec = resolve_remote_model(params.name, remote);
    }
    if (spec.checkpoints.empty()) throw Error("model " + params.name + " has no checkpoints");
    if (!spec.weights.empty() && spec.weights.size() != spec.checkpoints.size())
        throw Error(spec.name + ": the bag has " + std::to_string(spec.weights.size()) + " weight lists for " +
                    std::to_string(spec.checkpoints.size()) + " models");

    // One model: MODEL.onnx. A bag: MODEL.0.onnx ... beside MODEL.json.
    const bool bag = spec.checkpoints.size() > 1;
    const fs::path dir = output.has_parent_path() ? output.parent_path() : fs::path(".");
    const std::string stem = output.extension() == ".onnx" ? output.stem().string() : output.filename().string();
    std::vector<fs::path> paths;
    for (size_t i = 0; i < spec.checkpoints.size(); i++)
        paths.push_back(bag ? dir / (stem + "." + std::to_string(i) + ".onnx") : output);

    std::vector<std::unique_ptr<PendingFile>> pending;
    ExportResult result;
    std::vector<std::string> sources;
    int samplerate = 0, channels = 0;
    std::vector<int64_t> segments;
    std::vector<std::string> signatures;
    for (size_t i = 0; i < spec.checkpoints.size(); i++) {
        auto model = load_htdemucs(spec.checkpoints[i]);
        if (i == 0) {
            sources = model->config.sources;
            samplerate = model->config.samplerate;
            channels = model->config.audio_channels;
        } else if (model->config.sources != sources || model->config.samplerate != samplerate ||
                   model->config.audio_channels != channels) {
            throw Error(spec.checkpoints[i] + ": its sources, sample rate or channels differ from the bag's first model");
        }
        if (params.info)
            params.info("Exporting " + spec.checkpoints[i] + " to " + paths[i].string() + " (" +
                        std::to_string(model->config.segment_samples()) + " samples, " +
                        std::to_string(model->config.num_sources()) + " sources)");
        const std::string bytes = htdemucs_to_onnx(*model, params.opset, params.batch);
        segments.push_back(model->config.segment_samples());
        signatures.push_back(fs::path(spec.checkpoints[i]).stem().string());
        pending.push_back(std::make_unique<PendingFile>(paths[i]));
        pending.back()->write(bytes);
        result.files.push_back(paths[i].string());
        result.sizes.push_back(int64_t(bytes.size()));
    }

    if (bag) {
        // The bag: which file is which model, how their stems are weighted
        // (apply_model's per-source weights, normalised by their sum per
        // source), and the chunk length to use.
        std::ostringstream j;
        j << "{\n  \"name\": " << json_string(params.name) << ",\n  \"models\": [";
        for (size_t i = 0; i < paths.size(); i++)
            j << (i ? ", " : "") << json_string(paths[i].filename().string());
        j << "],\n  \"signatures\": [";
        for (size_t i = 0; i < signatures.size(); i++) j << (i ? ", " : "") << json_string(signatures[i]);
        j << "],\n  \"sources\": [";
        for (size_t i = 0; i < sources.size(); i++) j << (i ? ", " : "") << json_string(sources[i]);
        j << "],\n  \"weights\": [";
        for (size_t i = 0; i < spec.checkpoints.size(); i++) {
            j << (i ? ", " : "") << "[";
            for (size_t s = 0; s < sources.size(); s++) {
                const double w = spec.weights.empty() ? 1.0 : spec.weights[i].at(s);
                j << (s ? ", " : "") << json_number(w);
            }
            j << "]";
        }
        j << "],\n  \"samplerate\": " << samplerate << ",\n  \"audio_channels\": " << channels;
        j << ",\n  \"segment_samples\": [";
        for (size_t i = 0; i < segments.size(); i++) j << (i ? ", " : "") << segments[i];
        j << "],\n  \"segment\": ";
        if (spec.segment > 0) j << json_number(spec.segment);
        else j << "null";
        j << ",\n  \"batch\": " << (params.batch > 0 ? std::to_string(params.batch) : "\"dynamic\"") << "\n}\n";
        const fs::path json_path = dir / (stem + ".json");
        pending.push_back(std::make_unique<PendingFile>(json_path));
        const std::string text = j.str();
        pending.back()->write(text);
        result.files.push_back(json_path.string());
        result.sizes.push_back(int64_t(text.size()));
    }
    for (auto& p : pending) p->commit();
    return result;
}

}  // namespace fastdemucs
