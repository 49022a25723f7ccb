// Forward + backward timings of the CUDA engine on data generated on the device, for `racesp
// bench --device cuda` and racesp_cuda_bench: median over timed runs after untimed ones, each run
// timed with CUDA events and taken as the slowest rank's; one GPU per rank. Every call is
// collective over `world`; `sp` sums device states over this rank's sequence-parallel group.
#pragma once

#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "racesp/collectives.hpp"
#include "racesp/cuda_attention.hpp"

namespace racesp::cuda {

struct BenchSetup {
    AttentionConfig config;                        // config.causal picks the mode
    std::int64_t batch = 1, heads = 4, dim = 128;  // this rank's batch entries, the heads, the head dimension
    DType dtype = DType::bf16;                     // device storage of the eight token buffers
    int runs = 5, warmup = 1;
    EngineOptions engine;
    bool recompute_key_totals = false;  // the backward recomputes the key totals (and their collective)
};

struct BenchResult {
    std::int64_t tokens_per_rank = 0;
    std::vector<double> times_s;  // each timed run's forward + backward (the slowest rank's)
    double median_s = 0, min_s = 0, max_s = 0, forward_s = 0, backward_s = 0;
    double collective_s = 0;        // the step's collectives as the engine timed them (median)
    double collective_alone_s = 0;  // the same collectives alone after a barrier (bench_step only)
    std::size_t peak_device_bytes = 0;  // device memory in use after the runs, the largest over ranks
};

// Times `setup` with `tokens_per_rank` tokens on each rank.
BenchResult bench_step(const BenchSetup& setup, Collectives& sp, MPI_Comm world, std::int64_t tokens_per_rank);

// The longest tokens per rank (a multiple of 64K, found to 1/64) for which one forward + backward
// fits in every rank's device memory, with that one run's timing. Doubles from 1M, then bisects.
BenchResult bench_max_tokens(const BenchSetup& setup, Collectives& sp, MPI_Comm world);

// The current device's name (e.g. "NVIDIA H200").
std::string device_name();

}  // namespace racesp::cuda
