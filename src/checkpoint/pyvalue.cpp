#include "checkpoint/pyvalue.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "error.h"

namespace fastdemucs {

namespace {

// repr() is for messages: long containers, long strings and deep nesting
// are cut so that one bad value cannot flood a one-line error.
constexpr size_t kReprMaxItems = 16;
constexpr size_t kReprMaxString = 80;
constexpr int kReprMaxDepth = 6;
constexpr size_t kReprMaxLength = 200;  // soft: stops adding values past it

const char* kind_name(PyValue::Kind kind) {
    switch (kind) {
        case PyValue::Kind::None: return "None";
        case PyValue::Kind::Bool: return "bool";
        case PyValue::Kind::Int: return "int";
        case PyValue::Kind::Float: return "float";
        case PyValue::Kind::String: return "str";
        case PyValue::Kind::Bytes: return "bytes";
        case PyValue::Kind::List: return "list";
        case PyValue::Kind::Tuple: return "tuple";
        case PyValue::Kind::Dict: return "dict";
        case PyValue::Kind::Fraction: return "Fraction";
        case PyValue::Kind::Global: return "global";
        case PyValue::Kind::Call: return "call";
        case PyValue::Kind::Tensor: return "tensor";
    }
    return "?";
}

// Python's float repr is the shortest text that reads back exactly.
std::string float_text(double v) {
    if (std::isnan(v)) return "nan";
    if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
    char buf[40];
    for (int precision = 1; precision <= 17; ++precision) {
        std::snprintf(buf, sizeof buf, "%.*g", precision, v);
        if (std::strtod(buf, nullptr) == v) break;
    }
    std::string text = buf;
    if (text.find_first_of(".en") == std::string::npos) text += ".0";
    return text;
}

void append_quoted(std::string& out, const std::string& s, bool bytes) {
    if (bytes) out += 'b';
    out += '\'';
    size_t n = std::min(s.size(), kReprMaxString);
    for (size_t k = 0; k < n; ++k) {
        unsigned char c = static_cast<unsigned char>(s[k]);
        if (c == '\'' || c == '\\') {
            out += '\\';
            out += static_cast<char>(c);
        } else if (c == '\n') {
            out += "\\n";
        } else if (c < 0x20 || c == 0x7f || (bytes && c >= 0x80)) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\x%02x", c);
            out += buf;
        } else {
            out += static_cast<char>(c);  // UTF-8 text passes through
        }
    }
    if (n < s.size()) out += "...";
    out += '\'';
}

// "module name" -> "module.name"
std::string dotted(const std::string& global) {
    std::string out = global;
    auto space = out.find(' ');
    if (space != std::string::npos) out[space] = '.';
    return out;
}

void append_repr(std::string& out, const PyValue& v, int depth);

void append_seq(std::string& out, const std::vector<PyValuePtr>& items, size_t first, int depth) {
    for (size_t k = first; k < items.size(); ++k) {
        if (k > first) out += ", ";
        if (k - first == kReprMaxItems) {
            out += "...";
            break;
        }
        append_repr(out, *items[k], depth + 1);
    }
}

// A Call is items[0] (the callable, or the object a BUILD/SETITEMS acts on,
// then named by `s`), applied to items[1] (an argument tuple for plain
// calls) and any further items; `dict` holds items a SETITEMS added.
void append_call(std::string& out, const PyValue& v, int depth) {
    if (!v.items.empty()) append_repr(out, *v.items[0], depth + 1);
    if (!v.s.empty()) out += "." + v.s;
    out += '(';
    if (v.s.empty() && v.items.size() == 2 && v.items[1]->kind == PyValue::Kind::Tuple) {
        append_seq(out, v.items[1]->items, 0, depth + 1);
    } else {
        append_seq(out, v.items, 1, depth);
    }
    if (!v.dict.empty()) out += v.items.size() > 1 ? ", {...}" : "{...}";
    out += ')';
}

void append_repr(std::string& out, const PyValue& v, int depth) {
    using K = PyValue::Kind;
    if (out.size() > kReprMaxLength) {
        out += "...";
        return;
    }
    bool container = v.kind == K::List || v.kind == K::Tuple || v.kind == K::Dict || v.kind == K::Call;
    if (container && depth >= kReprMaxDepth) {
        out += "...";
        return;
    }
    switch (v.kind) {
        case K::None: out += "None"; break;
        case K::Bool: out += v.b ? "True" : "False"; break;
        case K::Int: out += std::to_string(v.i); break;
        case K::Float: out += float_text(v.f); break;
        case K::String: append_quoted(out, v.s, false); break;
        case K::Bytes: append_quoted(out, v.s, true); break;
        case K::List:
            out += '[';
            append_seq(out, v.items, 0, depth);
            out += ']';
            break;
        case K::Tuple:
            out += '(';
            append_seq(out, v.items, 0, depth);
            if (v.items.size() == 1) out += ',';
            out += ')';
            break;
        case K::Dict:
            out += '{';
            for (size_t k = 0; k < v.dict.size(); ++k) {
                if (k) out += ", ";
                if (k == kReprMaxItems) {
                    out += "...";
                    break;
                }
                append_repr(out, *v.dict[k].first, depth + 1);
                out += ": ";
                append_repr(out, *v.dict[k].second, depth + 1);
            }
            out += '}';
            break;
        case K::Fraction:
            out += "Fraction(" + std::to_string(v.i) + ", " + std::to_string(v.den) + ")";
            break;
        case K::Global: out += dotted(v.s); break;
        case K::Call:
            append_call(out, v, depth);
            break;
        case K::Tensor: out += "<tensor #" + std::to_string(v.tensor_index) + ">"; break;
    }
}

}  // namespace

const PyValue* PyValue::get(const std::string& key) const {
    if (kind != Kind::Dict) return nullptr;
    for (const auto& [k, v] : dict) {
        if (k->kind == Kind::String && k->s == key) return v.get();
    }
    return nullptr;
}

double PyValue::as_double() const {
    switch (kind) {
        case Kind::Int: return static_cast<double>(i);
        case Kind::Float: return f;
        case Kind::Bool: return b ? 1.0 : 0.0;
        case Kind::Fraction: return static_cast<double>(i) / static_cast<double>(den);
        default: break;
    }
    throw Error(std::string("expected a number, got a ") + kind_name(kind) + ": " + repr());
}

std::string PyValue::repr() const {
    std::string out;
    append_repr(out, *this, 0);
    return out;
}

}  // namespace fastdemucs
