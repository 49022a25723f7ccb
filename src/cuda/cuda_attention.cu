// The CUDA engine: checks shapes, plans chunks and segments, launches the segment kernels and
// the float64 segment scans in the order of attention.hpp's contract (see cuda_attention.hpp).
#include "racesp/cuda_attention.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>

#include "cuda_check.hpp"
#include "device_buffer.hpp"
#include "racesp/errors.hpp"
#include "segment_kernel.cuh"
#include "segment_plan.hpp"
#include "stream_causal.cuh"
#include "stream_causal_backward.cuh"
#include "stream_causal_totals.cuh"
#include "stream_noncausal.cuh"
#include "state_scan.hpp"

namespace racesp::cuda {

std::size_t dtype_size(DType t) { return t == DType::f32 ? 4 : 2; }

const char* to_string(DType t) {
    switch (t) {
        case DType::f32: return "fp32";
        case DType::bf16: return "bf16";
        case DType::f16: return "fp16";
    }
    return "?";
}

DType parse_dtype(const char* name) {
    const std::string s(name);
    if (s == "fp32" || s == "float32") return DType::f32;
    if (s == "bf16" || s == "bfloat16") return DType::bf16;
    if (s == "fp16" || s == "float16") return DType::f16;
    throw ConfigError("unknown dtype '" + s + "' (fp32, bf16 or fp16)");
}

int device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky "no device" error
        return 0;
    }
    return n;
}

// ---- DeviceState ----

DeviceState::DeviceState(std::int64_t batch, std::int64_t heads, std::int64_t features, std::int64_t dim)
    : batch_(batch), heads_(heads), features_(features), dim_(dim) {
    if (size() > 0) CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&data_), size() * sizeof(double)));
}
DeviceState::~DeviceState() {
    if (data_) cudaFree(data_);
}
DeviceState::DeviceState(DeviceState&& o) noexcept { *this = std::move(o); }
DeviceState& DeviceState::operator=(DeviceState&& o) noexcept {
    if (this != &o) {
        if (data_) cudaFree(data_);
        batch_ = o.batch_, heads_ = o.heads_, features_ = o.features_, dim_ = o.dim_, data_ = o.data_;
        o.data_ = nullptr;
        o.batch_ = o.heads_ = o.features_ = o.dim_ = 0;
    }
    return *this;
}
void DeviceState::zero(cudaStream_t stream) {
    if (size() > 0) CUDA_CHECK(cudaMemsetAsync(data_, 0, size() * sizeof(double), stream));
}

// ---- Engine ----

struct Engine::Impl {
    AttentionConfig config;
    EngineOptions options;
    std::int64_t heads = 0, dim = 0;
    int chunk = 0;
    int multiprocessors = 1;
    cudaStream_t stream = nullptr;
    DeviceBuffer<float> planes;
    DeviceBuffer<float> seg_s, seg_u;     // per-segment forward / backward states
    DeviceBuffer<float> glob_s, glob_u;   // non-causal: the one global state, float32
    DeviceBuffer<float> end_s;            // causal: the forward state after the shard, float32
    DeviceBuffer<float> inv_den;          // causal, kept by forward_step: 1 / each query's normaliser (v50)
    DeviceBuffer<double> dbeta_part, dbeta_sum;

    Dims dims(const Shape& s, DType dtype) const {
        Dims d{};
        d.T = static_cast<int>(s.tokens);
        d.H = static_cast<int>(s.heads);
        d.D = static_cast<int>(s.dim);
        d.W = d.D + 1;
        d.L = config.tables;
        d.P = config.planes;
        d.R = 1 << d.P;
        d.M = d.L * d.R;
        d.LP = d.L * d.P;
        d.C = chunk;
        // Causal bucket gradients are sensitive to the in-segment subtraction of the backward
        // state (large 1/(A+eps) terms): segments of at most 4 chunks there.
        const bool short_segments = config.causal && config.normalization == Normalization::bucket;
        const std::int64_t longest = chunk * (short_segments ? std::min(options.segment_chunks, 4) : options.segment_chunks);
        // v60: as long as that allows, but in whole waves of blocks (segment_plan.hpp).
        d.NS = static_cast<int>(balanced_segment_tokens(s.tokens, s.batch * s.heads, longest, multiprocessors,
                                                        std::gcd<std::int64_t>(longest, 128)));
        // NS is 0 while the constructor probes chunk sizes (chunk not chosen yet): no segments then.
        // (v6: the probe's division by zero was never executed while the compiler dropped the unused
        // nseg there; with the larger Dims it was kept and trapped, SIGFPE, on the device.)
        d.nseg = d.NS > 0 ? static_cast<int>((s.tokens + d.NS - 1) / d.NS) : 0;
        d.beta = static_cast<float>(config.beta);
        d.eps = static_cast<float>(config.eps);
        d.inv_tables = 1.0f / static_cast<float>(config.tables);
        d.causal = config.causal;
        d.bucket = config.normalization == Normalization::bucket;
        d.tc = dtype != DType::f32;
        d.Wg = d.tc ? (d.W + 15) / 16 * 16 : d.W;
        return d;
    }
    std::int64_t state_size() const { return static_cast<std::int64_t>(config.features()) * (dim + 1); }

    void check(const Shape& ref, const DeviceTensor& t, DType dtype, const char* name) const {
        if (!(t.shape == ref))
            throw ShapeError(std::string("cuda: ") + name + " has shape " + t.shape.str() + ", expected " + ref.str());
        if (t.dtype != dtype) throw ShapeError(std::string("cuda: ") + name + " has another dtype than q/k");
        if (t.data == nullptr && ref.elements() > 0) throw ShapeError(std::string("cuda: ") + name + " is null");
    }
    void check_base(const DeviceTensor& k) const {
        const Shape& s = k.shape;
        if (s.batch < 1 || s.heads < 1 || s.dim < 1 || s.tokens < 0)
            throw ShapeError("cuda: bad tensor shape " + s.str());
        if (s.heads != heads || s.dim != dim)
            throw ShapeError("cuda: tensor shape " + s.str() + " does not match the planes (heads " +
                             std::to_string(heads) + ", dim " + std::to_string(dim) + ")");
        if (s.tokens > (1LL << 31) - 1 - 4096) throw ShapeError("cuda: more than 2^31 tokens in one shard");
    }
    void check_state(const DeviceState& st, const Shape& s, const char* name) const {
        if (st.batch() != s.batch || st.heads() != s.heads || st.features() != config.features() ||
            st.dim() != s.dim)
            throw ShapeError(std::string("cuda: state ") + name + " does not match the tensors");
    }

    template <class T>
    void launch(Pass pass, Dims d, SegmentArgs<T> a, std::int64_t batch) {
        if (d.nseg == 0) return;
        dim3 grid(d.nseg, d.H, static_cast<unsigned>(batch));
        auto layout = [&] {
            a.d = d;
            a.lay = make_layout(d, pass);
            return a.lay.total * sizeof(float);
        };
        if constexpr (!std::is_same<T, float>::value) {
            // v9, v27: passes on warp tiles (stream_noncausal.cuh): the key totals (the same segment sums
            // for every mode), and for the non-causal kernel normalisation the forward and, with
            // v8's split, the query totals (with dq) and the keys' side.
            const bool sizes = stream_on && fixed_sizes && d.vec && d.P == 4 && d.L == 4 && (d.D == 128 || d.D == 64);
            const bool stream = sizes && (pass == Pass::key_state ||
                                          (!d.causal && !d.bucket && (pass == Pass::forward || a.split_dq)));
            if (stream) {
                a.d = d;
                if (d.D == 128) return launch_stream<T, 128>(pass, grid, a);
                return launch_stream<T, 64>(pass, grid, a);
            }
            // v10, v12: the causal forward and backward of the kernel normalisation on warp tiles
            // (stream_causal.cuh, stream_causal_backward.cuh).
            if (sizes && d.causal && !d.bucket && pass == Pass::backward) {
                a.d = d;
                if (d.D == 128) return launch_backward_sweep<T, 128>(grid, a);
                return launch_backward_sweep<T, 64>(grid, a);
            }
            if (sizes && d.causal && !d.bucket && pass == Pass::forward) {
                a.d = d;
                normalisers_written = a.inv_den != nullptr;
                if (d.D == 128) return launch_sweep<T, 128>(grid, a);
                return launch_sweep<T, 64>(grid, a);
            }
            // v14: the causal query totals from the forward's o (stream_causal_totals.cuh); v50: and
            // its normalisers, where the forward kept them.
            if (sizes && d.causal && !d.bucket && pass == Pass::query_state) {
                a.d = d;
                if (a.inv_den) {
                    if (d.D == 128) return launch_causal_totals<T, 128, true>(grid, a);
                    return launch_causal_totals<T, 64, true>(grid, a);
                }
                if (d.D == 128) return launch_causal_totals<T, 128, false>(grid, a);
                return launch_causal_totals<T, 64, false>(grid, a);
            }
            // v5: the common sizes as compile-time constants: P=4, L=4, chunk 32 and D=128 (the
            // benchmark's heads) or D=64 (the model's: width 512, 8 heads). v6: their layout has
            // room for the fused feature map's partial tiles (Dims::fused, as kernel_dims sets it).
            if (fixed_sizes && d.P == 4 && d.L == 4 && d.C == 32 && (d.D == 128 || d.D == 64)) {
                d.fused = true;
                const std::size_t bytes = layout();
                if (d.D == 128) return launch_sized<T, Fixed<128, 4, 4, 32>>(pass, grid, bytes, a);
                return launch_sized<T, Fixed<64, 4, 4, 32>>(pass, grid, bytes, a);
            }
        }
        d.fused = false;
        launch_sized<T, Runtime>(pass, grid, layout(), a);
    }
    template <class T, class F>
    void launch_sized(Pass pass, dim3 grid, std::size_t bytes, const SegmentArgs<T>& a) {
        switch (pass) {
            case Pass::key_state: go(segment_kernel<T, Pass::key_state, F>, grid, bytes, a); break;
            case Pass::forward: go(segment_kernel<T, Pass::forward, F>, grid, bytes, a); break;
            case Pass::query_state: go(segment_kernel<T, Pass::query_state, F>, grid, bytes, a); break;
            case Pass::backward: go(segment_kernel<T, Pass::backward, F>, grid, bytes, a); break;
        }
    }
    template <class T, int D>
    void launch_stream(Pass pass, dim3 grid, const SegmentArgs<T>& a) {
        const std::size_t bytes = NoncausalLayout<T, D>(pass).total;
        const int threads = NoncausalLayout<T, D>::kThreads;
        switch (pass) {
            case Pass::key_state: go(noncausal_kernel<T, D, Pass::key_state>, grid, bytes, a, threads); break;
            case Pass::forward: go(noncausal_kernel<T, D, Pass::forward>, grid, bytes, a, threads); break;
            case Pass::query_state: go(noncausal_kernel<T, D, Pass::query_state>, grid, bytes, a, threads); break;
            case Pass::backward: go(noncausal_kernel<T, D, Pass::backward>, grid, bytes, a, threads); break;
        }
    }
    template <class T, int D>
    void launch_sweep(dim3 grid, const SegmentArgs<T>& a) {
        using Lay = CausalLayout<T, D>;
        go(causal_sweep_kernel<T, D>, grid, Lay().total, a, Lay::kThreads);
    }
    template <class T, int D, bool kKeptNormalisers>
    void launch_causal_totals(dim3 grid, const SegmentArgs<T>& a) {
        using Lay = CausalTotalsLayout<T, D>;
        go(causal_totals_kernel<T, D, kKeptNormalisers>, grid, Lay().total, a, Lay::kThreads);
    }
    template <class T, int D>
    void launch_backward_sweep(dim3 grid, const SegmentArgs<T>& a) {
        using Lay = CausalBackwardLayout<T, D>;
        go(causal_backward_kernel<T, D>, grid, Lay().total, a, Lay::kThreads);
    }
    template <class K, class A>
    void go(K kernel, dim3 grid, std::size_t bytes, const A& a, int threads = kBlockThreads) {
        CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
        kernel<<<grid, threads, bytes, stream>>>(a);
        CUDA_CHECK_LAUNCH(segment_kernel);
    }

    // Launch a pass on tensors of any supported dtype.
    struct Tensors {
        const DeviceTensor *q = nullptr, *k = nullptr, *v = nullptr, *dout = nullptr;
        const DeviceTensor *o = nullptr, *dq = nullptr, *dk = nullptr, *dv = nullptr;
    };
    template <class T>
    static T* ptr(const DeviceTensor* t) { return t ? static_cast<T*>(t->data) : nullptr; }
    // v4 row path (16-byte vectors fetched one chunk ahead) when D, the chunk and every tensor's
    // address allow; RACESP_CUDA_VEC=0 turns it off (the element-wise path of v3, for comparisons).
    bool vec_rows = true;
    // v5 kernels with compile-time sizes for the common configuration; RACESP_CUDA_FIXED=0 turns
    // them off (every size a run-time value, the v4 kernels, for comparisons).
    bool fixed_sizes = true;
    // v8: a non-causal backward_step computes dq in the query totals pass; RACESP_CUDA_SPLIT_DQ=0
    // turns it off (the v7 passes, for comparisons).
    bool split_dq_on = true;
    // v9: the warp-tile kernels for the non-causal passes they cover; RACESP_CUDA_STREAM=0 turns
    // them off (the v8 segment kernels, for comparisons).
    bool stream_on = true;
    template <class T>
    bool vec_ok(const Dims& d, const Tensors& t) const {
        if (!vec_rows || d.D % VecTraits<T>::EPV != 0 || d.C * d.D > kVecChunkElems) return false;
        for (const DeviceTensor* x : {t.q, t.k, t.v, t.dout, t.o, t.dq, t.dk, t.dv})
            if (x && reinterpret_cast<std::uintptr_t>(x->data) % 16 != 0) return false;
        return true;
    }
    template <class T>
    void run_typed(Pass pass, const Dims& d0, const Tensors& t, std::int64_t batch, float* seg_out,
                   const float* s_start, long long s_stride, const float* u_start, long long u_stride) {
        Dims d = d0;
        d.vec = vec_ok<T>(d, t);
        SegmentArgs<T> a{};
        a.planes = planes.data();
        a.q = ptr<T>(t.q);
        a.k = ptr<T>(t.k);
        a.v = ptr<T>(t.v);
        a.dout = ptr<T>(t.dout);
        a.o = ptr<T>(t.o);
        a.dq = ptr<T>(t.dq);
        a.dk = ptr<T>(t.dk);
        a.dv = ptr<T>(t.dv);
        a.seg_out = seg_out;
        a.s_start = s_start;
        a.s_seg_stride = s_stride;
        a.u_start = u_start;
        a.u_seg_stride = u_stride;
        a.u_end = u_end;
        a.s_end = end_s.data();
        a.dbeta_part = dbeta_part.data();
        a.split_dq = split_dq != nullptr;
        a.inv_den = normalisers;
        launch<T>(pass, d, a, batch);
    }
    const float* u_end = nullptr;  // set by backward for the causal pass
    // Key totals kept by forward_step for a backward_step over the same k and v: kept_s is the
    // combined state; when causal, seg_s still holds every segment's start state.
    struct KeptKeys {
        bool valid = false;
        const void* k = nullptr;  // null for an empty shard, so `valid` says whether anything is kept
        const void* v = nullptr;
        Shape shape;
        DType dtype = DType::f32;
        // v50: inv_den holds the causal forward's normalisers for these q and o.
        const void* q = nullptr;
        const void* o = nullptr;
        bool normalisers = false;
        bool matches(const DeviceTensor& k2, const DeviceTensor& v2) const {
            return valid && k == k2.data && v == v2.data && shape == k2.shape && dtype == k2.dtype;
        }
    } kept;
    DeviceState kept_s;
    // Set only inside forward_step / backward_step: seg_s already holds the forward start state of
    // every segment, seg_u the backward one (causal), for the tensors of this step.
    bool starts_ready = false, u_starts_ready = false;
    // Set only inside a non-causal backward_step (v8): the query totals pass also writes dq here
    // (and the queries' part of dbeta), and the backward pass computes only the keys' side.
    const DeviceTensor* split_dq = nullptr;
    // Set only inside forward_step(KeyTotals::keep), for the causal forward to write 1 / den into
    // (normalisers_written says whether its kernel did: v10 only), and inside a backward_step
    // reusing them, for the causal query totals to read (v50).
    float* normalisers = nullptr;
    bool normalisers_written = false;
    struct ReadyGuard {
        Impl& m;
        ~ReadyGuard() {
            m.starts_ready = m.u_starts_ready = false;
            m.split_dq = nullptr;
            m.normalisers = nullptr;
        }
    };
    void run(Pass pass, DType dtype, const Dims& d, const Tensors& t, std::int64_t batch, float* seg_out,
             const float* s_start, long long s_stride, const float* u_start = nullptr, long long u_stride = 0) {
        switch (dtype) {
            case DType::f32: run_typed<float>(pass, d, t, batch, seg_out, s_start, s_stride, u_start, u_stride); break;
            case DType::bf16: run_typed<__nv_bfloat16>(pass, d, t, batch, seg_out, s_start, s_stride, u_start, u_stride); break;
            case DType::f16: run_typed<__half>(pass, d, t, batch, seg_out, s_start, s_stride, u_start, u_stride); break;
        }
    }

    // The forward state at every segment's start: returns (pointer, stride between segments).
    std::pair<const float*, long long> forward_starts(const DeviceTensor& k, const DeviceTensor& v,
                                                      const DeviceState& incoming) {
        const Shape& s = k.shape;
        const Dims d = dims(s, k.dtype);
        const std::int64_t seqs = s.batch * s.heads;
        if (!config.causal) {
            glob_s.reserve(seqs * state_size());
            state_to_float(incoming.data(), glob_s.data(), seqs * state_size(), stream);
            return {glob_s.data(), 0};
        }
        if (starts_ready) return {seg_s.data(), state_size()};
        kept = {};  // seg_s is about to change
        seg_s.reserve(std::max<std::int64_t>(1, seqs * d.nseg * state_size()));
        Tensors t;
        t.k = &k;
        t.v = &v;
        run(Pass::key_state, k.dtype, d, t, s.batch, seg_s.data(), nullptr, 0);
        scan_key_totals(incoming, seqs, d.nseg);
        return {seg_s.data(), state_size()};
    }
    // Causal: seg_s's key totals become every segment's start state, and end_s gets the state
    // after the shard (v12's backward walks each segment from its end).
    void scan_key_totals(const DeviceState& incoming, std::int64_t seqs, int nseg) {
        end_s.reserve(seqs * state_size());
        exclusive_scan_segments(seg_s.data(), incoming.data(), seqs, nseg, state_size(), stream, end_s.data());
    }
};

Engine::Engine(const AttentionConfig& config, const Planes& planes, EngineOptions options)
    : impl_(std::make_unique<Impl>()) {
    config.validate();
    Impl& m = *impl_;
    m.config = config;
    m.options = options;
    if (const char* v = std::getenv("RACESP_CUDA_VEC")) m.vec_rows = std::strcmp(v, "0") != 0;
    if (const char* v = std::getenv("RACESP_CUDA_FIXED")) m.fixed_sizes = std::strcmp(v, "0") != 0;
    if (const char* v = std::getenv("RACESP_CUDA_SPLIT_DQ")) m.split_dq_on = std::strcmp(v, "0") != 0;
    if (const char* v = std::getenv("RACESP_CUDA_STREAM")) m.stream_on = std::strcmp(v, "0") != 0;
    m.heads = planes.heads();
    m.dim = planes.dim();
    if (planes.tables() != config.tables || planes.planes_per_table() != config.planes)
        throw ConfigError("cuda: planes do not match the configuration");
    if (options.segment_chunks < 1) throw ConfigError("cuda: segment_chunks must be at least 1");
    if (options.device >= 0) CUDA_CHECK(cudaSetDevice(options.device));
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    int smem_limit = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&smem_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&m.multiprocessors, cudaDevAttrMultiProcessorCount, dev));

    // The largest chunk whose backward tiles fit in one block's shared memory.
    // (The tensor-core layout of bf16/fp16 inputs is the larger one.)
    Dims probe = m.dims(Shape{1, 0, m.heads, m.dim}, DType::bf16);
    const int candidates[] = {32, 16, 8};
    for (int c : candidates) {
        if (options.chunk > 0 && c != options.chunk) continue;
        probe.C = c;
        if (make_layout(probe, Pass::backward).total * sizeof(float) <= static_cast<std::size_t>(smem_limit)) {
            m.chunk = c;
            break;
        }
    }
    if (options.chunk > 0 && m.chunk == 0 && options.chunk != 32 && options.chunk != 16 && options.chunk != 8)
        throw ConfigError("cuda: chunk must be 8, 16 or 32");
    if (m.chunk == 0) {
        probe.C = options.chunk > 0 ? options.chunk : 8;
        throw ConfigError("cuda: a state of M=" + std::to_string(config.features()) + " features x D+1=" +
                          std::to_string(m.dim + 1) + " needs " +
                          std::to_string(make_layout(probe, Pass::backward).total * 4 / 1024) +
                          " KiB of shared memory per block, more than the device's " +
                          std::to_string(smem_limit / 1024) + " KiB: use fewer tables or planes, or --device cpu");
    }
    CUDA_CHECK(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking));
    const auto& values = planes.values();
    m.planes.reserve(values.size());
    // On the engine's stream: a plain cudaMemcpy from pageable memory may return before the data
    // lands, and the legacy default stream does not order the non-blocking stream's kernels.
    CUDA_CHECK(cudaMemcpyAsync(m.planes.data(), values.data(), values.size() * sizeof(float), cudaMemcpyHostToDevice,
                               m.stream));
    m.dbeta_sum.reserve(1);
}

Engine::~Engine() {
    if (impl_ && impl_->stream) {
        cudaStreamSynchronize(impl_->stream);
        cudaStreamDestroy(impl_->stream);
    }
}

cudaStream_t Engine::stream() const { return impl_->stream; }
const AttentionConfig& Engine::config() const { return impl_->config; }
int Engine::chunk() const { return impl_->chunk; }

DeviceState Engine::make_state(const Shape& shape) const {
    DeviceState s(shape.batch, shape.heads, impl_->config.features(), shape.dim);
    s.zero(impl_->stream);
    return s;
}

std::size_t Engine::workspace_bytes(const Shape& shape) const {
    const Dims d = impl_->dims(shape, DType::f32);
    const std::size_t seqs = shape.batch * shape.heads, st = impl_->state_size();
    return 4 * (2 * seqs * d.nseg * st + 2 * seqs * st) + 8 * (seqs * d.nseg + 1);
}

void Engine::key_state(const DeviceTensor& k, const DeviceTensor& v, DeviceState& out) {
    Impl& m = *impl_;
    m.check_base(k);
    m.check(k.shape, v, k.dtype, "v");
    m.check_state(out, k.shape, "out");
    const Dims d = m.dims(k.shape, k.dtype);
    const std::int64_t seqs = k.shape.batch * k.shape.heads;
    m.kept = {};  // seg_s is about to change
    m.seg_s.reserve(std::max<std::int64_t>(1, seqs * d.nseg * m.state_size()));
    Impl::Tensors t;
    t.k = &k;
    t.v = &v;
    m.run(Pass::key_state, k.dtype, d, t, k.shape.batch, m.seg_s.data(), nullptr, 0);
    sum_segments(m.seg_s.data(), out.data(), seqs, d.nseg, m.state_size(), m.stream);
}

void Engine::forward(const DeviceTensor& q, const DeviceTensor& k, const DeviceTensor& v,
                     const DeviceState& incoming, const DeviceTensor& o) {
    Impl& m = *impl_;
    m.check_base(k);
    m.check(k.shape, q, k.dtype, "q");
    m.check(k.shape, v, k.dtype, "v");
    m.check(k.shape, o, k.dtype, "o");
    m.check_state(incoming, k.shape, "incoming");
    const Dims d = m.dims(k.shape, k.dtype);
    const auto [s_start, s_stride] = m.forward_starts(k, v, incoming);
    Impl::Tensors t;
    t.q = &q;
    t.k = &k;
    t.v = &v;
    t.o = &o;
    m.run(Pass::forward, k.dtype, d, t, k.shape.batch, nullptr, s_start, s_stride);
}

void Engine::query_state(const DeviceTensor& q, const DeviceTensor& k, const DeviceTensor& v,
                         const DeviceTensor& o, const DeviceTensor& dout, const DeviceState& incoming,
                         DeviceState& out) {
    Impl& m = *impl_;
    m.check_base(k);
    m.check(k.shape, q, k.dtype, "q");
    m.check(k.shape, v, k.dtype, "v");
    m.check(k.shape, o, k.dtype, "o");
    m.check(k.shape, dout, k.dtype, "dout");
    m.check_state(incoming, k.shape, "incoming");
    m.check_state(out, k.shape, "out");
    const Dims d = m.dims(k.shape, k.dtype);
    const std::int64_t seqs = k.shape.batch * k.shape.heads;
    const auto [s_start, s_stride] = m.forward_starts(k, v, incoming);
    m.seg_u.reserve(std::max<std::int64_t>(1, seqs * d.nseg * m.state_size()));
    Impl::Tensors t;
    t.q = &q;
    t.k = &k;
    t.v = &v;
    t.o = &o;
    t.dout = &dout;
    if (m.split_dq) {
        m.check(k.shape, *m.split_dq, k.dtype, "dq");
        t.dq = m.split_dq;
        m.dbeta_part.reserve(seqs * d.nseg);
    }
    m.run(Pass::query_state, k.dtype, d, t, k.shape.batch, m.seg_u.data(), s_start, s_stride);
    sum_segments(m.seg_u.data(), out.data(), seqs, d.nseg, m.state_size(), m.stream);
}

double Engine::backward(const DeviceTensor& q, const DeviceTensor& k, const DeviceTensor& v,
                        const DeviceTensor& o, const DeviceTensor& dout, const DeviceState& incoming,
                        const DeviceState& incoming_backward, const DeviceTensor& dq,
                        const DeviceTensor& dk, const DeviceTensor& dv) {
    Impl& m = *impl_;
    m.check_base(k);
    m.check(k.shape, q, k.dtype, "q");
    m.check(k.shape, v, k.dtype, "v");
    m.check(k.shape, o, k.dtype, "o");
    m.check(k.shape, dout, k.dtype, "dout");
    m.check(k.shape, dq, k.dtype, "dq");
    m.check(k.shape, dk, k.dtype, "dk");
    m.check(k.shape, dv, k.dtype, "dv");
    m.check_state(incoming, k.shape, "incoming");
    m.check_state(incoming_backward, k.shape, "incoming_backward");
    const Dims d = m.dims(k.shape, k.dtype);
    const std::int64_t seqs = k.shape.batch * k.shape.heads;
    if (d.nseg == 0) return 0.0;
    const auto [s_start, s_stride] = m.forward_starts(k, v, incoming);
    Impl::Tensors t;
    t.q = &q;
    t.k = &k;
    t.v = &v;
    t.o = &o;
    t.dout = &dout;
    const float* u_start;
    long long u_stride;
    if (m.config.causal) {
        // Backward state at each segment's start: everything from the segment on, plus later shards.
        if (!m.u_starts_ready) {
            m.seg_u.reserve(seqs * d.nseg * m.state_size());
            m.run(Pass::query_state, k.dtype, d, t, k.shape.batch, m.seg_u.data(), s_start, s_stride);
            reverse_inclusive_scan_segments(m.seg_u.data(), incoming_backward.data(), seqs, d.nseg,
                                            m.state_size(), m.stream);
        }
        m.glob_u.reserve(seqs * m.state_size());
        state_to_float(incoming_backward.data(), m.glob_u.data(), seqs * m.state_size(), m.stream);
        m.u_end = m.glob_u.data();
        u_start = m.seg_u.data();
        u_stride = m.state_size();
    } else {
        m.glob_u.reserve(seqs * m.state_size());
        state_to_float(incoming_backward.data(), m.glob_u.data(), seqs * m.state_size(), m.stream);
        u_start = m.glob_u.data();
        u_stride = 0;
    }
    m.dbeta_part.reserve(seqs * d.nseg);
    t.dq = &dq;
    t.dk = &dk;
    t.dv = &dv;
    m.run(Pass::backward, k.dtype, d, t, k.shape.batch, nullptr, s_start, s_stride, u_start, u_stride);
    sum_doubles(m.dbeta_part.data(), m.dbeta_sum.data(), seqs * d.nseg, m.stream);
    double dbeta = 0.0;
    CUDA_CHECK(cudaMemcpyAsync(&dbeta, m.dbeta_sum.data(), sizeof(double), cudaMemcpyDeviceToHost, m.stream));
    CUDA_CHECK(cudaStreamSynchronize(m.stream));
    return dbeta;
}

void Engine::forward_step(const DeviceTensor& q, const DeviceTensor& k, const DeviceTensor& v,
                          const DeviceTensor& o, const StateCollective& combine_keys, KeyTotals key_totals) {
    Impl& m = *impl_;
    Impl::ReadyGuard guard{m};
    DeviceState s = make_state(k.shape);
    key_state(k, v, s);  // seg_s: the key totals of every segment
    combine_keys(s);
    if (m.config.causal && k.shape.tokens > 0) {
        const Dims d = m.dims(k.shape, k.dtype);
        m.scan_key_totals(s, k.shape.batch * k.shape.heads, d.nseg);
        m.starts_ready = true;
    }
    m.normalisers_written = false;
    if (key_totals == KeyTotals::keep && m.config.causal) {
        m.inv_den.reserve(std::max<std::int64_t>(1, k.shape.batch * k.shape.heads * k.shape.tokens));
        m.normalisers = m.inv_den.data();
    }
    forward(q, k, v, s, o);
    CUDA_CHECK(cudaStreamSynchronize(m.stream));  // s is freed on return, unless kept
    if (key_totals == KeyTotals::keep) {
        m.kept_s = std::move(s);
        m.kept = {true, k.data, v.data, k.shape, k.dtype, q.data, o.data, m.normalisers_written};
    }
}

double Engine::backward_step(const DeviceTensor& q, const DeviceTensor& k, const DeviceTensor& v,
                             const DeviceTensor& o, const DeviceTensor& dout, const DeviceTensor& dq,
                             const DeviceTensor& dk, const DeviceTensor& dv, const StateCollective& combine_keys,
                             const StateCollective& combine_queries, KeyTotals key_totals) {
    Impl& m = *impl_;
    Impl::ReadyGuard guard{m};
    const bool causal = m.config.causal && k.shape.tokens > 0;
    const Dims d = m.dims(k.shape, k.dtype);
    const std::int64_t seqs = k.shape.batch * k.shape.heads;
    DeviceState s;
    if (key_totals == KeyTotals::reuse) {
        // An error rather than a silent recomputation: that would call combine_keys on this rank
        // only, and the ranks' collectives would no longer pair up.
        if (!m.kept.matches(k, v))
            throw Error("backward_step: KeyTotals::reuse without a forward_step(KeyTotals::keep) over the same k "
                        "and v just before");
        s = std::move(m.kept_s);  // and seg_s holds the segment starts (causal)
        if (m.kept.normalisers && m.kept.q == q.data && m.kept.o == o.data) m.normalisers = m.inv_den.data();
    } else {
        s = make_state(k.shape);
        key_state(k, v, s);
        combine_keys(s);
        if (causal) m.scan_key_totals(s, seqs, d.nseg);
    }
    m.kept = {};  // taken, or no longer matching
    m.starts_ready = causal;
    if (!m.config.causal && m.split_dq_on) m.split_dq = &dq;  // v8: dq from the query totals pass
    DeviceState u = make_state(k.shape);
    query_state(q, k, v, o, dout, s, u);  // seg_u: the query totals of every segment
    combine_queries(u);
    if (causal) {
        reverse_inclusive_scan_segments(m.seg_u.data(), u.data(), seqs, d.nseg, m.state_size(), m.stream);
        m.u_starts_ready = true;
    }
    return backward(q, k, v, o, dout, s, u, dq, dk, dv);
}

void Engine::attention_forward(const DeviceTensor& q, const DeviceTensor& k, const DeviceTensor& v,
                               const DeviceTensor& o) {
    // One process: the sum over other shards is nothing (zeros for the causal scans).
    const bool causal = impl_->config.causal;
    cudaStream_t st = impl_->stream;
    forward_step(q, k, v, o, [&](DeviceState& x) { if (causal) x.zero(st); });
}

double Engine::attention_backward(const DeviceTensor& q, const DeviceTensor& k, const DeviceTensor& v,
                                  const DeviceTensor& o, const DeviceTensor& dout, const DeviceTensor& dq,
                                  const DeviceTensor& dk, const DeviceTensor& dv) {
    const bool causal = impl_->config.causal;
    cudaStream_t st = impl_->stream;
    auto local = [&](DeviceState& x) { if (causal) x.zero(st); };
    return backward_step(q, k, v, o, dout, dq, dk, dv, local, local);
}

}  // namespace racesp::cuda
