// racesp_dist_bench: weak-scaling timings of sequence-parallel RACE attention on CPU ranks.
// Every rank holds `--tokens-per-rank` tokens of one sequence (B=1, H=4, D=128 by default) and
// runs distributed forward + backward; one JSON line per timed step goes to stdout from rank 0.
//
//   mpiexec -n 4 racesp_dist_bench --tokens-per-rank 1048576 --mode both --repeat 2
#include <omp.h>

#include <boost/program_options.hpp>
#include <cstdint>
#include <iostream>
#include <optional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "racesp/distributed.hpp"
#include "racesp/failure.hpp"
#include "racesp/mpi_collectives.hpp"

namespace po = boost::program_options;
using namespace racesp;

namespace {

struct BenchOptions {
    std::int64_t tokens_per_rank = 1 << 20;
    std::int64_t heads = 4, dim = 128;
    AttentionConfig config;
    std::string mode = "both";  // causal, noncausal or both
    int repeat = 1, warmup = 0;
    int sp_size = 0;            // 0: every rank in one sequence
};

BenchOptions parse(int argc, char** argv, bool& help) {
    BenchOptions b;
    std::string normalization = "kernel";
    po::options_description desc("racesp_dist_bench options");
    desc.add_options()
        ("help", "print this help")
        ("tokens-per-rank", po::value(&b.tokens_per_rank)->default_value(b.tokens_per_rank), "tokens on each rank")
        ("heads", po::value(&b.heads)->default_value(b.heads), "H")
        ("dim", po::value(&b.dim)->default_value(b.dim), "D")
        ("tables", po::value(&b.config.tables)->default_value(b.config.tables), "L")
        ("planes", po::value(&b.config.planes)->default_value(b.config.planes), "P")
        ("beta", po::value(&b.config.beta)->default_value(b.config.beta), "soft-hash temperature")
        ("normalization", po::value(&normalization)->default_value(normalization), "kernel|bucket")
        ("mode", po::value(&b.mode)->default_value(b.mode), "causal|noncausal|both")
        ("repeat", po::value(&b.repeat)->default_value(b.repeat), "timed steps per mode")
        ("warmup", po::value(&b.warmup)->default_value(b.warmup), "untimed steps per mode")
        ("sp-size", po::value(&b.sp_size)->default_value(b.sp_size), "ranks per sequence (0: all)");
    po::variables_map vm;
    po::store(po::parse_command_line(argc, argv, desc), vm);
    po::notify(vm);
    help = vm.count("help") > 0;
    if (help) std::cout << desc << "\n";
    b.config.normalization = parse_normalization(normalization);
    b.config.validate();
    if (b.mode != "causal" && b.mode != "noncausal" && b.mode != "both") throw ConfigError("--mode must be causal, noncausal or both");
    if (b.tokens_per_rank < 0 || b.heads < 1 || b.dim < 1) throw ConfigError("--tokens-per-rank, --heads, --dim out of range");
    if (b.repeat < 1 || b.warmup < 0) throw ConfigError("--repeat must be >= 1 and --warmup >= 0");
    return b;
}

// Uniform values in [-1, 1) from a counter hash (SplitMix64), filled in parallel: inputs differ
// per rank and tensor without a serial generator over gigabytes.
void fill(std::vector<float>& x, std::uint64_t stream) {
    std::int64_t n = static_cast<std::int64_t>(x.size());
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < n; i++) {
        std::uint64_t z = stream * 0x9E3779B97F4A7C15ull + static_cast<std::uint64_t>(i) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        x[i] = static_cast<float>(static_cast<double>(z >> 11) * 0x1.0p-53 * 2.0 - 1.0);
    }
}

// The collectives of one forward + backward step alone, on state-sized buffers after a barrier:
// their cost without the waiting for slower ranks that collective_s includes.
double collectives_alone(Collectives& sp, MPI_Comm world, const AttentionConfig& config, const Shape& shape) {
    State s(shape.batch, shape.heads, config.features(), shape.dim);
    MPI_Barrier(world);
    double t0 = MPI_Wtime();
    for (int pass = 0; pass < 2; pass++) {  // S in the forward, S again in the backward
        if (config.causal) sp.exscan_sum(s.data(), s.size());
        else sp.allreduce_sum(s.data(), s.size());
    }
    if (config.causal) sp.reverse_exscan_sum(s.data(), s.size());
    else sp.allreduce_sum(s.data(), s.size());
    double local = 0, total = 0;
    MPI_Allreduce(&local, &total, 1, MPI_DOUBLE, MPI_SUM, world);
    return MPI_Wtime() - t0;
}

double max_over(MPI_Comm comm, double x) {
    double m = 0;
    MPI_Allreduce(&x, &m, 1, MPI_DOUBLE, MPI_MAX, comm);
    return m;
}

int bench(MPI_Comm world, int argc, char** argv) {
    bool help = false;
    BenchOptions b;
    run_collectively(world, [&] { b = parse(argc, argv, help); });
    if (help) return 0;
    int world_size = 0;
    MPI_Comm_size(world, &world_size);
    int sp_size = b.sp_size == 0 ? world_size : b.sp_size;
    std::optional<ProcessGrid> grid;
    run_collectively(world, [&] {
        if (sp_size < 1 || world_size % sp_size != 0) throw ConfigError("--sp-size must divide the number of ranks");
    });
    grid.emplace(world, sp_size);
    MpiCollectives sp(grid->sp_comm());

    // One sequence per data-parallel group, so the batch is dp_size and each rank holds one entry.
    Shape shape{1, b.tokens_per_rank, b.heads, b.dim};
    std::size_t n = static_cast<std::size_t>(shape.elements());
    // dout reuses o (the gradient of 0.5 |o|^2): 7 tensors per rank, not 8.
    std::vector<float> q(n), k(n), v(n), o(n), dq(n), dk(n), dv(n);
    std::uint64_t stream = static_cast<std::uint64_t>(grid->world_rank()) * 8;
    fill(q, stream + 1);
    fill(k, stream + 2);
    fill(v, stream + 3);

    std::vector<bool> modes;
    if (b.mode != "causal") modes.push_back(false);
    if (b.mode != "noncausal") modes.push_back(true);
    for (bool causal : modes) {
        AttentionConfig config = b.config;
        config.causal = causal;
        Planes planes(config, b.heads, b.dim);
        for (int step = 0; step < b.warmup + b.repeat; step++) {
            MPI_Barrier(world);
            double t0 = MPI_Wtime();
            StepTimes f = distributed_forward(sp, config, planes, ConstTensor(q.data(), shape), ConstTensor(k.data(), shape),
                                              ConstTensor(v.data(), shape), MutTensor(o.data(), shape));
            double dbeta = 0;
            StepTimes g = distributed_backward(sp, world, config, planes, ConstTensor(q.data(), shape),
                                               ConstTensor(k.data(), shape), ConstTensor(v.data(), shape),
                                               ConstTensor(o.data(), shape), MutTensor(dq.data(), shape),
                                               MutTensor(dk.data(), shape), MutTensor(dv.data(), shape), dbeta);
            double wall = MPI_Wtime() - t0;
            // The slowest rank sets the step time; collective time includes waiting for it.
            double step_s = max_over(world, wall);
            double compute_s = max_over(world, f.compute_s + g.compute_s);
            double collective_s = max_over(world, f.collective_s + g.collective_s);
            double forward_s = max_over(world, f.compute_s + f.collective_s);
            double alone_s = max_over(world, collectives_alone(sp, world, config, shape));
            if (step < b.warmup || grid->world_rank() != 0) continue;
            std::int64_t tokens = b.tokens_per_rank * world_size;
            nlohmann::json line = {
                {"bench", "dist_forward_backward"},
                {"ranks", world_size},
                {"sp_size", sp_size},
                {"threads_per_rank", omp_get_max_threads()},
                {"tokens_per_rank", b.tokens_per_rank},
                {"tokens", tokens},
                {"batch", grid->dp_size()},
                {"heads", b.heads},
                {"dim", b.dim},
                {"planes", config.planes},
                {"tables", config.tables},
                {"normalization", std::string(to_string(config.normalization))},
                {"causal", causal},
                {"step", step - b.warmup},
                {"forward_s", forward_s},
                {"compute_s", compute_s},
                {"collective_s", collective_s},
                {"collective_alone_s", alone_s},
                {"state_bytes", b.heads * config.features() * (b.dim + 1) * 8},
                {"step_s", step_s},
                {"tokens_per_s", static_cast<double>(tokens) / step_s},
                {"dbeta", dbeta},
            };
            std::cout << line.dump() << std::endl;
        }
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    return run_mpi_main(argc, argv, [&](MPI_Comm world) { return bench(world, argc, argv); });
}
