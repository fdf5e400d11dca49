#include "output_names.h"

#include <filesystem>

#include "fastdemucs/fastdemucs.h"

namespace fastdemucs_cli {

using fastdemucs::Error;

TrackName split_track_name(const std::string& track_path) {
    const std::string name = std::filesystem::path(track_path).filename().string();
    const auto dot = name.rfind('.');
    if (dot == std::string::npos) return {name, name};
    return {name.substr(0, dot), name.substr(dot + 1)};
}

namespace {

std::string field_value(const std::string& field, const TrackName& track, const std::string& stem,
                        const std::string& ext, const std::string& pattern) {
    if (field == "track") return track.track;
    if (field == "trackext") return track.trackext;
    if (field == "stem") return stem;
    if (field == "ext") return ext;
    throw Error("--filename \"" + pattern + "\": unknown field {" + field +
                "} (use {track}, {trackext}, {stem}, {ext})");
}

}  // namespace

std::string format_filename(const std::string& pattern, const TrackName& track,
                            const std::string& stem, const std::string& ext) {
    std::string result;
    for (size_t i = 0; i < pattern.size(); ++i) {
        const char c = pattern[i];
        const bool doubled = i + 1 < pattern.size() && pattern[i + 1] == c;
        if ((c == '{' || c == '}') && doubled) {
            result.push_back(c);
            ++i;
        } else if (c == '{') {
            const auto close = pattern.find('}', i + 1);
            if (close == std::string::npos)
                throw Error("--filename \"" + pattern + "\": unmatched '{'");
            result += field_value(pattern.substr(i + 1, close - i - 1), track, stem, ext, pattern);
            i = close;
        } else if (c == '}') {
            throw Error("--filename \"" + pattern + "\": single '}' (write '}}' for a brace)");
        } else {
            result.push_back(c);
        }
    }
    return result;
}

void check_filename_template(const std::string& pattern) {
    const std::string expanded = format_filename(pattern, {"track", "ext"}, "stem", "wav");
    if (expanded.empty()) throw Error("--filename must not be empty");
}

}  // namespace fastdemucs_cli
