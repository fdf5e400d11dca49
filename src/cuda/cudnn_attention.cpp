#include "cuda/cudnn_attention.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "cuda/arena.h"
#include "engine/trace.h"
#include "error.h"

#ifdef FASTDEMUCS_WITH_CUDNN_FRONTEND
// The frontend resolves every cuDNN entry point through this handle (no
// link-time dependency: a build runs where cuDNN is not installed).
#define NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING
#include <cudnn_frontend.h>

#include "cuda/libraries.h"

namespace cudnn_frontend {
void* cudnn_dlhandle = nullptr;
}
#endif

namespace fastdemucs::cuda {

#ifdef FASTDEMUCS_WITH_CUDNN_FRONTEND

namespace fe = cudnn_frontend;

namespace {

// A plan is made for one shape and layout: the variant pack supplies the
// pointers of each run. Key: type, B, N, M, heads, dh, ldq, ldkv, ldo, scale.
using PlanKey = std::tuple<int, int64_t, int64_t, int64_t, int, int, int64_t, int64_t, int64_t, float>;

enum Uid : fe::graph::Tensor_attributes::uid_t { kQ = 1, kK, kV, kO };

// The workspace every run reserves (the H200's plans for this model's
// shapes ask for 256 bytes); a plan wanting more is left to our kernel.
constexpr size_t kWorkspaceReserve = size_t(4) << 20;

}  // namespace

struct CudnnAttention::Impl {
    int device = 0;
    std::string reason;
    cudnnHandle_t handle = nullptr;
    struct Plan {
        std::unique_ptr<fe::graph::Graph> graph;  // null: cuDNN declined the shape
        int64_t workspace = 0;
        cudnnHandle_t own = nullptr;  // the handle it was made (and runs) on, where not `handle`
    };
    std::map<PlanKey, Plan> plans;
    std::map<PlanKey, AttentionArgs> wanted;  // seen by dry runs, not planned yet (prepare())
    int64_t runs = 0;

    ~Impl() {
        try {  // the frontend's entry-point lookup throws; never out of a destructor
            for (auto& [key, plan] : plans) {
                plan.graph.reset();
                if (plan.own) fe::detail::destroy_handle(plan.own);
            }
            plans.clear();
            if (handle) fe::detail::destroy_handle(handle);
        } catch (...) {
        }
    }

    // The graph of out [B, H, N, dh] = SDPA(q, k, v) over the heads
    // interleaved along each token's row (strides: item, head, token, 1).
    Plan make_plan(const AttentionArgs& a, DType t, float scale, cudnnHandle_t on) {
        Plan plan;
        auto graph = std::make_unique<fe::graph::Graph>();
        graph->set_io_data_type(t == DType::BF16 ? fe::DataType_t::BFLOAT16 : fe::DataType_t::HALF)
            .set_intermediate_data_type(fe::DataType_t::FLOAT)
            .set_compute_data_type(fe::DataType_t::FLOAT);
        const int64_t H = a.heads, dh = a.dh;
        auto tensor = [&](const char* name, Uid uid, int64_t tokens, int64_t ld) {
            return graph->tensor(fe::graph::Tensor_attributes()
                                     .set_name(name)
                                     .set_uid(uid)
                                     .set_dim({a.B, H, tokens, dh})
                                     .set_stride({tokens * ld, dh, ld, 1}));
        };
        auto q = tensor("q", kQ, a.N, a.ldq), k = tensor("k", kK, a.M, a.ldkv), v = tensor("v", kV, a.M, a.ldkv);
        auto options = fe::graph::SDPA_attributes().set_name("attention").set_generate_stats(false).set_attn_scale(
            scale);
        auto [out, stats] = graph->sdpa(q, k, v, options);
        (void)stats;
        out->set_output(true).set_uid(kO).set_dim({a.B, H, a.N, dh}).set_stride({a.N * a.ldo, dh, a.ldo, 1});
        // Any step failing leaves the shape to our kernels.
        if (!graph->validate().is_good() || !graph->build_operation_graph(on).is_good() ||
            !graph->create_execution_plans({fe::HeurMode_t::A}).is_good() || !graph->check_support().is_good() ||
            !graph->build_plans().is_good() || !graph->get_workspace_size(plan.workspace).is_good()) {
            trace_point("cuda: cuDNN has no attention plan for a shape: our kernel runs it");
            return plan;
        }
        plan.graph = std::move(graph);
        return plan;
    }
};

CudnnAttention::CudnnAttention(int device) : impl_(std::make_unique<Impl>()) {
    impl_->device = device;
    if (cudaSetDevice(device) != cudaSuccess) {
        cudaGetLastError();
        impl_->reason = "no CUDA device " + std::to_string(device);
        return;
    }
    // One library for the process; every backend makes its own handle.
    static void* const library = [] {
        std::string why;
        void* lib = open_library("libcudnn.so.9", why);
        if (!lib) trace_point(("cuda: cuDNN not loaded (" + why + "): our attention kernels run").c_str());
        // Set once, before any thread's first use (the static's initialisation orders it).
        fe::cudnn_dlhandle = lib;
        return lib;
    }();
    if (!library) {
        impl_->reason = "libcudnn.so.9 could not be loaded";
        return;
    }
    try {
        if (fe::detail::create_handle(&impl_->handle) != CUDNN_STATUS_SUCCESS) {
            impl_->handle = nullptr;
            impl_->reason = "cudnnCreate failed";
        }
    } catch (const std::exception& e) {  // the frontend throws where an entry point is missing
        impl_->handle = nullptr;
        impl_->reason = e.what();
    }
}

CudnnAttention::~CudnnAttention() = default;

bool CudnnAttention::available() const { return impl_->handle != nullptr; }
const std::string& CudnnAttention::reason() const { return impl_->reason; }
int64_t CudnnAttention::runs() const { return impl_->runs; }

bool CudnnAttention::run(const Ctx& ctx, const AttentionArgs& a, float scale) {
    const DType t = ctx.gemm;
    // Taken or not on the shape alone, so that dry runs (no plans made: they
    // cost host time) reserve the same arena memory as real ones; a shape
    // cuDNN then declines falls to our fused kernel, which takes no memory.
    if (!impl_->handle || (t != DType::F16 && t != DType::BF16) || !fused_attention_supported(a.dh)) return false;
    // Released on return: later kernels on the stream may reuse it (stream order).
    ArenaScope scope(*ctx.arena);
    void* workspace = ctx.arena->alloc_bytes(kWorkspaceReserve);
    const PlanKey key{int(t), a.B, a.N, a.M, a.heads, a.dh, a.ldq, a.ldkv, a.ldo, scale};
    auto it = impl_->plans.find(key);
    if (ctx.dry) {
        if (it == impl_->plans.end()) impl_->wanted.emplace(key, a);
        return true;
    }
    if (it == impl_->plans.end()) {
        Impl::Plan plan;
        try {
            plan = impl_->make_plan(a, t, scale, impl_->handle);
        } catch (const std::exception&) {  // a frontend exception: the shape is ours
            plan = Impl::Plan{};
        }
        it = impl_->plans.emplace(key, std::move(plan)).first;
    }
    Impl::Plan& plan = it->second;
    if (!plan.graph || plan.workspace > int64_t(kWorkspaceReserve)) return false;
    std::unordered_map<fe::graph::Tensor_attributes::uid_t, void*> pack = {
        {kQ, const_cast<void*>(a.q)}, {kK, const_cast<void*>(a.k)}, {kV, const_cast<void*>(a.v)}, {kO, a.out}};
    cudnnHandle_t on = plan.own ? plan.own : impl_->handle;
    if (fe::detail::set_stream(on, ctx.stream) != CUDNN_STATUS_SUCCESS) throw Error("cuDNN: cannot set the stream");
    auto status = plan.graph->execute(on, pack, workspace);
    if (!status.is_good()) throw Error("cuDNN attention failed: " + status.get_message());
    impl_->runs++;
    return true;
}

void CudnnAttention::prepare(int64_t batch) {
    if (!impl_->handle || impl_->wanted.empty()) return;
    std::vector<std::pair<PlanKey, AttentionArgs>> jobs;
    for (const auto& [key, args] : impl_->wanted)
        if (args.B == batch) jobs.emplace_back(key, args);
    impl_->wanted.clear();  // other batch sizes are planned by run() if they ever run
    if (jobs.empty()) return;
    std::vector<Impl::Plan> built(jobs.size());
    // Each plan on a thread and a handle of its own (cuDNN is thread-safe
    // across handles); it then runs on that handle.
    auto make = [&](size_t i) {
        try {
            if (cudaSetDevice(impl_->device) != cudaSuccess) return;
            cudnnHandle_t own = nullptr;
            if (fe::detail::create_handle(&own) != CUDNN_STATUS_SUCCESS) return;
            const PlanKey& key = jobs[i].first;
            built[i] = impl_->make_plan(jobs[i].second, DType(std::get<0>(key)), std::get<9>(key), own);
            if (built[i].graph)
                built[i].own = own;
            else
                fe::detail::destroy_handle(own);
        } catch (const std::exception&) {  // left to run()'s own planning
            built[i] = Impl::Plan{};
        }
        cudaGetLastError();
    };
    std::vector<std::thread> threads;
    for (size_t i = 1; i < jobs.size(); i++) {
        try {
            threads.emplace_back(make, i);
        } catch (const std::system_error&) {
            make(i);
        }
    }
    make(0);
    for (std::thread& t : threads) t.join();
    // A shape not planned here is planned by run() on the main handle.
    for (size_t i = 0; i < jobs.size(); i++)
        if (built[i].graph) impl_->plans.emplace(jobs[i].first, std::move(built[i]));
    trace_point("cuda: cuDNN attention plans made");
}

bool cudnn_attention_built() { return true; }

void warm_up_cudnn_attention(int device, DType t) {
    if (t != DType::F16 && t != DType::BF16) return;
    try {
        CudnnAttention cudnn(device);
        if (!cudnn.available()) return;
        // htdemucs_6s's first self-attention at batch 8 (heads interleaved in a packed q/k/v row).
        AttentionArgs a;
        a.B = 8, a.N = a.M = 2688, a.heads = 8, a.dh = 48;
        a.ldq = a.ldkv = 3 * 8 * 48, a.ldo = 8 * 48;
        cudnn.impl_->make_plan(a, t, float(1.0 / std::sqrt(48.0)), cudnn.impl_->handle);
    } catch (const std::exception&) {
    }
}

#else  // no frontend headers in this build

struct CudnnAttention::Impl {
    std::string reason = "built without cuDNN (FASTDEMUCS_CUDNN off)";
};

CudnnAttention::CudnnAttention(int) : impl_(std::make_unique<Impl>()) {}
CudnnAttention::~CudnnAttention() = default;
bool CudnnAttention::available() const { return false; }
const std::string& CudnnAttention::reason() const { return impl_->reason; }
int64_t CudnnAttention::runs() const { return 0; }
bool CudnnAttention::run(const Ctx&, const AttentionArgs&, float) { return false; }
void CudnnAttention::prepare(int64_t) {}
bool cudnn_attention_built() { return false; }
void warm_up_cudnn_attention(int, DType) {}

#endif

}  // namespace fastdemucs::cuda
