#include "checkpoint/checkpoint.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <exception>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>

#include "checkpoint/pickle.h"
#include "checkpoint/tensor_data.h"
#include "checkpoint/zip_archive.h"
#include "error.h"

namespace fastdemucs {

int64_t HostTensor::numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

namespace {

using Kind = PyValue::Kind;

constexpr const char* kHTDemucs = "demucs.htdemucs HTDemucs";

[[noreturn]] void fail(const std::string& name, const std::string& what) { throw Error(name + ": " + what); }

// "module name" (as GLOBAL names it) -> "module.name" (as Python prints it).
std::string dotted(std::string global) {
    std::replace(global.begin(), global.end(), ' ', '.');
    return global;
}

std::vector<uint8_t> read_file(const std::string& path) {
    std::error_code ec;
    auto status = std::filesystem::status(path, ec);
    if (status.type() == std::filesystem::file_type::not_found) fail(path, "no such file");
    if (status.type() == std::filesystem::file_type::directory) fail(path, "is a directory, not a checkpoint file");
    std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
    if (!file) fail(path, std::string("cannot open (") + std::strerror(errno) + ")");
    // One read of the expected size, then chunks in case the file grew.
    auto expected = std::filesystem::file_size(path, ec);
    std::vector<uint8_t> bytes(ec ? 0 : static_cast<size_t>(expected));
    size_t done = std::fread(bytes.data(), 1, bytes.size(), file.get());
    bytes.resize(done);
    uint8_t chunk[1 << 16];
    size_t n;
    while ((n = std::fread(chunk, 1, sizeof chunk, file.get())) > 0) bytes.insert(bytes.end(), chunk, chunk + n);
    if (std::ferror(file.get())) fail(path, "read error");
    return bytes;
}

// Torch zips start with a local file header; anything else is not one.
void check_zip_magic(const std::string& name, const std::vector<uint8_t>& bytes) {
    if (bytes.empty()) fail(name, "not a torch checkpoint (empty file)");
    static const uint8_t kLocalHeader[4] = {'P', 'K', 3, 4};
    if (bytes.size() >= 4 && std::memcmp(bytes.data(), kLocalHeader, 4) == 0) return;
    if (bytes[0] == 0x80)  // a bare pickle: torch.save before the zip format (torch < 1.6)
        fail(name, "not a torch checkpoint (not a zip archive; the legacy torch.save format is not supported)");
    fail(name, "not a torch checkpoint (not a zip archive)");
}

// The archive's single top folder: the one holding data.pkl (torch names it
// after the file at save time, so it is not always "archive").
std::string find_prefix(const std::string& name, const ZipArchive& zip) {
    std::vector<std::string> found;
    const std::string suffix = "/data.pkl";
    for (const std::string& entry : zip.entry_names()) {
        if (entry.size() > suffix.size() && entry.compare(entry.size() - suffix.size(), suffix.size(), suffix) == 0 &&
            entry.find('/') == entry.size() - suffix.size())
            found.push_back(entry);
    }
    if (found.empty()) fail(name, "not a torch checkpoint (no data.pkl in the zip archive)");
    if (found.size() > 1) fail(name, "not a torch checkpoint (several data.pkl entries: " + found[0] + ", " + found[1] + ")");
    return found[0].substr(0, found[0].size() - std::strlen("data.pkl"));
}

void check_byteorder(const std::string& name, const ZipArchive& zip, const std::string& prefix) {
    const std::string entry = prefix + "byteorder";
    if (!zip.contains(entry)) return;  // older torch versions wrote little-endian without saying so
    std::vector<uint8_t> bytes = zip.read(entry);
    std::string order(bytes.begin(), bytes.end());
    if (order == "little") return;
    if (order == "big") fail(name, "big-endian checkpoints are not supported");
    fail(name, "unknown byteorder '" + order.substr(0, 16) + "'");
}

pickle::ParseResult parse_pickle(const std::string& name, const std::vector<uint8_t>& bytes) {
    try {
        return pickle::parse(bytes.data(), bytes.size());
    } catch (const Error& e) {
        fail(name, std::string("corrupt data.pkl: ") + e.what());
    }
}

const PyValue& require_entry(const std::string& name, const PyValue& root, const char* key) {
    const PyValue* value = root.get(key);
    if (!value) fail(name, std::string("not a Demucs checkpoint (no '") + key + "' entry)");
    return *value;
}

std::string check_klass(const std::string& name, const PyValue& klass) {
    if (klass.kind != Kind::Global) fail(name, "not a Demucs checkpoint ('klass' is " + klass.repr() + ", not a class)");
    if (klass.s != kHTDemucs)
        fail(name, "is a " + dotted(klass.s) + " model; only HTDemucs (Demucs v4) checkpoints are supported");
    return klass.s;
}

// A state tensor waiting for its storage's bytes.
struct PendingTensor {
    const std::string* key;
    const pickle::TensorRecord* record;
    const pickle::StorageRecord* storage;
};

// Checks the state dict and lists its tensors, grouped by storage key so
// that each data entry is read once (tensors may share a storage).
std::vector<PendingTensor> list_state_tensors(const std::string& name, const PyValue& state,
                                              const pickle::ParseResult& parsed) {
    if (state.kind != Kind::Dict) fail(name, "not a Demucs checkpoint ('state' is not a dict)");
    if (state.get("__quantized")) fail(name, "is a diffq-quantized checkpoint, which is not supported");
    std::vector<PendingTensor> tensors;
    for (const auto& [key, value] : state.dict) {
        if (key->kind != Kind::String) fail(name, "state has a key that is not a string: " + key->repr());
        if (value->kind != Kind::Tensor)
            fail(name, "state entry '" + key->s + "' is not a tensor (" + value->repr() + ")");
        const pickle::TensorRecord& record = parsed.tensors.at(static_cast<size_t>(value->tensor_index));
        tensors.push_back({&key->s, &record, &parsed.storages.at(static_cast<size_t>(record.storage))});
    }
    std::stable_sort(tensors.begin(), tensors.end(),
                     [](const PendingTensor& a, const PendingTensor& b) { return a.storage->key < b.storage->key; });
    return tensors;
}

std::vector<uint8_t> read_data_entry(const std::string& name, const ZipArchive& zip, const std::string& entry,
                                     const std::string& tensor) {
    if (!zip.contains(entry)) fail(name, "missing tensor data entry " + entry + " (for '" + tensor + "')");
    return zip.read(entry);
}

// The data entry must hold every element the storage record declares.
void check_storage_size(const std::string& name, const std::string& entry, size_t bytes,
                        const pickle::StorageRecord& storage, StorageType type) {
    uint64_t needed = 0;
    if (__builtin_mul_overflow(static_cast<uint64_t>(storage.numel), storage_element_size(type), &needed) ||
        bytes < needed)
        fail(name, "tensor data entry " + entry + " holds " + std::to_string(bytes) + " bytes, expected " +
                       std::to_string(storage.numel) + " " + storage_type_name(type) + " values");
}

std::map<std::string, HostTensor> load_state(const std::string& name, const ZipArchive& zip, const std::string& prefix,
                                             const PyValue& state, const pickle::ParseResult& parsed) {
    const std::vector<PendingTensor> pending = list_state_tensors(name, state, parsed);
    // The data entries are read one after the other (one archive handle);
    // the conversion to float32, most of the time (105 MB of fresh memory
    // for htdemucs_6s), runs on a few threads.
    std::vector<std::shared_ptr<const std::vector<uint8_t>>> storage_bytes(pending.size());
    std::vector<StorageType> types(pending.size());
    for (size_t i = 0; i < pending.size(); i++) {
        const pickle::StorageRecord& storage = *pending[i].storage;
        if (!storage_type_from_name(storage.type, &types[i]))
            fail(name, "tensor '" + *pending[i].key + "' has unsupported storage type " + dotted(storage.type));
        const std::string entry = prefix + "data/" + storage.key;
        if (i > 0 && pending[i - 1].storage->key == storage.key) {
            storage_bytes[i] = storage_bytes[i - 1];  // tensors sharing a storage (sorted together)
        } else {
            storage_bytes[i] = std::make_shared<const std::vector<uint8_t>>(
                read_data_entry(name, zip, entry, *pending[i].key));
        }
        check_storage_size(name, entry, storage_bytes[i]->size(), storage, types[i]);
    }
    std::vector<HostTensor> tensors(pending.size());
    std::atomic<size_t> next{0};
    std::mutex failure_mutex;
    std::exception_ptr failure;  // the first (out of memory)
    auto convert = [&] {
        try {
            for (size_t i = next++; i < pending.size(); i = next++) {
                const pickle::TensorRecord& record = *pending[i].record;
                tensors[i].shape = record.size;
                tensors[i].data.resize(static_cast<size_t>(record.numel()));
                gather_as_float(types[i], storage_bytes[i]->data(), record.offset, record.size, record.stride,
                                tensors[i].data.data());
            }
        } catch (...) {
            std::lock_guard<std::mutex> lock(failure_mutex);
            if (!failure) failure = std::current_exception();
            next = pending.size();
        }
    };
    const unsigned workers = std::min(4u, std::max(1u, std::thread::hardware_concurrency()));
    std::vector<std::thread> threads;
    try {
        for (unsigned w = 1; w < workers; w++) threads.emplace_back(convert);
    } catch (const std::system_error&) {
        // No more threads to be had: the ones started and this one share the work.
    }
    convert();
    for (auto& t : threads) t.join();
    if (failure) std::rethrow_exception(failure);
    std::map<std::string, HostTensor> out;
    for (size_t i = 0; i < pending.size(); i++) out[*pending[i].key] = std::move(tensors[i]);
    return out;
}

}  // namespace

Checkpoint read_checkpoint(const std::string& path) { return read_checkpoint_bytes(path, read_file(path)); }

Checkpoint read_checkpoint_bytes(const std::string& name, const std::vector<uint8_t>& bytes) {
    check_zip_magic(name, bytes);
    ZipArchive zip(name, bytes.data(), bytes.size());
    const std::string prefix = find_prefix(name, zip);
    check_byteorder(name, zip, prefix);
    const pickle::ParseResult parsed = parse_pickle(name, zip.read(prefix + "data.pkl"));

    const PyValue& root = *parsed.root;
    if (root.kind != Kind::Dict)
        fail(name, "not a Demucs checkpoint (the pickle holds " + root.repr().substr(0, 60) + ", not a dict)");
    Checkpoint checkpoint;
    checkpoint.path = name;
    checkpoint.klass = check_klass(name, require_entry(name, root, "klass"));
    const PyValue& kwargs = require_entry(name, root, "kwargs");
    if (kwargs.kind != Kind::Dict) fail(name, "not a Demucs checkpoint ('kwargs' is not a dict)");
    const PyValue& state = require_entry(name, root, "state");
    checkpoint.state = load_state(name, zip, prefix, state, parsed);
    for (const auto& [key, value] : root.dict) {
        if (value.get() == &kwargs) checkpoint.kwargs = value;
    }
    return checkpoint;
}

}  // namespace fastdemucs
