#include "export_command.h"

#include <CLI/CLI.hpp>

#include <cstring>
#include <iostream>
#include <string>

#include "error.h"
#ifdef FASTDEMUCS_WITH_EXPORT
#include "export/export.h"
#endif

namespace fastdemucs_cli {

bool is_export_command(int argc, char** argv) { return argc > 1 && std::strcmp(argv[1], "export") == 0; }

namespace {

void report(const std::string& message) { std::cerr << "fastdemucs: error: " << message << std::endl; }

}  // namespace

int run_export(int argc, char** argv) {
#ifndef FASTDEMUCS_WITH_EXPORT
    (void)argc;
    (void)argv;
    report("this build of fastdemucs has no ONNX export (built without libonnx-dev and libprotobuf-dev)");
    return 1;
#else
    fastdemucs::ExportParams params;
    std::string batch = "1";
    bool quiet = false;
    CLI::App app{"Writes a model as one ONNX graph: mix [batch, channels, segment_samples] -> stems [batch, sources, "
                 "channels, segment_samples], with the STFT, both branches, the transformer and the iSTFT inside. "
                 "A bag gives one file per model (MODEL.0.onnx, ...) and MODEL.json with its weights.",
                 "fastdemucs export"};
    app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    app.add_option("-n,--name", params.name, "Pretrained model name or signature, as for separation.")
        ->option_text("NAME")->required();
    app.add_option("--repo", params.repo, "Folder containing the models for use with -n.")->option_text("DIR");
    app.add_option("-o,--out", params.output, "The ONNX file to write.")->option_text("MODEL.onnx")->required();
    app.add_option("--opset", params.opset, "ONNX opset (17, the first with STFT).")->option_text("N");
    app.add_option("--batch", batch, "Static batch size, or 'dynamic' for a symbolic one. Default 1.")
        ->option_text("N|dynamic");
    app.add_option("--model-url", params.model_url, "Root URL of a mirror of the official model files.")
        ->option_text("URL");
    app.add_flag("--offline", params.offline, "Never use the network: models must already be cached.");
    app.add_flag("-q,--quiet", quiet, "Print nothing but errors.");
    try {
        // argv[0] "fastdemucs", argv[1] "export": parse the rest.
        std::vector<std::string> args;
        for (int i = argc - 1; i >= 2; i--) args.push_back(argv[i]);
        app.parse(args);
    } catch (const CLI::CallForHelp&) {
        std::cout << app.help();
        return 0;
    } catch (const CLI::ParseError& e) {
        report(std::string(e.what()) + " (see fastdemucs export --help)");
        return 1;
    }
    try {
        if (batch == "dynamic") {
            params.batch = 0;
        } else {
            size_t used = 0;
            long value = 0;
            try {
                value = std::stol(batch, &used);
            } catch (const std::exception&) {
                used = 0;
            }
            if (used != batch.size() || value < 1)
                throw fastdemucs::Error("--batch must be a positive number or 'dynamic', not '" + batch + "'");
            params.batch = value;
        }
        if (!quiet) params.info = [](const std::string& line) { std::cout << line << std::endl; };
        const auto result = fastdemucs::export_onnx(params);
        if (!quiet)
            for (size_t i = 0; i < result.files.size(); i++)
                std::cout << "Wrote " << result.files[i] << " (" << result.sizes[i] << " bytes)" << std::endl;
        return 0;
    } catch (const std::exception& e) {
        report(e.what());
        return 1;
    }
#endif
}

}  // namespace fastdemucs_cli
