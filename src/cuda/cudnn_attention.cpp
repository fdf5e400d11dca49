#include "cuda/cudnn_attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
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
#include "cuda/plan_store.h"

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
        bool tuned = false;           // made with FASTDEMUCS_CUDNN_AUTOTUNE's timing, which succeeded
    };
    std::map<PlanKey, Plan> plans;
    std::map<PlanKey, AttentionArgs> wanted;  // seen by dry runs, not planned yet (prepare())
    PlanStore store{PlanStore::default_folder()};
    std::string libraries_and_gpu;  // the libraries' and the GPU's part of every plan's description (describe())
    int64_t runs = 0;
    int64_t plans_read = 0;
    // FASTDEMUCS_CUDNN_AUTOTUNE=1: every plan cuDNN's heuristics offer (6 for
    // each of this model's shapes) built, timed, the fastest kept and stored.
    // On the H200 a forward of 8 spent 1.89 ms in the heuristics' first
    // plans, 1.73 ms in the tuned ones (~0.7 ms of a 3-minute track), but
    // making them took a machine's first command from 1.1 to 4.6 s: opt-in,
    // for long runs; the plans it stores then serve later processes without
    // it too (load_stored).
    bool tune = env_flag("FASTDEMUCS_CUDNN_AUTOTUNE");

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

    // The libraries' versions and the GPU, once per backend (the device's
    // properties are a slow query).
    void describe_libraries_and_gpu() {
        cudaDeviceProp prop{};
        if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) cudaGetLastError();
        char text[384];
        std::snprintf(text, sizeof text, "cudnn sdpa fwd; cudnn %lld; frontend %d; gpu %s sm_%d%d",
                      (long long)fe::detail::get_backend_version(), CUDNN_FRONTEND_VERSION, prop.name, prop.major,
                      prop.minor);
        libraries_and_gpu = text;
    }

    // What a plan is made for, as the plan store keys it: the libraries'
    // versions, the GPU, the shape (a stored plan holds kernels generated
    // for exactly these) and whether the tuning's timing chose it.
    std::string describe(const AttentionArgs& a, DType t, float scale, bool tuned) const {
        char text[256];
        std::snprintf(text, sizeof text,
                      "; %s%s; B %lld N %lld M %lld heads %d dh %d ldq %lld ldkv %lld ldo %lld scale %a",
                      t == DType::BF16 ? "bf16" : "f16", tuned ? " tuned" : "", (long long)a.B, (long long)a.N,
                      (long long)a.M, a.heads, a.dh, (long long)a.ldq, (long long)a.ldkv, (long long)a.ldo,
                      double(scale));
        return libraries_and_gpu + text;
    }

    // A plan read back from the plan store on handle `on` (no kernel
    // generation: ~1 ms); null graph where none is stored or it does not
    // load. `warm`: the frontend runs it once inside a throwaway stream
    // capture, so that its first real run (inside our graph's capture) has
    // nothing left to load; that capture must not overlap another thread's
    // device synchronisation (both fail), so warm loads run one at a time
    // on the main thread.
    Plan load_plan(const std::string& description, cudnnHandle_t on, bool warm = true) {
        Plan plan;
        const std::vector<uint8_t> stored = store.load(description);
        if (stored.empty()) return plan;
        auto graph = std::make_unique<fe::graph::Graph>();
        // The warm-up captures the handle's stream, or a stream of its own
        // where it has none: the stream a caller last ran on may be gone.
        if (warm && fe::detail::set_stream(on, nullptr) != CUDNN_STATUS_SUCCESS) return plan;
        // A damaged payload throws from the frontend's JSON parser: as one
        // that does not load (made again, and saved over it), never as a
        // declined shape.
        std::string why;
        try {
            auto status = graph->deserialize(on, stored, false, warm);
            if (status.is_good()) status = graph->get_workspace_size(plan.workspace);
            if (!status.is_good()) why = status.get_message();
        } catch (const std::exception& e) {
            why = e.what();
            if (why.empty()) why = "unreadable";
        }
        if (why.empty()) {
            plan.graph = std::move(graph);
            plans_read++;
            trace_point("cuda: cuDNN attention plan read from the plan store");
        } else {
            cudaGetLastError();
            trace_point(("cuda: a stored cuDNN attention plan did not load (" + why + "): made again").c_str());
        }
        return plan;
    }

    // A new plan (cuDNN generates its kernels: ~80-100 ms a plan), saved in
    // the plan store for the next process. Safe on several threads, a handle
    // each. tune_now = false (run()'s plans: its stream may be capturing, and
    // the timing synchronises the device) leaves the heuristics' first; with
    // tuning asked for, only a plan whose timing succeeded is stored.
    Plan make_and_save_plan(const AttentionArgs& a, DType t, float scale, cudnnHandle_t on,
                            const std::string& description, bool tune_now) {
        Plan plan = build_plan(a, t, scale, on, tune && tune_now);
        if (!plan.graph || store.folder().empty() || (tune && !plan.tuned)) return plan;
        std::vector<uint8_t> bytes;
        // Plan-only (no graph structure): execute() needs nothing else.
        auto status = plan.graph->serialize(bytes, false);
        if (!status.is_good())
            trace_point(("cuda: a cuDNN attention plan could not be serialised (" + status.get_message() + ")").c_str());
        else if (store.save(description, bytes))
            trace_point("cuda: cuDNN attention plan saved in the plan store");
        else
            trace_point(("cuda: the plan store " + store.folder() + " could not keep a cuDNN attention plan").c_str());
        return plan;
    }

    // A stored plan for the shape: a tuned one first, wherever an earlier
    // FASTDEMUCS_CUDNN_AUTOTUNE=1 process stored it (on the H200 ~0.1 ms of
    // a forward of 8 faster than the heuristics' first, and as cheap to
    // read), else one made as this process makes them; null graph if none.
    Plan load_stored(const AttentionArgs& a, DType t, float scale, cudnnHandle_t on, bool warm = true) {
        if (!tune) {
            Plan plan = load_plan(describe(a, t, scale, true), on, warm);
            if (plan.graph) {
                plan.tuned = true;
                return plan;
            }
        }
        return load_plan(describe(a, t, scale, tune), on, warm);
    }

    Plan make_plan(const AttentionArgs& a, DType t, float scale, cudnnHandle_t on, bool tune_now) {
        Plan plan = load_stored(a, t, scale, on);
        return plan.graph ? std::move(plan)
                          : make_and_save_plan(a, t, scale, on, describe(a, t, scale, tune), tune_now);
    }

    // Times every plan built for the shape on zeroed operands of their own
    // (one shape at a time: plans are built on several threads) and makes
    // the fastest the graph's. False where that failed (the heuristics'
    // first stays).
    static bool autotune(fe::graph::Graph& graph, const AttentionArgs& a, cudnnHandle_t on) {
        if (graph.get_execution_plan_count() < 2) return true;
        static std::mutex one_at_a_time;
        std::lock_guard<std::mutex> lock(one_at_a_time);
        const auto rounded = [](size_t n) { return (n + 255) / 256 * 256; };
        const size_t q = rounded(size_t(a.B * a.N * a.ldq) * 2), kv = rounded(size_t(a.B * a.M * a.ldkv) * 2),
                     o = rounded(size_t(a.B * a.N * a.ldo) * 2);
        const size_t ws = rounded(size_t(std::max<int64_t>(graph.get_autotune_workspace_size(), 1)));
        struct Scratch {  // released however the timing ends
            char* mem = nullptr;
            cudaStream_t stream = nullptr;
            cudnnHandle_t on = nullptr;
            ~Scratch() {
                if (stream) {
                    cudaStreamSynchronize(stream);
                    try {
                        fe::detail::set_stream(on, nullptr);
                    } catch (...) {
                    }
                    cudaStreamDestroy(stream);
                }
                if (mem) cudaFree(mem);
                cudaGetLastError();
            }
        } scratch;
        scratch.on = on;
        if (cudaMalloc(&scratch.mem, q + 2 * kv + o + ws) != cudaSuccess ||
            cudaStreamCreateWithFlags(&scratch.stream, cudaStreamNonBlocking) != cudaSuccess ||
            cudaMemsetAsync(scratch.mem, 0, q + 2 * kv + o, scratch.stream) != cudaSuccess ||
            fe::detail::set_stream(on, scratch.stream) != CUDNN_STATUS_SUCCESS) {
            trace_point("cuda: cuDNN attention not tuned (no memory or stream for the timing runs)");
            return false;
        }
        char* mem = scratch.mem;
        std::unordered_map<int64_t, void*> pack = {{kQ, mem}, {kK, mem + q}, {kV, mem + q + kv}, {kO, mem + q + 2 * kv}};
        auto status = graph.autotune(on, pack, mem + q + 2 * kv + o);
        if (!status.is_good()) {
            trace_point(("cuda: cuDNN attention not tuned (" + status.get_message() + ")").c_str());
            return false;
        }
        return true;
    }

    // The graph of out [B, H, N, dh] = SDPA(q, k, v) over the heads
    // interleaved along each token's row (strides: item, head, token, 1).
    Plan build_plan(const AttentionArgs& a, DType t, float scale, cudnnHandle_t on, bool tune_now) {
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
        auto status = graph->validate();
        if (status.is_good()) status = graph->build_operation_graph(on);
        using Modes = std::vector<fe::HeurMode_t>;
        if (status.is_good())
            status = graph->create_execution_plans(tune_now ? Modes{fe::HeurMode_t::A, fe::HeurMode_t::B,
                                                                    fe::HeurMode_t::FALLBACK}
                                                            : Modes{fe::HeurMode_t::A});
        // Tuning must not pick a plan that run() would then leave to our kernel.
        if (status.is_good() && tune_now) graph->deselect_workspace_greater_than(int64_t(kWorkspaceReserve));
        if (status.is_good()) status = graph->check_support();
        if (status.is_good())
            status = graph->build_plans(tune_now ? fe::BuildPlanPolicy_t::ALL
                                                 : fe::BuildPlanPolicy_t::HEURISTICS_CHOICE);
        if (status.is_good() && tune_now) plan.tuned = autotune(*graph, a, on);
        if (status.is_good()) status = graph->get_workspace_size(plan.workspace);
        if (!status.is_good()) {
            trace_point(("cuda: cuDNN has no attention plan for a shape (" + status.get_message() +
                         "): our kernel runs it")
                            .c_str());
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
        // The frontend opens a libcudart of its own for a few calls and
        // prefers libcudart.so.12 where several are installed: ours instead.
        setenv("CUDNN_FRONTEND_CUDART_LIB_NAME", ("libcudart.so." + std::to_string(CUDART_VERSION / 1000)).c_str(),
               0);
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
        const cudnnStatus_t status = fe::detail::create_handle(&impl_->handle);
        if (status != CUDNN_STATUS_SUCCESS) {
            impl_->handle = nullptr;
            impl_->reason = std::string("cudnnCreate failed (") + fe::detail::get_error_string(status) + ")";
        } else {
            impl_->describe_libraries_and_gpu();
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
int64_t CudnnAttention::plans_read() const { return impl_->plans_read; }

bool CudnnAttention::run(const Ctx& ctx, const AttentionArgs& a, float scale) {
    const DType t = ctx.gemm;
    // Taken or not on the shape alone, so that dry runs (no plans made: they
    // cost host time) reserve the same arena memory as real ones; a shape
    // cuDNN then declines falls to our fused kernel, which takes no memory.
    // Only where the fallback is our fused kernel (the cuBLAS path takes
    // arena memory a dry run that went to cuDNN did not reserve), and only
    // the 16-byte aligned operands the frontend assumes (dry-run pointers
    // have the real runs' offsets, so the decision is the same).
    const auto aligned16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    const bool aligned = aligned16(a.q) && aligned16(a.k) && aligned16(a.v) && aligned16(a.out) && a.ldq % 8 == 0 &&
                         a.ldkv % 8 == 0 && a.ldo % 8 == 0;
    if (!impl_->handle || (t != DType::F16 && t != DType::BF16) || !ctx.fused_attention ||
        !fused_attention_supported(a.dh) || !aligned)
        return false;
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
            // Never tuned here (make_and_save_plan says why): prepare() and the warm-up tune.
            plan = impl_->make_plan(a, t, scale, impl_->handle, false);
        } catch (const std::exception&) {  // a frontend exception: the shape is ours
            plan = Impl::Plan{};
        }
        it = impl_->plans.emplace(key, std::move(plan)).first;
    }
    Impl::Plan& plan = it->second;
    if (plan.graph && plan.workspace > int64_t(kWorkspaceReserve)) {
        trace_point("cuda: a cuDNN attention plan wants more workspace than reserved: our kernel runs it");
        plan.graph.reset();  // (said once)
    }
    if (!plan.graph) return false;
    std::unordered_map<fe::graph::Tensor_attributes::uid_t, void*> pack = {
        {kQ, const_cast<void*>(a.q)}, {kK, const_cast<void*>(a.k)}, {kV, const_cast<void*>(a.v)}, {kO, a.out}};
    cudnnHandle_t on = plan.own ? plan.own : impl_->handle;
    try {  // the frontend throws where an entry point is missing: an Error, for the graph capture's fallback
        const cudnnStatus_t set = fe::detail::set_stream(on, ctx.stream);
        if (set != CUDNN_STATUS_SUCCESS)
            throw Error(std::string("cuDNN attention: cannot set the stream (") + fe::detail::get_error_string(set) +
                        ")");
        auto status = plan.graph->execute(on, pack, workspace);
        if (!status.is_good()) throw Error("cuDNN attention failed: " + status.get_message());
    } catch (const Error&) {
        throw;
    } catch (const std::exception& e) {
        throw Error(std::string("cuDNN attention failed: ") + e.what());
    }
    impl_->runs++;
    return true;
}

void CudnnAttention::prepare(int64_t batch) {
    if (!impl_->handle || impl_->wanted.empty()) return;
    // This size's shapes leave `wanted`; other sizes' stay for their own
    // prepare() (a graph captured later, at a short batch's size).
    std::vector<std::pair<PlanKey, AttentionArgs>> jobs;
    for (auto it = impl_->wanted.begin(); it != impl_->wanted.end();) {
        if (it->second.B != batch) {
            ++it;
            continue;
        }
        if (!impl_->plans.count(it->first)) jobs.emplace_back(*it);  // (run() may have planned it since)
        it = impl_->wanted.erase(it);
    }
    if (jobs.empty()) return;
    // Plans stored by an earlier process first, one after the other on the
    // main handle (Impl::load_plan says why not in parallel).
    auto describe = [&](const std::pair<PlanKey, AttentionArgs>& job) {
        return impl_->describe(job.second, DType(std::get<0>(job.first)), std::get<9>(job.first), impl_->tune);
    };
    std::vector<std::pair<PlanKey, AttentionArgs>> missing;
    for (const auto& job : jobs) {
        Impl::Plan plan = impl_->load_stored(job.second, DType(std::get<0>(job.first)), std::get<9>(job.first),
                                             impl_->handle);
        if (plan.graph)
            impl_->plans.emplace(job.first, std::move(plan));
        else
            missing.push_back(job);
    }
    jobs.swap(missing);
    if (jobs.empty()) {
        trace_point("cuda: cuDNN attention plans read");
        return;
    }
    std::vector<Impl::Plan> built(jobs.size());
    // Each plan on a thread and a handle of its own (cuDNN is thread-safe
    // across handles); it then runs on that handle.
    // tried[i]: cuDNN answered for the shape (a plan, or declined: our
    // kernel then runs it); otherwise run() plans it on the main handle.
    std::vector<char> tried(jobs.size(), 0);
    auto make = [&](size_t i, bool worker) {
        cudnnHandle_t own = nullptr;
        try {
            if (cudaSetDevice(impl_->device) != cudaSuccess || fe::detail::create_handle(&own) != CUDNN_STATUS_SUCCESS) {
                own = nullptr;
                if (worker) cudaGetLastError();  // (the error of this thread only)
                return;
            }
            const PlanKey& key = jobs[i].first;
            built[i] = impl_->make_and_save_plan(jobs[i].second, DType(std::get<0>(key)), std::get<9>(key), own,
                                                 describe(jobs[i]), true);
            tried[i] = 1;
            if (built[i].graph) built[i].own = std::exchange(own, nullptr);
        } catch (const std::exception&) {  // left to run()'s own planning
            built[i] = Impl::Plan{};
        }
        try {
            if (own) fe::detail::destroy_handle(own);
        } catch (const std::exception&) {
        }
    };
    std::vector<std::thread> threads;
    for (size_t i = 1; i < jobs.size(); i++) {
        try {
            threads.emplace_back(make, i, true);
        } catch (const std::system_error&) {
            make(i, false);
        }
    }
    make(0, false);
    for (std::thread& t : threads) t.join();
    for (size_t i = 0; i < jobs.size(); i++)
        if (tried[i]) impl_->plans.emplace(jobs[i].first, std::move(built[i]));
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
        // A stored plan is read without its warm-up capture (main-thread
        // work runs meanwhile); a missing one is made and stored.
        const float scale = float(1.0 / std::sqrt(48.0));
        if (!cudnn.impl_->load_stored(a, t, scale, cudnn.impl_->handle, false).graph)
            cudnn.impl_->make_and_save_plan(a, t, scale, cudnn.impl_->handle,
                                            cudnn.impl_->describe(a, t, scale, cudnn.impl_->tune), true);
    } catch (const std::exception&) {
    }
}

#endif

bool cudnn_attention_chosen() {
    const std::string choice = env_string("FASTDEMUCS_ATTENTION");
    return cudnn_attention_built() && (choice.empty() || choice == "auto" || choice == "cudnn");
}

#ifndef FASTDEMUCS_WITH_CUDNN_FRONTEND  // no frontend headers in this build

struct CudnnAttention::Impl {
    std::string reason = "built without cuDNN (FASTDEMUCS_CUDNN off)";
};

CudnnAttention::CudnnAttention(int) : impl_(std::make_unique<Impl>()) {}
CudnnAttention::~CudnnAttention() = default;
bool CudnnAttention::available() const { return false; }
const std::string& CudnnAttention::reason() const { return impl_->reason; }
int64_t CudnnAttention::runs() const { return 0; }
int64_t CudnnAttention::plans_read() const { return 0; }
bool CudnnAttention::run(const Ctx&, const AttentionArgs&, float) { return false; }
void CudnnAttention::prepare(int64_t) {}
bool cudnn_attention_built() { return false; }
void warm_up_cudnn_attention(int, DType) {}

#endif

}  // namespace fastdemucs::cuda
