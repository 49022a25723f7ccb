// Sequence parallelism on GPUs (run under mpiexec, one GPU per rank, NCCL): every rank count
// gives the single-GPU result (float32, 1e-5), uneven and empty shards included, and in bf16 on
// the warp-tile kernels' sizes (v9-v11). Skips when the host has fewer GPUs than ranks (NCCL takes
// one rank per GPU) or none.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <string>

#include "gpu_test_util.hpp"
#include "racesp/cuda_distributed.hpp"
#include "racesp/mpi_collectives.hpp"
#include "racesp/nccl_collectives.hpp"
#include "racesp/planes.hpp"

namespace racesp {
namespace {

using cuda::DType;
using testgpu::GpuTensor;
using testgpu::rel_error;

int world_rank() { int r; MPI_Comm_rank(MPI_COMM_WORLD, &r); return r; }
int world_size() { int s; MPI_Comm_size(MPI_COMM_WORLD, &s); return s; }

// True on every rank when every rank has at least `need` GPUs.
bool gpus_at_least(int need) {
    int ok = cuda::device_count() >= need ? 1 : 0, all = 0;
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    return all == 1;
}
// NCCL takes one GPU per rank; MPI's collectives (staged through the host) let ranks share one.
bool enough_gpus(bool nccl) { return gpus_at_least(nccl ? world_size() : 1); }

struct Outputs {
    std::vector<float> o, dq, dk, dv;
    double dbeta = 0;
};

// Distributed forward + backward of one shard (B = 1: the shard is one contiguous block of rows);
// dbeta is summed over `world`. reuse_keys: the backward reuses the forward's key totals.
Outputs run(cuda::Engine& engine, Collectives& sp, MPI_Comm world, const Shape& s, const std::vector<float>& q,
            const std::vector<float>& k, const std::vector<float>& v, const std::vector<float>& g,
            bool reuse_keys, DType dt) {
    using KT = cuda::Engine::KeyTotals;
    GpuTensor tq(s, dt), tk(s, dt), tv(s, dt), tg(s, dt);
    GpuTensor o(s, dt), dq(s, dt), dk(s, dt), dv(s, dt);
    tq.upload(q);
    tk.upload(k);
    tv.upload(v);
    tg.upload(g);
    for (auto* t : {&o, &dq, &dk, &dv}) t->poison();
    Outputs out;
    cuda::device_distributed_forward(engine, sp, tq.view(), tk.view(), tv.view(), o.view(),
                                     reuse_keys ? KT::keep : KT::recompute);
    cuda::device_distributed_backward(engine, sp, world, tq.view(), tk.view(), tv.view(), o.view(), tg.view(),
                                      dq.view(), dk.view(), dv.view(), out.dbeta,
                                      reuse_keys ? KT::reuse : KT::recompute);
    out.o = o.download();
    out.dq = dq.download();
    out.dk = dk.download();
    out.dv = dv.download();
    return out;
}

// The sharded run reuses the forward's key totals in the backward where reuse_keys says so (the
// one-rank reference always recomputes them). bf16 runs use 4 tables, the warp-tile kernels' size.
void check_ranks_equal_one(bool causal, bool bucket, std::int64_t T, bool nccl, bool reuse_keys,
                           DType dt = DType::f32) {
    AttentionConfig cfg;
    cfg.planes = 4;
    cfg.tables = dt == DType::f32 ? 3 : 4;
    cfg.beta = 1.5;
    cfg.causal = causal;
    cfg.normalization = bucket ? Normalization::bucket : Normalization::kernel;
    const std::int64_t H = 2, D = 64;
    const Planes planes(cfg, H, D);
    const Shape whole{1, T, H, D};
    const float sc = 1.0f / 8.0f;
    const auto q = testgpu::random_vector(whole.elements(), 11, sc), k = testgpu::random_vector(whole.elements(), 12, sc);
    const auto v = testgpu::random_vector(whole.elements(), 13), g = testgpu::random_vector(whole.elements(), 14);

    cuda::Engine engine(cfg, planes);
    // Reference: the whole sequence on this rank's GPU alone (a communicator of one).
    MPI_Comm self;
    MPI_Comm_split(MPI_COMM_WORLD, world_rank(), 0, &self);
    Outputs ref;
    {
        MpiCollectives one(self);
        cuda::StagedCollectives staged(one);
        ref = run(engine, staged, self, whole, q, k, v, g, false, dt);  // dbeta summed over this rank alone
    }
    // The shard of this rank.
    const TokenRange r = shard_range(T, world_rank(), world_size());
    const Shape s{1, r.size(), H, D};
    const std::int64_t row = H * D;
    auto slice = [&](const std::vector<float>& x) {
        return std::vector<float>(x.begin() + r.begin * row, x.begin() + r.end * row);
    };
    Outputs got;
    double dbeta_ref = ref.dbeta;
    if (nccl) {
        cuda::NcclCollectives sp(MPI_COMM_WORLD, engine.stream());
        got = run(engine, sp, MPI_COMM_WORLD, s, slice(q), slice(k), slice(v), slice(g), reuse_keys, dt);
    } else {
        MpiCollectives host(MPI_COMM_WORLD);
        cuda::StagedCollectives sp(host);
        got = run(engine, sp, MPI_COMM_WORLD, s, slice(q), slice(k), slice(v), slice(g), reuse_keys, dt);
    }
    MPI_Comm_free(&self);
    // bf16: both runs round their float32 results to bf16 (2^-8 relative steps), and the shards'
    // float32 state sums differ in order and segment boundaries, so some elements land one step
    // apart: at most ~4e-3 norm-wise if every element did; a missing or doubled shard's state
    // would be O(1).
    const double otol = dt == DType::f32 ? 1e-5 : 1e-2;
    const double gtol = dt != DType::f32 ? 1e-2 : causal && bucket ? 1e-3 : 1e-5;  // see grad_tolerance in test_cuda_attention.cpp
    // Relative errors over the whole sequence (as for one GPU): squared sums over every rank's slice.
    auto global_rel = [&](const std::vector<float>& a, const std::vector<float>& full) {
        const auto b = slice(full);
        double sums[2] = {0, 0}, all[2];
        for (std::size_t i = 0; i < b.size(); ++i) {
            const double x = a[i], y = b[i];
            sums[0] += std::isfinite(x) ? (x - y) * (x - y) : INFINITY;
            sums[1] += y * y;
        }
        MPI_Allreduce(sums, all, 2, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        return std::sqrt(all[0] / all[1]);
    };
    SCOPED_TRACE("rank " + std::to_string(world_rank()) + " T " + std::to_string(T));
    EXPECT_LT(global_rel(got.o, ref.o), otol) << "o";
    EXPECT_LT(global_rel(got.dq, ref.dq), gtol) << "dq";
    EXPECT_LT(global_rel(got.dk, ref.dk), gtol) << "dk";
    EXPECT_LT(global_rel(got.dv, ref.dv), gtol) << "dv";
    // dbeta is one float64 sum over every token of float32 per-block parts whose rounding depends on
    // where segments start, which moves with the shard boundaries: measured 1.03e-5 relative at 2
    // and 4 ranks (causal, kernel) on H200s, so 1e-4 here; outputs and gradients stay at 1e-5. In
    // bf16 the per-token terms carry the bf16 operands' rounding too, which the boundaries also move
    // (v38's causal backward: 1.26e-2 at 2 ranks, gpu-notes.md v39): 2e-2, as CudaFixedSizes holds
    // two 16-bit runs, each of them held to 2e-2 of float64 by CudaVsReference.
    const double btol = dt == DType::f32 ? std::max(gtol, 1e-4) : 2e-2;
    EXPECT_NEAR(got.dbeta, dbeta_ref, btol * std::max(1.0, std::abs(dbeta_ref)));
}

class GpuRanks : public ::testing::TestWithParam<std::tuple<bool, bool, bool>> {};

TEST_P(GpuRanks, EqualOneRank) {
    const auto [causal, bucket, nccl] = GetParam();
    if (!enough_gpus(nccl)) GTEST_SKIP() << (nccl ? "fewer GPUs than ranks" : "no GPU");
    for (std::int64_t T : {1001, 3})  // uneven shards; then fewer tokens than ranks (empty shards)
        for (bool reuse_keys : {false, true}) check_ranks_equal_one(causal, bucket, T, nccl, reuse_keys);
}

INSTANTIATE_TEST_SUITE_P(Gpu, GpuRanks,
                         ::testing::Combine(::testing::Bool(), ::testing::Bool(), ::testing::Bool()));

// bf16 on the warp-tile kernels (kernel normalisation, P = L = 4, D = 64; non-causal: v9's four
// passes, causal: v9's key totals and v10/v11's sweeps), states combined over NCCL where each
// rank has a GPU of its own, else over MPI with the ranks sharing one: T = 3001 gives each of 2-4
// ranks a shard of several 1024-token segments with a partial last tile.
TEST(GpuRanksWarpTiles, EqualOneRank) {
    if (!enough_gpus(false)) GTEST_SKIP() << "no GPU";
    const bool nccl = enough_gpus(true);
    for (bool causal : {false, true})
        for (bool reuse_keys : {false, true}) check_ranks_equal_one(causal, false, 3001, nccl, reuse_keys, DType::bf16);
}

// The NCCL scans against their definition on distinct per-rank values.
TEST(NcclCollectives, ScansAndAllreduce) {
    if (!enough_gpus(true)) GTEST_SKIP() << "fewer GPUs than ranks";
    const int rank = world_rank(), size = world_size();
    cudaStream_t stream;
    GPU_CHECK(cudaStreamCreate(&stream));
    {
        cuda::NcclCollectives sp(MPI_COMM_WORLD, stream);
        const std::int64_t n = 1000;
        std::vector<double> mine(n);
        for (std::int64_t i = 0; i < n; ++i) mine[i] = (rank + 1) * 1000.0 + i * 0.5;
        double* d = nullptr;
        GPU_CHECK(cudaMalloc(&d, n * 8));
        auto expect = [&](auto pick, const char* what) {
            std::vector<double> got(n);
            GPU_CHECK(cudaStreamSynchronize(stream));
            GPU_CHECK(cudaMemcpy(got.data(), d, n * 8, cudaMemcpyDeviceToHost));
            for (std::int64_t i = 0; i < n; ++i) {
                double want = 0;
                for (int r = 0; r < size; ++r)
                    if (pick(r)) want += (r + 1) * 1000.0 + i * 0.5;
                ASSERT_EQ(got[i], want) << what << " element " << i;
            }
        };
        GPU_CHECK(cudaMemcpy(d, mine.data(), n * 8, cudaMemcpyHostToDevice));
        sp.allreduce_sum(d, n);
        expect([](int) { return true; }, "allreduce");
        GPU_CHECK(cudaMemcpy(d, mine.data(), n * 8, cudaMemcpyHostToDevice));
        sp.exscan_sum(d, n);
        expect([&](int r) { return r < rank; }, "exscan");
        GPU_CHECK(cudaMemcpy(d, mine.data(), n * 8, cudaMemcpyHostToDevice));
        sp.reverse_exscan_sum(d, n);
        expect([&](int r) { return r > rank; }, "reverse exscan");
        cudaFree(d);
    }
    cudaStreamDestroy(stream);
}

}  // namespace
}  // namespace racesp

int main(int argc, char** argv) {
    MPI_Init(&argc, &argv);
    ::testing::InitGoogleTest(&argc, argv);
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (racesp::cuda::device_count() > 0) {
        int n = racesp::cuda::device_count();
        cudaSetDevice(rank % n);
    }
    if (rank != 0) GTEST_FLAG_SET(brief, true);  // other ranks print their failures only
    const int status = RUN_ALL_TESTS();
    int worst = 0;
    MPI_Allreduce(&status, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return worst;
}
