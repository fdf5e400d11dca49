// The checkpoint reader: the official-format fixtures, damaged and crafted
// files (every failure must be a fastdemucs::Error with a useful message,
// never a crash), and the pickle parser opcode by opcode.
#include <gtest/gtest.h>
#include <zip.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>

#include "checkpoint/checkpoint.h"
#include "checkpoint/pickle.h"
#include "checkpoint/tensor_data.h"
#include "error.h"
#include "test_support.h"

using namespace fastdemucs;
using Kind = PyValue::Kind;

namespace {

// A byte string from a literal that may hold NULs (the literal's own length).
template <size_t N>
std::string B(const char (&literal)[N]) {
    return std::string(literal, N - 1);
}

const std::string kTiny = "tiny/0d0b2025.th";
const std::string kFull6s = "full6s/full6s-86db6bad.th";

std::vector<uint8_t> file_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    EXPECT_TRUE(in) << path;
    return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

const std::vector<uint8_t>& tiny_bytes() {
    static const std::vector<uint8_t> bytes = file_bytes(testing_support::fixture(kTiny));
    return bytes;
}

// Runs `f`, expecting a fastdemucs::Error whose message contains `needle`.
void expect_error(const std::function<void()>& f, const std::string& needle) {
    try {
        f();
        ADD_FAILURE() << "no error; expected one containing: " << needle;
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
            << "message: " << e.what() << "\nexpected to contain: " << needle;
    }
}

void expect_bytes_error(const std::vector<uint8_t>& bytes, const std::string& needle) {
    expect_error([&] { read_checkpoint_bytes("damaged.th", bytes); }, needle);
}

// Damaged input may be refused or (if the damage is harmless) read, but
// nothing else: no other exception type, no crash. Returns true if it loaded.
bool loads_or_refuses(const std::vector<uint8_t>& bytes) {
    try {
        read_checkpoint_bytes("damaged.th", bytes);
        return true;
    } catch (const Error& e) {
        EXPECT_EQ(std::string(e.what()).rfind("damaged.th: ", 0), 0u) << e.what();
        return false;
    }
}

// ---- zip helpers (libzip, in memory) ---------------------------------------

struct Entry {
    std::string name;
    std::vector<uint8_t> data;
};

std::vector<Entry> unzip(const std::vector<uint8_t>& bytes) {
    zip_error_t error;
    zip_error_init(&error);
    zip_source_t* src = zip_source_buffer_create(bytes.data(), bytes.size(), 0, &error);
    zip_t* z = zip_open_from_source(src, ZIP_RDONLY, &error);
    EXPECT_NE(z, nullptr);
    std::vector<Entry> entries;
    for (zip_int64_t i = 0; i < zip_get_num_entries(z, 0); ++i) {
        zip_stat_t st;
        zip_stat_index(z, i, 0, &st);
        Entry e{st.name, std::vector<uint8_t>(st.size)};
        zip_file_t* f = zip_fopen_index(z, i, 0);
        EXPECT_EQ(zip_fread(f, e.data.data(), st.size), static_cast<zip_int64_t>(st.size));
        zip_fclose(f);
        entries.push_back(std::move(e));
    }
    zip_discard(z);
    zip_error_fini(&error);
    return entries;
}

std::vector<uint8_t> make_zip(const std::vector<Entry>& entries, bool deflate = false) {
    zip_error_t error;
    zip_error_init(&error);
    zip_source_t* out = zip_source_buffer_create(nullptr, 0, 0, &error);
    zip_source_keep(out);
    zip_t* z = zip_open_from_source(out, ZIP_TRUNCATE, &error);
    EXPECT_NE(z, nullptr);
    for (const Entry& e : entries) {
        zip_source_t* data = zip_source_buffer(z, e.data.data(), e.data.size(), 0);
        zip_int64_t index = zip_file_add(z, e.name.c_str(), data, ZIP_FL_ENC_UTF_8);
        EXPECT_GE(index, 0);
        zip_set_file_compression(z, static_cast<zip_uint64_t>(index), deflate ? ZIP_CM_DEFLATE : ZIP_CM_STORE, 0);
    }
    EXPECT_EQ(zip_close(z), 0);
    std::vector<uint8_t> bytes;
    EXPECT_EQ(zip_source_open(out), 0);
    zip_source_seek(out, 0, SEEK_END);
    bytes.resize(static_cast<size_t>(zip_source_tell(out)));
    zip_source_seek(out, 0, SEEK_SET);
    EXPECT_EQ(zip_source_read(out, bytes.data(), bytes.size()), static_cast<zip_int64_t>(bytes.size()));
    zip_source_close(out);
    zip_source_free(out);
    zip_error_fini(&error);
    return bytes;
}

std::vector<uint8_t>& entry_data(std::vector<Entry>& entries, const std::string& name) {
    for (Entry& e : entries) {
        if (e.name == name) return e.data;
    }
    ADD_FAILURE() << "no entry " << name;
    static std::vector<uint8_t> none;
    return none;
}

void remove_entry(std::vector<Entry>& entries, const std::string& name) {
    size_t before = entries.size();
    entries.erase(std::remove_if(entries.begin(), entries.end(), [&](const Entry& e) { return e.name == name; }),
                  entries.end());
    EXPECT_EQ(entries.size() + 1, before) << name;
}

std::vector<uint8_t> with_pickle(const std::vector<uint8_t>& pickle_bytes) {
    std::vector<Entry> entries = unzip(tiny_bytes());
    entry_data(entries, "archive/data.pkl") = pickle_bytes;
    return make_zip(entries);
}

// ---- a pickle writer for hand-made files -----------------------------------

class PickleWriter {
public:
    PickleWriter& op(uint8_t code) {
        bytes_.push_back(code);
        return *this;
    }
    PickleWriter& raw(const std::string& s) {
        bytes_.insert(bytes_.end(), s.begin(), s.end());
        return *this;
    }
    PickleWriter& le(uint64_t v, int n) {
        for (int k = 0; k < n; ++k) bytes_.push_back(static_cast<uint8_t>(v >> (8 * k)));
        return *this;
    }
    PickleWriter& proto() { return op(0x80).op(2); }
    PickleWriter& str(const std::string& s) { return op('X').le(s.size(), 4).raw(s); }
    PickleWriter& integer(int32_t v) { return op('J').le(static_cast<uint32_t>(v), 4); }
    PickleWriter& global(const std::string& module, const std::string& name) {
        return op('c').raw(module + "\n" + name + "\n");
    }
    PickleWriter& mark() { return op('('); }
    PickleWriter& tuple() { return op('t'); }
    PickleWriter& reduce() { return op('R'); }
    PickleWriter& stop() { return op('.'); }
    PickleWriter& int_tuple(const std::vector<int64_t>& values) {
        mark();
        for (int64_t v : values) integer(static_cast<int32_t>(v));
        return tuple();
    }
    // torch._utils._rebuild_tensor_v2(('storage', torch.<type>, key, 'cpu', numel),
    //                                 offset, size, stride, False, OrderedDict())
    PickleWriter& tensor(const std::string& type, const std::string& key, int64_t numel, int64_t offset,
                         const std::vector<int64_t>& size, const std::vector<int64_t>& stride) {
        global("torch._utils", "_rebuild_tensor_v2").mark();
        mark().str("storage").global("torch", type).str(key).str("cpu").integer(static_cast<int32_t>(numel)).tuple();
        op('Q').integer(static_cast<int32_t>(offset)).int_tuple(size).int_tuple(stride).op(0x89);
        global("collections", "OrderedDict").op(')').reduce();
        return tuple().reduce();
    }
    const std::vector<uint8_t>& bytes() const { return bytes_; }

private:
    std::vector<uint8_t> bytes_;
};

struct Crafted {
    std::string klass_module = "demucs.htdemucs";
    std::string klass_name = "HTDemucs";
    // Writes SETITEMS items of the state OrderedDict (key, tensor, ...).
    std::function<void(PickleWriter&)> state = [](PickleWriter&) {};
    std::vector<Entry> data;  // archive/data/<key> entries
};

std::vector<uint8_t> crafted_pickle(const Crafted& c) {
    PickleWriter w;
    w.proto().op('}').mark();
    w.str("klass").global(c.klass_module, c.klass_name);
    w.str("args").op(')');
    w.str("kwargs").op('}').mark();
    w.str("segment").global("fractions", "Fraction").str("39/5").op(0x85).reduce();
    w.str("sources").op(']').mark().str("drums").str("bass").op('e');
    w.op('u');
    w.str("state").global("collections", "OrderedDict").op(')').reduce().mark();
    c.state(w);
    w.op('u');
    // An object of a class we know nothing about, as omegaconf or argparse
    // would write it: NEWOBJ + BUILD. It must stay inert and harmless.
    w.str("training_args").global("some.module", "Config").op(')').op(0x81);
    w.op('}').str("lr").op('G').raw(B("\x3f\x50\x62\x4d\xd2\xf1\xa9\xfc")).op('s').op('b');
    w.op('u').stop();
    return w.bytes();
}

std::vector<uint8_t> crafted_zip(const Crafted& c) {
    std::vector<Entry> entries = {{"archive/data.pkl", crafted_pickle(c)},
                                  {"archive/byteorder", {'l', 'i', 't', 't', 'l', 'e'}},
                                  {"archive/version", {'3', '\n'}}};
    for (const Entry& e : c.data) entries.push_back({"archive/data/" + e.name, e.data});
    return make_zip(entries);
}

template <typename T>
std::vector<uint8_t> as_bytes(const std::vector<T>& values) {
    std::vector<uint8_t> out(values.size() * sizeof(T));
    std::memcpy(out.data(), values.data(), out.size());
    return out;
}

int64_t param_count(const Checkpoint& ck) {
    int64_t n = 0;
    for (const auto& [name, t] : ck.state) n += t.numel();
    return n;
}

double sum(const HostTensor& t) {
    double s = 0;
    for (float v : t.data) s += v;
    return s;
}

pickle::ParseResult parse(const std::vector<uint8_t>& bytes) { return pickle::parse(bytes.data(), bytes.size()); }

pickle::ParseResult parse(const std::string& bytes) {
    return pickle::parse(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

void expect_parse_error(const std::string& bytes, const std::string& needle) {
    expect_error([&] { parse(bytes); }, needle);
}

}  // namespace

// ---- the fixtures ------------------------------------------------------------

TEST(CheckpointTiny, Kwargs) {
    Checkpoint ck = read_checkpoint(testing_support::fixture(kTiny));
    EXPECT_EQ(ck.klass, "demucs.htdemucs HTDemucs");
    EXPECT_EQ(ck.path, testing_support::fixture(kTiny));
    ASSERT_TRUE(ck.kwargs);
    const PyValue& kw = *ck.kwargs;
    ASSERT_EQ(kw.kind, Kind::Dict);
    EXPECT_EQ(kw.get("channels")->i, 8);
    EXPECT_EQ(kw.get("bottom_channels")->i, 32);
    EXPECT_EQ(kw.get("t_layers")->i, 2);
    EXPECT_EQ(kw.get("samplerate")->i, 44100);
    EXPECT_EQ(kw.get("nfft")->i, 4096);
    const PyValue* segment = kw.get("segment");
    ASSERT_EQ(segment->kind, Kind::Fraction);
    EXPECT_EQ(segment->i, 2);
    EXPECT_EQ(segment->den, 1);
    EXPECT_EQ(segment->as_double(), 2.0);
    const PyValue* sources = kw.get("sources");
    ASSERT_EQ(sources->kind, Kind::List);
    std::vector<std::string> names;
    for (const auto& s : sources->items) names.push_back(s->s);
    EXPECT_EQ(names, (std::vector<std::string>{"drums", "bass", "other", "vocals"}));
    EXPECT_EQ(kw.get("freq_emb")->kind, Kind::Float);
    EXPECT_DOUBLE_EQ(kw.get("freq_emb")->f, 0.2);
    EXPECT_EQ(kw.get("channels_time")->kind, Kind::None);
    EXPECT_EQ(kw.get("cac")->kind, Kind::Bool);
    EXPECT_TRUE(kw.get("cac")->b);
    EXPECT_FALSE(kw.get("wiener_residual")->b);
    EXPECT_EQ(kw.get("t_hidden_scale")->as_double(), 2.0);
    const PyValue* scale = kw.get("t_cape_glob_loc_scale");
    ASSERT_EQ(scale->items.size(), 3u);
    EXPECT_EQ(scale->items[0]->f, 5000.0);
    EXPECT_EQ(kw.get("multi_freqs")->kind, Kind::List);
    EXPECT_TRUE(kw.get("multi_freqs")->items.empty());
    EXPECT_EQ(kw.get("t_mask_type")->s, "diag");
    EXPECT_EQ(kw.get("no_such_key"), nullptr);
}

TEST(CheckpointTiny, State) {
    Checkpoint ck = read_checkpoint(testing_support::fixture(kTiny));
    EXPECT_EQ(ck.state.size(), 433u);
    EXPECT_EQ(param_count(ck), 323296);

    // Reference values from Python (numpy float16 -> float32 of the same file).
    const HostTensor& enc = ck.state.at("encoder.0.conv.weight");
    EXPECT_EQ(enc.shape, (std::vector<int64_t>{8, 4, 8, 1}));
    EXPECT_EQ(enc.data[0], -0.1339111328125f);
    EXPECT_EQ(enc.data[1], 0.10894775390625f);
    EXPECT_EQ(enc.data[2], -0.0819091796875f);
    EXPECT_EQ(enc.data.back(), 0.131103515625f);
    EXPECT_NEAR(sum(enc), -1.4676857, 1e-6);

    const HostTensor& rewrite = ck.state.at("decoder.0.rewrite.weight");
    EXPECT_EQ(rewrite.shape, (std::vector<int64_t>{128, 64, 3, 3}));
    EXPECT_EQ(rewrite.data[0], -0.0014057159423828125f);
    EXPECT_EQ(rewrite.data[2], 0.0750732421875f);
    EXPECT_EQ(rewrite.data.back(), -0.036895751953125f);
    EXPECT_NEAR(sum(rewrite), 6.44480121, 1e-6);

    const HostTensor& proj = ck.state.at("crosstransformer.layers.0.self_attn.in_proj_weight");
    EXPECT_EQ(proj.shape, (std::vector<int64_t>{96, 32}));
    EXPECT_NEAR(sum(proj), 15.8486655, 1e-6);
    EXPECT_EQ(ck.state.at("freq_emb.embedding.weight").shape, (std::vector<int64_t>{512, 8}));
    EXPECT_EQ(ck.state.at("encoder.0.conv.bias").shape, (std::vector<int64_t>{8}));

    double total = 0;
    for (const auto& [name, t] : ck.state) total += sum(t);
    EXPECT_NEAR(total, 3108.581804, 1e-5);
}

TEST(CheckpointFull6s, LoadsQuickly) {
    auto start = std::chrono::steady_clock::now();
    Checkpoint ck = read_checkpoint(testing_support::fixture(kFull6s));
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("full6s read in %.3f s\n", seconds);
    EXPECT_LT(seconds, 2.0);  // typically ~0.1 s; generous for loaded CI machines

    EXPECT_EQ(ck.klass, "demucs.htdemucs HTDemucs");
    const PyValue* segment = ck.kwargs->get("segment");
    ASSERT_EQ(segment->kind, Kind::Fraction);
    EXPECT_EQ(segment->i, 39);
    EXPECT_EQ(segment->den, 5);
    EXPECT_DOUBLE_EQ(segment->as_double(), 7.8);
    EXPECT_EQ(ck.kwargs->get("sources")->items.size(), 6u);
    EXPECT_EQ(ck.kwargs->get("channels")->i, 48);
    EXPECT_EQ(ck.state.size(), 525u);
    EXPECT_EQ(param_count(ck), 27414996);
    double total = 0;
    for (const auto& [name, t] : ck.state) total += sum(t);
    EXPECT_NEAR(total, 32574.22218, 1e-3);
}

// ---- files that are not checkpoints ------------------------------------------

TEST(CheckpointFiles, MissingFile) {
    expect_error([] { read_checkpoint("/nonexistent/dir/model.th"); }, "/nonexistent/dir/model.th: no such file");
}

TEST(CheckpointFiles, Directory) {
    std::string dir = testing_support::make_temp_dir("ckpt_dir");
    expect_error([&] { read_checkpoint(dir); }, dir + ": is a directory");
    std::remove(dir.c_str());
}

TEST(CheckpointFiles, EmptyFile) {
    std::string dir = testing_support::make_temp_dir("ckpt_empty");
    std::string path = dir + "/empty.th";
    std::ofstream(path).close();
    expect_error([&] { read_checkpoint(path); }, path + ": not a torch checkpoint (empty file)");
    std::remove(path.c_str());
    std::remove(dir.c_str());
}

TEST(CheckpointFiles, TruncatedFile) {
    const std::vector<uint8_t>& full = tiny_bytes();
    for (double fraction : {0.0001, 0.1, 0.5, 0.9, 0.99, 0.9999}) {
        size_t cut = static_cast<size_t>(full.size() * fraction);
        std::vector<uint8_t> bytes(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(cut));
        SCOPED_TRACE("cut at " + std::to_string(cut));
        expect_bytes_error(bytes, "damaged.th: not a torch checkpoint (truncated or damaged zip archive");
    }
    std::vector<uint8_t> one_short(full.begin(), full.end() - 1);
    expect_bytes_error(one_short, "damaged.th: not a torch checkpoint");
    expect_bytes_error({'P', 'K'}, "damaged.th: not a torch checkpoint (not a zip archive)");
}

TEST(CheckpointFiles, WrongMagic) {
    std::vector<uint8_t> bytes = tiny_bytes();
    bytes[0] = 'X';
    expect_bytes_error(bytes, "damaged.th: not a torch checkpoint (not a zip archive)");
    bytes = tiny_bytes();
    bytes[2] ^= 0xff;
    expect_bytes_error(bytes, "damaged.th: not a torch checkpoint (not a zip archive)");
    expect_bytes_error({'h', 'e', 'l', 'l', 'o'}, "not a zip archive");
    // A bare pickle is what torch.save wrote before its zip format.
    expect_bytes_error({0x80, 0x02, '}', '.'}, "legacy torch.save format is not supported");
}

TEST(CheckpointFiles, WrittenFileRoundTrip) {
    // read_checkpoint and read_checkpoint_bytes agree (and the path is the name).
    std::string dir = testing_support::make_temp_dir("ckpt_copy");
    std::string path = dir + "/copy.th";
    {
        std::ofstream out(path, std::ios::binary);
        out.write(reinterpret_cast<const char*>(tiny_bytes().data()), static_cast<std::streamsize>(tiny_bytes().size()));
    }
    Checkpoint a = read_checkpoint(path);
    Checkpoint b = read_checkpoint_bytes("mem", tiny_bytes());
    EXPECT_EQ(a.path, path);
    EXPECT_EQ(b.path, "mem");
    EXPECT_EQ(a.state.size(), b.state.size());
    EXPECT_EQ(a.state.at("decoder.0.rewrite.weight").data, b.state.at("decoder.0.rewrite.weight").data);
    std::remove(path.c_str());
    std::remove(dir.c_str());
}

// ---- damaged archives ------------------------------------------------------------

// Where data.pkl's bytes start in the tiny file: its local header is first
// and the entry is stored, so they follow the header, name and extra field.
size_t tiny_pickle_offset() {
    const std::vector<uint8_t>& b = tiny_bytes();
    EXPECT_EQ(std::string(b.begin() + 30, b.begin() + 46), "archive/data.pkl");
    size_t name_len = b[26] | (b[27] << 8);
    size_t extra_len = b[28] | (b[29] << 8);
    return 30 + name_len + extra_len;
}

TEST(CheckpointDamaged, RawBitFlipsInPickleFailTheCrc) {
    size_t start = tiny_pickle_offset();
    std::vector<Entry> entries = unzip(tiny_bytes());
    const std::vector<uint8_t>& pkl = entry_data(entries, "archive/data.pkl");
    ASSERT_EQ(tiny_bytes()[start], 0x80);  // PROTO
    for (size_t at : {size_t(0), size_t(1), size_t(2), size_t(100), pkl.size() / 2, pkl.size() - 1}) {
        std::vector<uint8_t> bytes = tiny_bytes();
        bytes[start + at] ^= 0x5a;
        SCOPED_TRACE("flip at pickle offset " + std::to_string(at));
        expect_bytes_error(bytes, "damaged.th: damaged zip entry archive/data.pkl (CRC error)");
    }
}

TEST(CheckpointDamaged, FlippedOpcodes) {
    // Re-zipped with a valid CRC, so that the pickle reader sees the damage.
    std::vector<Entry> entries = unzip(tiny_bytes());
    const std::vector<uint8_t> pkl = entry_data(entries, "archive/data.pkl");
    // 0: PROTO, 2: EMPTY_DICT, 6: BINUNICODE, 18: GLOBAL, last: STOP.
    for (size_t at : {size_t(0), size_t(2), size_t(6), size_t(18), pkl.size() - 1}) {
        std::vector<uint8_t> damaged = pkl;
        damaged[at] ^= 0xff;
        SCOPED_TRACE("flip at pickle offset " + std::to_string(at));
        expect_bytes_error(with_pickle(damaged), "damaged.th: corrupt data.pkl: unsupported pickle opcode 0x");
    }
}

TEST(CheckpointDamaged, PickleBitFlipsNeverCrash) {
    std::vector<Entry> entries = unzip(tiny_bytes());
    const std::vector<uint8_t> pkl = entry_data(entries, "archive/data.pkl");
    int refused = 0, loaded = 0;
    for (size_t at = 1; at < pkl.size(); at += 997) {
        for (uint8_t mask : {0x01, 0x80, 0xff}) {
            std::vector<uint8_t> damaged = pkl;
            damaged[at] ^= mask;
            entry_data(entries, "archive/data.pkl") = damaged;
            (loads_or_refuses(make_zip(entries)) ? loaded : refused)++;
        }
    }
    EXPECT_GT(refused, 0);
    std::printf("bit flips: %d refused, %d loaded\n", refused, loaded);
}

TEST(CheckpointDamaged, MissingDataEntry) {
    std::vector<Entry> entries = unzip(tiny_bytes());
    remove_entry(entries, "archive/data/5");
    expect_bytes_error(make_zip(entries),
                       "damaged.th: missing tensor data entry archive/data/5 (for 'encoder.0.dconv.layers.0.0.bias')");
}

TEST(CheckpointDamaged, ShortDataEntry) {
    std::vector<Entry> entries = unzip(tiny_bytes());
    entry_data(entries, "archive/data/0").resize(100);
    expect_bytes_error(make_zip(entries),
                       "damaged.th: tensor data entry archive/data/0 holds 100 bytes, expected 256 float16 values");
}

TEST(CheckpointDamaged, NoDataPkl) {
    std::vector<Entry> entries = unzip(tiny_bytes());
    remove_entry(entries, "archive/data.pkl");
    expect_bytes_error(make_zip(entries), "damaged.th: not a torch checkpoint (no data.pkl in the zip archive)");
}

TEST(CheckpointDamaged, BigEndian) {
    std::vector<Entry> entries = unzip(tiny_bytes());
    entry_data(entries, "archive/byteorder") = {'b', 'i', 'g'};
    expect_bytes_error(make_zip(entries), "damaged.th: big-endian checkpoints are not supported");
}

TEST(CheckpointDamaged, TruncatedPickle) {
    std::vector<Entry> entries = unzip(tiny_bytes());
    std::vector<uint8_t> pkl = entry_data(entries, "archive/data.pkl");
    pkl.resize(pkl.size() / 2);
    expect_bytes_error(with_pickle(pkl), "damaged.th: corrupt data.pkl: pickle data");
}

// ---- other valid archives -----------------------------------------------------------

TEST(CheckpointArchive, OtherPrefixAndNoByteorder) {
    // torch names the top folder after the file it saved to.
    std::vector<Entry> entries = unzip(tiny_bytes());
    remove_entry(entries, "archive/byteorder");
    for (Entry& e : entries) e.name = "0d0b2025/" + e.name.substr(std::strlen("archive/"));
    Checkpoint ck = read_checkpoint_bytes("renamed.th", make_zip(entries));
    EXPECT_EQ(ck.state.size(), 433u);
    EXPECT_EQ(param_count(ck), 323296);
}

TEST(CheckpointArchive, Deflated) {
    Checkpoint ck = read_checkpoint_bytes("deflated.th", make_zip(unzip(tiny_bytes()), true));
    EXPECT_EQ(param_count(ck), 323296);
    Checkpoint ref = read_checkpoint_bytes("stored.th", tiny_bytes());
    EXPECT_EQ(ck.state.at("encoder.1.conv.weight").data, ref.state.at("encoder.1.conv.weight").data);
}

// ---- hand-made checkpoints ------------------------------------------------------------

TEST(CheckpointCrafted, Minimal) {
    Crafted c;
    c.state = [](PickleWriter& w) { w.str("w").tensor("FloatStorage", "0", 3, 0, {3}, {1}); };
    c.data = {{"0", as_bytes(std::vector<float>{1.5f, -2.0f, 3.25f})}};
    Checkpoint ck = read_checkpoint_bytes("crafted.th", crafted_zip(c));
    EXPECT_EQ(ck.state.at("w").data, (std::vector<float>{1.5f, -2.0f, 3.25f}));
    const PyValue* segment = ck.kwargs->get("segment");  // Fraction('39/5')
    ASSERT_EQ(segment->kind, Kind::Fraction);
    EXPECT_EQ(segment->i, 39);
    EXPECT_EQ(segment->den, 5);
}

TEST(CheckpointCrafted, QuantizedState) {
    Crafted c;
    c.state = [](PickleWriter& w) {
        w.str("__quantized").op('C').op(2).raw("xy");
        w.str("w").tensor("FloatStorage", "0", 1, 0, {1}, {1});
    };
    c.data = {{"0", as_bytes(std::vector<float>{1})}};
    expect_error([&] { read_checkpoint_bytes("q.th", crafted_zip(c)); },
                 "q.th: is a diffq-quantized checkpoint, which is not supported");
}

TEST(CheckpointCrafted, OtherModelClass) {
    Crafted c;
    c.klass_module = "demucs.hdemucs";
    c.klass_name = "HDemucs";
    expect_error([&] { read_checkpoint_bytes("v3.th", crafted_zip(c)); },
                 "v3.th: is a demucs.hdemucs.HDemucs model; only HTDemucs (Demucs v4) checkpoints are supported");
}

TEST(CheckpointCrafted, NotADemucsPackage) {
    auto zip_of = [](const PickleWriter& w) {
        return make_zip({{"archive/data.pkl", w.bytes()}});
    };
    PickleWriter list;
    list.proto().op(']').stop();
    expect_error([&] { read_checkpoint_bytes("a.th", zip_of(list)); }, "a.th: not a Demucs checkpoint");

    PickleWriter no_state;
    no_state.proto().op('}').mark().str("klass").global("demucs.htdemucs", "HTDemucs");
    no_state.str("kwargs").op('}').op('u').stop();
    expect_error([&] { read_checkpoint_bytes("b.th", zip_of(no_state)); },
                 "b.th: not a Demucs checkpoint (no 'state' entry)");

    PickleWriter no_klass;
    no_klass.proto().op('}').stop();
    expect_error([&] { read_checkpoint_bytes("c.th", zip_of(no_klass)); }, "c.th: not a Demucs checkpoint (no 'klass' entry)");

    PickleWriter string_klass;
    string_klass.proto().op('}').str("klass").str("HTDemucs").op('s').stop();
    expect_error([&] { read_checkpoint_bytes("d.th", zip_of(string_klass)); }, "d.th: not a Demucs checkpoint ('klass' is");
}

TEST(CheckpointCrafted, StateValueNotATensor) {
    Crafted c;
    c.state = [](PickleWriter& w) { w.str("w").integer(3); };
    expect_error([&] { read_checkpoint_bytes("s.th", crafted_zip(c)); }, "s.th: state entry 'w' is not a tensor (3)");
}

TEST(CheckpointCrafted, StorageTypes) {
    // float16 specials: smallest and largest subnormal, -0, 1, -2, max, +-inf, nan.
    std::vector<uint16_t> half = {0x0001, 0x03ff, 0x8000, 0x3c00, 0xc000, 0x7bff, 0x7c00, 0xfc00, 0x7e00};
    std::vector<uint16_t> bf16 = {0x3f80, 0xc040, 0x7f80};  // 1, -3, inf
    Crafted c;
    c.state = [](PickleWriter& w) {
        w.str("h").tensor("HalfStorage", "h", 9, 0, {9}, {1});
        w.str("b").tensor("BFloat16Storage", "b", 3, 0, {3}, {1});
        w.str("d").tensor("DoubleStorage", "d", 2, 0, {2}, {1});
    };
    c.data = {{"h", as_bytes(half)}, {"b", as_bytes(bf16)}, {"d", as_bytes(std::vector<double>{0.1, -2.5})}};
    Checkpoint ck = read_checkpoint_bytes("types.th", crafted_zip(c));
    const std::vector<float>& h = ck.state.at("h").data;
    EXPECT_EQ(h[0], std::ldexp(1.0f, -24));
    EXPECT_EQ(h[1], 1023 * std::ldexp(1.0f, -24));
    EXPECT_EQ(h[2], 0.0f);
    EXPECT_TRUE(std::signbit(h[2]));
    EXPECT_EQ(h[3], 1.0f);
    EXPECT_EQ(h[4], -2.0f);
    EXPECT_EQ(h[5], 65504.0f);
    EXPECT_EQ(h[6], std::numeric_limits<float>::infinity());
    EXPECT_EQ(h[7], -std::numeric_limits<float>::infinity());
    EXPECT_TRUE(std::isnan(h[8]));
    EXPECT_EQ(ck.state.at("b").data, (std::vector<float>{1.0f, -3.0f, std::numeric_limits<float>::infinity()}));
    EXPECT_EQ(ck.state.at("d").data[0], 0.1f);
    EXPECT_EQ(ck.state.at("d").data[1], -2.5f);
}

TEST(CheckpointCrafted, OffsetsStridesAndSharedStorage) {
    // One storage of 0..11 viewed three ways.
    std::vector<float> values(12);
    for (int k = 0; k < 12; ++k) values[k] = static_cast<float>(k);
    Crafted c;
    c.state = [](PickleWriter& w) {
        w.str("slice").tensor("FloatStorage", "0", 12, 5, {2, 3}, {3, 1});       // rows of 3 from element 5
        w.str("transposed").tensor("FloatStorage", "0", 12, 0, {3, 4}, {1, 3});  // a 4x3 matrix, transposed
        w.str("broadcast").tensor("FloatStorage", "0", 12, 7, {2, 2}, {0, 1});   // stride 0 repeats a row
        w.str("scalar").tensor("FloatStorage", "0", 12, 11, {}, {});
        w.str("empty").tensor("FloatStorage", "0", 12, 0, {0, 4}, {4, 1});
    };
    c.data = {{"0", as_bytes(values)}};
    Checkpoint ck = read_checkpoint_bytes("views.th", crafted_zip(c));
    EXPECT_EQ(ck.state.at("slice").data, (std::vector<float>{5, 6, 7, 8, 9, 10}));
    EXPECT_EQ(ck.state.at("transposed").shape, (std::vector<int64_t>{3, 4}));
    EXPECT_EQ(ck.state.at("transposed").data, (std::vector<float>{0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11}));
    EXPECT_EQ(ck.state.at("broadcast").data, (std::vector<float>{7, 8, 7, 8}));
    EXPECT_EQ(ck.state.at("scalar").data, (std::vector<float>{11}));
    EXPECT_TRUE(ck.state.at("scalar").shape.empty());
    EXPECT_EQ(ck.state.at("empty").numel(), 0);
}

TEST(CheckpointCrafted, ViewOutsideItsStorage) {
    Crafted c;
    c.state = [](PickleWriter& w) { w.str("w").tensor("FloatStorage", "0", 4, 2, {3}, {1}); };
    c.data = {{"0", as_bytes(std::vector<float>{1, 2, 3, 4})}};
    expect_error([&] { read_checkpoint_bytes("v.th", crafted_zip(c)); }, "tensor view exceeds its storage of 4 elements");
}

TEST(CheckpointCrafted, UnsupportedStorageType) {
    Crafted c;
    c.state = [](PickleWriter& w) { w.str("n").tensor("LongStorage", "0", 1, 0, {1}, {1}); };
    c.data = {{"0", std::vector<uint8_t>(8)}};
    expect_error([&] { read_checkpoint_bytes("l.th", crafted_zip(c)); },
                 "l.th: tensor 'n' has unsupported storage type torch.LongStorage");
}

TEST(CheckpointTensorData, HalfToFloatExhaustive) {
    for (uint32_t bits = 0; bits < 0x10000; ++bits) {
        uint16_t h = static_cast<uint16_t>(bits);
        int exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
        bool negative = (h & 0x8000) != 0;
        float got = half_to_float(h);
        ASSERT_EQ(std::signbit(got), negative) << std::hex << bits;
        if (exponent == 0x1f && mantissa != 0) {
            ASSERT_TRUE(std::isnan(got)) << std::hex << bits;
            continue;
        }
        double magnitude = exponent == 0x1f ? HUGE_VAL
                           : exponent == 0  ? std::ldexp(mantissa, -24)
                                            : std::ldexp(1024 + mantissa, exponent - 25);
        ASSERT_EQ(got, static_cast<float>(negative ? -magnitude : magnitude)) << std::hex << bits;
    }
}

// ---- the pickle parser ------------------------------------------------------------------

TEST(PickleParser, UnsupportedOpcode) {
    expect_parse_error(B("\x80\x02\xff"), "unsupported pickle opcode 0xff at offset 2");
    expect_parse_error(B("\x80\x02\x82\x01"), "unsupported pickle opcode 0x82 at offset 2");  // EXT1
    expect_parse_error(B("N\x96"), "unsupported pickle opcode 0x96 at offset 1");            // BYTEARRAY8
    expect_parse_error(B("\x80\x09."), "unsupported pickle protocol 9");
}

TEST(PickleParser, LongBinGetMemo) {
    // 'abc' LONG_BINPUT 70000, POP, LONG_BINGET 70000, STOP
    auto r = parse(B("\x80\x02X\x03\x00\x00\x00" "abcr\x70\x11\x01\x00" "0j\x70\x11\x01\x00."));
    ASSERT_EQ(r.root->kind, Kind::String);
    EXPECT_EQ(r.root->s, "abc");
    expect_parse_error(B("\x80\x02j\x70\x11\x01\x00."), "memo key 70000 is not defined");
    expect_parse_error(B("h\x05."), "memo key 5 is not defined");
    // BINPUT with nothing on the stack
    expect_parse_error(B("q\x00."), "stack underflow");
    // MEMOIZE numbers entries in order; text PUT/GET (protocol 0).
    r = parse(B("K\x07\x94K\x08\x94" "0" "0h\x01" "p3\ng3\n\x86."));
    ASSERT_EQ(r.root->kind, Kind::Tuple);
    EXPECT_EQ(r.root->items[0]->i, 8);
    EXPECT_EQ(r.root->items[1]->i, 8);
}

TEST(PickleParser, Truncated) {
    expect_parse_error(B("X\x0a\x00\x00\x00" "abc"), "pickle data truncated");
    expect_parse_error(B("X\x0a\x00"), "pickle data truncated");
    expect_parse_error(B("\x8d\xff\xff\xff\xff\xff\xff\xff\xff"), "pickle data truncated");  // BINUNICODE8
    expect_parse_error(B("J\x01\x02"), "pickle data truncated");
    expect_parse_error(B("cmodule\nna"), "pickle data truncated");
    expect_parse_error(B("\x95\x10\x00\x00\x00\x00\x00\x00\x00N."), "pickle data truncated");  // FRAME
    expect_parse_error("N", "pickle data ends without STOP");
    expect_parse_error("", "pickle data ends without STOP");
}

TEST(PickleParser, Integers) {
    auto ints = parse(B("(J\xfe\xff\xff\xffK\xffM\x01\x02\x8a\x00\x8a\x01\xff\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f"
                                  "\x8a\x09\xff\xff\xff\xff\xff\xff\xff\xff\x00\x8b\x02\x00\x00\x00\x00\x80"
                                  "I42\nI-7\nL123456789012L\nI01\nI00\nt."));
    const auto& it = ints.root->items;
    ASSERT_EQ(it.size(), 13u);
    EXPECT_EQ(it[0]->i, -2);                       // BININT
    EXPECT_EQ(it[1]->i, 255);                      // BININT1
    EXPECT_EQ(it[2]->i, 0x0201);                   // BININT2
    EXPECT_EQ(it[3]->i, 0);                        // LONG1, no bytes
    EXPECT_EQ(it[4]->i, -1);                       // LONG1 0xff
    EXPECT_EQ(it[5]->i, INT64_MAX);                // LONG1, 8 bytes
    EXPECT_EQ(it[6]->kind, Kind::Float);           // 2^64 - 1 does not fit
    EXPECT_EQ(it[6]->f, 18446744073709551615.0);
    EXPECT_EQ(it[7]->i, -32768);                   // LONG4
    EXPECT_EQ(it[8]->i, 42);                       // INT
    EXPECT_EQ(it[9]->i, -7);
    EXPECT_EQ(it[10]->i, 123456789012);            // LONG (text)
    EXPECT_EQ(it[11]->kind, Kind::Bool);           // I01 is True in protocol 0
    EXPECT_TRUE(it[11]->b);
    EXPECT_FALSE(it[12]->b);
    auto negative_big = parse(B("\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\xff."));
    EXPECT_EQ(negative_big.root->f, -std::ldexp(1.0, 64));
    expect_parse_error("Iabc\n.", "bad integer literal");
    expect_parse_error(B("\x8b\xff\xff\xff\xff."), "negative LONG4 length");
}

TEST(PickleParser, FloatsAndStrings) {
    auto r = parse(B("(G\x40\x09\x21\xfb\x54\x44\x2d\x18" "F-2.5\n"
                               "\x8c\x02hi" "\x8d\x01\x00\x00\x00\x00\x00\x00\x00z" "T\x02\x00\x00\x00ok" "U\x01u"
                               "B\x01\x00\x00\x00\x00" "C\x02\xff\x01" "\x8e\x00\x00\x00\x00\x00\x00\x00\x00"
                               "S'a\\n\\x41\\'b'\n" "Vcaf\xe9 \\u20ac\\\\u0041\nt."));
    const auto& it = r.root->items;
    ASSERT_EQ(it.size(), 11u);
    EXPECT_DOUBLE_EQ(it[0]->f, 3.141592653589793);
    EXPECT_EQ(it[1]->f, -2.5);
    EXPECT_EQ(it[2]->s, "hi");
    EXPECT_EQ(it[3]->s, "z");
    EXPECT_EQ(it[4]->s, "ok");
    EXPECT_EQ(it[5]->s, "u");
    EXPECT_EQ(it[6]->kind, Kind::Bytes);
    EXPECT_EQ(it[6]->s, std::string(1, '\0'));
    EXPECT_EQ(it[7]->s, "\xff\x01");
    EXPECT_EQ(it[8]->kind, Kind::Bytes);
    EXPECT_EQ(it[8]->s, "");
    EXPECT_EQ(it[9]->s, "a\nA'b");
    EXPECT_EQ(it[10]->s, "caf\xc3\xa9 \xe2\x82\xac\\\\u0041");  // raw-unicode-escape: even backslashes stay
    expect_parse_error("Snot quoted\n.", "not quoted");
}

TEST(PickleParser, Containers) {
    // [1, 2, 3] via APPEND and APPENDS; {'a': 1, 'a': 2} keeps one key (the last value);
    // a dict via DICT; (x,)*3 via DUP; POP / POP_MARK discard.
    auto r = parse(B("(]K\x01" "a(K\x02K\x03" "e"
                               "}X\x01\x00\x00\x00" "aK\x01sX\x01\x00\x00\x00" "aK\x02s"
                               "(X\x01\x00\x00\x00" "bK\x05" "d"
                               "NN2" "\x87"
                               "K\x09" "0" "(K\x01K\x02" "1"
                               "(K\x01l" "\x8f(K\x04\x90" "(K\x05\x91"
                               "t."));
    const auto& it = r.root->items;
    ASSERT_EQ(it.size(), 7u);
    ASSERT_EQ(it[0]->items.size(), 3u);
    EXPECT_EQ(it[0]->items[2]->i, 3);
    ASSERT_EQ(it[1]->dict.size(), 1u);
    EXPECT_EQ(it[1]->get("a")->i, 2);
    EXPECT_EQ(it[2]->get("b")->i, 5);
    EXPECT_EQ(it[3]->kind, Kind::Tuple);
    EXPECT_EQ(it[3]->items.size(), 3u);  // TUPLE3 of None, None and a DUP of it
    EXPECT_EQ(it[4]->kind, Kind::List);  // LIST
    EXPECT_EQ(it[5]->kind, Kind::List);  // a set, read as a list
    EXPECT_EQ(it[5]->items[0]->i, 4);
    EXPECT_EQ(it[6]->kind, Kind::Tuple);  // a frozenset, read as a tuple
}

TEST(PickleParser, StackDiscipline) {
    expect_parse_error("a.", "stack underflow");
    expect_parse_error("]K\x01" "(a.", "stack underflow");  // APPEND cannot reach below a MARK
    expect_parse_error("t.", "no MARK on the stack");
    expect_parse_error("(K\x01u.", "stack underflow");   // SETITEMS with nothing to set into
    expect_parse_error("}(K\x01u.", "odd number of items");
    expect_parse_error("K\x01K\x02" "a.", "cannot append to a 1");
    expect_parse_error("N(K\x01K\x02u.", "cannot set items of a None");
}

TEST(PickleParser, RecursionIsRefused) {
    expect_parse_error("]2a.", "stored in itself");  // l = []; l.append(l)
    // A list stored in a tuple, then appended to: the tuple would change.
    expect_parse_error(B("]q\x00\x85h\x00K\x01" "a."), "modified after it was stored");
    // Deep nesting: 300 lists inside each other.
    std::string deep;
    for (int k = 0; k < 300; ++k) deep += "]";
    for (int k = 0; k < 299; ++k) deep += "a";
    expect_parse_error(deep + ".", "nested deeper than 256");
    std::string ok;
    for (int k = 0; k < 200; ++k) ok += "]";
    for (int k = 0; k < 199; ++k) ok += "a";
    EXPECT_EQ(parse(ok + ".").root->kind, Kind::List);
}

TEST(PickleParser, GlobalsAndCalls) {
    // Fraction from text and from ints (normalised), OrderedDict, an unknown
    // class via REDUCE, NEWOBJ + BUILD, STACK_GLOBAL, INST and OBJ.
    auto r = parse(B("(cfractions\nFraction\nX\x04\x00\x00\x00" "39/5\x85R"
                               "cfractions\nFraction\nK\x06J\xfc\xff\xff\xff\x86R"
                               "ccollections\nOrderedDict\n)R(X\x01\x00\x00\x00kK\x01u"
                               "cos\nsystem\nX\x02\x00\x00\x00ls\x85R"
                               "\x8c\x03" "abc\x8c\x03" "Def\x93)\x81}b"
                               "(K\x01iyy\nZz\n"
                               "(cmm\nK\nK\x02o"
                               "t."));
    const auto& it = r.root->items;
    ASSERT_EQ(it.size(), 7u);
    EXPECT_EQ(it[0]->kind, Kind::Fraction);
    EXPECT_EQ(it[0]->i, 39);
    EXPECT_EQ(it[0]->den, 5);
    EXPECT_EQ(it[1]->i, -3);  // Fraction(6, -4) == -3/2
    EXPECT_EQ(it[1]->den, 2);
    EXPECT_EQ(it[2]->kind, Kind::Dict);
    EXPECT_EQ(it[2]->get("k")->i, 1);
    EXPECT_EQ(it[3]->kind, Kind::Call);  // never executed
    EXPECT_EQ(it[3]->repr(), "os.system('ls')");
    EXPECT_EQ(it[4]->kind, Kind::Call);
    EXPECT_EQ(it[4]->repr(), "abc.Def().__setstate__({})");
    EXPECT_EQ(it[5]->repr(), "yy.Zz(1)");
    EXPECT_EQ(it[6]->repr(), "mm.K(2)");
    expect_parse_error(B("cfractions\nFraction\nK\x01K\x00\x86R."), "zero denominator");
    expect_parse_error(B("cfractions\nFraction\nX\x03\x00\x00\x00" "a/b\x85R."), "unsupported Fraction arguments");
    expect_parse_error("K\x01K\x02\x93.", "STACK_GLOBAL needs two strings");
}

TEST(PickleParser, ObjectBackReferences) {
    // An object whose state refers back to the object itself, as omegaconf
    // nodes do with their parent: BUILD wraps instead of mutating, so the
    // result stays acyclic and loads.
    auto r = parse(B("cm\nC\n)\x81q\x00}(X\x01\x00\x00\x00" "ph\x00ub."));
    EXPECT_EQ(r.root->repr(), "m.C().__setstate__({'p': m.C()})");
    // SETITEMS / APPENDS on an opaque object are recorded the same way.
    r = parse(B("cm\nD\n)R(X\x01\x00\x00\x00" "kK\x01u(K\x02" "e."));
    EXPECT_EQ(r.root->kind, Kind::Call);
    EXPECT_EQ(r.root->s, "extend");
    EXPECT_EQ(r.root->items[0]->s, "__setitem__");
    EXPECT_EQ(r.root->items[0]->dict.size(), 1u);
}

TEST(PickleParser, TensorRecords) {
    PickleWriter w;
    w.proto().tensor("HalfStorage", "7", 10, 2, {2, 4}, {4, 1}).stop();
    auto r = parse(w.bytes());
    ASSERT_EQ(r.root->kind, Kind::Tensor);
    ASSERT_EQ(r.tensors.size(), 1u);
    ASSERT_EQ(r.storages.size(), 1u);
    EXPECT_EQ(r.storages[0].type, "torch HalfStorage");
    EXPECT_EQ(r.storages[0].key, "7");
    EXPECT_EQ(r.storages[0].location, "cpu");
    EXPECT_EQ(r.storages[0].numel, 10);
    EXPECT_EQ(r.tensors[0].offset, 2);
    EXPECT_EQ(r.tensors[0].size, (std::vector<int64_t>{2, 4}));
    EXPECT_EQ(r.tensors[0].numel(), 8);

    PickleWriter outside;
    outside.proto().tensor("HalfStorage", "7", 10, 3, {2, 4}, {4, 1}).stop();
    expect_error([&] { parse(outside.bytes()); }, "tensor view exceeds its storage of 10 elements");
    PickleWriter negative;
    negative.proto().tensor("HalfStorage", "7", 10, 0, {2, -4}, {4, 1}).stop();
    expect_error([&] { parse(negative.bytes()); }, "bad tensor size");
    // Broadcast (stride-0) views may exceed their storage, within reason.
    PickleWriter broadcast;
    broadcast.proto().tensor("HalfStorage", "7", 1, 0, {1000, 1000}, {0, 0}).stop();
    EXPECT_EQ(parse(broadcast.bytes()).tensors[0].numel(), 1000000);
    PickleWriter huge;
    huge.proto().tensor("HalfStorage", "7", 1, 0, {1 << 30, 1 << 30}, {0, 0}).stop();
    expect_error([&] { parse(huge.bytes()); }, "tensor view of 1152921504606846976 elements over a storage of 1");
    // A rebuild over something that is not a storage stays an inert call.
    auto inert = parse(B("ctorch._utils\n_rebuild_tensor_v2\n(NK\x00))\x89Nt" "R."));
    EXPECT_EQ(inert.root->kind, Kind::Call);
}

TEST(PickleParser, TinyFixtureTruncationsAndFlips) {
    std::vector<Entry> entries = unzip(tiny_bytes());
    const std::vector<uint8_t> pkl = entry_data(entries, "archive/data.pkl");
    ASSERT_NO_THROW(parse(pkl));
    for (size_t cut = 0; cut < pkl.size(); cut += 509) {
        EXPECT_THROW(pickle::parse(pkl.data(), cut), Error) << cut;
    }
    int refused = 0;
    for (size_t at = 0; at < pkl.size(); at += 37) {
        std::vector<uint8_t> damaged = pkl;
        damaged[at] ^= static_cast<uint8_t>(0x01 << (at % 8));
        try {
            parse(damaged);
        } catch (const Error&) {
            ++refused;
        }
    }
    EXPECT_GT(refused, 0);
}

TEST(PickleValue, HelpersAndRepr) {
    auto r = parse(B("}(X\x01\x00\x00\x00" "a](K\x01G\x3f\xf8\x00\x00\x00\x00\x00\x00\x88N\x87" "eX\x01\x00\x00\x00"
                               "bX\x04\x00\x00\x00it's" "X\x01\x00\x00\x00" "cC\x02\x00\xffu."));
    const PyValue& d = *r.root;
    EXPECT_EQ(d.repr(), "{'a': [1, (1.5, True, None)], 'b': 'it\\'s', 'c': b'\\x00\\xff'}");
    EXPECT_EQ(d.get("a")->items[0]->as_double(), 1.0);
    EXPECT_EQ(d.get("a")->items[1]->items[0]->as_double(), 1.5);
    EXPECT_EQ(d.get("a")->items[1]->items[1]->as_double(), 1.0);
    EXPECT_TRUE(d.get("a")->items[0]->is_number());
    EXPECT_EQ(d.get("a")->get("x"), nullptr);  // not a dict
    expect_error([&] { d.get("b")->as_double(); }, "expected a number, got a str: 'it\\'s'");
    expect_error([&] { d.as_double(); }, "expected a number");
    PyValue frac;
    frac.kind = Kind::Fraction;
    frac.i = 39;
    frac.den = 5;
    EXPECT_DOUBLE_EQ(frac.as_double(), 7.8);
    EXPECT_EQ(frac.repr(), "Fraction(39, 5)");
    PyValue f;
    f.kind = Kind::Float;
    f.f = 0.1;
    EXPECT_EQ(f.repr(), "0.1");
    f.f = 2.0;
    EXPECT_EQ(f.repr(), "2.0");
    f.f = 1e22;
    EXPECT_EQ(f.repr(), "1e+22");
}
