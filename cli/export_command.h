// `fastdemucs export -n NAME [--repo DIR] -o MODEL.onnx [--opset 17]
// [--batch N|dynamic]`: the model as one ONNX graph (see src/export/).
#pragma once

namespace fastdemucs_cli {

// True when argv names the export subcommand (`fastdemucs export ...`).
bool is_export_command(int argc, char** argv);

// Runs it: argv[1] is "export". Returns the exit status; errors are
// reported as `fastdemucs: error: ...`.
int run_export(int argc, char** argv);

}  // namespace fastdemucs_cli
