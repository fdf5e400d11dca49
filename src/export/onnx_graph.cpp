#include "export/onnx_graph.h"

#include <algorithm>
#include <cstring>
#include <sstream>

#include "error.h"

namespace fastdemucs::onnx_export {

std::string dims_text(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); i++) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

namespace {

void set_type(onnx::ValueInfoProto* info, const std::string& name, const std::vector<int64_t>& shape, int batch_axis,
              bool dynamic) {
    info->set_name(name);
    auto* tensor = info->mutable_type()->mutable_tensor_type();
    tensor->set_elem_type(onnx::TensorProto::FLOAT);
    auto* dims = tensor->mutable_shape();
    for (size_t i = 0; i < shape.size(); i++) {
        auto* d = dims->add_dim();
        if (dynamic && int(i) == batch_axis)
            d->set_dim_param("batch");
        else
            d->set_dim_value(shape[i]);
    }
}

int64_t numel(const std::vector<int64_t>& shape) {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
}

}  // namespace

GraphBuilder::GraphBuilder(onnx::GraphProto* graph, int64_t batch) : graph_(graph), batch_(batch) {}

std::string GraphBuilder::unique(const std::string& local_name) {
    std::string base = scope_.empty() ? local_name : scope_ + "/" + local_name;
    int& count = used_[base];
    std::string name = count == 0 ? base : base + "_" + std::to_string(count);
    count++;
    return name;
}

Value GraphBuilder::input(const std::string& name, std::vector<int64_t> shape, int batch_axis) {
    set_type(graph_->add_input(), name, shape, batch_axis, dynamic_batch());
    used_[name]++;
    return {name, std::move(shape), batch_axis};
}

void GraphBuilder::output(const Value& v, const std::string& name) {
    // The final node's output is renamed through an Identity so the graph
    // output has its public name.
    auto* n = graph_->add_node();
    n->set_op_type("Identity");
    n->set_name(name);
    n->add_input(v.name);
    n->add_output(name);
    set_type(graph_->add_output(), name, v.shape, v.batch_axis, dynamic_batch());
}

namespace {

// An initializer named `name` holding `data` as raw little-endian bytes (as
// the machines we build on store them), its name unique in the graph.
template <typename T>
Value add_initializer(onnx::GraphProto* graph, std::set<std::string>& names, const std::string& name,
                      std::vector<int64_t> shape, const std::vector<T>& data, onnx::TensorProto::DataType type) {
    if (numel(shape) != int64_t(data.size()))
        throw Error("ONNX export: constant " + name + " of shape " + dims_text(shape) + " has " +
                    std::to_string(data.size()) + " values");
    if (!names.insert(name).second) throw Error("ONNX export: duplicate constant name " + name);
    auto* t = graph->add_initializer();
    t->set_name(name);
    t->set_data_type(type);
    for (auto d : shape) t->add_dims(d);
    t->set_raw_data(std::string(reinterpret_cast<const char*>(data.data()), data.size() * sizeof(T)));
    return {name, std::move(shape), -1};
}

}  // namespace

Value GraphBuilder::constant(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& data) {
    return add_initializer(graph_, constants_, name, std::move(shape), data, onnx::TensorProto::FLOAT);
}

Value GraphBuilder::constant_i64(const std::string& name, std::vector<int64_t> shape, const std::vector<int64_t>& data) {
    return add_initializer(graph_, constants_, name, std::move(shape), data, onnx::TensorProto::INT64);
}

Value GraphBuilder::shared_constant(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& data) {
    auto it = shared_.find(name);
    if (it != shared_.end()) return it->second;
    Value v = constant(name, std::move(shape), data);
    shared_[name] = v;
    return v;
}

Value GraphBuilder::scalar(float v) {
    std::ostringstream text;
    text.precision(9);
    text << v;
    return shared_constant("const/" + text.str(), {}, {v});
}

Value GraphBuilder::ones(int64_t n) {
    return shared_constant("const/ones_" + std::to_string(n), {n}, std::vector<float>(n, 1.0f));
}

Value GraphBuilder::zeros(int64_t n) {
    return shared_constant("const/zeros_" + std::to_string(n), {n}, std::vector<float>(n, 0.0f));
}

namespace {

void add_attrs(onnx::NodeProto* n, const std::vector<Attr>& attrs) {
    for (const auto& a : attrs) {
        auto* p = n->add_attribute();
        p->set_name(a.name);
        switch (a.kind) {
            case Attr::Kind::Int:
                p->set_type(onnx::AttributeProto::INT);
                p->set_i(a.i);
                break;
            case Attr::Kind::Float:
                p->set_type(onnx::AttributeProto::FLOAT);
                p->set_f(a.f);
                break;
            case Attr::Kind::Ints:
                p->set_type(onnx::AttributeProto::INTS);
                for (auto v : a.ints) p->add_ints(v);
                break;
            case Attr::Kind::String:
                p->set_type(onnx::AttributeProto::STRING);
                p->set_s(a.s);
                break;
        }
    }
}

}  // namespace

Value GraphBuilder::node(const std::string& op, const std::vector<std::string>& inputs, const std::string& local_name,
                         std::vector<int64_t> shape, int batch_axis, const std::vector<Attr>& attrs) {
    return node_multi(op, inputs, local_name, {std::move(shape)}, batch_axis, attrs)[0];
}

std::vector<Value> GraphBuilder::node_multi(const std::string& op, const std::vector<std::string>& inputs,
                                            const std::string& local_name,
                                            const std::vector<std::vector<int64_t>>& shapes, int batch_axis,
                                            const std::vector<Attr>& attrs) {
    const std::string name = unique(local_name);
    auto* n = graph_->add_node();
    n->set_op_type(op);
    n->set_name(name);
    for (const auto& i : inputs) n->add_input(i);
    std::vector<Value> outs;
    for (size_t k = 0; k < shapes.size(); k++) {
        std::string out = shapes.size() == 1 ? name : name + ":" + std::to_string(k);
        n->add_output(out);
        outs.push_back({out, shapes[k], batch_axis});
    }
    add_attrs(n, attrs);
    return outs;
}

Value GraphBuilder::binary(const std::string& op, const Value& a, const Value& b, const std::string& local_name) {
    const size_t rank = std::max(a.shape.size(), b.shape.size());
    std::vector<int64_t> shape(rank, 1);
    for (size_t i = 0; i < rank; i++) {
        const int64_t da = i + a.shape.size() >= rank ? a.shape[i + a.shape.size() - rank] : 1;
        const int64_t db = i + b.shape.size() >= rank ? b.shape[i + b.shape.size() - rank] : 1;
        if (da != db && da != 1 && db != 1)
            throw Error("ONNX export: " + op + " " + local_name + " cannot broadcast " + dims_text(a.shape) + " with " +
                        dims_text(b.shape));
        shape[i] = std::max(da, db);
    }
    int batch_axis = -1;
    if (a.batch_axis >= 0) batch_axis = a.batch_axis + int(rank - a.shape.size());
    else if (b.batch_axis >= 0) batch_axis = b.batch_axis + int(rank - b.shape.size());
    return node(op, {a.name, b.name}, local_name, shape, batch_axis);
}

Value GraphBuilder::unary(const std::string& op, const Value& x, const std::string& local_name) {
    return node(op, {x.name}, local_name, x.shape, x.batch_axis);
}

Value GraphBuilder::reshape(const Value& x, std::vector<int64_t> shape, int batch_axis, const std::string& local_name) {
    if (numel(shape) != numel(x.shape))
        throw Error("ONNX export: reshape " + local_name + " from " + dims_text(x.shape) + " to " + dims_text(shape));
    std::vector<int64_t> target = shape;
    // With a symbolic batch, the dim carrying it is left to the runtime (-1);
    // every other dim is static.
    if (dynamic_batch() && batch_axis >= 0) target[batch_axis] = -1;
    const std::string name = unique(local_name);
    Value s = constant_i64(name + "/shape", {int64_t(target.size())}, target);
    auto* n = graph_->add_node();
    n->set_op_type("Reshape");
    n->set_name(name);
    n->add_input(x.name);
    n->add_input(s.name);
    n->add_output(name);
    return {name, std::move(shape), batch_axis};
}

Value GraphBuilder::transpose(const Value& x, const std::vector<int64_t>& perm, const std::string& local_name) {
    std::vector<int64_t> shape(perm.size());
    int batch_axis = -1;
    for (size_t i = 0; i < perm.size(); i++) {
        shape[i] = x.shape[perm[i]];
        if (perm[i] == x.batch_axis) batch_axis = int(i);
    }
    return node("Transpose", {x.name}, local_name, shape, batch_axis, {Attr::Ints("perm", perm)});
}

Value GraphBuilder::slice(const Value& x, int64_t axis, int64_t start, int64_t end, const std::string& local_name) {
    if (axis < 0) axis += int64_t(x.shape.size());
    if (start < 0 || end > x.shape[axis] || start >= end)
        throw Error("ONNX export: slice " + local_name + " [" + std::to_string(start) + ", " + std::to_string(end) +
                    ") of axis " + std::to_string(axis) + " of " + dims_text(x.shape));
    const std::string name = unique(local_name);
    Value starts = constant_i64(name + "/starts", {1}, {start});
    Value ends = constant_i64(name + "/ends", {1}, {end});
    Value axes = constant_i64(name + "/axes", {1}, {axis});
    std::vector<int64_t> shape = x.shape;
    shape[axis] = end - start;
    auto* n = graph_->add_node();
    n->set_op_type("Slice");
    n->set_name(name);
    for (const auto& i : {x.name, starts.name, ends.name, axes.name}) n->add_input(i);
    n->add_output(name);
    return {name, shape, x.batch_axis};
}

Value GraphBuilder::matmul(const Value& a, const Value& b, const std::string& local_name) {
    // Batched matmul over the leading dims (broadcast), [.., n, k] x [.., k, m].
    if (a.shape.size() < 2 || b.shape.size() < 2 || a.shape.back() != b.shape[b.shape.size() - 2])
        throw Error("ONNX export: matmul " + local_name + " of " + dims_text(a.shape) + " and " + dims_text(b.shape));
    Value lead_a{a.name, std::vector<int64_t>(a.shape.begin(), a.shape.end() - 2), a.batch_axis};
    Value lead_b{b.name, std::vector<int64_t>(b.shape.begin(), b.shape.end() - 2), b.batch_axis};
    const size_t rank = std::max(lead_a.shape.size(), lead_b.shape.size());
    std::vector<int64_t> shape(rank, 1);
    for (size_t i = 0; i < rank; i++) {
        const int64_t da = i + lead_a.shape.size() >= rank ? lead_a.shape[i + lead_a.shape.size() - rank] : 1;
        const int64_t db = i + lead_b.shape.size() >= rank ? lead_b.shape[i + lead_b.shape.size() - rank] : 1;
        shape[i] = std::max(da, db);
    }
    shape.push_back(a.shape[a.shape.size() - 2]);
    shape.push_back(b.shape.back());
    int batch_axis = -1;
    if (a.batch_axis >= 0) batch_axis = a.batch_axis + int(shape.size() - a.shape.size());
    else if (b.batch_axis >= 0) batch_axis = b.batch_axis + int(shape.size() - b.shape.size());
    return node("MatMul", {a.name, b.name}, local_name, shape, batch_axis);
}

}  // namespace fastdemucs::onnx_export
