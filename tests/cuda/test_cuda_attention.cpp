// The CUDA engine against the float64 reference (reference64.hpp), against the CPU engine, and
// sharded through the incoming-state API on one device.
#include <gtest/gtest.h>

#include <cstdlib>
#include <sstream>

#include "gpu_test_util.hpp"
#include "racesp/attention.hpp"
#include "racesp/cuda_attention.hpp"
#include "racesp/errors.hpp"
#include "racesp/planes.hpp"
#include "reference64.hpp"

namespace racesp {
namespace {

using cuda::DType;
using testgpu::GpuTensor;
using testgpu::rel_error;

struct Case {
    std::int64_t D;
    int P, L;
    bool causal, bucket;
    DType dtype;
    std::int64_t T = 203;  // not a multiple of any chunk
    int chunk = 0, segment_chunks = 32;
    std::int64_t B = 2, H = 2;
};

std::string name(const Case& c) {
    std::ostringstream s;
    s << "D" << c.D << "_P" << c.P << "_L" << c.L << (c.causal ? "_causal" : "_full")
      << (c.bucket ? "_bucket" : "_kernel") << "_" << cuda::to_string(c.dtype) << "_T" << c.T << "_C" << c.chunk
      << "x" << c.segment_chunks;
    return s.str();
}

// GoogleTest prints parameters with this (ctest lists them), instead of their raw bytes.
void PrintTo(const Case& c, std::ostream* os) { *os << name(c); }

AttentionConfig config_of(const Case& c) {
    AttentionConfig cfg;
    cfg.planes = c.P;
    cfg.tables = c.L;
    cfg.beta = 1.5;
    cfg.causal = c.causal;
    cfg.normalization = c.bucket ? Normalization::bucket : Normalization::kernel;
    cfg.seed = 7;
    return cfg;
}

struct Inputs {
    Shape shape;
    std::vector<float> q, k, v, dout;
};

Inputs make_inputs(const Case& c, std::uint64_t seed) {
    Inputs in;
    in.shape = Shape{c.B, c.T, c.H, c.D};
    const std::size_t n = in.shape.elements();
    const float s = 1.0f / std::sqrt(static_cast<float>(c.D));  // plane projections ~ N(0, 1)
    in.q = testgpu::random_vector(n, seed + 1, s);
    in.k = testgpu::random_vector(n, seed + 2, s);
    in.v = testgpu::random_vector(n, seed + 3);
    in.dout = testgpu::random_vector(n, seed + 4);
    for (auto* x : {&in.q, &in.k, &in.v, &in.dout})
        for (auto& e : *x) e = testgpu::round_to(c.dtype, e);
    return in;
}

testref::Problem problem_of(const Inputs& in, const Planes& planes) {
    testref::Problem p{in.shape.batch, in.shape.tokens, in.shape.heads, in.shape.dim, {}, {}, {}, {}, {}};
    p.q.assign(in.q.begin(), in.q.end());
    p.k.assign(in.k.begin(), in.k.end());
    p.v.assign(in.v.begin(), in.v.end());
    p.dout.assign(in.dout.begin(), in.dout.end());
    p.planes.assign(planes.values().begin(), planes.values().end());
    return p;
}

struct GpuOut {
    std::vector<float> o, dq, dk, dv;
    double dbeta = 0;
};

cuda::EngineOptions options_of(const Case& c) {
    cuda::EngineOptions opt;
    opt.chunk = c.chunk;
    opt.segment_chunks = c.segment_chunks;
    return opt;
}

GpuOut run_gpu(const Case& c, const AttentionConfig& cfg, const Planes& planes, const Inputs& in) {
    cuda::Engine engine(cfg, planes, options_of(c));
    GpuTensor q(in.shape, c.dtype), k(in.shape, c.dtype), v(in.shape, c.dtype), g(in.shape, c.dtype);
    GpuTensor o(in.shape, c.dtype), dq(in.shape, c.dtype), dk(in.shape, c.dtype), dv(in.shape, c.dtype);
    q.upload(in.q);
    k.upload(in.k);
    v.upload(in.v);
    g.upload(in.dout);
    for (auto* t : {&o, &dq, &dk, &dv}) t->poison();
    engine.attention_forward(q.view(), k.view(), v.view(), o.view());
    GpuOut out;
    out.dbeta = engine.attention_backward(q.view(), k.view(), v.view(), o.view(), g.view(), dq.view(), dk.view(),
                                          dv.view());
    out.o = o.download();
    out.dq = dq.download();
    out.dk = dk.download();
    out.dv = dv.download();
    return out;
}

// Causal bucket gradients in float32 are held to 1e-3, not 1e-5: the backward sweep moves the
// backward state U forward by subtracting each chunk's queries, and the A column of a query with
// a nearly empty bucket (r = 1/(A+eps) large, early tokens) is huge, so the subtraction leaves
// float32 rounding of that huge term in U for the later keys of the same segment
// (measured 1e-5..1.3e-4 on an H200; see experiments/gpu-notes.md).
double grad_tolerance(const Case& c, double tol) {
    return c.causal && c.bucket && c.dtype == DType::f32 ? 1e-3 : tol;
}

class CudaVsReference : public ::testing::TestWithParam<Case> {};

TEST_P(CudaVsReference, OutputsAndGradients) {
    SKIP_WITHOUT_GPU();
    const Case c = GetParam();
    const AttentionConfig cfg = config_of(c);
    const Planes planes(cfg, c.H, c.D);
    const Inputs in = make_inputs(c, 1000 + c.D * 31 + c.P * 7 + c.L);
    const auto ref = testref::reference(cfg, problem_of(in, planes), true);
    const GpuOut got = run_gpu(c, cfg, planes, in);
    const double tol = c.dtype == DType::f32 ? 1e-5 : 2e-2;
    const double gtol = grad_tolerance(c, tol);
    EXPECT_LT(rel_error(got.o, ref.o), tol) << "o";
    EXPECT_LT(rel_error(got.dq, ref.dq), gtol) << "dq";
    EXPECT_LT(rel_error(got.dk, ref.dk), gtol) << "dk";
    EXPECT_LT(rel_error(got.dv, ref.dv), gtol) << "dv";
    // dbeta sums every token's float32 feature-map backward, largely cancelling (|dbeta| ~ 0.3 from
    // terms of order 1), and causal keys see U after the in-segment subtraction: D=30 P=3 L=2 causal
    // kernel fp32 is off by 1.11e-5 (3.7e-5 relative), the same to 4e-16 with the v3 kernels. Held
    // to 1e-4 like the multi-rank tests (test_cuda_mpi.cpp); outputs and gradients stay at 1e-5.
    const double btol = c.causal && c.dtype == DType::f32 ? std::max(gtol, 1e-4) : gtol;
    EXPECT_LT(std::abs(got.dbeta - ref.dbeta), btol * std::max(1.0, std::abs(ref.dbeta))) << "dbeta " << got.dbeta
                                                                                        << " vs " << ref.dbeta;
    std::printf("  %s: o %.2e dq %.2e dk %.2e dv %.2e dbeta %.2e\n", name(c).c_str(), rel_error(got.o, ref.o),
                rel_error(got.dq, ref.dq), rel_error(got.dk, ref.dk), rel_error(got.dv, ref.dv),
                std::abs(got.dbeta - ref.dbeta) / std::max(1e-300, std::abs(ref.dbeta)));
}

std::vector<Case> cases() {
    std::vector<Case> v;
    for (bool causal : {false, true})
        for (bool bucket : {false, true}) {
            for (std::int64_t D : {32, 64, 96, 128}) v.push_back({D, 4, 4, causal, bucket, DType::f32});
            for (int P = 1; P <= 6; ++P) v.push_back({64, P, 2, causal, bucket, DType::f32});
            for (int L = 1; L <= 8; ++L) v.push_back({32, 3, L, causal, bucket, DType::f32});
            v.push_back({32, 6, 4, causal, bucket, DType::f32});  // M = 256
            v.push_back({128, 4, 4, causal, bucket, DType::bf16});
            v.push_back({64, 4, 4, causal, bucket, DType::f16});
            // v5 kernels with compile-time sizes (D 64 or 128, P=4, L=4, chunk 32): both dtypes,
            // and several segments of 32 chunks (and 4-chunk causal bucket segments).
            v.push_back({64, 4, 4, causal, bucket, DType::bf16});
            v.push_back({128, 4, 4, causal, bucket, DType::f16});
            Case many{128, 4, 4, causal, bucket, DType::bf16};
            many.T = 2500;
            many.B = 1;
            v.push_back(many);
            // v9-v11 warp tiles (16 tokens; the sums and sweeps in chunks of 128): a sequence
            // shorter than one tile, and one that ends two tokens into its second chunk.
            for (std::int64_t T : {5, 130}) {
                Case tile{64, 4, 4, causal, bucket, DType::bf16};
                tile.T = T;
                v.push_back(tile);
            }
            // Head sizes whose rows are not whole 16-byte vectors: the element-wise row path.
            v.push_back({30, 3, 2, causal, bucket, DType::f32});
            v.push_back({36, 3, 2, causal, bucket, DType::bf16});
            // Many short segments (float64 scans over segments) and chunks of 8 and 16.
            Case s{64, 4, 4, causal, bucket, DType::f32};
            s.chunk = 8;
            s.segment_chunks = 3;
            v.push_back(s);
            s.chunk = 16;
            s.segment_chunks = 2;
            s.T = 64;  // a multiple of the chunk too
            v.push_back(s);
        }
    return v;
}

INSTANTIATE_TEST_SUITE_P(Gpu, CudaVsReference, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& i) { return name(i.param); });

// The CUDA engine equals the CPU engine (float32) to rounding.
TEST(CudaVsCpu, SameOutputsAndGradients) {
    SKIP_WITHOUT_GPU();
    for (bool causal : {false, true})
        for (bool bucket : {false, true}) {
            Case c{64, 4, 4, causal, bucket, DType::f32};
            c.T = 517;
            const AttentionConfig cfg = config_of(c);
            const Planes planes(cfg, c.H, c.D);
            const Inputs in = make_inputs(c, 77);
            std::vector<float> o(in.q.size()), dq(o.size()), dk(o.size()), dv(o.size());
            ConstTensor q(in.q.data(), in.shape), k(in.k.data(), in.shape), v(in.v.data(), in.shape),
                g(in.dout.data(), in.shape);
            attention_forward(cfg, planes, q, k, v, MutTensor(o.data(), in.shape));
            const double dbeta = attention_backward(cfg, planes, q, k, v, g, MutTensor(dq.data(), in.shape),
                                                    MutTensor(dk.data(), in.shape), MutTensor(dv.data(), in.shape));
            const GpuOut got = run_gpu(c, cfg, planes, in);
            SCOPED_TRACE(name(c));
            const double gtol = grad_tolerance(c, 1e-5);
            EXPECT_LT(rel_error(got.o, o), 1e-5);
            EXPECT_LT(rel_error(got.dq, dq), gtol);
            EXPECT_LT(rel_error(got.dk, dk), gtol);
            EXPECT_LT(rel_error(got.dv, dv), gtol);
            EXPECT_NEAR(got.dbeta, dbeta, gtol * std::max(1.0, std::abs(dbeta)));
        }
}

// The v5 kernels with compile-time sizes against the run-time-size kernels (RACESP_CUDA_FIXED=0,
// read when an engine is made) on the same inputs: they round the same products' operands at
// other places (once when a tile is written, not at every product step) to the same TF32 values,
// so they agree to float32 rounding, far tighter than the 2e-2 held against float64; an indexing
// or ordering fault would not.
// v6: the Fixed kernels' feature map sums the projection u in four partial tiles, so u (not phi's
// product order) differs in its last bits; that moves some phi values across a TF32 rounding
// boundary and some bf16/fp16 outputs by one unit, and a norm-wise error over outputs rounded to
// a unit e = 2^-8 grows like sqrt(delta * e) for a float32 difference delta: the v6 device run
// printed o 0.8-1.8e-4, dq/dk/dv 1.1-6.2e-4 (bf16, D 64/128).
// v27: the non-causal kernels and the key totals of every mode take bf16 operands (8 bits of
// mantissa; the run-time-size kernels TF32, 11), so the two now differ by the bf16 kernels' own
// error against float64, not by summation order: the v27 device run printed o up to 2.4e-3,
// dq/dk/dv up to 5.0e-3, dbeta up to 1.23e-2. Held to 1e-2 (dbeta 2e-2, the float64
// tolerance): each side is held to 2e-2 of float64 (CudaVsReference), and an indexing fault
// gives O(1).
TEST(CudaFixedSizes, SameAsRunTimeSizes) {
    SKIP_WITHOUT_GPU();
    for (DType dt : {DType::bf16, DType::f16})
        for (std::int64_t D : {64, 128})
            for (bool causal : {false, true})
                for (bool bucket : {false, true}) {
                    Case c{D, 4, 4, causal, bucket, dt};
                    c.T = 3001;
                    c.B = 1;
                    const AttentionConfig cfg = config_of(c);
                    const Planes planes(cfg, c.H, c.D);
                    const Inputs in = make_inputs(c, 4242 + D);
                    const GpuOut fixed = run_gpu(c, cfg, planes, in);
                    ASSERT_EQ(setenv("RACESP_CUDA_FIXED", "0", 1), 0);
                    const GpuOut runtime = run_gpu(c, cfg, planes, in);
                    unsetenv("RACESP_CUDA_FIXED");
                    SCOPED_TRACE(name(c));
                    const double e[] = {rel_error(fixed.o, runtime.o), rel_error(fixed.dq, runtime.dq),
                                        rel_error(fixed.dk, runtime.dk), rel_error(fixed.dv, runtime.dv),
                                        std::abs(fixed.dbeta - runtime.dbeta) / std::max(1.0, std::abs(runtime.dbeta))};
                    std::printf("  %s fixed vs run-time sizes: o %.2e dq %.2e dk %.2e dv %.2e dbeta %.2e\n",
                                name(c).c_str(), e[0], e[1], e[2], e[3], e[4]);
                    for (int i = 0; i < 4; ++i) EXPECT_LT(e[i], 1e-2) << i;
                    EXPECT_LT(e[4], 2e-2) << "dbeta";
                }
}

// Shards on one device through the incoming-state API (host sums stand in for the collectives)
// equal the whole sequence, with an empty shard among them: fp32 on the segment kernels (1e-5),
// and bf16 at the warp-tile kernels' sizes (v9-v12: D=64, P=L=4; the causal backward starts each
// shard's last segment from the forward state after the shard), where both runs round their
// outputs to bf16 after float32 sums in another order (1e-2, as cuda_mpi's GpuRanksWarpTiles).
TEST(CudaShards, IncomingStatesEqualOneShard) {
    SKIP_WITHOUT_GPU();
    struct Kind {
        std::int64_t D;
        int P, L;
        DType dtype;
    };
    for (const Kind kind : {Kind{32, 3, 2, DType::f32}, Kind{64, 4, 4, DType::bf16}})
        for (bool causal : {false, true})
            for (bool bucket : {false, true}) {
                Case c{kind.D, kind.P, kind.L, causal, bucket, kind.dtype};
                c.T = 300;
                const AttentionConfig cfg = config_of(c);
                const Planes planes(cfg, c.H, c.D);
                const Inputs in = make_inputs(c, 5);
                const GpuOut whole = run_gpu(c, cfg, planes, in);
                const std::int64_t bounds[] = {0, 131, 131, 300};  // shards [0,131), [131,131), [131,300)
                const int shards = 3;
                cuda::Engine engine(cfg, planes);
                const std::int64_t row = c.H * c.D;
                auto slice = [&](const std::vector<float>& x, int s) {
                    return std::vector<float>(x.begin() + bounds[s] * row, x.begin() + bounds[s + 1] * row);
                };
                ASSERT_EQ(c.B, 2);
                // One batch entry at a time keeps the slicing simple: tokens of entry b are contiguous.
                std::vector<float> o(in.q.size()), dq(o.size()), dk(o.size()), dv(o.size());
                double dbeta = 0;
                for (std::int64_t b = 0; b < c.B; ++b) {
                    auto part = [&](const std::vector<float>& x) {
                        return std::vector<float>(x.begin() + b * c.T * row, x.begin() + (b + 1) * c.T * row);
                    };
                    const auto q = part(in.q), k = part(in.k), v = part(in.v), g = part(in.dout);
                    std::vector<std::unique_ptr<GpuTensor>> tq, tk, tv, tg;
                    std::vector<cuda::DeviceState> S, U;
                    const std::int64_t ssize = static_cast<std::int64_t>(cfg.features()) * (c.D + 1) * c.H;
                    std::vector<std::vector<double>> hs(shards, std::vector<double>(ssize)), hu = hs;
                    for (int s = 0; s < shards; ++s) {
                        const Shape sh{1, bounds[s + 1] - bounds[s], c.H, c.D};
                        tq.push_back(std::make_unique<GpuTensor>(sh, c.dtype));
                        tk.push_back(std::make_unique<GpuTensor>(sh, c.dtype));
                        tv.push_back(std::make_unique<GpuTensor>(sh, c.dtype));
                        tg.push_back(std::make_unique<GpuTensor>(sh, c.dtype));
                        tq[s]->upload(slice(q, s));
                        tk[s]->upload(slice(k, s));
                        tv[s]->upload(slice(v, s));
                        tg[s]->upload(slice(g, s));
                        S.push_back(engine.make_state(sh));
                        U.push_back(engine.make_state(sh));
                        engine.key_state(tk[s]->view(), tv[s]->view(), S[s]);
                        GPU_CHECK(cudaStreamSynchronize(engine.stream()));
                        GPU_CHECK(cudaMemcpy(hs[s].data(), S[s].data(), ssize * 8, cudaMemcpyDeviceToHost));
                    }
                    // Allreduce or exscan on the host.
                    auto combine = [&](std::vector<std::vector<double>>& h, std::vector<cuda::DeviceState>& d, bool reverse) {
                        for (int s = 0; s < shards; ++s) {
                            std::vector<double> acc(ssize, 0.0);
                            for (int r = 0; r < shards; ++r) {
                                const bool take = !causal || (reverse ? r > s : r < s);
                                if (take)
                                    for (std::int64_t e = 0; e < ssize; ++e) acc[e] += h[r][e];
                            }
                            GPU_CHECK(cudaMemcpy(d[s].data(), acc.data(), ssize * 8, cudaMemcpyHostToDevice));
                        }
                        testgpu::device_writes_done();
                    };
                    combine(hs, S, false);
                    std::vector<std::unique_ptr<GpuTensor>> to;  // each shard's o, read by its backward
                    for (int s = 0; s < shards; ++s) {
                        const Shape sh{1, bounds[s + 1] - bounds[s], c.H, c.D};
                        to.push_back(std::make_unique<GpuTensor>(sh, c.dtype));
                        to[s]->poison();
                        engine.forward(tq[s]->view(), tk[s]->view(), tv[s]->view(), S[s], to[s]->view());
                        engine.query_state(tq[s]->view(), tk[s]->view(), tv[s]->view(), to[s]->view(), tg[s]->view(),
                                           S[s], U[s]);
                        GPU_CHECK(cudaStreamSynchronize(engine.stream()));
                        GPU_CHECK(cudaMemcpy(hu[s].data(), U[s].data(), ssize * 8, cudaMemcpyDeviceToHost));
                        const auto os = to[s]->download();
                        std::copy(os.begin(), os.end(), o.begin() + (b * c.T + bounds[s]) * row);
                    }
                    combine(hu, U, true);
                    for (int s = 0; s < shards; ++s) {
                        const Shape sh{1, bounds[s + 1] - bounds[s], c.H, c.D};
                        GpuTensor a(sh, c.dtype), bk(sh, c.dtype), cv(sh, c.dtype);
                        a.poison();
                        bk.poison();
                        cv.poison();
                        dbeta += engine.backward(tq[s]->view(), tk[s]->view(), tv[s]->view(), to[s]->view(),
                                                 tg[s]->view(), S[s], U[s], a.view(), bk.view(), cv.view());
                        const auto x = a.download(), y = bk.download(), z = cv.download();
                        std::copy(x.begin(), x.end(), dq.begin() + (b * c.T + bounds[s]) * row);
                        std::copy(y.begin(), y.end(), dk.begin() + (b * c.T + bounds[s]) * row);
                        std::copy(z.begin(), z.end(), dv.begin() + (b * c.T + bounds[s]) * row);
                    }
                }
                SCOPED_TRACE(name(c));
                const double otol = c.dtype == DType::f32 ? 1e-5 : 1e-2;
                const double gtol = grad_tolerance(c, otol);
                std::printf("  %s shards vs whole: o %.2e dq %.2e dk %.2e dv %.2e\n", name(c).c_str(), rel_error(o, whole.o),
                            rel_error(dq, whole.dq), rel_error(dk, whole.dk), rel_error(dv, whole.dv));
                EXPECT_LT(rel_error(o, whole.o), otol);
                EXPECT_LT(rel_error(dq, whole.dq), gtol);
                EXPECT_LT(rel_error(dk, whole.dk), gtol);
                EXPECT_LT(rel_error(dv, whole.dv), gtol);
                EXPECT_NEAR(dbeta, whole.dbeta, gtol * std::max(1.0, std::abs(whole.dbeta)));
            }
}

// A backward that reuses the forward's key totals (Engine::KeyTotals) gives the bits of one that
// recomputes them (the kernels are deterministic: no atomics). A reuse request over other k, v
// buffers, or after another call computed key totals, is refused (Error), and the engine then
// still gives a fresh run's bits. The causal kernel normalisation on warp tiles (16-bit) also
// reuses the forward's normalisers (v50) where the recomputation has its own (TF32 products
// against v10's bf16 state column, 2^-9 relative apart): there the reuse is held to the bf16
// tolerance of the sharded runs (1e-2, GpuRanksWarpTiles) against the recomputation, and to its
// own bits when repeated.
TEST(CudaEngine, BackwardReusesTheForwardsKeyTotals) {
    SKIP_WITHOUT_GPU();
    using KT = cuda::Engine::KeyTotals;
    for (DType dt : {DType::f32, DType::bf16, DType::f16})  // 16-bit at D=128, P=4, L=4: the warp-tile kernels
        for (bool causal : {false, true})
            for (bool bucket : {false, true}) {
                Case c{128, 4, 4, causal, bucket, dt};
                c.T = 3001;  // several segments
                c.B = 1;
                SCOPED_TRACE(name(c));
                const AttentionConfig cfg = config_of(c);
                const Planes planes(cfg, c.H, c.D);
                const Inputs in = make_inputs(c, 77), other = make_inputs(c, 78);
                Inputs other_q = in;  // other queries over the same keys and values
                other_q.q = other.q;
                const GpuOut fresh = run_gpu(c, cfg, planes, in), fresh_other = run_gpu(c, cfg, planes, other);
                const GpuOut fresh_other_q = run_gpu(c, cfg, planes, other_q);

                cuda::Engine engine(cfg, planes, options_of(c));  // run_gpu's segments: the same sums
                const Shape s = in.shape;
                GpuTensor q(s, dt), k(s, dt), v(s, dt), g(s, dt), k2(s, dt), v2(s, dt), q2(s, dt), g2(s, dt);
                GpuTensor o(s, dt), o2(s, dt), o3(s, dt), dq(s, dt), dk(s, dt), dv(s, dt);
                q.upload(in.q);
                k.upload(in.k);
                v.upload(in.v);
                g.upload(in.dout);
                q2.upload(other.q);
                k2.upload(other.k);
                v2.upload(other.v);
                g2.upload(other.dout);
                o2.upload(fresh_other.o);  // the forward's output for the other inputs
                o3.upload(fresh_other_q.o);
                auto none = [&](cuda::DeviceState& x) { if (causal) x.zero(engine.stream()); };
                auto expect_bits = [&](const GpuOut& want, double dbeta, const char* what) {
                    SCOPED_TRACE(what);
                    EXPECT_EQ(dq.download(), want.dq);
                    EXPECT_EQ(dk.download(), want.dk);
                    EXPECT_EQ(dv.download(), want.dv);
                    EXPECT_EQ(dbeta, want.dbeta);
                };
                const bool kept_normalisers = causal && !bucket && dt != DType::f32;

                engine.forward_step(q.view(), k.view(), v.view(), o.view(), none, KT::keep);
                EXPECT_EQ(o.download(), fresh.o);
                GpuOut reused;
                reused.dbeta = engine.backward_step(q.view(), k.view(), v.view(), o.view(), g.view(), dq.view(), dk.view(),
                                                    dv.view(), none, none, KT::reuse);
                reused.dq = dq.download();
                reused.dk = dk.download();
                reused.dv = dv.download();
                if (kept_normalisers) {
                    SCOPED_TRACE("kept normalisers, then reused");
                    EXPECT_LT(rel_error(reused.dq, fresh.dq), 1e-2);
                    EXPECT_LT(rel_error(reused.dk, fresh.dk), 1e-2);
                    EXPECT_LT(rel_error(reused.dv, fresh.dv), 1e-2);
                    EXPECT_NEAR(reused.dbeta, fresh.dbeta, 2e-2 * std::max(1.0, std::abs(fresh.dbeta)));
                } else {
                    expect_bits(fresh, reused.dbeta, "kept, then reused");
                }

                EXPECT_THROW(engine.backward_step(q.view(), k.view(), v.view(), o.view(), g.view(), dq.view(), dk.view(),
                                                  dv.view(), none, none, KT::reuse),
                             Error);  // taken by the first backward

                engine.forward_step(q.view(), k.view(), v.view(), o.view(), none, KT::keep);
                EXPECT_THROW(engine.backward_step(q2.view(), k2.view(), v2.view(), o2.view(), g2.view(), dq.view(), dk.view(),
                                                  dv.view(), none, none, KT::reuse),
                             Error);  // kept for other buffers
                expect_bits(fresh_other, engine.backward_step(q2.view(), k2.view(), v2.view(), o2.view(), g2.view(), dq.view(),
                                                              dk.view(), dv.view(), none, none, KT::recompute),
                            "recomputed after a refused reuse");

                // The same k and v with other q and o: the key totals are reused, the normalisers not.
                engine.forward_step(q.view(), k.view(), v.view(), o.view(), none, KT::keep);
                expect_bits(fresh_other_q, engine.backward_step(q2.view(), k.view(), v.view(), o3.view(), g.view(), dq.view(),
                                                                dk.view(), dv.view(), none, none, KT::reuse),
                            "key totals reused for other queries");

                engine.forward_step(q.view(), k.view(), v.view(), o.view(), none, KT::keep);
                cuda::DeviceState scratch = engine.make_state(s);
                engine.key_state(k2.view(), v2.view(), scratch);  // overwrites the segment totals
                EXPECT_THROW(engine.backward_step(q.view(), k.view(), v.view(), o.view(), g.view(), dq.view(), dk.view(),
                                                  dv.view(), none, none, KT::reuse),
                             Error);
                engine.forward_step(q.view(), k.view(), v.view(), o.view(), none, KT::keep);
                expect_bits(reused, engine.backward_step(q.view(), k.view(), v.view(), o.view(), g.view(), dq.view(), dk.view(),
                                                         dv.view(), none, none, KT::reuse),
                            "kept again after a refusal, then reused");
            }
}

// A configuration whose state cannot fit in shared memory is refused with a clear error.
TEST(CudaEngine, RefusesStatesTooLargeForSharedMemory) {
    SKIP_WITHOUT_GPU();
    AttentionConfig cfg;
    cfg.planes = 10;
    cfg.tables = 8;
    const Planes planes(cfg, 1, 128);
    EXPECT_THROW(cuda::Engine(cfg, planes), ConfigError);
}

// The reference's own gradients against central differences (float64), so the GPU is held to
// a checked standard. Runs without a GPU.
TEST(Reference64, GradientsMatchFiniteDifferences) {
    for (bool causal : {false, true})
        for (bool bucket : {false, true}) {
            Case c{8, 3, 2, causal, bucket, DType::f32};
            c.T = 7;
            c.B = 1;
            c.H = 1;
            AttentionConfig cfg = config_of(c);
            const Planes planes(cfg, c.H, c.D);
            const Inputs in = make_inputs(c, 3);
            testref::Problem p = problem_of(in, planes);
            const auto ref = testref::reference(cfg, p, true);
            auto loss = [&](const testref::Problem& pp, const AttentionConfig& cc) {
                const auto r = testref::reference(cc, pp, false);
                double s = 0;
                for (std::size_t i = 0; i < r.o.size(); ++i) s += r.o[i] * pp.dout[i];
                return s;
            };
            const double h = 1e-6;
            auto check = [&](std::vector<double> testref::Problem::*field, const std::vector<double>& grad, const char* what) {
                for (std::size_t i = 0; i < grad.size(); i += 5) {
                    testref::Problem a = p, b = p;
                    (a.*field)[i] += h;
                    (b.*field)[i] -= h;
                    const double fd = (loss(a, cfg) - loss(b, cfg)) / (2 * h);
                    EXPECT_NEAR(grad[i], fd, 1e-6 * std::max(1.0, std::abs(fd))) << what << " " << i;
                }
            };
            SCOPED_TRACE(name(c));
            check(&testref::Problem::q, ref.dq, "dq");
            check(&testref::Problem::k, ref.dk, "dk");
            check(&testref::Problem::v, ref.dv, "dv");
            AttentionConfig up = cfg, down = cfg;
            up.beta += h;
            down.beta -= h;
            EXPECT_NEAR(ref.dbeta, (loss(p, up) - loss(p, down)) / (2 * h), 1e-6);
        }
}

}  // namespace
}  // namespace racesp
