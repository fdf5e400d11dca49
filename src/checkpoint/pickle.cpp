#include "checkpoint/pickle.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <unordered_map>

#include "error.h"

namespace fastdemucs {
namespace pickle {

int64_t TensorRecord::numel() const {
    int64_t n = 1;
    for (int64_t d : size) n *= d;  // bounded at parse time
    return n;
}

namespace {

using Kind = PyValue::Kind;

// Opcodes of pickle protocols 0-5, named as in Python's pickletools.
enum Opcode : uint8_t {
    MARK = '(', STOP = '.', POP = '0', POP_MARK = '1', DUP = '2',
    FLOAT = 'F', INT = 'I', BININT = 'J', BININT1 = 'K', LONG = 'L', BININT2 = 'M',
    NONE = 'N', PERSID = 'P', BINPERSID = 'Q', REDUCE = 'R', STRING = 'S',
    BINSTRING = 'T', SHORT_BINSTRING = 'U', UNICODE = 'V', BINUNICODE = 'X',
    APPEND = 'a', BUILD = 'b', GLOBAL = 'c', DICT = 'd', EMPTY_DICT = '}',
    APPENDS = 'e', GET = 'g', BINGET = 'h', INST = 'i', LONG_BINGET = 'j',
    LIST = 'l', EMPTY_LIST = ']', OBJ = 'o', PUT = 'p', BINPUT = 'q',
    LONG_BINPUT = 'r', SETITEM = 's', TUPLE = 't', EMPTY_TUPLE = ')',
    SETITEMS = 'u', BINFLOAT = 'G',
    // protocol 2
    PROTO = 0x80, NEWOBJ = 0x81, TUPLE1 = 0x85, TUPLE2 = 0x86, TUPLE3 = 0x87,
    NEWTRUE = 0x88, NEWFALSE = 0x89, LONG1 = 0x8a, LONG4 = 0x8b,
    // protocol 3
    BINBYTES = 'B', SHORT_BINBYTES = 'C',
    // protocol 4
    SHORT_BINUNICODE = 0x8c, BINUNICODE8 = 0x8d, BINBYTES8 = 0x8e,
    EMPTY_SET = 0x8f, ADDITEMS = 0x90, FROZENSET = 0x91, NEWOBJ_EX = 0x92,
    STACK_GLOBAL = 0x93, MEMOIZE = 0x94, FRAME = 0x95,
};

constexpr int kMaxProtocol = 5;
constexpr size_t kMaxTensorDims = 64;  // torch's own limit
// A view with stride-0 dimensions can have more elements than its storage
// (torch's expand()); such views are small in practice. The cap keeps a
// damaged size from asking for an enormous allocation.
constexpr int64_t kMaxBroadcastNumel = int64_t(1) << 24;

// Two's-complement little-endian integer of n bytes (LONG1/LONG4). Values
// beyond int64 come back as the nearest double (*is_int = false).
int64_t decode_long(const uint8_t* p, size_t n, bool* is_int, double* approx) {
    *is_int = true;
    if (n == 0) return 0;
    bool negative = (p[n - 1] & 0x80) != 0;
    // Drop sign-extension bytes so that e.g. 9 bytes holding 2^63-1 still fit.
    size_t len = n;
    uint8_t fill = negative ? 0xff : 0x00;
    while (len > 1 && p[len - 1] == fill && ((p[len - 2] & 0x80) != 0) == negative) --len;
    if (len <= 8) {
        uint64_t u = negative ? ~uint64_t(0) : 0;
        for (size_t k = 0; k < len; ++k) {
            u &= ~(uint64_t(0xff) << (8 * k));
            u |= uint64_t(p[k]) << (8 * k);
        }
        return static_cast<int64_t>(u);
    }
    double v = 0.0;
    for (size_t k = n; k-- > 0;) v = v * 256.0 + static_cast<double>(negative ? uint8_t(~p[k]) : p[k]);
    *approx = negative ? -(v + 1.0) : v;
    *is_int = false;
    return 0;
}

void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xc0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xe0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
        out += static_cast<char>(0x80 | (cp & 0x3f));
    } else {
        out += static_cast<char>(0xf0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
        out += static_cast<char>(0x80 | (cp & 0x3f));
    }
}

int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// Reads `count` hex digits at text[at]; -1 when they are not all there.
int64_t parse_hex(const std::string& text, size_t at, size_t count) {
    if (at + count > text.size()) return -1;
    int64_t v = 0;
    for (size_t k = 0; k < count; ++k) {
        int d = hex_digit(text[at + k]);
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

class Parser {
public:
    Parser(const uint8_t* data, size_t size, const Limits& limits)
        : data_(data), size_(size), limits_(limits) {}

    ParseResult run() {
        while (!stopped_) step();
        return std::move(result_);
    }

private:
    using Id = size_t;  // index into nodes_

    struct Node {
        std::shared_ptr<PyValue> value;
        size_t depth = 0;     // levels of containers below this value
        bool frozen = false;  // stored in another value: may no longer change
        // Dict: position of each str/int key, so that SETITEM replaces as
        // Python does (created on first use).
        std::unique_ptr<std::unordered_map<std::string, size_t>> keys;
    };

    const uint8_t* data_;
    size_t size_;
    Limits limits_;
    size_t pos_ = 0;
    size_t op_start_ = 0;
    uint8_t op_ = 0;
    bool stopped_ = false;

    std::vector<Node> nodes_;
    std::vector<Id> stack_;
    std::vector<size_t> marks_;  // stack_ sizes at each MARK
    std::unordered_map<uint64_t, Id> memo_;
    // Persistent-id values that name a torch storage -> ParseResult::storages
    // index. Every node lives until the parse ends, so addresses are unique.
    std::unordered_map<const PyValue*, int> storage_of_;
    ParseResult result_;

    // ---- errors and input -------------------------------------------------

    [[noreturn]] void fail(const std::string& what) const {
        char where[64];
        std::snprintf(where, sizeof where, " (opcode 0x%02x at offset %zu)", op_, op_start_);
        throw Error(what + where);
    }

    void need(size_t n) const {
        if (n > size_ - pos_) {
            char buf[128];
            std::snprintf(buf, sizeof buf,
                          "pickle data truncated: opcode 0x%02x at offset %zu needs %zu more bytes, %zu left",
                          op_, op_start_, n, size_ - pos_);
            throw Error(buf);
        }
    }

    const uint8_t* take(size_t n) {
        need(n);
        const uint8_t* p = data_ + pos_;
        pos_ += n;
        return p;
    }

    uint64_t read_le(size_t n) {
        const uint8_t* p = take(n);
        uint64_t v = 0;
        for (size_t k = 0; k < n; ++k) v |= uint64_t(p[k]) << (8 * k);
        return v;
    }

    std::string read_bytes(uint64_t n) {
        const uint8_t* p = take(static_cast<size_t>(n));
        return std::string(reinterpret_cast<const char*>(p), static_cast<size_t>(n));
    }

    // A protocol-0 argument: text up to the next newline (not included).
    std::string read_line() {
        const void* nl = std::memchr(data_ + pos_, '\n', size_ - pos_);
        if (!nl) need(size_ - pos_ + 1);  // throws: the line never ends
        size_t len = static_cast<const uint8_t*>(nl) - (data_ + pos_);
        std::string line = read_bytes(len);
        ++pos_;
        return line;
    }

    // ---- values -----------------------------------------------------------

    PyValue& val(Id id) { return *nodes_[id].value; }
    Kind kind(Id id) const { return nodes_[id].value->kind; }

    Id make(Kind k) {
        Node node;
        node.value = std::make_shared<PyValue>();
        node.value->kind = k;
        nodes_.push_back(std::move(node));
        return nodes_.size() - 1;
    }

    Id make_int(int64_t v) {
        Id id = make(Kind::Int);
        val(id).i = v;
        return id;
    }

    Id make_float(double v) {
        Id id = make(Kind::Float);
        val(id).f = v;
        return id;
    }

    Id make_bool(bool v) {
        Id id = make(Kind::Bool);
        val(id).b = v;
        return id;
    }

    Id make_text(Kind k, std::string s) {
        Id id = make(k);
        val(id).s = std::move(s);
        return id;
    }

    // `child` becomes part of `parent`: from now on it is immutable, which
    // keeps the result acyclic, and its depth counts towards the limit.
    void adopt(Id parent, Id child) {
        nodes_[child].frozen = true;
        size_t depth = nodes_[child].depth + 1;
        if (depth > nodes_[parent].depth) {
            if (depth > limits_.max_depth)
                fail("values nested deeper than " + std::to_string(limits_.max_depth));
            nodes_[parent].depth = depth;
        }
    }

    Id make_seq(Kind k, const std::vector<Id>& items) {
        Id id = make(k);
        for (Id item : items) {
            adopt(id, item);
            val(id).items.push_back(nodes_[item].value);
        }
        return id;
    }

    // ---- stack ------------------------------------------------------------

    size_t frame_base() const { return marks_.empty() ? 0 : marks_.back(); }

    void push(Id id) {
        if (stack_.size() >= limits_.max_stack) fail("pickle stack too deep");
        stack_.push_back(id);
    }

    // Like Python's unpickler, values below the innermost MARK are out of
    // reach until that mark is popped.
    Id pop() {
        if (stack_.size() <= frame_base()) fail("stack underflow");
        Id id = stack_.back();
        stack_.pop_back();
        return id;
    }

    Id& top() {
        if (stack_.size() <= frame_base()) fail("stack underflow");
        return stack_.back();
    }

    std::vector<Id> pop_mark() {
        if (marks_.empty()) fail("no MARK on the stack");
        size_t base = marks_.back();
        marks_.pop_back();
        std::vector<Id> items(stack_.begin() + static_cast<std::ptrdiff_t>(base), stack_.end());
        stack_.resize(base);
        return items;
    }

    // ---- containers -------------------------------------------------------

    void check_mutable(Id target, const std::vector<Id>& children) {
        if (nodes_[target].frozen)
            fail("a container is modified after it was stored elsewhere (recursive data is not supported)");
        for (Id child : children) {
            if (child == target) fail("a container is stored in itself (recursive data is not supported)");
        }
    }

    // A wrapper Call that records an operation on an opaque object.
    Id wrap(Id object, const char* method) {
        Id id = make(Kind::Call);
        val(id).s = method;
        adopt(id, object);
        val(id).items.push_back(nodes_[object].value);
        return id;
    }

    // APPEND(S), ADDITEMS onto the value in `slot`.
    void extend(Id& slot, const std::vector<Id>& values) {
        Id target = slot;
        if (kind(target) == Kind::Call) {
            target = slot = wrap(target, "extend");
        } else if (kind(target) != Kind::List) {
            fail("cannot append to a " + val(target).repr());
        }
        check_mutable(target, values);
        for (Id v : values) {
            adopt(target, v);
            val(target).items.push_back(nodes_[v].value);
        }
    }

    // Key text for Python's dict semantics: a repeated key replaces the value.
    // Only str and int keys are tracked; other keys are simply appended.
    static bool key_text(const PyValue& key, std::string* out) {
        switch (key.kind) {
            case Kind::String: *out = "s" + key.s; return true;
            case Kind::Int: *out = "i" + std::to_string(key.i); return true;
            case Kind::Bool: *out = key.b ? "i1" : "i0"; return true;
            default: return false;
        }
    }

    void set_item(Id dict, Id key, Id value) {
        adopt(dict, key);
        adopt(dict, value);
        PyValue& d = val(dict);
        std::string text;
        if (key_text(*nodes_[key].value, &text)) {
            auto& keys = nodes_[dict].keys;
            if (!keys) keys = std::make_unique<std::unordered_map<std::string, size_t>>();
            auto [it, inserted] = keys->emplace(std::move(text), d.dict.size());
            if (!inserted) {
                d.dict[it->second].second = nodes_[value].value;
                return;
            }
        }
        d.dict.emplace_back(nodes_[key].value, nodes_[value].value);
    }

    // SETITEM(S) and DICT: `items` alternates keys and values.
    void set_items(Id& slot, const std::vector<Id>& items) {
        if (items.size() % 2 != 0) fail("odd number of items for a dict");
        Id target = slot;
        if (kind(target) == Kind::Call) {
            target = slot = wrap(target, "__setitem__");
        } else if (kind(target) != Kind::Dict) {
            fail("cannot set items of a " + val(target).repr());
        }
        check_mutable(target, items);
        for (size_t k = 0; k < items.size(); k += 2) set_item(target, items[k], items[k + 1]);
    }

    // ---- memo -------------------------------------------------------------

    void memo_put(uint64_t index) { memo_[index] = top(); }

    void memo_get(uint64_t index) {
        auto it = memo_.find(index);
        if (it == memo_.end()) fail("memo key " + std::to_string(index) + " is not defined");
        push(it->second);
    }

    static bool parse_decimal(const std::string& text, uint64_t* out) {
        if (text.empty()) return false;
        auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *out);
        return ec == std::errc() && end == text.data() + text.size();
    }

    uint64_t read_decimal_line() {
        uint64_t v = 0;
        std::string line = read_line();
        if (!parse_decimal(line, &v)) fail("bad memo index '" + line + "'");
        return v;
    }

    // ---- calls ------------------------------------------------------------

    Id make_global(const std::string& module, const std::string& name) {
        if (module.empty() || name.empty()) fail("empty module or class name in GLOBAL");
        return make_text(Kind::Global, module + " " + name);
    }

    Id inert_call(const std::vector<Id>& parts) { return make_seq(Kind::Call, parts); }

    // REDUCE, NEWOBJ, INST, OBJ: callable(*args). Only known data types are
    // interpreted; everything else stays an inert Call.
    Id call(Id callable, Id args) {
        if (kind(callable) == Kind::Global && kind(args) == Kind::Tuple) {
            const std::string& name = val(callable).s;
            if (name == "fractions Fraction") return make_fraction(args);
            if (name == "collections OrderedDict" && val(args).items.empty()) return make(Kind::Dict);
            if (name == "torch._utils _rebuild_tensor_v2" || name == "torch._utils _rebuild_tensor") {
                Id tensor = rebuild_tensor(args);
                if (tensor != kNoId) return tensor;
            }
            // A Parameter around a tensor is the tensor itself for our purposes.
            if (name == "torch._utils _rebuild_parameter" && !val(args).items.empty() &&
                val(args).items[0]->kind == Kind::Tensor) {
                Id id = make(Kind::Tensor);
                val(id).tensor_index = val(args).items[0]->tensor_index;
                return id;
            }
        }
        return inert_call({callable, args});
    }

    static constexpr Id kNoId = ~Id(0);

    // Fraction('39/5'), Fraction('2'), Fraction(39, 5), Fraction(2).
    Id make_fraction(Id args) {
        const auto& items = val(args).items;
        int64_t num = 0, den = 1;
        bool ok = false;
        if (items.size() == 1 && items[0]->kind == Kind::String) {
            ok = parse_fraction_text(items[0]->s, &num, &den);
        } else if (items.size() == 1 && items[0]->kind == Kind::Int) {
            num = items[0]->i;
            ok = true;
        } else if (items.size() == 2 && items[0]->kind == Kind::Int && items[1]->kind == Kind::Int) {
            num = items[0]->i;
            den = items[1]->i;
            ok = true;
        }
        if (!ok) fail("unsupported Fraction arguments " + val(args).repr());
        if (den == 0) fail("Fraction with a zero denominator");
        if (num == INT64_MIN || den == INT64_MIN) fail("Fraction out of range");
        if (den < 0) {
            num = -num;
            den = -den;
        }
        int64_t g = std::gcd(num, den);
        Id id = make(Kind::Fraction);
        val(id).i = num / g;
        val(id).den = den / g;
        return id;
    }

    static bool parse_int64(const std::string& text, int64_t* out) {
        const char* b = text.data();
        const char* e = b + text.size();
        if (b != e && *b == '+') ++b;
        auto [end, ec] = std::from_chars(b, e, *out);
        return b != e && ec == std::errc() && end == e;
    }

    static bool parse_fraction_text(std::string text, int64_t* num, int64_t* den) {
        auto first = text.find_first_not_of(" \t\n");
        auto last = text.find_last_not_of(" \t\n");
        if (first == std::string::npos) return false;
        text = text.substr(first, last - first + 1);
        auto slash = text.find('/');
        if (slash == std::string::npos) return parse_int64(text, num);
        return parse_int64(text.substr(0, slash), num) && parse_int64(text.substr(slash + 1), den);
    }

    // _rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
    // backward_hooks[, metadata]). Returns kNoId when args[0] is not a
    // storage (then the call stays inert); malformed geometry is an error.
    Id rebuild_tensor(Id args) {
        const auto& items = val(args).items;
        if (items.size() < 4) return kNoId;
        auto found = storage_of_.find(items[0].get());
        if (found == storage_of_.end()) return kNoId;
        int storage = found->second;
        TensorRecord t;
        t.storage = storage;
        if (items[1]->kind != Kind::Int || items[1]->i < 0) fail("bad tensor storage offset " + items[1]->repr());
        t.offset = items[1]->i;
        t.size = int_tuple(*items[2], "size");
        t.stride = int_tuple(*items[3], "stride");
        if (t.size.size() != t.stride.size()) fail("tensor size and stride differ in length");
        check_extent(t, result_.storages[storage].numel);
        Id id = make(Kind::Tensor);
        val(id).tensor_index = static_cast<int>(result_.tensors.size());
        result_.tensors.push_back(std::move(t));
        return id;
    }

    std::vector<int64_t> int_tuple(const PyValue& v, const char* what) {
        if (v.kind != Kind::Tuple || v.items.size() > kMaxTensorDims) fail(std::string("bad tensor ") + what + " " + v.repr());
        std::vector<int64_t> out;
        for (const auto& item : v.items) {
            if (item->kind != Kind::Int || item->i < 0) fail(std::string("bad tensor ") + what + " " + v.repr());
            out.push_back(item->i);
        }
        return out;
    }

    // The view must lie inside the storage: offset + sum((size-1)*stride) < numel.
    void check_extent(const TensorRecord& t, int64_t storage_numel) {
        int64_t numel = 1, last = t.offset;
        bool overflow = false;
        for (size_t d = 0; d < t.size.size(); ++d) {
            overflow |= __builtin_mul_overflow(numel, t.size[d], &numel);
        }
        if (overflow) fail("tensor size overflows");
        if (numel == 0) return;  // an empty view touches no element
        if (numel > storage_numel && numel > kMaxBroadcastNumel)
            fail("tensor view of " + std::to_string(numel) + " elements over a storage of " +
                 std::to_string(storage_numel));
        for (size_t d = 0; d < t.size.size(); ++d) {
            int64_t span = 0;
            overflow |= __builtin_mul_overflow(t.size[d] - 1, t.stride[d], &span);
            overflow |= __builtin_add_overflow(last, span, &last);
        }
        if (overflow || last >= storage_numel)
            fail("tensor view exceeds its storage of " + std::to_string(storage_numel) + " elements");
    }

    // BINPERSID/PERSID: torch names each storage by the tuple
    // ('storage', <storage class>, key, location, numel).
    Id persistent_load(Id pid) {
        Id args = make_seq(Kind::Tuple, {pid});
        Id id = inert_call({make_global("pickle", "persistent_load"), args});
        const PyValue& p = val(pid);
        if (p.kind != Kind::Tuple || p.items.size() != 5 || p.items[0]->kind != Kind::String ||
            p.items[0]->s != "storage")
            return id;
        const auto& it = p.items;
        if (it[1]->kind != Kind::Global || it[2]->kind != Kind::String || it[3]->kind != Kind::String ||
            it[4]->kind != Kind::Int || it[4]->i < 0)
            fail("malformed storage record " + p.repr());
        storage_of_[nodes_[id].value.get()] = static_cast<int>(result_.storages.size());
        result_.storages.push_back({it[1]->s, it[2]->s, it[3]->s, it[4]->i});
        return id;
    }

    // ---- protocol-0 text arguments ----------------------------------------

    Id text_int(const std::string& line, bool allow_bool) {
        if (allow_bool && line == "00") return make_bool(false);
        if (allow_bool && line == "01") return make_bool(true);
        std::string digits = line;
        if (!digits.empty() && digits.back() == 'L') digits.pop_back();  // Python 2 long
        int64_t v = 0;
        if (parse_int64(digits, &v)) return make_int(v);
        // Beyond int64 (or junk): accept only a plain decimal integer.
        size_t start = (!digits.empty() && (digits[0] == '-' || digits[0] == '+')) ? 1 : 0;
        if (start == digits.size() || digits.find_first_not_of("0123456789", start) != std::string::npos)
            fail("bad integer literal '" + line + "'");
        return make_float(std::strtod(digits.c_str(), nullptr));
    }

    Id text_float(const std::string& line) {
        const char* b = line.data();
        const char* e = b + line.size();
        if (b != e && *b == '+') ++b;
        double v = 0.0;
        auto [end, ec] = std::from_chars(b, e, v);
        if (b == e || ec != std::errc() || end != e) fail("bad float literal '" + line + "'");
        return make_float(v);
    }

    // STRING: a Python 2 str repr, '...' or "...", with backslash escapes.
    std::string unquote(const std::string& line) {
        if (line.size() < 2 || (line[0] != '\'' && line[0] != '"') || line.back() != line[0])
            fail("STRING argument is not quoted");
        std::string out;
        size_t end = line.size() - 1;
        for (size_t k = 1; k < end; ++k) {
            char c = line[k];
            if (c != '\\' || k + 1 >= end) {
                out += c;
                continue;
            }
            char e = line[++k];
            switch (e) {
                case 'n': out += '\n'; break;
                case 't': out += '\t'; break;
                case 'r': out += '\r'; break;
                case 'a': out += '\a'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'v': out += '\v'; break;
                case '\\': case '\'': case '"': out += e; break;
                case '\n': break;  // line continuation
                case 'x': {
                    int64_t v = parse_hex(line, k + 1, 2);
                    if (v < 0 || k + 2 >= end) fail("bad \\x escape in STRING");
                    out += static_cast<char>(v);
                    k += 2;
                    break;
                }
                default:
                    if (e >= '0' && e <= '7') {
                        int v = e - '0';
                        for (int n = 0; n < 2 && k + 1 < end && line[k + 1] >= '0' && line[k + 1] <= '7'; ++n)
                            v = v * 8 + (line[++k] - '0');
                        out += static_cast<char>(v & 0xff);
                    } else {
                        out += '\\';  // Python keeps unknown escapes
                        out += e;
                    }
            }
        }
        return out;
    }

    // UNICODE: raw-unicode-escape. Bytes are Latin-1 code points; \uXXXX and
    // \UXXXXXXXX are escapes when preceded by an odd number of backslashes.
    std::string raw_unicode_escape(const std::string& line) {
        std::string out;
        size_t k = 0;
        while (k < line.size()) {
            if (line[k] != '\\') {
                append_utf8(out, static_cast<unsigned char>(line[k++]));
                continue;
            }
            size_t run = 0;
            while (k < line.size() && line[k] == '\\') ++run, ++k;
            bool escape = run % 2 == 1 && k < line.size() && (line[k] == 'u' || line[k] == 'U');
            out.append(escape ? run - 1 : run, '\\');
            if (!escape) continue;
            size_t digits = line[k] == 'u' ? 4 : 8;
            int64_t cp = parse_hex(line, k + 1, digits);
            if (cp < 0 || cp > 0x10ffff) fail("bad \\u escape in UNICODE");
            append_utf8(out, static_cast<uint32_t>(cp));
            k += 1 + digits;
        }
        return out;
    }

    // ---- the opcode loop --------------------------------------------------

    [[noreturn]] void unsupported(const char* why) const {
        char buf[160];
        std::snprintf(buf, sizeof buf, "unsupported pickle opcode 0x%02x at offset %zu%s%s", op_, op_start_,
                      why[0] ? ": " : "", why);
        throw Error(buf);
    }

    void step() {
        op_start_ = pos_;
        op_ = 0;
        if (pos_ >= size_) throw Error("pickle data ends without STOP (at offset " + std::to_string(pos_) + ")");
        op_ = data_[pos_++];
        switch (op_) {
            case PROTO: {
                uint64_t version = read_le(1);
                if (version > kMaxProtocol) fail("unsupported pickle protocol " + std::to_string(version));
                break;
            }
            case FRAME: {
                // Framing only groups opcodes for buffered reading; a frame
                // must still lie inside the data.
                need(static_cast<size_t>(read_le(8)));
                break;
            }
            case STOP:
                result_.root = nodes_[pop()].value;
                stopped_ = true;
                break;
            case MARK:
                if (marks_.size() >= limits_.max_stack) fail("too many MARKs");
                marks_.push_back(stack_.size());
                break;
            case POP:
                if (stack_.size() > frame_base()) {
                    stack_.pop_back();
                } else {
                    pop_mark();
                }
                break;
            case POP_MARK: pop_mark(); break;
            case DUP: push(top()); break;

            case NONE: push(make(Kind::None)); break;
            case NEWTRUE: push(make_bool(true)); break;
            case NEWFALSE: push(make_bool(false)); break;
            case BININT: push(make_int(static_cast<int32_t>(read_le(4)))); break;
            case BININT1: push(make_int(static_cast<int64_t>(read_le(1)))); break;
            case BININT2: push(make_int(static_cast<int64_t>(read_le(2)))); break;
            case LONG1: push_long(read_le(1)); break;
            case LONG4: {
                int32_t n = static_cast<int32_t>(read_le(4));
                if (n < 0) fail("negative LONG4 length");
                push_long(static_cast<uint64_t>(n));
                break;
            }
            case INT: push(text_int(read_line(), true)); break;
            case LONG: push(text_int(read_line(), false)); break;
            case FLOAT: push(text_float(read_line())); break;
            case BINFLOAT: {
                const uint8_t* p = take(8);
                uint64_t bits = 0;
                for (int k = 0; k < 8; ++k) bits = (bits << 8) | p[k];  // big-endian
                double v;
                std::memcpy(&v, &bits, sizeof v);
                push(make_float(v));
                break;
            }

            case BINUNICODE: push(make_text(Kind::String, read_bytes(read_le(4)))); break;
            case SHORT_BINUNICODE: push(make_text(Kind::String, read_bytes(read_le(1)))); break;
            case BINUNICODE8: push(make_text(Kind::String, read_bytes(read_le(8)))); break;
            case UNICODE: push(make_text(Kind::String, raw_unicode_escape(read_line()))); break;
            // Python 2 str: torch.load decodes them as text.
            case BINSTRING: {
                int32_t n = static_cast<int32_t>(read_le(4));
                if (n < 0) fail("negative BINSTRING length");
                push(make_text(Kind::String, read_bytes(static_cast<uint64_t>(n))));
                break;
            }
            case SHORT_BINSTRING: push(make_text(Kind::String, read_bytes(read_le(1)))); break;
            case STRING: push(make_text(Kind::String, unquote(read_line()))); break;
            case BINBYTES: push(make_text(Kind::Bytes, read_bytes(read_le(4)))); break;
            case SHORT_BINBYTES: push(make_text(Kind::Bytes, read_bytes(read_le(1)))); break;
            case BINBYTES8: push(make_text(Kind::Bytes, read_bytes(read_le(8)))); break;

            case EMPTY_TUPLE: push(make(Kind::Tuple)); break;
            case EMPTY_LIST: push(make(Kind::List)); break;
            case EMPTY_DICT: push(make(Kind::Dict)); break;
            case EMPTY_SET: push(make(Kind::List)); break;
            case TUPLE: push(make_seq(Kind::Tuple, pop_mark())); break;
            case FROZENSET: push(make_seq(Kind::Tuple, pop_mark())); break;
            case LIST: push(make_seq(Kind::List, pop_mark())); break;
            case TUPLE1: case TUPLE2: case TUPLE3: {
                std::vector<Id> items(op_ - TUPLE1 + 1);
                for (size_t k = items.size(); k-- > 0;) items[k] = pop();
                push(make_seq(Kind::Tuple, items));
                break;
            }
            case DICT: {
                std::vector<Id> items = pop_mark();
                Id dict = make(Kind::Dict);
                set_items(dict, items);
                push(dict);
                break;
            }

            case APPEND: {
                Id v = pop();
                extend(top(), {v});
                break;
            }
            case APPENDS: case ADDITEMS: {
                std::vector<Id> items = pop_mark();
                extend(top(), items);
                break;
            }
            case SETITEM: {
                Id v = pop();
                Id k = pop();
                set_items(top(), {k, v});
                break;
            }
            case SETITEMS: {
                std::vector<Id> items = pop_mark();
                set_items(top(), items);
                break;
            }

            case BINPUT: memo_put(read_le(1)); break;
            case LONG_BINPUT: memo_put(read_le(4)); break;
            case PUT: memo_put(read_decimal_line()); break;
            case MEMOIZE: memo_put(memo_.size()); break;
            case BINGET: memo_get(read_le(1)); break;
            case LONG_BINGET: memo_get(read_le(4)); break;
            case GET: memo_get(read_decimal_line()); break;

            case GLOBAL: {
                std::string module = read_line();
                std::string name = read_line();
                push(make_global(module, name));
                break;
            }
            case STACK_GLOBAL: {
                Id name = pop();
                Id module = pop();
                if (kind(name) != Kind::String || kind(module) != Kind::String)
                    fail("STACK_GLOBAL needs two strings");
                push(make_global(val(module).s, val(name).s));
                break;
            }
            case REDUCE: case NEWOBJ: {
                Id args = pop();
                Id callable = pop();
                push(call(callable, args));
                break;
            }
            case NEWOBJ_EX: {
                Id kwargs = pop();
                Id args = pop();
                Id cls = pop();
                bool no_kwargs = kind(kwargs) == Kind::Dict && val(kwargs).dict.empty();
                push(no_kwargs ? call(cls, args) : inert_call({cls, args, kwargs}));
                break;
            }
            case INST: {
                std::string module = read_line();
                std::string name = read_line();
                Id args = make_seq(Kind::Tuple, pop_mark());
                push(call(make_global(module, name), args));
                break;
            }
            case OBJ: {
                std::vector<Id> items = pop_mark();
                if (items.empty()) fail("OBJ without a class");
                Id cls = items[0];
                items.erase(items.begin());
                push(call(cls, make_seq(Kind::Tuple, items)));
                break;
            }
            case BUILD: {
                Id state = pop();
                Id object = top();
                Id built = wrap(object, "__setstate__");
                adopt(built, state);
                val(built).items.push_back(nodes_[state].value);
                top() = built;
                break;
            }
            case BINPERSID: push(persistent_load(pop())); break;
            case PERSID: push(persistent_load(make_text(Kind::String, read_line()))); break;

            case 0x82: case 0x83: case 0x84:
                unsupported("EXT1/EXT2/EXT4 need Python's extension registry");
            case 0x96: case 0x97: case 0x98:
                unsupported("out-of-band buffers (protocol 5) are not supported");
            default:
                unsupported("");
        }
    }

    void push_long(uint64_t n) {
        const uint8_t* p = take(static_cast<size_t>(n));
        bool is_int = true;
        double approx = 0.0;
        int64_t v = decode_long(p, static_cast<size_t>(n), &is_int, &approx);
        push(is_int ? make_int(v) : make_float(approx));
    }

};

}  // namespace

ParseResult parse(const uint8_t* data, size_t size, const Limits& limits) {
    return Parser(data, size, limits).run();
}

}  // namespace pickle
}  // namespace fastdemucs
