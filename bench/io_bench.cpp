// Times the command's audio I/O on a deterministic 3-minute stereo track at
// 44.1 kHz: reading a 16-bit WAV, writing one stem as 16-bit WAV (the
// official default), and writing six stems at once, one thread each, as the
// command does (its write phase: from float stems, or from 16-bit stems, with
// the file system's part alone beside it); median of the runs.
//   io_bench FOLDER [RUNS]
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <string>
#include <vector>

#include "engine/pcm.h"
#include "io/audio_file.h"

namespace {

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

template <typename Fn>
double seconds(Fn&& fn) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: io_bench FOLDER [RUNS]\n");
        return 2;
    }
    const std::string folder = argv[1];
    const int runs = argc > 2 ? std::max(1, std::atoi(argv[2])) : 5;
    const int channels = 2, samplerate = 44100;
    const int64_t samples = int64_t(180) * samplerate;
    // A stem-like signal: two tones with a slow envelope, peaks above 1 (the rescale path).
    std::vector<float> planar(size_t(channels * samples));
    for (int c = 0; c < channels; c++)
        for (int64_t t = 0; t < samples; t++) {
            const double s = double(t) / samplerate;
            planar[size_t(c * samples + t)] =
                float(1.2 * std::sin(0.3 * s + c) * (0.6 * std::sin(2 * M_PI * 220.0 * s) + 0.4 * std::sin(2 * M_PI * 331.0 * s)));
        }
    const std::string path = folder + "/io_bench.wav";
    fastdemucs::WriteParams params;
    constexpr int kStems = 6;
    // The same stem already in 16-bit PCM (Separator::separate_pcm16), and
    // its bytes alone, for the file system's share: written, then also fsync'ed.
    const std::vector<int16_t> pcm16 =
        fastdemucs::pcm::convert_stems(planar.data(), 1, channels, samples, params.clip);
    auto six_at_once = [&](auto write_one) {
        std::vector<std::future<void>> writers;
        for (int s = 0; s < kStems; s++) writers.push_back(std::async(std::launch::async, write_one, s));
        for (auto& w : writers) w.get();
    };
    auto raw_write = [&](int s, bool sync) {
        const std::string raw = path + ".raw" + std::to_string(s);
        const int fd = ::open(raw.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0 || ::write(fd, pcm16.data(), pcm16.size() * 2) != ssize_t(pcm16.size() * 2) ||
            (sync && ::fsync(fd) != 0))
            std::perror("io_bench: raw write");
        ::close(fd);
    };
    std::vector<double> write_times, read_times, six_times, six_pcm16_times, six_raw_times, six_raw_sync_times;
    for (int r = 0; r < runs; r++) {
        six_pcm16_times.push_back(seconds([&] {
            six_at_once([&](int s) {
                fastdemucs::write_audio_pcm16(path + std::to_string(s), pcm16.data(), channels, samples, samplerate,
                                              params);
            });
        }));
        six_raw_times.push_back(seconds([&] { six_at_once([&](int s) { raw_write(s, false); }); }));
        six_raw_sync_times.push_back(seconds([&] { six_at_once([&](int s) { raw_write(s, true); }); }));
        write_times.push_back(seconds([&] { fastdemucs::write_audio(path, planar.data(), channels, samples, samplerate, params); }));
        read_times.push_back(seconds([&] { fastdemucs::read_audio(path); }));
        six_times.push_back(seconds([&] {
            std::vector<std::future<void>> writers;
            for (int s = 0; s < kStems; s++)
                writers.push_back(std::async(std::launch::async, [&, s] {
                    fastdemucs::write_audio(path + std::to_string(s), planar.data(), channels, samples, samplerate,
                                            params);
                }));
            for (auto& w : writers) w.get();
        }));
    }
    std::printf("{\"what\": \"write one 3-minute stem, 16-bit WAV\", \"median_s\": %.4f}\n", median(write_times));
    std::printf("{\"what\": \"write six stems, one thread each\", \"median_s\": %.4f}\n", median(six_times));
    std::printf("{\"what\": \"write six stems from 16-bit PCM, one thread each\", \"median_s\": %.4f}\n",
                median(six_pcm16_times));
    std::printf("{\"what\": \"six files of those bytes: write() only\", \"median_s\": %.4f}\n", median(six_raw_times));
    std::printf("{\"what\": \"six files of those bytes: write() + fsync()\", \"median_s\": %.4f}\n",
                median(six_raw_sync_times));
    std::printf("{\"what\": \"read a 3-minute 16-bit WAV\", \"median_s\": %.4f}\n", median(read_times));
    std::remove(path.c_str());
    for (int s = 0; s < kStems; s++) {
        std::remove((path + std::to_string(s)).c_str());
        std::remove((path + ".raw" + std::to_string(s)).c_str());
    }
    return 0;
}
