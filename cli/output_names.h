// Output file names, from the official `--filename` template: Python
// str.format with the fields {track}, {trackext}, {stem} and {ext}.
#pragma once

#include <string>

namespace fastdemucs_cli {

struct TrackName {
    std::string track;     // file name before its last '.'
    std::string trackext;  // after it (the whole name when there is no '.')
};

// Splits the file name of `track_path` as the official command does
// (name.rsplit(".", 1)).
TrackName split_track_name(const std::string& track_path);

// Expands the template; `{{` and `}}` stand for braces. Throws
// fastdemucs::Error on an unknown field or an unbalanced brace.
std::string format_filename(const std::string& pattern, const TrackName& track,
                            const std::string& stem, const std::string& ext);

// Throws fastdemucs::Error when `pattern` cannot be expanded.
void check_filename_template(const std::string& pattern);

}  // namespace fastdemucs_cli
