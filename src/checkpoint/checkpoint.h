// Reads the official Demucs `.th` checkpoints: a torch zip archive whose
// data.pkl is a protocol-2 pickle of {klass, args, kwargs, state,
// training_args}. Pure data parsing: nothing named in the file is executed.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "checkpoint/pyvalue.h"

namespace fastdemucs {

// A state tensor, converted to float32 and made contiguous (C order).
struct HostTensor {
    std::vector<int64_t> shape;
    std::vector<float> data;
    int64_t numel() const;
};

struct Checkpoint {
    std::string path;
    std::string klass;                     // "demucs.htdemucs HTDemucs"
    PyValuePtr kwargs;                     // Dict of constructor kwargs
    std::map<std::string, HostTensor> state;
};

// Throws fastdemucs::Error with a one-line message naming `path` and the
// problem (missing, truncated, not a zip, bad pickle, quantized, ...).
Checkpoint read_checkpoint(const std::string& path);

// Same, from bytes already in memory (`name` is used in messages).
Checkpoint read_checkpoint_bytes(const std::string& name, const std::vector<uint8_t>& bytes);

}  // namespace fastdemucs
