// A Python pickle reader for data only. It interprets opcodes with an
// explicit stack, memo and mark stack and never imports or runs anything:
// GLOBAL names become inert `Global` values and calls inert `Call` values,
// except the few it knows to be data:
//   fractions.Fraction(...)            -> Kind::Fraction
//   collections.OrderedDict()          -> an empty Kind::Dict
//   torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)
//     over a persistent id ('storage', <type>, key, location, numel)
//                                      -> Kind::Tensor (see TensorRecord)
//
// Inert calls (PyValue::Kind::Call) are laid out as
//   REDUCE, NEWOBJ, INST, OBJ:  items = {callable, args tuple}
//   NEWOBJ_EX:                  items = {class, args tuple, kwargs dict}
//   BUILD:                      s = "__setstate__", items = {object, state}
//   SETITEM(S) on an object:    s = "__setitem__", items = {object}, dict = items set
//   APPEND(S) on an object:     s = "extend", items = {object, values...}
//   other persistent ids:       items = {Global "pickle persistent_load", (pid,)}
// BUILD/SETITEMS/APPENDS on objects wrap rather than modify them, so memo
// references keep the unmodified object; that loses nothing for data.
//
// Sets (protocol 4 EMPTY_SET/FROZENSET) are read as lists/tuples; integers
// beyond 64 bits as the nearest double. Containers may only be filled before
// they are stored in another container, which every pickle of acyclic data
// does; this keeps the result a tree (no reference cycles) of bounded depth.
//
// Every read is bounds-checked: damaged input throws fastdemucs::Error with
// the opcode offset in the message, never undefined behaviour.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "checkpoint/pyvalue.h"

namespace fastdemucs {
namespace pickle {

// A storage named by a torch persistent id ('storage', <type>, key, location, numel).
struct StorageRecord {
    std::string type;      // the storage class, "torch HalfStorage"
    std::string key;       // its data entry: <archive>/data/<key>
    std::string location;  // "cpu", "cuda:0", ...
    int64_t numel = 0;     // in elements of the storage's type
};

// A tensor view of a storage, in elements. Size and stride have the same
// length, all non-negative, and offset + extent fits the storage's numel.
struct TensorRecord {
    int storage = -1;  // index into ParseResult::storages
    int64_t offset = 0;
    std::vector<int64_t> size;
    std::vector<int64_t> stride;
    int64_t numel() const;
};

struct ParseResult {
    PyValuePtr root;  // the object STOP returned
    std::vector<StorageRecord> storages;
    std::vector<TensorRecord> tensors;  // PyValue::tensor_index points here
};

struct Limits {
    size_t max_depth = 256;          // nesting of containers in the result
    size_t max_stack = size_t(1) << 24;  // values on the stack (and marks)
};

// Parses one pickle; bytes after its STOP are ignored.
// Throws fastdemucs::Error ("unsupported pickle opcode 0xNN at offset N", ...).
ParseResult parse(const uint8_t* data, size_t size, const Limits& limits = Limits());

}  // namespace pickle
}  // namespace fastdemucs
