// `fastdemucs export`: writes a model (or each model of a bag) as one ONNX
// graph that maps the waveform [batch, channels, segment_samples] to the
// stems [batch, sources, channels, segment_samples], with the STFT, both
// branches, the cross-transformer and the iSTFT inside. Built with the ONNX
// protobuf classes and checked with the ONNX checker before it is written.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/model.h"

namespace fastdemucs {

// The only opset the exporter writes: the first with STFT and
// LayerNormalization, and the newest the ONNX library it is built with knows.
inline constexpr int kExportOpset = 17;

struct ExportParams {
    std::string name;        // model or bag name, as -n
    std::string repo;        // local folder, as --repo; empty: pretrained by name
    std::string model_url;   // mirror root (pretrained by name)
    std::string cache_dir;   // empty: torch.hub's
    bool offline = false;
    std::string output;      // MODEL.onnx
    int opset = kExportOpset;
    int64_t batch = 1;       // 0: symbolic batch dimension
    std::function<void(const std::string&)> info;  // progress lines (may be empty)
};

struct ExportResult {
    std::vector<std::string> files;  // .onnx files written, then the bag's .json if any
    std::vector<int64_t> sizes;      // bytes, same order
};

// Throws Error on unknown models, unsupported options, unwritable output.
// Nothing is left behind on failure: files are written to temporary names
// and renamed when all of them are complete.
ExportResult export_onnx(const ExportParams& params);

// The serialized, checked ModelProto of one model.
std::string htdemucs_to_onnx(const HTDemucsModel& model, int opset, int64_t batch);

// Validates the options alone (opset, batch); throws Error with the reason.
void check_export_options(int opset, int64_t batch);

}  // namespace fastdemucs
