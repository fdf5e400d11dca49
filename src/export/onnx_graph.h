// A small builder over the ONNX protobuf classes (libonnx-dev): nodes with
// readable scoped names, float32/int64 initializers, and the static shape of
// every value tracked on our side so reshapes and slices are written as
// constants (nothing is left for the runtime to compute from shapes).
#pragma once

#include <onnx/onnx_pb.h>

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace fastdemucs::onnx_export {

// One graph value: its name and its shape. With a symbolic batch, dim
// `batch_axis` carries the batch (tracked as if the batch were 1 there).
struct Value {
    std::string name;
    std::vector<int64_t> shape;
    int batch_axis = -1;  // -1: no batch in this value (a constant)
};

struct Attr {
    enum class Kind { Int, Float, Ints, String } kind;
    std::string name;
    int64_t i = 0;
    float f = 0.0f;
    std::vector<int64_t> ints;
    std::string s;
    static Attr Int(const std::string& n, int64_t v) { return {Kind::Int, n, v, 0.0f, {}, {}}; }
    static Attr Float(const std::string& n, float v) { return {Kind::Float, n, 0, v, {}, {}}; }
    static Attr Ints(const std::string& n, std::vector<int64_t> v) { return {Kind::Ints, n, 0, 0.0f, std::move(v), {}}; }
    static Attr String(const std::string& n, std::string v) { return {Kind::String, n, 0, 0.0f, {}, std::move(v)}; }
};

class GraphBuilder {
public:
    // batch: the static batch size, or 0 for a symbolic one ("batch").
    GraphBuilder(onnx::GraphProto* graph, int64_t batch);

    int64_t batch() const { return batch_ > 0 ? batch_ : 1; }  // the batch used in tracked shapes
    bool dynamic_batch() const { return batch_ <= 0; }

    // Node names are scope + "/" + local name (e.g. "encoder.0/conv").
    void set_scope(const std::string& scope) { scope_ = scope; }
    const std::string& scope() const { return scope_; }

    Value input(const std::string& name, std::vector<int64_t> shape, int batch_axis);
    void output(const Value& v, const std::string& name);

    // Initializers. `name` is used as is (checkpoint names for weights).
    Value constant(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& data);
    Value constant_i64(const std::string& name, std::vector<int64_t> shape, const std::vector<int64_t>& data);
    // A shared scalar or small constant (named "const/...", created once).
    Value scalar(float v);
    Value ones(int64_t n);
    Value zeros(int64_t n);

    // A node with one output of the given shape.
    Value node(const std::string& op, const std::vector<std::string>& inputs, const std::string& local_name,
               std::vector<int64_t> shape, int batch_axis, const std::vector<Attr>& attrs = {});
    // A node with several outputs.
    std::vector<Value> node_multi(const std::string& op, const std::vector<std::string>& inputs,
                                  const std::string& local_name, const std::vector<std::vector<int64_t>>& shapes,
                                  int batch_axis, const std::vector<Attr>& attrs = {});

    // Common ops, shapes inferred.
    Value binary(const std::string& op, const Value& a, const Value& b, const std::string& local_name);
    Value add(const Value& a, const Value& b, const std::string& n) { return binary("Add", a, b, n); }
    Value sub(const Value& a, const Value& b, const std::string& n) { return binary("Sub", a, b, n); }
    Value mul(const Value& a, const Value& b, const std::string& n) { return binary("Mul", a, b, n); }
    Value div(const Value& a, const Value& b, const std::string& n) { return binary("Div", a, b, n); }
    Value unary(const std::string& op, const Value& x, const std::string& local_name);
    Value reshape(const Value& x, std::vector<int64_t> shape, int batch_axis, const std::string& local_name);
    Value transpose(const Value& x, const std::vector<int64_t>& perm, const std::string& local_name);
    // Slice of one axis: [start, end).
    Value slice(const Value& x, int64_t axis, int64_t start, int64_t end, const std::string& local_name);
    Value matmul(const Value& a, const Value& b, const std::string& local_name);

    // Unique name under the current scope.
    std::string unique(const std::string& local_name);

private:
    Value shared_constant(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& data);

    onnx::GraphProto* graph_;
    int64_t batch_;
    std::string scope_;
    std::map<std::string, int> used_;
    std::set<std::string> constants_;
    std::map<std::string, Value> shared_;
};

// "[1, 2, 3]"
std::string dims_text(const std::vector<int64_t>& shape);

}  // namespace fastdemucs::onnx_export
