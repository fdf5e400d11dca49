// Helpers for the audio and command-line tests: shell quoting, running
// commands, making encoded inputs with the `ffmpeg` program.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

namespace testing_support {

inline std::string quoted(const std::string& text) {
    std::string q = "'";
    for (char c : text) q += (c == '\'') ? std::string("'\\''") : std::string(1, c);
    return q + "'";
}

inline std::string read_text(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

// Runs `command` through /bin/sh; returns its exit status (-1 if killed).
inline int shell(const std::string& command) {
    const int raw = std::system(command.c_str());
    return WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
}

// Runs the ffmpeg program quietly: ffmpeg -y -i INPUT ARGS OUTPUT (ARGS may
// hold more inputs and options; they are passed to the shell as they are).
// Throws with ffmpeg's own message on failure.
inline void ffmpeg(const std::string& input, const std::string& args, const std::string& output) {
    const std::string log = output + ".ffmpeg.log";
    const std::string command = "ffmpeg -nostdin -v error -y -i " + quoted(input) + " " + args + " " +
                                quoted(output) + " 2>" + quoted(log);
    const int status = shell(command);
    const std::string message = read_text(log);
    std::remove(log.c_str());
    if (status != 0)
        throw std::runtime_error("ffmpeg failed (is it installed? scripts/install-deps.sh): " + command + "\n" +
                                 message);
}

}  // namespace testing_support
