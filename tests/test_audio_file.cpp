// Audio file reading and writing: exact sample values as the official
// command writes them, clip modes, and the atomic-write guarantees.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "engine/pcm.h"
#include "fastdemucs/fastdemucs.h"
#include "io/audio_file.h"
#include "test_audio_support.h"
#include "test_support.h"

using namespace fastdemucs;
namespace fs = std::filesystem;

namespace {

class ScratchDir {
public:
    ScratchDir() : dir_(testing_support::make_temp_dir("audio")) {}
    ~ScratchDir() {
        std::error_code ec;
        fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::add, ec);
        fs::remove_all(dir_, ec);
    }
    std::string path(const std::string& name) const { return (fs::path(dir_) / name).string(); }
    const std::string& dir() const { return dir_; }
    size_t entries() const {
        return static_cast<size_t>(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()));
    }

private:
    std::string dir_;
};

// The official pipeline's integer value, written independently of the code
// under test: torchaudio's sox sample trunc(clamp(x * 2^31)), then sox's
// rounding to `bits` bits (halves up, saturating at the top).
int64_t official_int(float x, int bits) {
    double sample = std::trunc(std::min(std::max(double(x) * 2147483648.0, -2147483648.0), 2147483647.0));
    const double step = std::ldexp(1.0, 32 - bits);
    const double top = std::ldexp(1.0, bits - 1) - 1;
    return static_cast<int64_t>(std::min(std::floor((sample + step / 2) / step), top));
}

// Values around every rounding edge plus a random signal in [-1.2, 1.2].
std::vector<float> tricky_signal(int bits, int64_t random_count) {
    const float lsb = std::ldexp(1.0f, 1 - bits);
    std::vector<float> values = {0.0f,       -0.0f,       1.0f,        -1.0f,       1.5f,
                                 -1.5f,      0.5f * lsb,  -0.5f * lsb, 1.5f * lsb,  -1.5f * lsb,
                                 0.49f * lsb, -0.51f * lsb, 0.99999f,  -0.99999f,  1.0f - lsb / 2,
                                 -1.0f + lsb / 2, 1e-12f, -1e-12f, 0.25f, -0.75f};
    std::mt19937 rng(1234);
    std::uniform_real_distribution<float> uniform(-1.2f, 1.2f);
    for (int64_t i = 0; i < random_count; ++i) values.push_back(uniform(rng));
    if (values.size() % 2) values.push_back(0.125f);
    return values;
}

// Reads back the integers of a 16/24-bit file written from `signal`.
std::vector<int64_t> read_back_ints(const std::string& path, int bits) {
    const Audio audio = read_audio(path);
    std::vector<int64_t> ints;
    for (float v : audio.data) {
        const double scaled = std::ldexp(double(v), bits - 1);
        EXPECT_EQ(scaled, std::round(scaled)) << "not an integer sample";
        ints.push_back(static_cast<int64_t>(scaled));
    }
    return ints;
}

void expect_official_ints(const std::string& path, const std::vector<float>& planar, int bits) {
    const std::vector<int64_t> got = read_back_ints(path, bits);
    ASSERT_EQ(got.size(), planar.size());
    int mismatches = 0;
    for (size_t i = 0; i < planar.size(); ++i)
        if (got[i] != official_int(planar[i], bits) && ++mismatches <= 10)
            ADD_FAILURE() << "x=" << planar[i] << " got " << got[i] << " want "
                          << official_int(planar[i], bits);
    EXPECT_EQ(mismatches, 0);
}

WriteParams params(SampleFormat format, ClipMode clip, const std::string& container = "wav") {
    WriteParams p;
    p.format = format;
    p.clip = clip;
    p.container = container;
    return p;
}

// 16-bit samples straight from a PCM WAV's data chunk (little-endian host).
std::vector<int16_t> raw_wav_int16(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    size_t pos = 12;
    while (pos + 8 <= bytes.size()) {
        uint32_t size;
        std::memcpy(&size, &bytes[pos + 4], 4);
        if (std::memcmp(&bytes[pos], "data", 4) == 0) {
            std::vector<int16_t> samples(size / 2);
            std::memcpy(samples.data(), &bytes[pos + 8], size);
            return samples;
        }
        pos += 8 + size + (size & 1);
    }
    return {};
}

template <typename F>
void expect_error_naming(F f, const std::string& path) {
    try {
        f();
        ADD_FAILURE() << "no error thrown for " << path;
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
}

}  // namespace

TEST(AudioFile, ReadsFixtureAsInt16Over32768) {
    const std::string path = testing_support::fixture("tiny/mix_4s.wav");
    const Audio audio = read_audio(path);
    ASSERT_EQ(audio.channels, 2);
    ASSERT_EQ(audio.samples, 176400);
    EXPECT_EQ(audio.samplerate, 44100);
    const std::vector<int16_t> raw = raw_wav_int16(path);
    ASSERT_EQ(raw.size(), audio.data.size());
    for (int64_t t = 0; t < audio.samples; ++t)
        for (int c = 0; c < 2; ++c)
            ASSERT_EQ(audio.channel(c)[t], raw[t * 2 + c] / 32768.0f) << "t=" << t << " c=" << c;
}

TEST(AudioFile, Float32RoundTripIsBitExact) {
    ScratchDir dir;
    std::vector<float> signal = tricky_signal(16, 20000);
    signal.insert(signal.end(), {3.5f, -7.25f, 1e-40f, -1e-40f, 1e30f, 0.1f});  // beyond [-1, 1], denormals
    const int64_t samples = static_cast<int64_t>(signal.size()) / 2;
    const std::string path = dir.path("f.wav");
    write_audio(path, signal.data(), 2, samples, 48000, params(SampleFormat::Float32, ClipMode::None));
    const Audio audio = read_audio(path);
    EXPECT_EQ(audio.channels, 2);
    EXPECT_EQ(audio.samples, samples);
    EXPECT_EQ(audio.samplerate, 48000);
    ASSERT_EQ(audio.data.size(), signal.size());
    EXPECT_EQ(std::memcmp(audio.data.data(), signal.data(), signal.size() * sizeof(float)), 0);
}

TEST(AudioFile, Int16MatchesOfficialConversion) {
    ScratchDir dir;
    const std::vector<float> signal = tricky_signal(16, 50000);
    const std::string path = dir.path("i16.wav");
    write_audio(path, signal.data(), 2, signal.size() / 2, 44100, params(SampleFormat::Int16, ClipMode::None));
    expect_official_ints(path, signal, 16);
    // A few values spelled out: halves round up, the top saturates.
    EXPECT_EQ(official_int(0.5f / 32768, 16), 1);
    EXPECT_EQ(official_int(-0.5f / 32768, 16), 0);
    EXPECT_EQ(official_int(-1.5f / 32768, 16), -1);
    EXPECT_EQ(official_int(1.0f, 16), 32767);
    EXPECT_EQ(official_int(-1.0f, 16), -32768);
    EXPECT_EQ(official_int(0.99999f, 16), 32767);
}

// A signal long enough to be split between writer threads (peak and
// conversion) and written in two windows (past 3 min 10 s at 44.1 kHz), with
// the rescale clip mode: the same integers as one thread in one pass.
TEST(AudioFile, Int16LongSignalInPartsMatchesOfficialConversion) {
    ScratchDir dir;
    std::vector<float> signal = tricky_signal(16, 2 * 8600000);
    signal[15000000] = 1.7f;  // the peak, in a later part of the second channel
    const int64_t samples = static_cast<int64_t>(signal.size()) / 2;
    const std::string path = dir.path("long.wav");
    write_audio(path, signal.data(), 2, samples, 44100, params(SampleFormat::Int16, ClipMode::Rescale));
    const float divisor = std::max(1.01f * 1.7f, 1.0f);
    std::vector<float> rescaled(signal.size());
    for (size_t i = 0; i < signal.size(); ++i) rescaled[i] = signal[i] / divisor;
    expect_official_ints(path, rescaled, 16);
}

TEST(AudioFile, Int24MatchesOfficialConversion) {
    ScratchDir dir;
    const std::vector<float> signal = tricky_signal(24, 50000);
    const std::string path = dir.path("i24.wav");
    write_audio(path, signal.data(), 1, signal.size(), 44100, params(SampleFormat::Int24, ClipMode::None));
    expect_official_ints(path, signal, 24);
}

TEST(AudioFile, FlacRoundTrip16And24) {
    ScratchDir dir;
    const std::vector<float> signal = tricky_signal(24, 30000);
    const std::string p16 = dir.path("a.flac"), p24 = dir.path("b.flac");
    write_audio(p16, signal.data(), 2, signal.size() / 2, 44100,
                params(SampleFormat::Int16, ClipMode::None, "flac"));
    write_audio(p24, signal.data(), 2, signal.size() / 2, 44100,
                params(SampleFormat::Int24, ClipMode::None, "flac"));
    expect_official_ints(p16, signal, 16);
    expect_official_ints(p24, signal, 24);
    EXPECT_EQ(read_audio(p24).samplerate, 44100);
}

// Separator::separate_pcm16's path: stems converted by the engine
// (engine/pcm.h, [S, L, C]) and written as they are give the same files as
// the float writer with each clip mode, in WAV and FLAC; a stereo signal
// with a peak past full scale, rounding edges and a NaN.
TEST(AudioFile, Pcm16StemsWriteTheFloatWritersFiles) {
    ScratchDir dir;
    std::vector<float> planar = tricky_signal(16, 40000);
    planar[7] = std::nanf("");
    planar[30001] = -1.9f;
    const int64_t samples = static_cast<int64_t>(planar.size()) / 2;
    for (ClipMode clip : {ClipMode::Rescale, ClipMode::Clamp, ClipMode::None})
        for (const std::string container : {"wav", "flac"}) {
            const std::string from_floats = dir.path("floats." + container), from_pcm = dir.path("pcm." + container);
            write_audio(from_floats, planar.data(), 2, samples, 44100, params(SampleFormat::Int16, clip, container));
            const std::vector<int16_t> pcm = pcm::convert_stems(planar.data(), 1, 2, samples, clip);
            write_audio_pcm16(from_pcm, pcm.data(), 2, samples, 44100, params(SampleFormat::Int16, clip, container));
            EXPECT_EQ(testing_support::read_text(from_floats), testing_support::read_text(from_pcm))
                << container << ", clip mode " << int(clip);
        }
    const int16_t x[2] = {0, 0};
    EXPECT_THROW(write_audio_pcm16(dir.path("x.wav"), x, 1, 2, 44100, params(SampleFormat::Int24, ClipMode::None)),
                 Error);
    EXPECT_THROW(write_audio_pcm16(dir.path("x.mp3"), x, 1, 2, 44100,
                                   params(SampleFormat::Int16, ClipMode::None, "mp3")),
                 Error);
    EXPECT_EQ(dir.entries(), 4u);  // the four files above, no leftovers
}

TEST(AudioFile, FlacRefusesFloat32) {
    ScratchDir dir;
    const float x[2] = {0, 0};
    EXPECT_THROW(write_audio(dir.path("x.flac"), x, 1, 2, 44100,
                             params(SampleFormat::Float32, ClipMode::None, "flac")),
                 Error);
    EXPECT_EQ(dir.entries(), 0u);
}

TEST(AudioFile, ClipModesOnLoudSignal) {
    ScratchDir dir;
    // Peak 1.5 in the second channel: rescale divides both channels by 1.01 * 1.5.
    const std::vector<float> loud = {0.2f, -0.995f, 1.2f, 0.0f, -0.3f, 1.5f, 0.99f, -1.4f};
    const float divisor = 1.01f * 1.5f;
    auto written = [&](ClipMode mode) {
        const std::string path = dir.path("clip.wav");
        write_audio(path, loud.data(), 2, 4, 44100, params(SampleFormat::Float32, mode));
        return read_audio(path).data;
    };
    const std::vector<float> rescaled = written(ClipMode::Rescale);
    const std::vector<float> clamped = written(ClipMode::Clamp);
    const std::vector<float> untouched = written(ClipMode::None);
    for (size_t i = 0; i < loud.size(); ++i) {
        EXPECT_EQ(rescaled[i], loud[i] / divisor) << i;
        EXPECT_EQ(clamped[i], std::min(std::max(loud[i], -0.99f), 0.99f)) << i;
        EXPECT_EQ(untouched[i], loud[i]) << i;
    }
    // A quiet signal (1.01 * peak <= 1) is left alone by rescale.
    const std::vector<float> quiet = {0.5f, -0.9f, 0.1f, 0.2f};
    const std::string path = dir.path("quiet.wav");
    write_audio(path, quiet.data(), 1, 4, 44100, params(SampleFormat::Float32, ClipMode::Rescale));
    EXPECT_EQ(read_audio(path).data, quiet);
}

TEST(AudioFile, Int16RescaleAvoidsSaturation) {
    ScratchDir dir;
    const std::vector<float> loud = {2.0f, -2.0f, 1.0f, -0.5f};
    const std::string path = dir.path("r.wav");
    write_audio(path, loud.data(), 1, 4, 44100, params(SampleFormat::Int16, ClipMode::Rescale));
    std::vector<float> expected;
    for (float x : loud) expected.push_back(x / (1.01f * 2.0f));
    expect_official_ints(path, expected, 16);
}

TEST(AudioFile, OverwritesAtomicallyAndLeavesNoTempFile) {
    ScratchDir dir;
    const std::string path = dir.path("out.wav");
    const std::vector<float> first = {0.1f, 0.2f}, second = {0.3f, 0.4f, 0.5f};
    write_audio(path, first.data(), 1, 2, 44100, params(SampleFormat::Float32, ClipMode::None));
    write_audio(path, second.data(), 1, 3, 44100, params(SampleFormat::Float32, ClipMode::None));
    EXPECT_EQ(read_audio(path).data, second);
    EXPECT_EQ(dir.entries(), 1u);
    // The file gets ordinary permissions (umask applied), not a temp file's 0600.
    const mode_t mask = umask(0);
    umask(mask);
    EXPECT_EQ(fs::status(path).permissions() & fs::perms::all,
              static_cast<fs::perms>(0666 & ~mask));
}

TEST(AudioFile, WriteIntoMissingFolderThrowsAndLeavesNothing) {
    ScratchDir dir;
    const float x[2] = {0, 0};
    const std::string path = dir.path("missing/out.wav");
    expect_error_naming([&] { write_audio(path, x, 1, 2, 44100, WriteParams()); }, path);
    EXPECT_EQ(dir.entries(), 0u);
    // A path through a regular file fails the same way (even for root).
    std::ofstream(dir.path("file")) << "x";
    const std::string through_file = dir.path("file/out.wav");
    expect_error_naming([&] { write_audio(through_file, x, 1, 2, 44100, WriteParams()); }, through_file);
    EXPECT_EQ(dir.entries(), 1u);
}

TEST(AudioFile, WriteIntoReadOnlyFolderThrowsAndLeavesNothing) {
    if (geteuid() == 0) GTEST_SKIP() << "root ignores folder permissions";
    ScratchDir dir;
    fs::create_directory(dir.path("ro"));
    fs::permissions(dir.path("ro"), fs::perms::owner_read | fs::perms::owner_exec);
    const float x[2] = {0, 0};
    const std::string path = dir.path("ro/out.wav");
    expect_error_naming([&] { write_audio(path, x, 1, 2, 44100, WriteParams()); }, path);
    fs::permissions(dir.path("ro"), fs::perms::owner_all);
    EXPECT_TRUE(fs::is_empty(dir.path("ro")));
}

TEST(AudioFile, ShortWriteThrowsAndRemovesTempFile) {
    // A file size limit makes write() fail part way, as a full disk does.
    ScratchDir dir;
    rlimit old_limit{};
    ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
    rlimit small = old_limit;
    small.rlim_cur = 64 * 1024;
    const auto old_handler = signal(SIGXFSZ, SIG_IGN);
    ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
    const std::vector<float> one_second(2 * 44100, 0.25f);
    const std::string path = dir.path("big.wav");
    bool threw = false;
    try {
        write_audio(path, one_second.data(), 2, 44100, 44100, params(SampleFormat::Float32, ClipMode::None));
    } catch (const Error& e) {
        threw = true;
        EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
    setrlimit(RLIMIT_FSIZE, &old_limit);
    signal(SIGXFSZ, old_handler);
    EXPECT_TRUE(threw);
    EXPECT_EQ(dir.entries(), 0u);
}

TEST(AudioFile, ReadMissingFileThrowsNamingIt) {
    const std::string path = "/nonexistent/fastdemucs/in.wav";
    expect_error_naming([&] { read_audio(path); }, path);
}
