// fastdemucs: the command line, a drop-in for the official `demucs`
// (python -m demucs.separate). Every failure is one line on stderr,
// `fastdemucs: error: ...`; the exit status is 1 if anything failed.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <new>
#include <sstream>
#include <string>
#include <vector>

#include "fastdemucs/fastdemucs.h"
#include "io/audio_file.h"
#include "options.h"
#include "output_names.h"

namespace fs = std::filesystem;
using fastdemucs::Error;

namespace fastdemucs_cli {
namespace {

void report_error(const std::string& message) {
    std::cerr << "fastdemucs: error: " << message << std::endl;
}

// Numbers for messages: "7.8", not std::to_string's "7.800000".
std::string to_text(double value) {
    std::ostringstream text;
    text << value;
    return text.str();
}

std::string join(const std::vector<std::string>& items, const std::string& separator) {
    std::string joined;
    for (size_t i = 0; i < items.size(); ++i) joined += (i ? separator : "") + items[i];
    return joined;
}

// Informational lines go to stdout, as the official command prints them.
class Console {
public:
    explicit Console(const CliOptions& options) : options_(options) {}
    void info(const std::string& line) const {
        if (!options_.quiet) std::cout << line << std::endl;
    }
    void detail(const std::string& line) const {
        if (options_.verbose) std::cout << line << std::endl;
    }

private:
    const CliOptions& options_;
};

// A one-line progress display on stderr, only when it is a terminal. The
// engine may report from worker threads, hence the lock.
class ProgressLine {
public:
    explicit ProgressLine(bool enabled) : enabled_(enabled) {}
    ~ProgressLine() { finish(); }

    void update(const fastdemucs::Progress& p) {
        if (!enabled_) return;
        std::lock_guard<std::mutex> lock(mutex_);
        const int64_t total = std::max<int64_t>(p.chunks_total, 1);
        const int width = 30;
        const int filled = static_cast<int>(width * std::min<int64_t>(p.chunks_done, total) / total);
        std::fprintf(stderr, "\r  model %d/%d [%s%s] %lld/%lld", p.model_index + 1, p.models,
                     std::string(filled, '#').c_str(), std::string(width - filled, ' ').c_str(),
                     static_cast<long long>(p.chunks_done), static_cast<long long>(p.chunks_total));
        std::fflush(stderr);
        shown_ = true;
    }
    void finish() {
        std::lock_guard<std::mutex> lock(mutex_);
        if (shown_) std::fputc('\n', stderr);
        shown_ = false;
    }

private:
    bool enabled_;
    bool shown_ = false;
    std::mutex mutex_;
};

std::unique_ptr<fastdemucs::Separator> load_separator(const CliOptions& o) {
    fastdemucs::LoadParams params = fastdemucs::load_default_params();
    params.name = o.name;
    if (!o.repo.empty()) params.repo = o.repo;
    params.device = o.device;
    params.device_index = o.device_index;
    return fastdemucs::Separator::load(params);
}

// Checks that need the model, made before any track is touched.
void check_against_model(const CliOptions& o, const fastdemucs::Separator& model) {
    if (o.segment > 0.0 && o.segment > model.max_segment())
        throw Error("Cannot use a Transformer model with a longer segment than it was trained "
                    "for. Maximum segment is: " + to_text(model.max_segment()));
    const auto& sources = model.sources();
    if (!o.two_stems.empty() &&
        std::find(sources.begin(), sources.end(), o.two_stems) == sources.end())
        throw Error("stem \"" + o.two_stems + "\" is not in selected model. STEM must be one of " +
                    join(sources, ", ") + ".");
}

// The official convert_audio_channels: mono is duplicated, extra channels
// are dropped, a mono model gets the mean of the channels.
fastdemucs::Audio match_channels(fastdemucs::Audio audio, int wanted, const std::string& track) {
    if (audio.channels == wanted) return audio;
    fastdemucs::Audio out;
    out.channels = wanted;
    out.samples = audio.samples;
    out.samplerate = audio.samplerate;
    out.data.assign(static_cast<size_t>(wanted) * audio.samples, 0.0f);
    if (wanted == 1) {
        for (int c = 0; c < audio.channels; ++c)
            for (int64_t t = 0; t < audio.samples; ++t) out.data[t] += audio.channel(c)[t];
        for (float& x : out.data) x /= static_cast<float>(audio.channels);
    } else if (audio.channels == 1 || audio.channels > wanted) {
        for (int c = 0; c < wanted; ++c) {
            const float* source = audio.channel(audio.channels == 1 ? 0 : c);
            std::copy(source, source + audio.samples, out.channel(c));
        }
    } else {
        throw Error(track + " has " + std::to_string(audio.channels) + " channels, fewer than the " +
                    std::to_string(wanted) + " the model needs, and is not mono");
    }
    return out;
}

fastdemucs::Audio load_track(const std::string& track, const fastdemucs::Separator& model) {
    fastdemucs::Audio audio = fastdemucs::read_audio(track);
    if (audio.samplerate != model.samplerate())
        throw Error(track + " has sample rate " + std::to_string(audio.samplerate) +
                    " Hz but the model needs " + std::to_string(model.samplerate()) +
                    " Hz; resampling is not supported yet");
    if (audio.samples == 0) throw Error(track + " has no samples");
    return match_channels(std::move(audio), model.audio_channels(), track);
}

fastdemucs::SeparateParams separate_params(const CliOptions& o, ProgressLine& progress) {
    fastdemucs::SeparateParams params = fastdemucs::separate_default_params();
    params.shifts = o.shifts;
    params.split = o.split;
    params.overlap = o.overlap;
    params.segment = o.segment;
    params.threads = o.jobs;
    params.seed = o.seed;
    params.progress = [&progress](const fastdemucs::Progress& p) { progress.update(p); };
    return params;
}

// Writes one track's stems (or, with --two-stems, STEM and its complement)
// under out_dir, each file written atomically.
class StemWriter {
public:
    StemWriter(const CliOptions& o, const fs::path& out_dir, const std::string& track,
               const Console& console)
        : options_(o), out_dir_(out_dir), name_(split_track_name(track)), console_(console),
          params_(o.write_params()) {}

    void write_all(const fastdemucs::Audio& mix, const fastdemucs::Stems& stems) const {
        if (options_.two_stems.empty()) {
            for (size_t s = 0; s < stems.names.size(); ++s)
                write(stems.names[s], stems.stem(static_cast<int>(s)), stems);
            return;
        }
        write_two_stems(mix, stems);
    }

private:
    // Same files, values and order as the official command: minus_STEM
    // (mix - STEM), then STEM, then no_STEM (the other stems summed in order).
    void write_two_stems(const fastdemucs::Audio& mix, const fastdemucs::Stems& stems) const {
        const std::string& chosen = options_.two_stems;
        const int index = static_cast<int>(
            std::find(stems.names.begin(), stems.names.end(), chosen) - stems.names.begin());
        const size_t n = static_cast<size_t>(stems.channels) * stems.samples;
        const float* selected = stems.stem(index);
        if (options_.other_method == OtherMethod::Minus) {
            if (mix.channels != stems.channels || mix.samples != stems.samples)
                throw Error("internal: stems and mix differ in shape");
            std::vector<float> rest(n);
            for (size_t i = 0; i < n; ++i) rest[i] = mix.data[i] - selected[i];
            write("minus_" + chosen, rest.data(), stems);
        }
        write(chosen, selected, stems);
        if (options_.other_method == OtherMethod::Add) {
            std::vector<float> rest(n, 0.0f);
            for (int s = 0; s < static_cast<int>(stems.names.size()); ++s) {
                if (s == index) continue;
                const float* other = stems.stem(s);
                for (size_t i = 0; i < n; ++i) rest[i] += other[i];
            }
            write("no_" + chosen, rest.data(), stems);
        }
    }

    void write(const std::string& stem, const float* data, const fastdemucs::Stems& stems) const {
        const fs::path path =
            out_dir_ / format_filename(options_.filename, name_, stem, options_.extension());
        if (path.has_parent_path()) fs::create_directories(path.parent_path());
        fastdemucs::write_audio(path.string(), data, stems.channels, stems.samples,
                                stems.samplerate, params_);
        console_.detail("  wrote " + path.string());
    }

    const CliOptions& options_;
    fs::path out_dir_;
    TrackName name_;
    const Console& console_;
    fastdemucs::WriteParams params_;
};

void separate_track(const std::string& track, const CliOptions& o,
                    const fastdemucs::Separator& model, const fs::path& out_dir,
                    const Console& console) {
    const auto start = std::chrono::steady_clock::now();
    const fastdemucs::Audio mix = load_track(track, model);
    fastdemucs::Stems stems;
    {
        ProgressLine progress(!o.quiet && isatty(STDERR_FILENO));
        stems = model.separate(mix, separate_params(o, progress));
    }
    StemWriter(o, out_dir, track, console).write_all(mix, stems);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    console.detail("  " + to_text(mix.samples / double(mix.samplerate)) + " s of audio in " +
                   to_text(seconds) + " s");
}

void describe_model(const CliOptions& o, const fastdemucs::Separator& model,
                    const Console& console) {
    if (model.num_models() > 1)
        console.info("Selected model is a bag of " + std::to_string(model.num_models()) +
                     " models. You will see that many progress bars per track.");
    console.detail("Model " + o.name + ": sources " + join(model.sources(), ", ") + ", " +
                   std::to_string(model.samplerate()) + " Hz, " +
                   std::to_string(model.audio_channels()) + " channels, segment " +
                   to_text(model.max_segment()) + " s");
}

int run(int argc, char** argv) {
    CliOptions options;
    const int parse_status = parse_options(argc, argv, options);
    if (parse_status >= 0) return parse_status;
    const Console console(options);

    const auto model = load_separator(options);
    check_against_model(options, *model);
    describe_model(options, *model, console);

    const fs::path out_dir = fs::path(options.out) / options.name;
    fs::create_directories(out_dir);
    console.info("Separated tracks will be stored in " + fs::weakly_canonical(out_dir).string());

    bool all_done = true;
    for (const std::string& track : options.tracks) {
        std::error_code ec;
        if (!fs::exists(track, ec)) {
            report_error("File " + track + " does not exist. If the path contains spaces, please "
                         "try again after surrounding the entire path with quotes \"\".");
            all_done = false;
            continue;
        }
        console.info("Separating track " + track);
        try {
            separate_track(track, options, *model, out_dir, console);
        } catch (const std::bad_alloc&) {
            report_error(track + ": out of memory");
            all_done = false;
        } catch (const std::exception& e) {
            report_error(e.what());
            all_done = false;
        }
    }
    return all_done ? 0 : 1;
}

}  // namespace
}  // namespace fastdemucs_cli

int main(int argc, char** argv) {
    try {
        return fastdemucs_cli::run(argc, argv);
    } catch (const std::exception& e) {  // fastdemucs::Error included
        fastdemucs_cli::report_error(e.what());
    } catch (...) {
        fastdemucs_cli::report_error("unexpected failure");
    }
    return 1;
}
