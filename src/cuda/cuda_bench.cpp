// racesp_cuda_bench: forward + backward timings of the CUDA engine as JSON lines (one per
// configuration), on one GPU or sequence-parallel over MPI ranks with NCCL (one GPU per rank).
// Median over --runs timed runs after --warmup untimed ones, timed with CUDA events; tokens/s
// counts every token of the sequence; peak device memory from cudaMemGetInfo after the runs.
// --max-tokens searches the longest sequence (per rank) for which one forward + backward fits.
// The backward reuses the forward's key totals (Engine::KeyTotals) unless --recompute-key-totals
// is given. collective_alone_s is the step's collectives alone, on state-sized device buffers after a
// barrier (as in racesp bench): their cost without the waiting for slower ranks that
// collective_s includes; it feeds experiments/cost_model.py.
#include <cuda_runtime.h>
#include <mpi.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "convert.hpp"
#include "cuda_check.hpp"
#include "device_buffer.hpp"
#include "racesp/cuda_distributed.hpp"
#include "racesp/errors.hpp"
#include "racesp/mpi_collectives.hpp"
#ifdef RACESP_HAVE_NCCL
#include "racesp/nccl_collectives.hpp"
#endif

namespace po = boost::program_options;
using namespace racesp;
using namespace racesp::cuda;

namespace {

struct Bench {
    AttentionConfig config;
    std::int64_t batch = 1, heads = 4, dim = 128;
    DType dtype = DType::bf16;
    int runs = 5, warmup = 1;
    EngineOptions engine;
    std::string collectives = "nccl";
    bool recompute_key_totals = false;  // the backward recomputes S and its collective
};

// The eight token buffers of one shard.
struct Buffers {
    std::vector<std::unique_ptr<DeviceBuffer<unsigned char>>> mem;
    DeviceTensor q, k, v, o, dout, dq, dk, dv;
    Buffers(const Shape& s, DType t, cudaStream_t stream) {
        DeviceTensor* all[] = {&q, &k, &v, &o, &dout, &dq, &dk, &dv};
        std::uint64_t seed = 1;
        for (DeviceTensor* x : all) {
            mem.push_back(std::make_unique<DeviceBuffer<unsigned char>>(std::max<std::size_t>(1, s.elements() * dtype_size(t))));
            *x = DeviceTensor{mem.back()->data(), s, t};
        }
        // Random data (never zeros); q and k scaled so plane projections are ~N(0, 1).
        const float qk = 1.0f / std::sqrt(static_cast<float>(s.dim));
        fill_random(q.data, t, s.elements(), seed++, qk, stream);
        fill_random(k.data, t, s.elements(), seed++, qk, stream);
        fill_random(v.data, t, s.elements(), seed++, 1.0f, stream);
        fill_random(dout.data, t, s.elements(), seed++, 1.0f, stream);
        CUDA_CHECK(cudaStreamSynchronize(stream));
    }
};

struct Timing {
    double median_s = 0, min_s = 0, max_s = 0, forward_s = 0, collective_s = 0, collective_alone_s = 0;
    std::size_t used_bytes = 0;
};

// The collectives of one forward + backward step (S once, or twice when the backward recomputes
// it, and U once: scans when causal, allreduces otherwise), median over `runs`, each after a
// barrier and timed to the end of the slowest rank's stream.
double collectives_alone(const Bench& b, Collectives& sp, cudaStream_t stream) {
    const std::int64_t count = b.batch * b.heads * b.config.features() * (b.dim + 1);
    DeviceBuffer<double> state(static_cast<std::size_t>(count));
    CUDA_CHECK(cudaMemsetAsync(state.data(), 0, static_cast<std::size_t>(count) * sizeof(double), stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    std::vector<double> times;
    for (int r = 0; r < b.warmup + b.runs; ++r) {
        MPI_Barrier(MPI_COMM_WORLD);
        const double t0 = MPI_Wtime();
        for (int pass = 0; pass < (b.recompute_key_totals ? 2 : 1); ++pass) {
            if (b.config.causal) sp.exscan_sum(state.data(), count);
            else sp.allreduce_sum(state.data(), count);
        }
        if (b.config.causal) sp.reverse_exscan_sum(state.data(), count);
        else sp.allreduce_sum(state.data(), count);
        CUDA_CHECK(cudaStreamSynchronize(stream));
        double t = MPI_Wtime() - t0, tmax = 0;
        MPI_Allreduce(&t, &tmax, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        if (r >= b.warmup) times.push_back(tmax);
    }
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
}

Timing run_config(const Bench& b, Collectives& sp, std::int64_t local_tokens) {
    Planes planes(b.config, b.heads, b.dim);
    Engine engine(b.config, planes, b.engine);
    const Shape s{b.batch, local_tokens, b.heads, b.dim};
    Buffers buf(s, b.dtype, engine.stream());
    cudaEvent_t e0, e1, e2;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    CUDA_CHECK(cudaEventCreate(&e2));
    std::vector<double> times, fwd, coll;
    for (int r = 0; r < b.warmup + b.runs; ++r) {
        MPI_Barrier(MPI_COMM_WORLD);
        double dbeta = 0;
        CUDA_CHECK(cudaEventRecord(e0, engine.stream()));
        const StepTimes tf = device_distributed_forward(engine, sp, buf.q, buf.k, buf.v, buf.o,
                                                        b.recompute_key_totals ? Engine::KeyTotals::recompute
                                                                               : Engine::KeyTotals::keep);
        CUDA_CHECK(cudaEventRecord(e1, engine.stream()));
        const StepTimes tb = device_distributed_backward(engine, sp, MPI_COMM_WORLD, buf.q, buf.k, buf.v, buf.o, buf.dout,
                                                         buf.dq, buf.dk, buf.dv, dbeta,
                                                         b.recompute_key_totals ? Engine::KeyTotals::recompute
                                                                                : Engine::KeyTotals::reuse);
        CUDA_CHECK(cudaEventRecord(e2, engine.stream()));
        CUDA_CHECK(cudaEventSynchronize(e2));
        float ms_all = 0, ms_fwd = 0;
        CUDA_CHECK(cudaEventElapsedTime(&ms_all, e0, e2));
        CUDA_CHECK(cudaEventElapsedTime(&ms_fwd, e0, e1));
        // The step takes as long as the slowest rank.
        double t[2] = {ms_all * 1e-3, ms_fwd * 1e-3}, tmax[2];
        MPI_Allreduce(t, tmax, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        if (r >= b.warmup) {
            times.push_back(tmax[0]);
            fwd.push_back(tmax[1]);
            coll.push_back(tf.collective_s + tb.collective_s);
        }
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaEventDestroy(e2);
    auto median = [](std::vector<double> v) {
        std::sort(v.begin(), v.end());
        return v.empty() ? 0.0 : v[v.size() / 2];
    };
    Timing out;
    out.median_s = median(times);
    out.min_s = *std::min_element(times.begin(), times.end());
    out.max_s = *std::max_element(times.begin(), times.end());
    out.forward_s = median(fwd);
    out.collective_s = median(coll);
    std::size_t free_b = 0, total_b = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    out.used_bytes = total_b - free_b;
    return out;
}

bool is_out_of_memory(const Error& e) {
    const std::string w = e.what();
    return w.find("out of memory") != std::string::npos;
}

// One forward + backward at this length: true when it fits (false on out-of-memory).
bool fits(const Bench& b, Collectives& sp, std::int64_t local_tokens, Timing& t) {
    Bench one = b;
    one.runs = 1;
    one.warmup = 0;
    int ok = 1;
    try {
        t = run_config(one, sp, local_tokens);
    } catch (const Error& e) {
        if (!is_out_of_memory(e)) throw;
        cudaGetLastError();
        ok = 0;
    }
    int all = 0;
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    return all == 1;
}

}  // namespace

int main(int argc, char** argv) {
    MPI_Init(&argc, &argv);
    int rank = 0, size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int status = 0;
    try {
        Bench b;
        std::int64_t tokens = 8 << 20, tokens_per_rank = 0;
        std::string mode = "both", dtype = "bf16", norm = "kernel", out_file;
        bool max_tokens = false;
        po::options_description opts("racesp_cuda_bench options");
        opts.add_options()("help", "this help")
            ("tokens", po::value(&tokens)->default_value(tokens), "sequence length (all ranks together)")
            ("tokens-per-rank", po::value(&tokens_per_rank), "weak scaling: tokens per rank (overrides --tokens)")
            ("batch", po::value(&b.batch)->default_value(1), "B")
            ("heads", po::value(&b.heads)->default_value(4), "H")
            ("dim", po::value(&b.dim)->default_value(128), "D")
            ("planes", po::value(&b.config.planes)->default_value(4), "P")
            ("tables", po::value(&b.config.tables)->default_value(4), "L")
            ("beta", po::value(&b.config.beta)->default_value(1.0), "beta")
            ("normalization", po::value(&norm)->default_value("kernel"), "kernel|bucket")
            ("dtype", po::value(&dtype)->default_value("bf16"), "fp32|bf16|fp16")
            ("mode", po::value(&mode)->default_value("both"), "causal|full|both")
            ("runs", po::value(&b.runs)->default_value(5), "timed runs (median)")
            ("warmup", po::value(&b.warmup)->default_value(1), "untimed runs first")
            ("chunk", po::value(&b.engine.chunk)->default_value(0), "tokens per chunk (0: auto)")
            ("segment-chunks", po::value(&b.engine.segment_chunks)->default_value(EngineOptions{}.segment_chunks),
             "chunks per segment")
            ("collectives", po::value(&b.collectives)->default_value("nccl"), "nccl|mpi (MPI through pinned host memory)")
            ("recompute-key-totals", po::bool_switch(&b.recompute_key_totals),
             "the backward recomputes the key totals instead of reusing the forward's")
            ("max-tokens", po::bool_switch(&max_tokens), "search the longest sequence that fits")
            ("out", po::value(&out_file), "also append the JSON lines to this file");
        po::variables_map vm;
        po::store(po::parse_command_line(argc, argv, opts), vm);
        po::notify(vm);
        if (vm.count("help")) {
            if (rank == 0) std::cout << opts << "\n";
            MPI_Finalize();
            return 0;
        }
        b.dtype = parse_dtype(dtype.c_str());
        b.config.normalization = parse_normalization(norm);
        if (b.runs < 1) throw ConfigError("--runs must be at least 1");
        select_local_device(MPI_COMM_WORLD);
        cudaDeviceProp prop{};
        int dev = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));

        cudaStream_t coll_stream;
        CUDA_CHECK(cudaStreamCreateWithFlags(&coll_stream, cudaStreamNonBlocking));
        std::unique_ptr<Collectives> host, sp;
        if (b.collectives == "mpi") {
            host = std::make_unique<MpiCollectives>(MPI_COMM_WORLD);
            sp = std::make_unique<StagedCollectives>(*host);
        } else if (b.collectives == "nccl") {
#ifdef RACESP_HAVE_NCCL
            sp = std::make_unique<NcclCollectives>(MPI_COMM_WORLD, coll_stream);
#else
            throw ConfigError("built without NCCL: use --collectives mpi");
#endif
        } else {
            throw ConfigError("--collectives must be nccl or mpi");
        }

        std::vector<bool> causals;
        if (mode == "causal" || mode == "both") causals.push_back(true);
        if (mode == "full" || mode == "both") causals.push_back(false);
        if (causals.empty()) throw ConfigError("--mode must be causal, full or both");
        const std::int64_t local = tokens_per_rank > 0 ? tokens_per_rank : tokens / size;
        if (tokens_per_rank == 0 && tokens % size != 0) throw ConfigError("--tokens must divide by the rank count");

        std::ofstream out;
        if (rank == 0 && !out_file.empty()) out.open(out_file, std::ios::app);
        for (bool causal : causals) {
            b.config.causal = causal;
            b.config.validate();
            Timing t;
            std::int64_t local_tokens = local;
            if (max_tokens) {
                // Double until it fails, then bisect to 1/64 of the last good length.
                std::int64_t lo = 0, hi = 1 << 20;
                Timing tt;
                while (fits(b, *sp, hi, tt)) {
                    lo = hi;
                    t = tt;
                    hi *= 2;
                }
                while (hi - lo > std::max<std::int64_t>(1 << 18, lo / 64)) {
                    const std::int64_t mid = (lo + hi) / 2 / (1 << 16) * (1 << 16);
                    if (fits(b, *sp, mid, tt)) {
                        lo = mid;
                        t = tt;
                    } else {
                        hi = mid;
                    }
                }
                local_tokens = lo;
            } else {
                t = run_config(b, *sp, local_tokens);
                t.collective_alone_s = collectives_alone(b, *sp, coll_stream);
            }
            std::size_t used_max = 0;
            unsigned long long used = t.used_bytes;
            unsigned long long used_all = 0;
            MPI_Allreduce(&used, &used_all, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, MPI_COMM_WORLD);
            used_max = used_all;
            if (rank == 0) {
                const std::int64_t total = local_tokens * size;
                nlohmann::json j;
                j["bench"] = max_tokens ? "cuda_max_tokens" : "cuda_forward_backward";
                j["gpu"] = prop.name;
                j["ranks"] = size;
                j["collectives"] = b.collectives;
                j["batch"] = b.batch;
                j["tokens"] = total;
                j["tokens_per_rank"] = local_tokens;
                j["heads"] = b.heads;
                j["dim"] = b.dim;
                j["planes"] = b.config.planes;
                j["tables"] = b.config.tables;
                j["normalization"] = std::string(to_string(b.config.normalization));
                j["causal"] = causal;
                j["dtype"] = to_string(b.dtype);
                j["chunk"] = b.engine.chunk;
                j["key_totals"] = b.recompute_key_totals ? "recomputed" : "reused";
                j["runs"] = max_tokens ? 1 : b.runs;
                j["median_s"] = t.median_s;
                j["min_s"] = t.min_s;
                j["max_s"] = t.max_s;
                j["forward_s"] = t.forward_s;
                j["collective_s"] = t.collective_s;
                if (!max_tokens) j["collective_alone_s"] = t.collective_alone_s;
                j["state_bytes"] = b.batch * b.heads * b.config.features() * (b.dim + 1) * 8;
                j["tokens_per_s"] = static_cast<double>(total * b.batch) / t.median_s;
                j["peak_device_bytes"] = used_max;
                std::cout << j.dump() << std::endl;
                if (out) out << j.dump() << "\n";
            }
        }
        sp.reset();
        host.reset();
        cudaStreamDestroy(coll_stream);
    } catch (const std::exception& e) {
        if (rank == 0 || std::string(e.what()).find("out of memory") == std::string::npos)
            std::fprintf(stderr, "racesp_cuda_bench: %s\n", e.what());
        status = 1;
    }
    if (status != 0) MPI_Abort(MPI_COMM_WORLD, status);
    MPI_Finalize();
    return status;
}
