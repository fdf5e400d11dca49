#include "test_support.h"

#include <zip.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>

namespace testing_support {

namespace {
// The GPU tests' cuDNN plans go to a folder of this run, not the user's
// cache (cuda/plan_store.h), unless FASTDEMUCS_PLAN_CACHE names one.
struct TestPlanStore {
    std::string dir;
    TestPlanStore() {
        const char* chosen = std::getenv("FASTDEMUCS_PLAN_CACHE");
        if (chosen && *chosen) return;
        // Before main: a failure here must not terminate the process
        // (no store then: "off").
        try {
            dir = make_temp_dir("test_plans");
        } catch (const std::exception&) {
        }
        setenv("FASTDEMUCS_PLAN_CACHE", dir.empty() ? "off" : dir.c_str(), 1);
    }
    ~TestPlanStore() {
        std::error_code ec;
        if (!dir.empty()) std::filesystem::remove_all(dir, ec);
    }
} test_plan_store;
}  // namespace

std::string fixtures_dir() {
    const char* env = std::getenv("FASTDEMUCS_FIXTURES");
    if (env && *env) return env;
    return FASTDEMUCS_FIXTURES_DEFAULT;
}

std::string fixture(const std::string& relative) { return fixtures_dir() + "/" + relative; }

int64_t Array::numel() const {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
}

static std::vector<uint8_t> slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot open " + path);
    return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

// The .npy header is a Python dict literal: {'descr': '<f4', 'fortran_order': False, 'shape': (6, 2, 132300), }
Array parse_npy(const std::string& name, const std::vector<uint8_t>& bytes) {
    if (bytes.size() < 10 || std::memcmp(bytes.data(), "\x93NUMPY", 6) != 0)
        throw std::runtime_error(name + ": not an .npy file");
    int major = bytes[6];
    size_t header_len, offset;
    if (major == 1) {
        header_len = bytes[8] | (bytes[9] << 8);
        offset = 10;
    } else {
        header_len = bytes[8] | (bytes[9] << 8) | (bytes[10] << 16) | (size_t(bytes[11]) << 24);
        offset = 12;
    }
    std::string header(reinterpret_cast<const char*>(bytes.data() + offset), header_len);
    auto field = [&](const std::string& key) {
        auto p = header.find("'" + key + "'");
        if (p == std::string::npos) throw std::runtime_error(name + ": npy header lacks " + key);
        return header.substr(header.find(':', p) + 1);
    };
    std::string descr = field("descr");
    descr = descr.substr(descr.find('\'') + 1);
    descr = descr.substr(0, descr.find('\''));
    if (field("fortran_order").find("True") < field("fortran_order").find(','))
        throw std::runtime_error(name + ": fortran order not supported");
    std::string shape_text = field("shape");
    shape_text = shape_text.substr(shape_text.find('(') + 1, shape_text.find(')') - shape_text.find('(') - 1);
    Array a;
    size_t pos = 0;
    while (pos < shape_text.size()) {
        while (pos < shape_text.size() && (shape_text[pos] == ' ' || shape_text[pos] == ',')) pos++;
        if (pos >= shape_text.size()) break;
        size_t end = pos;
        while (end < shape_text.size() && std::isdigit(static_cast<unsigned char>(shape_text[end]))) end++;
        a.shape.push_back(std::stoll(shape_text.substr(pos, end - pos)));
        pos = end;
    }
    const uint8_t* data = bytes.data() + offset + header_len;
    size_t avail = bytes.size() - offset - header_len;
    int64_t n = a.numel();
    a.data.resize(n);
    if (descr == "<f4") {
        if (avail < size_t(n) * 4) throw std::runtime_error(name + ": truncated");
        std::memcpy(a.data.data(), data, n * 4);
    } else if (descr == "<f8") {
        if (avail < size_t(n) * 8) throw std::runtime_error(name + ": truncated");
        for (int64_t i = 0; i < n; i++) {
            double v;
            std::memcpy(&v, data + i * 8, 8);
            a.data[i] = static_cast<float>(v);
        }
    } else {
        throw std::runtime_error(name + ": unsupported dtype " + descr);
    }
    return a;
}

Array read_npy(const std::string& path) { return parse_npy(path, slurp(path)); }

Array read_full6s_separate_12s() {
    const Array a = read_npy(fixture("full6s/full6s_separate_12s.sources0-2.npy"));
    const Array b = read_npy(fixture("full6s/full6s_separate_12s.sources3-5.npy"));
    Array ref;
    ref.shape = {a.shape[0] + b.shape[0], a.shape[1], a.shape[2]};
    ref.data = a.data;
    ref.data.insert(ref.data.end(), b.data.begin(), b.data.end());
    return ref;
}

std::map<std::string, Array> read_npz(const std::string& path) {
    int err = 0;
    zip_t* z = zip_open(path.c_str(), ZIP_RDONLY, &err);
    if (!z) throw std::runtime_error("cannot open npz " + path);
    std::map<std::string, Array> out;
    zip_int64_t n = zip_get_num_entries(z, 0);
    for (zip_int64_t i = 0; i < n; i++) {
        zip_stat_t st;
        zip_stat_index(z, i, 0, &st);
        std::vector<uint8_t> buf(st.size);
        zip_file_t* f = zip_fopen_index(z, i, 0);
        zip_fread(f, buf.data(), st.size);
        zip_fclose(f);
        std::string key = st.name;
        if (key.size() > 4 && key.substr(key.size() - 4) == ".npy") key.resize(key.size() - 4);
        out[key] = parse_npy(key, buf);
    }
    zip_close(z);
    return out;
}

double relative_l2(const float* out, const float* ref, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = double(out[i]) - double(ref[i]);
        num += d * d;
        den += double(ref[i]) * double(ref[i]);
    }
    return std::sqrt(num / (den > 0 ? den : 1e-300));
}

double snr_db(const float* out, const float* ref, int64_t n) {
    return -20.0 * std::log10(relative_l2(out, ref, n) + 1e-300);
}

std::string make_temp_dir(const std::string& tag) {
    std::string tmpl = "/tmp/fastdemucs_" + tag + "_XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (!mkdtemp(buf.data())) throw std::runtime_error("mkdtemp failed");
    return buf.data();
}

}  // namespace testing_support
