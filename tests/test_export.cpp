// `fastdemucs export`: the tiny fixture written as one ONNX graph and run by
// a real ONNX runtime (onnxruntime from PyPI, through
// tests/export_onnxruntime.py), compared with the official references; the
// bag's files; the refusals (old opset, unwritable output, unknown model).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "test_audio_support.h"
#include "test_support.h"

#if defined(FASTDEMUCS_CLI_PATH) && defined(FASTDEMUCS_WITH_EXPORT)

namespace {

namespace fs = std::filesystem;
using testing_support::quoted;
using testing_support::read_text;

constexpr int64_t kTinySegment = 88200;   // 2 s at 44.1 kHz
constexpr int64_t kFixtureSamples = 66150;

std::string runner_script() { return (fs::path(__FILE__).parent_path() / "export_onnxruntime.py").string(); }

// Writes a float32 C-order .npy.
void write_npy(const std::string& path, const std::vector<int64_t>& shape, const std::vector<float>& data) {
    std::string dims;
    for (size_t i = 0; i < shape.size(); i++) dims += std::to_string(shape[i]) + (shape.size() == 1 || i + 1 < shape.size() ? "," : "");
    std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
    while ((10 + header.size() + 1) % 64 != 0) header += ' ';
    header += '\n';
    std::ofstream out(path, std::ios::binary);
    out.write("\x93NUMPY\x01\x00", 8);
    const uint16_t len = uint16_t(header.size());
    out.put(char(len & 0xff));
    out.put(char(len >> 8));
    out << header;
    out.write(reinterpret_cast<const char*>(data.data()), std::streamsize(data.size() * sizeof(float)));
}

struct ExportRun {
    int status = -1;
    std::string out, err;
};

class ExportTest : public ::testing::Test {
protected:
    void SetUp() override { scratch_ = testing_support::make_temp_dir("export"); }
    void TearDown() override {
        std::error_code ec;
        fs::remove_all(scratch_, ec);
    }
    std::string path(const std::string& name) const { return scratch_ + "/" + name; }

    ExportRun run(const std::string& args) const {
        const std::string log = path("log");
        const std::string command = "env -u FASTDEMUCS_MODEL_URL TORCH_HOME=" + quoted(path("torch")) + " " +
                                    quoted(FASTDEMUCS_CLI_PATH) + " export " + args + " >" + quoted(log + ".out") +
                                    " 2>" + quoted(log + ".err");
        ExportRun r;
        r.status = testing_support::shell(command);
        r.out = read_text(log + ".out");
        r.err = read_text(log + ".err");
        std::remove((log + ".out").c_str());
        std::remove((log + ".err").c_str());
        return r;
    }
    ExportRun export_tiny(const std::string& name, const std::string& output, const std::string& extra = "") const {
        return run("--repo " + quoted(testing_support::fixture("tiny")) + " -n " + name + " -o " + quoted(output) + " " +
                   extra);
    }

    // Runs `model` with onnxruntime on `batch` copies of the fixture input
    // (zero-padded to the segment); returns false (and skips) when
    // onnxruntime is not installed.
    bool run_onnxruntime(const std::string& model, int batch, testing_support::Array& stems) const {
        const auto fixture = testing_support::read_npz(testing_support::fixture("tiny/tiny_forward_1.5s.npz"));
        const auto& input = fixture.at("input");  // [2, 66150]
        std::vector<float> mix(size_t(batch) * 2 * kTinySegment, 0.0f);
        for (int b = 0; b < batch; b++)
            for (int c = 0; c < 2; c++)
                for (int64_t i = 0; i < kFixtureSamples; i++)
                    mix[(size_t(b) * 2 + c) * kTinySegment + i] = input.data[c * kFixtureSamples + i];
        write_npy(path("mix.npy"), {batch, 2, kTinySegment}, mix);
        const std::string log = path("ort.log");
        const int status = testing_support::shell("python3 " + quoted(runner_script()) + " " + quoted(model) + " " +
                                                  quoted(path("mix.npy")) + " " + quoted(path("stems.npy")) + " >" +
                                                  quoted(log) + " 2>&1");
        if (status == 77) return false;
        EXPECT_EQ(status, 0) << read_text(log);
        if (status != 0) return false;
        stems = testing_support::read_npy(path("stems.npy"));
        return true;
    }

    // Per-stem SNR of item `b` of stems [B, 4, 2, segment] (first 66150 samples) against the fixture.
    static std::vector<double> stem_snrs(const testing_support::Array& stems, int b) {
        const auto fixture = testing_support::read_npz(testing_support::fixture("tiny/tiny_forward_1.5s.npz"));
        const auto& ref = fixture.at("output");  // [1, 4, 2, 66150]
        std::vector<double> snrs;
        for (int s = 0; s < 4; s++) {
            std::vector<float> got, want;
            for (int c = 0; c < 2; c++)
                for (int64_t i = 0; i < kFixtureSamples; i++) {
                    got.push_back(stems.data[((size_t(b) * 4 + s) * 2 + c) * kTinySegment + i]);
                    want.push_back(ref.data[(size_t(s) * 2 + c) * kFixtureSamples + i]);
                }
            snrs.push_back(testing_support::snr_db(got.data(), want.data(), int64_t(got.size())));
        }
        return snrs;
    }

    std::string scratch_;
};

constexpr const char* kSkipMessage =
    "onnxruntime (Python) is not installed: python3 -m pip install onnxruntime numpy (scripts/install-deps.sh)";

TEST_F(ExportTest, ExportTinyRunsInOnnxRuntimeAtReferenceAccuracy) {
    const std::string model = path("tiny.onnx");
    const ExportRun r = export_tiny("tiny", model);
    ASSERT_EQ(r.status, 0) << r.err;
    ASSERT_TRUE(fs::is_regular_file(model));
    const auto size = fs::file_size(model);
    RecordProperty("tiny_onnx_bytes", std::to_string(size));
    std::cout << "tiny.onnx: " << size << " bytes" << std::endl;
    testing_support::Array stems;
    if (!run_onnxruntime(model, 1, stems)) GTEST_SKIP() << kSkipMessage;
    ASSERT_EQ(stems.shape, (std::vector<int64_t>{1, 4, 2, kTinySegment}));
    const auto snrs = stem_snrs(stems, 0);
    const char* names[] = {"drums", "bass", "other", "vocals"};
    for (int s = 0; s < 4; s++) {
        std::cout << "tiny ONNX " << names[s] << ": " << snrs[s] << " dB" << std::endl;
        RecordProperty(std::string("snr_db_") + names[s], std::to_string(snrs[s]));
        EXPECT_GE(snrs[s], 80.0) << names[s];
    }
}

TEST_F(ExportTest, ExportDynamicBatchRunsTwoItems) {
    const std::string model = path("tiny_dynamic.onnx");
    const ExportRun r = export_tiny("tiny", model, "--batch dynamic");
    ASSERT_EQ(r.status, 0) << r.err;
    testing_support::Array stems;
    if (!run_onnxruntime(model, 2, stems)) GTEST_SKIP() << kSkipMessage;
    ASSERT_EQ(stems.shape, (std::vector<int64_t>{2, 4, 2, kTinySegment}));
    for (int b = 0; b < 2; b++)
        for (double snr : stem_snrs(stems, b)) EXPECT_GE(snr, 80.0) << "item " << b;
}

TEST_F(ExportTest, ExportBagWritesOneFilePerModelAndJson) {
    const ExportRun r = export_tiny("tiny_bag", path("bag.onnx"));
    ASSERT_EQ(r.status, 0) << r.err;
    for (int i = 0; i < 4; i++) {
        const std::string file = path("bag." + std::to_string(i) + ".onnx");
        ASSERT_TRUE(fs::is_regular_file(file)) << file;
        EXPECT_GT(fs::file_size(file), 1000000u);
    }
    EXPECT_FALSE(fs::exists(path("bag.onnx")));
    const std::string json = read_text(path("bag.json"));
    EXPECT_NE(json.find("\"models\": [\"bag.0.onnx\", \"bag.1.onnx\", \"bag.2.onnx\", \"bag.3.onnx\"]"),
              std::string::npos) << json;
    EXPECT_NE(json.find("\"sources\": [\"drums\", \"bass\", \"other\", \"vocals\"]"), std::string::npos) << json;
    EXPECT_NE(json.find("[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]"), std::string::npos) << json;
    EXPECT_NE(json.find("\"samplerate\": 44100"), std::string::npos) << json;
    EXPECT_NE(json.find("\"segment_samples\": [88200, 88200, 88200, 88200]"), std::string::npos) << json;
    for (const auto& entry : fs::directory_iterator(scratch_))
        EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos) << entry.path();
}

TEST_F(ExportTest, ExportRefusesOpsetBelow17) {
    const ExportRun r = export_tiny("tiny", path("old.onnx"), "--opset 16");
    EXPECT_NE(r.status, 0);
    EXPECT_NE(r.err.find("--opset 16 is too old: the graph needs opset 17, the first with the STFT operator"),
              std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(path("old.onnx")));
}

TEST_F(ExportTest, ExportRefusesUnwritableOutputLeavingNothing) {
    // The output's folder is a regular file.
    std::ofstream(path("not_a_folder")) << "x";
    ExportRun r = export_tiny("tiny", path("not_a_folder/model.onnx"));
    EXPECT_NE(r.status, 0);
    EXPECT_NE(r.err.find("cannot write"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("is not an existing folder"), std::string::npos) << r.err;
    // A missing folder.
    r = export_tiny("tiny", path("missing/model.onnx"));
    EXPECT_NE(r.status, 0);
    EXPECT_NE(r.err.find("is not an existing folder"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(path("missing")));
    // Only the file made by the test is there.
    int entries = 0;
    for (const auto& entry : fs::directory_iterator(scratch_)) entries += entry.path().filename() != "not_a_folder";
    EXPECT_EQ(entries, 0);
}

TEST_F(ExportTest, ExportRefusesUnknownModelAndBadOptions) {
    ExportRun r = export_tiny("no_such_model", path("x.onnx"));
    EXPECT_NE(r.status, 0);
    EXPECT_NE(r.err.find("no_such_model"), std::string::npos) << r.err;
    r = export_tiny("tiny", path("x.onnx"), "--batch 0");
    EXPECT_NE(r.status, 0);
    EXPECT_NE(r.err.find("--batch must be a positive number or 'dynamic'"), std::string::npos) << r.err;
    r = export_tiny("tiny", path("x.onnx"), "--shifts 2");
    EXPECT_NE(r.status, 0);
    EXPECT_NE(r.err.find("--shifts"), std::string::npos) << r.err;
    r = export_tiny("tiny", path("x.onnx"), "--opset 18");
    EXPECT_NE(r.status, 0);
    EXPECT_NE(r.err.find("--opset 18 is not supported"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(path("x.onnx")));
}

}  // namespace

#else

TEST(ExportTest, ExportNotBuilt) {
    GTEST_SKIP() << "this build has no `fastdemucs export` (libonnx-dev and libprotobuf-dev not found, or no CLI)";
}

#endif
