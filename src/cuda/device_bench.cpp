// The CUDA engine's forward + backward timings on device-generated data (racesp/cuda_bench.hpp).
#include "racesp/cuda_bench.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>

#include "convert.hpp"
#include "cuda_check.hpp"
#include "device_buffer.hpp"
#include "racesp/cuda_distributed.hpp"
#include "racesp/errors.hpp"

namespace racesp::cuda {

namespace {

// The eight token buffers of one shard, q, k, v and dout filled with random values (never zeros;
// q and k scaled so that the plane projections are ~N(0, 1)).
struct Buffers {
    std::vector<std::unique_ptr<DeviceBuffer<unsigned char>>> mem;
    DeviceTensor q, k, v, o, dout, dq, dk, dv;
    Buffers(const Shape& s, DType t, cudaStream_t stream) {
        DeviceTensor* all[] = {&q, &k, &v, &o, &dout, &dq, &dk, &dv};
        for (DeviceTensor* x : all) {
            mem.push_back(std::make_unique<DeviceBuffer<unsigned char>>(std::max<std::size_t>(1, s.elements() * dtype_size(t))));
            *x = DeviceTensor{mem.back()->data(), s, t};
        }
        const float qk = 1.0f / std::sqrt(static_cast<float>(s.dim));
        std::uint64_t seed = 1;
        fill_random(q.data, t, s.elements(), seed++, qk, stream);
        fill_random(k.data, t, s.elements(), seed++, qk, stream);
        fill_random(v.data, t, s.elements(), seed++, 1.0f, stream);
        fill_random(dout.data, t, s.elements(), seed++, 1.0f, stream);
        CUDA_CHECK(cudaStreamSynchronize(stream));
    }
};

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
}

double max_over(MPI_Comm world, double x) {
    double m = 0;
    MPI_Allreduce(&x, &m, 1, MPI_DOUBLE, MPI_MAX, world);
    return m;
}

// The collectives of one forward + backward step (S once, or twice when the backward recomputes
// it, and U once: scans when causal, allreduces otherwise) on a state-sized device buffer, median
// over the runs, each after a barrier and timed to the end of the slowest rank's device work.
double collectives_alone(const BenchSetup& b, Collectives& sp, MPI_Comm world) {
    const std::int64_t count = b.batch * b.heads * b.config.features() * (b.dim + 1);
    DeviceBuffer<double> state(static_cast<std::size_t>(count));
    CUDA_CHECK(cudaMemset(state.data(), 0, static_cast<std::size_t>(count) * sizeof(double)));
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<double> times;
    for (int r = 0; r < b.warmup + b.runs; ++r) {
        MPI_Barrier(world);
        const double t0 = MPI_Wtime();
        for (int pass = 0; pass < (b.recompute_key_totals ? 2 : 1); ++pass) {
            if (b.config.causal) sp.exscan_sum(state.data(), count);
            else sp.allreduce_sum(state.data(), count);
        }
        if (b.config.causal) sp.reverse_exscan_sum(state.data(), count);
        else sp.allreduce_sum(state.data(), count);
        CUDA_CHECK(cudaDeviceSynchronize());
        const double t = max_over(world, MPI_Wtime() - t0);
        if (r >= b.warmup) times.push_back(t);
    }
    return median(times);
}

BenchResult run_steps(const BenchSetup& b, Collectives& sp, MPI_Comm world, std::int64_t tokens_per_rank) {
    const Planes planes(b.config, b.heads, b.dim);
    Engine engine(b.config, planes, b.engine);
    Buffers buf(Shape{b.batch, tokens_per_rank, b.heads, b.dim}, b.dtype, engine.stream());
    cudaEvent_t e0, e1, e2;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    CUDA_CHECK(cudaEventCreate(&e2));
    const auto keep = b.recompute_key_totals ? Engine::KeyTotals::recompute : Engine::KeyTotals::keep;
    const auto reuse = b.recompute_key_totals ? Engine::KeyTotals::recompute : Engine::KeyTotals::reuse;
    BenchResult out;
    out.tokens_per_rank = tokens_per_rank;
    std::vector<double> forward, backward, collective;
    for (int r = 0; r < b.warmup + b.runs; ++r) {
        MPI_Barrier(world);
        double dbeta = 0;
        CUDA_CHECK(cudaEventRecord(e0, engine.stream()));
        const StepTimes tf = device_distributed_forward(engine, sp, buf.q, buf.k, buf.v, buf.o, keep);
        CUDA_CHECK(cudaEventRecord(e1, engine.stream()));
        const StepTimes tb = device_distributed_backward(engine, sp, world, buf.q, buf.k, buf.v, buf.o, buf.dout,
                                                         buf.dq, buf.dk, buf.dv, dbeta, reuse);
        CUDA_CHECK(cudaEventRecord(e2, engine.stream()));
        CUDA_CHECK(cudaEventSynchronize(e2));
        float ms_all = 0, ms_forward = 0;
        CUDA_CHECK(cudaEventElapsedTime(&ms_all, e0, e2));
        CUDA_CHECK(cudaEventElapsedTime(&ms_forward, e0, e1));
        // The step takes as long as the slowest rank.
        double t[2] = {ms_all * 1e-3, ms_forward * 1e-3}, slowest[2];
        MPI_Allreduce(t, slowest, 2, MPI_DOUBLE, MPI_MAX, world);
        if (r < b.warmup) continue;
        out.times_s.push_back(slowest[0]);
        forward.push_back(slowest[1]);
        backward.push_back(slowest[0] - slowest[1]);
        collective.push_back(tf.collective_s + tb.collective_s);
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaEventDestroy(e2);
    out.median_s = median(out.times_s);
    out.min_s = *std::min_element(out.times_s.begin(), out.times_s.end());
    out.max_s = *std::max_element(out.times_s.begin(), out.times_s.end());
    out.forward_s = median(forward);
    out.backward_s = median(backward);
    out.collective_s = median(collective);
    std::size_t free_b = 0, total_b = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    unsigned long long used = total_b - free_b, largest = 0;
    MPI_Allreduce(&used, &largest, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, world);
    out.peak_device_bytes = largest;
    return out;
}

bool is_out_of_memory(const Error& e) { return std::string(e.what()).find("out of memory") != std::string::npos; }

// One forward + backward at this length on every rank: true when it fits everywhere.
bool fits(const BenchSetup& b, Collectives& sp, MPI_Comm world, std::int64_t tokens_per_rank, BenchResult& r) {
    BenchSetup once = b;
    once.runs = 1;
    once.warmup = 0;
    int ok = 1, all = 0;
    try {
        r = run_steps(once, sp, world, tokens_per_rank);
    } catch (const Error& e) {
        if (!is_out_of_memory(e)) throw;
        cudaGetLastError();  // a failed cudaMalloc is not sticky: clear it and go on
        ok = 0;
    }
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, world);
    return all == 1;
}

}  // namespace

BenchResult bench_step(const BenchSetup& setup, Collectives& sp, MPI_Comm world, std::int64_t tokens_per_rank) {
    if (setup.runs < 1) throw ConfigError("the benchmark needs at least one timed run");
    BenchResult r = run_steps(setup, sp, world, tokens_per_rank);
    r.collective_alone_s = collectives_alone(setup, sp, world);
    return r;
}

BenchResult bench_max_tokens(const BenchSetup& setup, Collectives& sp, MPI_Comm world) {
    constexpr std::int64_t kStep = 1 << 16;
    std::int64_t lo = 0, hi = 1 << 20;
    BenchResult best, trial;
    while (fits(setup, sp, world, hi, trial)) {
        lo = hi;
        best = trial;
        hi *= 2;
    }
    while (hi - lo > std::max<std::int64_t>(4 * kStep, lo / 64)) {
        const std::int64_t mid = (lo + hi) / 2 / kStep * kStep;
        if (fits(setup, sp, world, mid, trial)) {
            lo = mid;
            best = trial;
        } else {
            hi = mid;
        }
    }
    if (lo == 0) throw Error("not even " + std::to_string(hi) + " tokens per rank fit in device memory");
    return best;
}

std::string device_name() {
    int dev = 0;
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    return prop.name;
}

}  // namespace racesp::cuda
