#include "options.h"

#include <CLI/CLI.hpp>

#include <iostream>

#include "output_names.h"
#ifdef FASTDEMUCS_WITH_CUDA
#include "engine/backend.h"
#endif

namespace fastdemucs_cli {

using fastdemucs::Error;

fastdemucs::WriteParams CliOptions::write_params(const std::string& path) const {
    fastdemucs::WriteParams params;
    params.clip = clip;
    params.container = fastdemucs::container_for_path(path);
    if (params.container.empty())
        throw Error("cannot write " + path + ": the file name must end in .wav, .flac or .mp3 (check --filename)");
    if (int24)
        params.format = fastdemucs::SampleFormat::Int24;
    else if (float32 && params.container == "wav")
        params.format = fastdemucs::SampleFormat::Float32;
    else
        params.format = fastdemucs::SampleFormat::Int16;
    params.mp3_bitrate = mp3_bitrate;
    params.mp3_preset = mp3_preset;
    return params;
}

std::string default_device() {
#ifdef FASTDEMUCS_WITH_CUDA
    if (fastdemucs::cuda_device_count() > 0) return "cuda";
#endif
    return "cpu";
}

namespace {

// The raw option values before validation and mapping to enums.
struct RawOptions {
    std::string device;
    std::string precision;
    std::string other_method = "add";
    std::string clip_mode = "rescale";
    bool no_split = false;
    bool segment_given = false;
    bool precision_given = false;
};

const char kFooter[] = R"(
Models: -n takes a bag name (htdemucs, htdemucs_6s, htdemucs_ft) or a single
model signature; see --list-models. Released weights are downloaded once into
torch.hub's cache ($TORCH_HOME/hub/checkpoints, default
~/.cache/torch/hub/checkpoints) and verified; --model-url or
FASTDEMUCS_MODEL_URL selects a mirror, --offline never uses the network.
Output: OUT/NAME/{track}/{stem}.{ext} by default.)";

void add_options(CLI::App& app, CliOptions& o, RawOptions& raw) {
    // As with the official argparse parser, an option given twice takes its last value.
    app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    app.add_option("tracks", o.tracks, "Path to tracks")
        ->option_text("TRACK...")
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);

    auto* models = "Model";
    app.add_option("-n,--name", o.name, "Pretrained model name or signature. Default is htdemucs.")
        ->option_text("NAME")->group(models);
    app.add_option("--repo", o.repo, "Folder containing all pre-trained models for use with -n.")
        ->option_text("DIR")->group(models);
    app.add_flag("--list-models", o.list_models,
                 "List the available models (with their stems, whether they are cached and supported) "
                 "and exit.")
        ->group(models);
    app.add_option("--model-url", o.model_url,
                   "Root URL of a mirror of the official model files (overrides FASTDEMUCS_MODEL_URL).")
        ->option_text("URL")->group(models);
    app.add_flag("--offline", o.offline, "Never use the network: models must already be cached.")->group(models);

    auto* output = "Output";
    app.add_option("-o,--out", o.out,
                   "Folder where to put extracted tracks. A subfolder with the model name will be "
                   "created. Default is separated.")
        ->option_text("DIR")->group(output);
    app.add_option("--filename", o.filename,
                   "Name of the output files. Use {track}, {trackext}, {stem}, {ext} for the track name "
                   "without extension, the track extension, the stem name and the output file extension. "
                   "Default is {track}/{stem}.{ext}.")
        ->option_text("TEMPLATE")->group(output);
    app.add_option("--two-stems", o.two_stems, "Only separate audio into STEM and no_STEM.")
        ->option_text("STEM")->group(output);
    app.add_option("--other-method", raw.other_method,
                   "How to get no_STEM: none (not saved), add (sum of the other stems), minus (the track "
                   "minus STEM, saved as minus_STEM). Default is add.")
        ->option_text("none|add|minus")->check(CLI::IsMember({"none", "add", "minus"}))->group(output);
    auto* int24 = app.add_flag("--int24", o.int24, "Save wav (or flac) output as 24 bits.")->group(output);
    auto* float32 = app.add_flag("--float32", o.float32, "Save wav output as float32 (2x bigger).")->group(output);
    int24->excludes(float32);
    app.add_option("--clip-mode", raw.clip_mode,
                   "Strategy for avoiding clipping: rescaling the entire signal if necessary (rescale), "
                   "hard clipping (clamp) or nothing (none). Default is rescale.")
        ->option_text("rescale|clamp|none")->check(CLI::IsMember({"rescale", "clamp", "none"}))->group(output);
    auto* flac = app.add_flag("--flac", o.flac, "Convert the output wavs to flac.")->group(output);
    auto* mp3 = app.add_flag("--mp3", o.mp3, "Convert the output wavs to mp3 (LAME).")->group(output);
    flac->excludes(mp3);
    app.add_option("--mp3-bitrate", o.mp3_bitrate, "Bitrate of converted mp3, in kbps. Default is 320.")
        ->option_text("KBPS")->check(CLI::Range(8, 320))->group(output);
    app.add_option("--mp3-preset", o.mp3_preset,
                   "Encoder preset of MP3, 2 for highest quality, 7 for fastest speed. Default is 2.")
        ->option_text("2..7")->check(CLI::Range(2, 7))->group(output);

    auto* separation = "Separation";
    app.add_option("-d,--device", raw.device,
                   "Device to use: cpu, cuda or cuda:N. Default is cuda if available else cpu.")
        ->option_text("DEVICE")->group(separation);
    app.add_option("--precision", raw.precision,
                   "GPU arithmetic: fp32, fp16 or bf16 (tensor cores, float32 accumulation). Default is "
                   "fp16; the CPU always computes in fp32.")
        ->option_text("fp32|fp16|bf16")->check(CLI::IsMember({"fp32", "fp16", "bf16"}))->group(separation);
    app.add_option("--shifts", o.shifts,
                   "Number of random shifts for equivariant stabilization. Increases separation time but "
                   "improves quality. 10 was used in the original paper. Default is 1.")
        ->option_text("N")->group(separation);
    app.add_option("--overlap", o.overlap, "Overlap between the splits. Default is 0.25.")
        ->option_text("FRACTION")->group(separation);
    auto* no_split = app.add_flag("--no-split", raw.no_split,
                                  "Don't split audio in chunks. This can use large amounts of memory.")
                         ->group(separation);
    auto* segment = app.add_option("--segment", o.segment,
                                   "Split size of each chunk in seconds (decimals allowed; at most the "
                                   "model's own, the default).")
                        ->option_text("SECONDS")->group(separation);
    no_split->excludes(segment);
    app.add_option("-j,--jobs", o.jobs, "Number of CPU threads; 0 uses all cores. Default is 0.")
        ->option_text("N")->group(separation);
    app.add_option("--batch-size", o.batch_size,
                   "Chunks per model call; 0 lets the backend choose (the default).")
        ->option_text("N")->group(separation);
    app.add_option("--seed", o.seed, "Seed of the random shift offsets; 0 (the default) picks one at random.")
        ->option_text("N")->group(separation);

    auto* messages = "Messages";
    app.add_flag("-v,--verbose", o.verbose, "Print more about what is done (and progress even when stderr "
                                            "is not a terminal).")
        ->group(messages);
    app.add_flag("-q,--quiet", o.quiet, "Print only errors.")->group(messages);
}

void parse_device(const std::string& text, CliOptions& o) {
    o.device_text = text;
    if (text == "cpu") {
        o.device = fastdemucs::DeviceKind::Cpu;
        return;
    }
    if (text.rfind("cuda", 0) == 0) {
        o.device = fastdemucs::DeviceKind::Cuda;
        if (text.size() == 4) return;
        const std::string index = text.substr(5);
        if (text[4] == ':' && !index.empty() && index.size() < 4 &&
            index.find_first_not_of("0123456789") == std::string::npos) {
            o.device_index = std::stoi(index);
            return;
        }
    }
    throw Error("--device " + text + ": expected cpu, cuda or cuda:N");
}

void finish_options(const RawOptions& raw, CliOptions& o) {
    parse_device(raw.device.empty() ? default_device() : raw.device, o);
    o.precision = raw.precision == "fp32"   ? fastdemucs::Precision::Fp32
                  : raw.precision == "bf16" ? fastdemucs::Precision::Bf16
                                            : fastdemucs::Precision::Fp16;
    o.split = !raw.no_split;
    o.other_method = raw.other_method == "none"    ? OtherMethod::None
                     : raw.other_method == "minus" ? OtherMethod::Minus
                                                   : OtherMethod::Add;
    o.clip = raw.clip_mode == "clamp"  ? fastdemucs::ClipMode::Clamp
             : raw.clip_mode == "none" ? fastdemucs::ClipMode::None
                                       : fastdemucs::ClipMode::Rescale;
    if (o.name.empty()) throw Error("--name must not be empty");
    if (o.shifts < 0) throw Error("--shifts must be 0 or more");
    if (!(o.overlap >= 0.0 && o.overlap < 1.0)) throw Error("--overlap must be in [0, 1)");
    if (raw.segment_given && !(o.segment > 0.0)) throw Error("--segment must be positive");
    if (o.jobs < 0) throw Error("--jobs must be 0 or more");
    if (o.batch_size < 0) throw Error("--batch-size must be 0 or more");
    if (o.verbose && o.quiet) throw Error("--verbose and --quiet exclude each other");
    if (o.out.empty()) throw Error("--out must not be empty");
    check_filename_template(o.filename);
    if (o.list_models) return;
    if (o.tracks.empty()) throw Error("the following arguments are required: tracks");
}

}  // namespace

int parse_options(int argc, char** argv, CliOptions& options) {
    CLI::App app("Separate the sources for the given tracks (Demucs v4 / HTDemucs), like `demucs`.",
                 "fastdemucs");
    app.footer(kFooter);
    app.get_formatter()->column_width(34);
    app.set_version_flag("--version", std::string("fastdemucs ") + FASTDEMUCS_VERSION);
    RawOptions raw;
    add_options(app, options, raw);
    try {
        app.parse(argc, argv);
        raw.segment_given = app.count("--segment") > 0;
        raw.precision_given = app.count("--precision") > 0;
    } catch (const CLI::ParseError& e) {
        if (e.get_exit_code() == 0) return app.exit(e);  // --help
        std::cerr << "fastdemucs: error: " << e.what() << "\n"
                  << "Run with --help for more information.\n";
        return 1;
    }
    try {
        finish_options(raw, options);
    } catch (const Error& e) {
        std::cerr << "fastdemucs: error: " << e.what() << "\n";
        return 1;
    }
    return -1;
}

}  // namespace fastdemucs_cli
