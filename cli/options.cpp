#include "options.h"

#include <CLI/CLI.hpp>

#include <iostream>

#include "output_names.h"

namespace fastdemucs_cli {

using fastdemucs::Error;

fastdemucs::WriteParams CliOptions::write_params() const {
    fastdemucs::WriteParams params;
    params.clip = clip;
    params.container = extension();
    if (int24)
        params.format = fastdemucs::SampleFormat::Int24;
    else if (float32 && !flac)
        params.format = fastdemucs::SampleFormat::Float32;
    else
        params.format = fastdemucs::SampleFormat::Int16;
    return params;
}

namespace {

// The raw option values before validation and mapping to enums.
struct RawOptions {
    std::string device = "cpu";
    std::string other_method = "add";
    std::string clip_mode = "rescale";
    bool no_split = false;
    bool mp3 = false;
    bool segment_given = false;
};

void add_options(CLI::App& app, CliOptions& o, RawOptions& raw) {
    app.add_option("tracks", o.tracks, "Path to tracks");
    app.add_option("-n,--name", o.name, "Pretrained model name or signature. Default is htdemucs.");
    app.add_option("--repo", o.repo, "Folder containing all pre-trained models for use with -n.");
    app.add_flag("-v,--verbose", o.verbose, "Print more about what is done");
    app.add_flag("-q,--quiet", o.quiet, "Print only errors");
    app.add_option("-o,--out", o.out,
                   "Folder where to put extracted tracks. A subfolder with the model name will be "
                   "created. Default is separated.");
    app.add_option("--filename", o.filename,
                   "Name of the output files. Use {track}, {trackext}, {stem}, {ext} for the track "
                   "name without extension, the track extension, the stem name and the output file "
                   "extension. Default is {track}/{stem}.{ext}.");
    app.add_option("-d,--device", raw.device, "Device to use: cpu, cuda or cuda:N. Default is cpu.");
    app.add_option("--shifts", o.shifts,
                   "Number of random shifts for equivariant stabilization. Default is 1.");
    app.add_option("--overlap", o.overlap, "Overlap between the splits. Default is 0.25.");
    auto* no_split = app.add_flag("--no-split", raw.no_split,
                                  "Don't split audio in chunks. This can use large amounts of memory.");
    auto* segment = app.add_option("--segment", o.segment,
                                   "Split size of each chunk in seconds (at most the model's).");
    no_split->excludes(segment);
    app.add_option("--two-stems", o.two_stems, "Only separate audio into STEM and no_STEM.")
        ->option_text("STEM");
    app.add_option("--other-method", raw.other_method,
                   "How to get no_STEM: none (not saved), add (sum of the other stems), minus "
                   "(the track minus STEM). Default is add.")
        ->check(CLI::IsMember({"none", "add", "minus"}));
    auto* int24 = app.add_flag("--int24", o.int24, "Save wav output as 24 bits wav.");
    auto* float32 = app.add_flag("--float32", o.float32, "Save wav output as float32 (2x bigger).");
    int24->excludes(float32);
    app.add_option("--clip-mode", raw.clip_mode,
                   "Strategy for avoiding clipping: rescaling the entire signal if necessary "
                   "(rescale), hard clipping (clamp) or nothing (none). Default is rescale.")
        ->check(CLI::IsMember({"rescale", "clamp", "none"}));
    auto* flac = app.add_flag("--flac", o.flac, "Convert the output wavs to flac.");
    auto* mp3 = app.add_flag("--mp3", raw.mp3, "Not supported: mp3 output.");
    flac->excludes(mp3);
    app.add_option("-j,--jobs", o.jobs, "Number of CPU threads; 0 uses all cores. Default is 0.");
    app.add_option("--seed", o.seed, "Seed of the random shift offsets; 0 picks one at random.");
}

void parse_device(const std::string& text, CliOptions& o) {
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
    if (raw.mp3) throw Error("--mp3 is not supported; use --flac or the default wav");
    parse_device(raw.device, o);
    o.split = !raw.no_split;
    o.other_method = raw.other_method == "none"    ? OtherMethod::None
                     : raw.other_method == "minus" ? OtherMethod::Minus
                                                   : OtherMethod::Add;
    o.clip = raw.clip_mode == "clamp"  ? fastdemucs::ClipMode::Clamp
             : raw.clip_mode == "none" ? fastdemucs::ClipMode::None
                                       : fastdemucs::ClipMode::Rescale;
    if (o.shifts < 0) throw Error("--shifts must be 0 or more");
    if (!(o.overlap >= 0.0 && o.overlap < 1.0)) throw Error("--overlap must be in [0, 1)");
    if (raw.segment_given && !(o.segment > 0.0)) throw Error("--segment must be positive");
    if (o.jobs < 0) throw Error("--jobs must be 0 or more");
    if (o.verbose && o.quiet) throw Error("--verbose and --quiet exclude each other");
    check_filename_template(o.filename);
    if (o.tracks.empty()) throw Error("the following arguments are required: tracks");
}

}  // namespace

int parse_options(int argc, char** argv, CliOptions& options) {
    CLI::App app("Separate the sources for the given tracks (Demucs v4 / HTDemucs).", "fastdemucs");
    RawOptions raw;
    add_options(app, options, raw);
    try {
        app.parse(argc, argv);
        raw.segment_given = app.count("--segment") > 0;
    } catch (const CLI::ParseError& e) {
        if (e.get_exit_code() == 0) return app.exit(e);  // --help
        std::cerr << "fastdemucs: error: " << e.what() << "\n";
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
