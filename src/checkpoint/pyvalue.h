// A parsed Python value from a checkpoint's pickle. The reader never runs
// code: classes and functions a file names stay inert `Global`s, and calls
// (REDUCE) stay inert `Call`s, except the few the reader knows how to
// interpret as data (Fraction, OrderedDict, torch tensor rebuilds).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace fastdemucs {

struct PyValue;
using PyValuePtr = std::shared_ptr<const PyValue>;

struct PyValue {
    enum class Kind {
        None, Bool, Int, Float, String, Bytes,
        List, Tuple, Dict,
        Fraction,   // fractions.Fraction: num / den
        Global,     // a module.name reference, never imported
        Call,       // an uninterpreted REDUCE / BUILD: callable + args
        Tensor,     // a torch tensor rebuilt from a storage record
    };
    Kind kind = Kind::None;
    bool b = false;
    int64_t i = 0;           // Int; Fraction numerator
    int64_t den = 1;         // Fraction denominator
    double f = 0.0;          // Float
    std::string s;           // String, Bytes; Global: "module name"
    std::vector<PyValuePtr> items;                       // List, Tuple, Call (callable, args)
    std::vector<std::pair<PyValuePtr, PyValuePtr>> dict; // Dict, in insertion order
    int tensor_index = -1;   // Tensor: index into the parser's tensor table

    // Dict lookup by string key; nullptr when absent or not a dict.
    const PyValue* get(const std::string& key) const;
    bool is_number() const { return kind == Kind::Int || kind == Kind::Float || kind == Kind::Bool; }
    double as_double() const;  // Int, Float, Bool, Fraction
    std::string repr() const;  // short Python-like text, for messages
};

}  // namespace fastdemucs
