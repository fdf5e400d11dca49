// fastdemucs: the command line, a drop-in for the official `demucs`
// (python -m demucs.separate). Informational lines go to stdout as the
// official command prints them; progress and errors go to stderr. Every
// failure is one line, `fastdemucs: error: ...`; the exit status is 1 if
// anything failed.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <future>
#include <iomanip>
#include <iostream>
#include <mutex>
#include <new>
#include <sstream>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "export_command.h"
#include "engine/trace.h"
#include "fastdemucs/fastdemucs.h"
#include "io/audio_file.h"
#include "io/temp_file.h"
#include "options.h"
#include "output_names.h"
#include "remote/remote_models.h"

namespace fs = std::filesystem;
using fastdemucs::Error;

namespace fastdemucs_cli {
namespace {

using Clock = std::chrono::steady_clock;

void report_error(const std::string& message) { std::cerr << "fastdemucs: error: " << message << std::endl; }

// Numbers for messages: "7.8", not std::to_string's "7.800000".
std::string to_text(double value, int decimals = -1) {
    std::ostringstream text;
    if (decimals >= 0) text << std::fixed << std::setprecision(decimals);
    text << value;
    return text.str();
}

std::string join(const std::vector<std::string>& items, const std::string& separator) {
    std::string joined;
    for (size_t i = 0; i < items.size(); ++i) joined += (i ? separator : "") + items[i];
    return joined;
}

double seconds_since(Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
}

// "0:07", "12:34", "1:02:03".
std::string clock_text(double seconds) {
    const long total = std::lround(std::max(0.0, seconds));
    std::ostringstream text;
    if (total >= 3600) text << total / 3600 << ':' << std::setw(2) << std::setfill('0') << (total / 60) % 60;
    else text << total / 60;
    text << ':' << std::setw(2) << std::setfill('0') << total % 60;
    return text.str();
}

// Informational lines on stdout, as the official command prints them.
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

// Progress on stderr. On a terminal: one bar redrawn in place. Otherwise,
// only with -v: a line at every tenth of the work. The engine may report from
// worker threads, hence the lock.
class ProgressDisplay {
public:
    ProgressDisplay(bool terminal, bool enabled) : terminal_(terminal), enabled_(enabled) {}
    ~ProgressDisplay() { clear(); }

    bool enabled() const { return enabled_; }

    void start(const std::string& label) {
        std::lock_guard<std::mutex> lock(mutex_);
        label_ = label;
        start_ = Clock::now();
        last_draw_ = Clock::time_point();
        last_tenth_ = -1;
    }

    // `fraction` of the work is done; `counts` says it in units ("3/8 chunks").
    void update(double fraction, const std::string& counts) {
        if (!enabled_) return;
        std::lock_guard<std::mutex> lock(mutex_);
        fraction = std::min(std::max(fraction, 0.0), 1.0);
        const double elapsed = seconds_since(start_);
        std::string timing = clock_text(elapsed) + " elapsed";
        if (fraction > 0.0 && fraction < 1.0) timing += ", ~" + clock_text(elapsed * (1.0 - fraction) / fraction) + " left";
        if (terminal_) {
            const auto now = Clock::now();
            if (fraction < 1.0 && now - last_draw_ < std::chrono::milliseconds(100)) return;
            last_draw_ = now;
            const int width = 30;
            const int filled = static_cast<int>(std::floor(width * fraction));
            char percent[8];
            std::snprintf(percent, sizeof percent, "%3d%%", static_cast<int>(100 * fraction));
            const std::string text = label_ + " [" + std::string(filled, '#') + std::string(width - filled, '.') +
                                     "] " + percent + " " + counts + ", " + timing;
            if (shown_ && text == last_text_) return;
            last_text_ = text;
            std::fprintf(stderr, "\r\033[K%s", text.c_str());
            std::fflush(stderr);
            shown_ = true;
        } else {
            const int tenth = static_cast<int>(std::floor(10 * fraction));
            if (tenth <= last_tenth_) return;
            last_tenth_ = tenth;
            std::fprintf(stderr, "%s %3d%% %s, %s\n", label_.c_str(), tenth * 10, counts.c_str(), timing.c_str());
            std::fflush(stderr);
        }
    }

    // Replaces the bar with a final line.
    void line(const std::string& text) {
        if (!enabled_) return;
        std::lock_guard<std::mutex> lock(mutex_);
        clear_locked();
        std::fprintf(stderr, "%s\n", text.c_str());
        std::fflush(stderr);
    }

    void clear() {
        std::lock_guard<std::mutex> lock(mutex_);
        clear_locked();
    }

private:
    void clear_locked() {
        if (!shown_) return;
        std::fputs("\r\033[K", stderr);
        std::fflush(stderr);
        shown_ = false;
    }

    bool terminal_, enabled_;
    bool shown_ = false;
    std::string label_, last_text_;
    Clock::time_point start_, last_draw_;
    int last_tenth_ = -1;
    std::mutex mutex_;
};

// --- --list-models ---------------------------------------------------------

void print_table(const std::string& title, const std::vector<std::vector<std::string>>& rows) {
    std::cout << title << "\n";
    std::vector<size_t> widths;
    for (const auto& row : rows)
        for (size_t i = 0; i < row.size(); ++i) {
            if (widths.size() <= i) widths.push_back(0);
            widths[i] = std::max(widths[i], row[i].size());
        }
    for (const auto& row : rows) {
        std::string line = "    ";
        for (size_t i = 0; i < row.size(); ++i) {
            line += row[i];
            if (i + 1 < row.size()) line += std::string(widths[i] - row[i].size() + 2, ' ');
        }
        std::cout << line << "\n";
    }
}

// The official layout ("Bag of models:" then "Single models:", one name a
// line, indented), each name followed by its stems, whether it is cached and
// whether this engine runs it.
void list_catalog_models(const CliOptions& o) {
    fastdemucs::RemoteOptions remote;
    remote.root_url = o.model_url;
    const auto entries = fastdemucs::list_catalog(remote);
    std::vector<std::vector<std::string>> bags, singles;
    for (const auto& entry : entries) {
        std::vector<std::string> row = {entry.name,
                                        entry.sources.empty() ? "?" : join(entry.sources, ","),
                                        entry.cached ? "cached" : "not cached",
                                        entry.supported ? "supported" : "not supported yet"};
        (entry.kind == fastdemucs::CatalogEntry::Kind::Bag ? bags : singles).push_back(row);
    }
    print_table("Bag of models:", bags);
    print_table("Single models:", singles);
    std::cout << "Cache: " << fastdemucs::resolve_options(remote).cache_dir << std::endl;
}

// A --repo folder, as the official LocalRepo / BagOnlyRepo list it: the
// signature of every .th file, the name of every .yaml file.
void list_repo_models(const CliOptions& o) {
    std::error_code ec;
    if (!fs::is_directory(o.repo, ec)) throw Error(o.repo + " must exist and be a directory.");
    std::vector<std::vector<std::string>> bags, singles;
    for (fs::directory_iterator it(o.repo, ec), end; !ec && it != end; it.increment(ec)) {
        const fs::path& path = it->path();
        const std::string stem = path.stem().string();
        if (stem.empty() || stem[0] == '.') continue;
        if (path.extension() == ".th") singles.push_back({stem.substr(0, stem.find('-'))});
        else if (path.extension() == ".yaml") bags.push_back({stem});
    }
    if (ec) throw Error("cannot list " + o.repo + ": " + ec.message());
    std::sort(bags.begin(), bags.end());
    std::sort(singles.begin(), singles.end());
    print_table("Bag of models:", bags);
    print_table("Single models:", singles);
    std::cout << std::flush;
}

// --- model -----------------------------------------------------------------

std::unique_ptr<fastdemucs::Separator> load_separator(const CliOptions& o, ProgressDisplay& progress) {
    fastdemucs::LoadParams params = fastdemucs::load_default_params();
    params.name = o.name;
    params.repo = o.repo;
    params.device = o.device;
    params.device_index = o.device_index;
    params.precision = o.precision;
    params.warm_up = true;  // while the first track is read (TrackReader)
    params.model_url = o.model_url;
    params.offline = o.offline;
    params.download_started = [&o, &progress](const std::string& url, const std::string& path) {
        if (!o.quiet) std::cerr << "Downloading " << url << " to " << path << std::endl;
        progress.start("  " + fs::path(path).filename().string());
    };
    params.download_progress = [&progress](int64_t done, int64_t total) {
        const double mb = 1024.0 * 1024.0;
        progress.update(total > 0 ? double(done) / double(total) : 0.0,
                        to_text(done / mb, 1) + "/" + (total > 0 ? to_text(total / mb, 1) : "?") + " MB");
    };
    params.warning = [&progress](const std::string& message) {
        progress.clear();
        std::cerr << "fastdemucs: warning: " << message << std::endl;
    };
    auto model = fastdemucs::Separator::load(params);
    progress.clear();
    return model;
}

// Checks that need the model, made before any track is touched.
void check_against_model(const CliOptions& o, const fastdemucs::Separator& model) {
    if (o.segment > 0.0 && o.segment > model.max_segment())
        throw Error("Cannot use a Transformer model with a longer segment than it was trained "
                    "for. Maximum segment is: " + to_text(model.max_segment()));
    const auto& sources = model.sources();
    if (!o.two_stems.empty() && std::find(sources.begin(), sources.end(), o.two_stems) == sources.end())
        throw Error("stem \"" + o.two_stems + "\" is not in selected model. STEM must be one of " +
                    join(sources, ", ") + ".");
}

void describe_model(const CliOptions& o, const fastdemucs::Separator& model, const Console& console) {
    if (model.num_models() > 1)
        console.info("Selected model is a bag of " + std::to_string(model.num_models()) +
                     " models. You will see that many progress bars per track.");
    std::string device = o.device_text;
    if (o.device == fastdemucs::DeviceKind::Cuda)
        device += o.precision == fastdemucs::Precision::Fp32   ? " (fp32)"
                  : o.precision == fastdemucs::Precision::Bf16 ? " (bf16)"
                                                               : " (fp16)";
    console.detail("Model " + o.name + ": sources " + join(model.sources(), ", ") + ", " +
                   std::to_string(model.samplerate()) + " Hz, " + std::to_string(model.audio_channels()) +
                   " channels, segment " + to_text(model.max_segment()) + " s, on " + device);
}

// --- output ----------------------------------------------------------------

// Fails early, before any download or separation, when the output folder
// cannot be created: its nearest existing ancestor must be a writable folder.
void check_output_folder(const fs::path& folder) {
    std::error_code ec;
    fs::path probe = folder;
    while (!probe.empty() && !fs::exists(probe, ec)) {
        if (!probe.has_parent_path() || probe.parent_path() == probe) {
            probe = ".";
            break;
        }
        probe = probe.parent_path();
    }
    if (probe.empty()) probe = ".";
    const std::string what = "cannot create the output folder " + folder.string() + ": ";
    if (!fs::is_directory(probe, ec)) throw Error(what + probe.string() + " is not a folder");
    if (::access(probe.c_str(), W_OK | X_OK) != 0) throw Error(what + probe.string() + " is not writable");
}

void create_output_folder(const fs::path& folder) {
    std::error_code ec;
    fs::create_directories(folder, ec);
    if (ec || !fs::is_directory(folder))
        throw Error("cannot create the output folder " + folder.string() + ": " +
                    (ec ? ec.message() : std::string("not a folder")));
}

// One file to write for a track: what it holds and where it goes.
struct StemOutput {
    enum class Kind { Source, MixMinusSource, OtherSources };
    Kind kind = Kind::Source;
    int source = 0;  // index in the model's sources
    fs::path path;
    fastdemucs::WriteParams params;
};

// The files of one track, in the official order: every source, or with
// --two-stems: minus_STEM (with --other-method minus), STEM, no_STEM (with add).
std::vector<StemOutput> plan_outputs(const CliOptions& o, const fastdemucs::Separator& model,
                                     const fs::path& out_dir, const std::string& track) {
    using Kind = StemOutput::Kind;
    const auto& sources = model.sources();
    std::vector<std::pair<std::string, StemOutput>> planned;  // stem name, output
    if (o.two_stems.empty()) {
        for (size_t s = 0; s < sources.size(); ++s) planned.push_back({sources[s], {Kind::Source, int(s), {}, {}}});
    } else {
        const int chosen = static_cast<int>(std::find(sources.begin(), sources.end(), o.two_stems) - sources.begin());
        if (o.other_method == OtherMethod::Minus)
            planned.push_back({"minus_" + o.two_stems, {Kind::MixMinusSource, chosen, {}, {}}});
        planned.push_back({o.two_stems, {Kind::Source, chosen, {}, {}}});
        if (o.other_method == OtherMethod::Add)
            planned.push_back({"no_" + o.two_stems, {Kind::OtherSources, chosen, {}, {}}});
    }
    const TrackName name = split_track_name(track);
    std::vector<StemOutput> outputs;
    for (auto& [stem, output] : planned) {
        output.path = out_dir / format_filename(o.filename, name, stem, o.extension());
        output.params = o.write_params(output.path.string());
        outputs.push_back(output);
    }
    return outputs;
}

// The samples of one output: a source (the stems' own, no copy), or,
// computed into `computed`, the mix minus a source or the other sources
// summed in order (as the official command sums them).
const float* output_samples(const StemOutput& output, const fastdemucs::Audio& mix, const fastdemucs::Stems& stems,
                            std::vector<float>& computed) {
    const size_t n = static_cast<size_t>(stems.channels) * stems.samples;
    const float* selected = stems.stem(output.source);
    switch (output.kind) {
        case StemOutput::Kind::Source: return selected;
        case StemOutput::Kind::MixMinusSource:
            if (mix.channels != stems.channels || mix.samples != stems.samples)
                throw Error("internal: stems and mix differ in shape");
            computed.resize(n);
            for (size_t i = 0; i < n; ++i) computed[i] = mix.data[i] - selected[i];
            return computed.data();
        case StemOutput::Kind::OtherSources:
            computed.assign(n, 0.0f);
            for (int s = 0; s < static_cast<int>(stems.names.size()); ++s) {
                if (s == output.source) continue;
                const float* other = stems.stem(s);
                for (size_t i = 0; i < n; ++i) computed[i] += other[i];
            }
            return computed.data();
    }
    throw Error("internal: unknown output kind");
}

// --- tracks ----------------------------------------------------------------

// Tracks are read ahead on a thread of their own: the first while the model
// loads (the CUDA context and the checkpoint take longer than a WAV), each
// next one while the previous track is separated. The threads are detached
// (a failed model load is reported at once, not after a long decode); the
// command ends with _Exit, never with a read still going and destructors running.
class TrackReader {
public:
    explicit TrackReader(const std::vector<std::string>& tracks) : tracks_(tracks), reads_(tracks.size()) {}

    // Starts reading track i (nothing if there is none, or no such file: the
    // loop reports that in its turn; without a thread, take() reads it).
    void start(size_t i) {
        std::error_code ec;
        if (i >= tracks_.size() || reads_[i].valid() || !fs::exists(tracks_[i], ec)) return;
        std::packaged_task<fastdemucs::Audio()> read([path = tracks_[i]] { return fastdemucs::read_audio(path); });
        std::future<fastdemucs::Audio> result = read.get_future();
        try {
            std::thread(std::move(read)).detach();
        } catch (const std::system_error&) {
            return;
        }
        reads_[i] = std::move(result);
    }

    // Track i's samples as read (rethrows what the read threw).
    fastdemucs::Audio take(size_t i) {
        start(i);
        if (!reads_[i].valid()) return fastdemucs::read_audio(tracks_[i]);
        return reads_[i].get();
    }

private:
    const std::vector<std::string>& tracks_;
    std::vector<std::future<fastdemucs::Audio>> reads_;
};

// The samples a model takes: channels converted, then resampled (the official convert_audio).
fastdemucs::Audio prepare_track(fastdemucs::Audio audio, const std::string& track, const fastdemucs::Separator& model,
                                const Console& console) {
    std::string note = "  read " + std::to_string(audio.channels) + " channel(s) at " +
                       std::to_string(audio.samplerate) + " Hz, " +
                       to_text(double(audio.samples) / audio.samplerate, 2) + " s";
    if (audio.samples == 0) throw Error(track + " has no audio samples");
    if (audio.channels != model.audio_channels()) {
        try {
            audio = fastdemucs::convert_channels(audio, model.audio_channels());
        } catch (const Error& e) {
            throw Error(track + ": " + e.what());
        }
        note += ", channels converted to " + std::to_string(model.audio_channels());
    }
    if (audio.samplerate != model.samplerate()) {
        audio = fastdemucs::resample(audio, model.samplerate());
        note += ", resampled to " + std::to_string(model.samplerate()) + " Hz";
    }
    console.detail(note);
    return audio;
}

fastdemucs::SeparateParams separate_params(const CliOptions& o, ProgressDisplay& progress) {
    fastdemucs::SeparateParams params = fastdemucs::separate_default_params();
    params.shifts = o.shifts;
    params.split = o.split;
    params.overlap = o.overlap;
    params.segment = o.segment;
    params.threads = o.jobs;
    params.batch_size = o.batch_size;
    params.seed = o.seed;
    if (progress.enabled())
        params.progress = [&progress](const fastdemucs::Progress& p) {
            const int64_t total = std::max<int64_t>(p.chunks_total, 1);
            std::string counts = std::to_string(p.chunks_done) + "/" + std::to_string(p.chunks_total) + " chunks";
            if (p.models > 1)
                counts += " (model " + std::to_string(p.model_index + 1) + "/" + std::to_string(p.models) + ")";
            progress.update(double(p.chunks_done) / double(total), counts);
        };
    return params;
}

// on_separated runs once the model is done with the track (the caller may
// then release the model: nothing below touches it).
void separate_track(size_t index, TrackReader& reader, const CliOptions& o, const fastdemucs::Separator& model,
                    const fs::path& out_dir, const Console& console, ProgressDisplay& progress,
                    const std::function<void()>& on_separated) {
    const std::string& track = o.tracks[index];
    const auto start = Clock::now();
    const std::vector<StemOutput> outputs = plan_outputs(o, model, out_dir, track);
    const fastdemucs::Audio mix = prepare_track(reader.take(index), track, model, console);
    reader.start(index + 1);
    fastdemucs::trace_point("audio read");
    const double read_seconds = seconds_since(start);
    const std::string label = fs::path(track).filename().string();
    progress.start(label);
    // Sources into 16-bit WAV or FLAC files (the default): the model converts
    // them itself (a GPU on the device: half the bytes to download and
    // nothing left to convert here); otherwise float stems.
    // FASTDEMUCS_FLOAT_STEMS=1 takes the float path always (A/B runs).
    static const bool float_stems = [] {
        const char* v = std::getenv("FASTDEMUCS_FLOAT_STEMS");
        return v && std::string(v) == "1";
    }();
    const bool pcm16 = !float_stems && std::all_of(outputs.begin(), outputs.end(), [](const StemOutput& output) {
        return output.kind == StemOutput::Kind::Source && output.params.container != "mp3" &&
               output.params.format == fastdemucs::SampleFormat::Int16;
    });
    fastdemucs::Stems stems;
    fastdemucs::Pcm16Stems pcm16_stems;
    if (pcm16)
        pcm16_stems = model.separate_pcm16(mix, separate_params(o, progress), o.clip);
    else
        stems = model.separate(mix, separate_params(o, progress));
    on_separated();
    progress.clear();
    fastdemucs::trace_point("separated");
    const double separated_seconds = seconds_since(start);
    // The stems are encoded and written in parallel (one thread each: the
    // encoders are independent, and sample conversion + encoding, not the
    // disk, is what takes the time); each file still appears only when
    // complete. The first failure is reported once every writer is done.
    for (const StemOutput& output : outputs)
        if (output.path.has_parent_path()) create_output_folder(output.path.parent_path());
    std::vector<std::future<void>> writers;
    for (const StemOutput& output : outputs)
        writers.push_back(std::async(std::launch::async, [&output, &mix, &stems, &pcm16_stems, pcm16] {
            if (pcm16) {
                fastdemucs::write_audio_pcm16(output.path.string(), pcm16_stems.stem(output.source),
                                              pcm16_stems.channels, pcm16_stems.samples, pcm16_stems.samplerate,
                                              output.params);
                return;
            }
            std::vector<float> computed;
            const float* samples = output_samples(output, mix, stems, computed);
            fastdemucs::write_audio(output.path.string(), samples, stems.channels, stems.samples,
                                    stems.samplerate, output.params);
        }));
    for (auto& writer : writers) writer.wait();
    fastdemucs::trace_point("stems written");
    for (size_t i = 0; i < writers.size(); i++) {
        writers[i].get();
        console.detail("  wrote " + outputs[i].path.string());
    }
    const double seconds = seconds_since(start);
    console.detail("  read " + to_text(read_seconds, 3) + " s, separate " +
                   to_text(separated_seconds - read_seconds, 3) + " s, write " +
                   to_text(seconds - separated_seconds, 3) + " s");
    const double audio_seconds = double(mix.samples) / mix.samplerate;
    progress.line(label + ": done in " + to_text(seconds, 2) + " s (" + to_text(audio_seconds, 1) +
                  " s of audio, " + to_text(audio_seconds / std::max(seconds, 1e-9), 1) + "x real time)");
}

int run(int argc, char** argv) {
    fastdemucs::trace_point("main");
    CliOptions options;
    const int parse_status = parse_options(argc, argv, options);
    if (parse_status >= 0) return parse_status;
    if (options.list_models) {
        if (options.repo.empty()) list_catalog_models(options);
        else list_repo_models(options);
        return 0;
    }
    const Console console(options);
    const bool terminal = isatty(STDERR_FILENO) == 1;
    ProgressDisplay progress(terminal, !options.quiet && (terminal || options.verbose));
    fastdemucs::remove_temp_files_on_signals();

    const fs::path out_dir = fs::path(options.out) / options.name;
    check_output_folder(out_dir);
    console.detail("fastdemucs " + std::string(FASTDEMUCS_VERSION) + ", decoders: " + fastdemucs::audio_decoders());
    TrackReader reader(options.tracks);
    reader.start(0);
    const auto load_start = Clock::now();
    auto model = load_separator(options, progress);
    console.detail("model ready in " + to_text(seconds_since(load_start), 3) + " s");
    fastdemucs::trace_point("model ready");
    check_against_model(options, *model);
    describe_model(options, *model, console);

    create_output_folder(out_dir);
    console.info("Separated tracks will be stored in " + fs::weakly_canonical(fs::absolute(out_dir)).string());

    bool all_done = true;
    // After the last separation the GPU is done: the model is destroyed and
    // the CUDA context torn down on a thread while the stems are written
    // (at exit, the driver's tear-down took ~0.1 s of its own).
    std::future<void> released;
    auto release_after = [&](size_t index) {
        return [&, index] {
            if (index + 1 != options.tracks.size() || options.device != fastdemucs::DeviceKind::Cuda) return;
            try {
                released = std::async(std::launch::async, [&model] {
                    model.reset();
                    fastdemucs::release_gpus();
                    fastdemucs::trace_point("GPU released");
                });
            } catch (const std::system_error&) {
                // No thread: the model stays until the process ends.
            }
        };
    };
    for (size_t index = 0; index < options.tracks.size(); index++) {
        const std::string& track = options.tracks[index];
        std::error_code ec;
        if (!fs::exists(track, ec)) {
            report_error("File " + track + " does not exist. If the path contains spaces, please "
                         "try again after surrounding the entire path with quotes \"\".");
            all_done = false;
            continue;
        }
        console.info("Separating track " + track);
        try {
            separate_track(index, reader, options, *model, out_dir, console, progress, release_after(index));
        } catch (const std::bad_alloc&) {
            progress.clear();
            report_error(track + ": out of memory");
            all_done = false;
        } catch (const std::exception& e) {
            progress.clear();
            report_error(e.what());
            all_done = false;
        }
    }
    // The command ends here without destructors: the model is released
    // above (on a GPU) or left to the system, which frees it anyway when the
    // process ends. Every output file is closed (and renamed) by now; only
    // the streams need a flush.
    if (released.valid()) released.wait();
    std::cout.flush();
    std::cerr.flush();
    std::fflush(nullptr);
    fastdemucs::trace_point("exiting");
    std::_Exit(all_done ? 0 : 1);
}

}  // namespace
}  // namespace fastdemucs_cli

int main(int argc, char** argv) {
    try {
        if (fastdemucs_cli::is_export_command(argc, argv)) return fastdemucs_cli::run_export(argc, argv);
        return fastdemucs_cli::run(argc, argv);
    } catch (const std::bad_alloc&) {
        fastdemucs_cli::report_error("out of memory");
    } catch (const std::exception& e) {  // fastdemucs::Error included
        fastdemucs_cli::report_error(e.what());
    } catch (...) {
        fastdemucs_cli::report_error("unexpected failure");
    }
    // Without destructors, as run() ends: a track may still be read ahead on a detached thread.
    std::cout.flush();
    std::cerr.flush();
    std::_Exit(1);
}
