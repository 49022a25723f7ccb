// racesp bench: forward + backward timings on synthetic data, one JSON line per configuration on
// stdout. Under mpirun it measures sequence-parallel scaling: --tokens fixes the sequence
// (strong scaling), --tokens-per-rank grows it with the sequence-parallel group (weak scaling).
// --device cpu times the CPU engine on float32 shards in host memory (wall clock, the slowest
// rank); --device cuda times the CUDA engine on shards generated on each rank's GPU (CUDA events,
// racesp/cuda_bench.hpp), in --dtype, with NCCL collectives where built, and --max-tokens
// searches the longest sequence that fits.
#include <mpi.h>

#include <algorithm>
#include <memory>
#include <vector>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "device.hpp"
#include "metrics.hpp"
#include "options.hpp"
#include "racesp/errors.hpp"
#include "racesp/failure.hpp"
#include "racesp/mpi_collectives.hpp"
#include "synthetic.hpp"
#ifdef RACESP_HAVE_CUDA
#include "cuda_check.hpp"
#include "racesp/cuda_bench.hpp"
#include "racesp/device_collectives.hpp"
#endif

namespace racesp::cli {

namespace {

struct BenchArgs {
    std::int64_t batch = 1, heads = 4, dim = 128;
    Count tokens{262144}, tokens_per_rank;
    int repeats = 5, warmup = 1;
    bool both = false;
    std::string dtype;  // --device cuda: bf16 unless given; the CPU engine computes in float32 only
    bool max_tokens = false;
    RaceOptions race;
};

po::options_description bench_options(BenchArgs& a) {
    po::options_description options("options", 100, 40);
    options.add_options()
        ("tokens", po::value<Count>(&a.tokens)->default_value(a.tokens, "256K")->value_name("T"), "tokens per sequence (1M, 16M, ...)")
        ("tokens-per-rank", po::value<Count>(&a.tokens_per_rank)->value_name("N"),
         "tokens per sequence-parallel rank instead of --tokens (weak scaling)")
        ("batch", po::value<std::int64_t>(&a.batch)->default_value(a.batch)->value_name("B"), "sequences")
        ("heads", po::value<std::int64_t>(&a.heads)->default_value(a.heads)->value_name("H"), "heads")
        ("dim", po::value<std::int64_t>(&a.dim)->default_value(a.dim)->value_name("D"), "head dimension")
        ("both", po::bool_switch(&a.both), "time non-causal and causal (two lines)")
        ("repeats", po::value<int>(&a.repeats)->default_value(a.repeats)->value_name("N"),
         "timed runs; the median is reported")
        ("warmup", po::value<int>(&a.warmup)->default_value(a.warmup)->value_name("N"), "untimed runs first")
        ("dtype", po::value<std::string>(&a.dtype)->value_name("T"),
         "--device cuda: storage of the token tensors, bf16 (default), fp16 or fp32")
        ("max-tokens", po::bool_switch(&a.max_tokens),
         "--device cuda: search the longest sequence whose forward + backward fits in device memory");
    a.race.add_to(options);
    add_common_options(options);
    return options;
}

const char* const usage =
    "racesp bench [--device cpu|cuda] [--tokens N | --tokens-per-rank N | --max-tokens] [--causal | --both] [options]";
const char* const description =
    "Times distributed forward + backward on synthetic data held in memory (no file I/O): median over\n"
    "--repeats after --warmup, split into compute and collective time (each the slowest rank's; the\n"
    "collectives also alone after a barrier, without waiting for slower ranks), with tokens/s and peak\n"
    "resident memory. One JSON object per configuration on stdout. With --device cuda the data is made\n"
    "on each rank's GPU in --dtype (bf16 by default), the runs are timed with CUDA events, the line adds\n"
    "peak_device_bytes, and --max-tokens reports the longest sequence that fits instead of --tokens.";

// The collectives of one forward + backward step alone, on state-sized buffers after a barrier:
// their cost without the waiting for slower ranks that the step's collective time includes.
double collectives_alone(Collectives& sp, MPI_Comm world, const AttentionConfig& config, const Shape& local) {
    State s(local.batch, local.heads, config.features(), local.dim);
    MPI_Barrier(world);
    double t0 = MPI_Wtime();
    for (int pass = 0; pass < 2; ++pass) {  // S in the forward, S again in the backward
        if (config.causal) sp.exscan_sum(s.data(), s.size());
        else sp.allreduce_sum(s.data(), s.size());
    }
    if (config.causal) sp.reverse_exscan_sum(s.data(), s.size());
    else sp.allreduce_sum(s.data(), s.size());
    double dbeta = 0, sum = 0;  // and the dbeta sum over the world
    MPI_Allreduce(&dbeta, &sum, 1, MPI_DOUBLE, MPI_SUM, world);
    return MPI_Wtime() - t0;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    std::size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

#ifdef RACESP_HAVE_CUDA
// --device cuda: the CUDA engine on this rank's shard, made on its GPU (one line per mode).
int bench_on_gpus(MPI_Comm world, const ProcessGrid& grid, const BenchArgs& a, const Shape& shape, bool weak) {
    const io::Slab slab{grid.batch(shape.batch), grid.tokens(shape.tokens)};
    cuda::BenchSetup setup;
    setup.config = a.race.config;
    setup.batch = slab.batch.size();
    setup.heads = shape.heads;
    setup.dim = shape.dim;
    setup.dtype = cuda::parse_dtype(a.dtype.empty() ? "bf16" : a.dtype.c_str());
    setup.runs = a.repeats;
    setup.warmup = a.warmup;
    const nlohmann::json machine = machine_description(world);
    cudaStream_t stream = nullptr;  // the collectives' (NCCL's) stream
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    auto sp = std::make_unique<cuda::DeviceCollectives>(grid.sp_comm(), stream);
    std::vector<bool> causal_modes = a.both ? std::vector<bool>{false, true} : std::vector<bool>{a.race.config.causal};
    for (bool causal : causal_modes) {
        setup.config.causal = causal;
        const cuda::BenchResult r = a.max_tokens ? cuda::bench_max_tokens(setup, sp->get(), world)
                                                 : cuda::bench_step(setup, sp->get(), world, slab.tokens.size());
        const std::int64_t tokens = a.max_tokens ? r.tokens_per_rank * a.race.sp_size : shape.tokens;
        nlohmann::json line = {
            {"command", "bench"}, {"device", "cuda"}, {"gpu", cuda::device_name()}, {"causal", causal},
            {"normalization", to_string(setup.config.normalization)}, {"dtype", cuda::to_string(setup.dtype)},
            {"batch", shape.batch}, {"tokens", tokens}, {"tokens_per_rank", static_cast<double>(tokens) / a.race.sp_size},
            {"weak_scaling", weak}, {"max_tokens", a.max_tokens}, {"heads", shape.heads}, {"dim", shape.dim},
            {"tables", setup.config.tables}, {"planes", setup.config.planes}, {"beta", setup.config.beta},
            {"share_planes", setup.config.share_planes}, {"sp_size", a.race.sp_size},
            {"dp_size", grid.world_size() / a.race.sp_size}, {"collectives", cuda::DeviceCollectives::kName},
            {"repeats", a.max_tokens ? 1 : a.repeats}, {"warmup", a.max_tokens ? 0 : a.warmup},
            {"timer", "cuda_events"}, {"median_s", r.median_s}, {"min_s", r.min_s}, {"max_s", r.max_s},
            {"forward_s", r.forward_s}, {"backward_s", r.backward_s}, {"collective_s", r.collective_s},
            {"state_bytes", setup.batch * shape.heads * setup.config.features() * (shape.dim + 1) * 8},
            {"tokens_per_s", static_cast<double>(shape.batch * tokens) / r.median_s},
            {"peak_device_bytes", r.peak_device_bytes}, {"times_s", r.times_s}, {"machine", machine}};
        if (!a.max_tokens) line["collective_alone_s"] = r.collective_alone_s;
        print_on_root(world, line.dump() + "\n");
    }
    sp.reset();
    cudaStreamDestroy(stream);
    return 0;
}
#endif

}  // namespace

std::string bench_help() {
    BenchArgs a;
    return help_text(usage, description, bench_options(a));
}

int run_bench(MPI_Comm world, const Args& args) {
    int rank = 0, ranks = 1;
    MPI_Comm_rank(world, &rank);
    MPI_Comm_size(world, &ranks);

    BenchArgs a;
    po::options_description options = bench_options(a);
    bool run = true, weak = false;
    Device device = Device::cpu;
    run_collectively(world, [&] {
        run = parse_options("bench", args, options);
        if (!run) return;
        a.race.finish(ranks);
        device = parse_device(a.race.device);
        require_device(device);
        weak = a.tokens_per_rank.value > 0;
        if (weak) a.tokens.value = a.tokens_per_rank.value * a.race.sp_size;
        require_at_least("--tokens", a.tokens.value, 1);
        require_at_least("--batch", a.batch, 1);
        require_at_least("--heads", a.heads, 1);
        require_at_least("--dim", a.dim, 1);
        require_at_least("--repeats", a.repeats, 1);
        require_at_least("--warmup", a.warmup, 0);
        if (device == Device::cpu && !a.dtype.empty() && a.dtype != "fp32" && a.dtype != "float32")
            throw ConfigError("--dtype " + a.dtype + " needs --device cuda (the CPU engine computes in float32)");
        if (device == Device::cpu && a.max_tokens) throw ConfigError("--max-tokens needs --device cuda");
#ifdef RACESP_HAVE_CUDA
        if (device == Device::cuda) cuda::parse_dtype(a.dtype.empty() ? "bf16" : a.dtype.c_str());  // throws if unknown
#endif
    });
    if (!run) {
        print_on_root(world, bench_help());
        return 0;
    }

    const Shape shape{a.batch, a.tokens.value, a.heads, a.dim};
    ProcessGrid grid(world, a.race.sp_size);
#ifdef RACESP_HAVE_CUDA
    if (device == Device::cuda) return bench_on_gpus(world, grid, a, shape, weak);
#endif
    MpiCollectives sp(grid.sp_comm());
    const io::Slab slab{grid.batch(shape.batch), grid.tokens(shape.tokens)};
    const Shape local{slab.batch.size(), slab.tokens.size(), shape.heads, shape.dim};
    const nlohmann::json machine = machine_description(world);

    // q, k, v, do and the outputs o, dq, dk, dv: eight shard-sized buffers.
    std::vector<std::vector<float>> buf(8);
    run_collectively(world, [&] {
        for (auto& b : buf) b.assign(static_cast<std::size_t>(local.elements()), 0.0f);
    });
    const Stream streams[4] = {stream_q, stream_k, stream_v, stream_do};
    for (int i = 0; i < 4; ++i) fill_slab(a.race.config.seed, streams[i], shape, slab, io::ElementType::float32, buf[i].data());
    ConstTensor q(buf[0].data(), local), k(buf[1].data(), local), v(buf[2].data(), local), dout(buf[3].data(), local);
    MutTensor o(buf[4].data(), local), dq(buf[5].data(), local), dk(buf[6].data(), local), dv(buf[7].data(), local);

    std::vector<bool> causal_modes = a.both ? std::vector<bool>{false, true} : std::vector<bool>{a.race.config.causal};
    for (bool causal : causal_modes) {
        AttentionConfig config = a.race.config;
        config.causal = causal;
        Planes planes(config, shape.heads, shape.dim);
        std::vector<double> total, forward, backward, compute, collective, alone;
        for (int r = 0; r < a.warmup + a.repeats; ++r) {
            MPI_Barrier(world);
            double t0 = MPI_Wtime();
            StepTimes f = run_forward(device, sp, config, planes, q, k, v, o);
            double t1 = MPI_Wtime();
            double dbeta = 0;
            StepTimes b = run_backward(device, sp, world, config, planes, q, k, v, dout, dq, dk, dv, dbeta);
            double t2 = MPI_Wtime();
            // The slowest rank sets the step time.
            double local_times[5] = {t2 - t0, t1 - t0, t2 - t1, f.compute_s + b.compute_s, f.collective_s + b.collective_s};
            double slowest[5];
            MPI_Allreduce(local_times, slowest, 5, MPI_DOUBLE, MPI_MAX, world);
            double alone_s = max_over_ranks(world, collectives_alone(sp, world, config, local));
            if (r < a.warmup) continue;
            alone.push_back(alone_s);
            total.push_back(slowest[0]);
            forward.push_back(slowest[1]);
            backward.push_back(slowest[2]);
            compute.push_back(slowest[3]);
            collective.push_back(slowest[4]);
        }
        const double step = median(total);
        nlohmann::json line = {
            {"command", "bench"}, {"device", to_string(device)}, {"causal", causal},
            {"normalization", to_string(config.normalization)}, {"batch", shape.batch}, {"tokens", shape.tokens},
            {"tokens_per_rank", static_cast<double>(shape.tokens) / a.race.sp_size}, {"weak_scaling", weak},
            {"heads", shape.heads}, {"dim", shape.dim}, {"tables", config.tables}, {"planes", config.planes},
            {"beta", config.beta}, {"share_planes", config.share_planes}, {"sp_size", a.race.sp_size},
            {"dp_size", ranks / a.race.sp_size}, {"repeats", a.repeats}, {"warmup", a.warmup},
            {"median_s", step}, {"min_s", *std::min_element(total.begin(), total.end())},
            {"max_s", *std::max_element(total.begin(), total.end())}, {"forward_s", median(forward)},
            {"backward_s", median(backward)}, {"compute_s", median(compute)}, {"collective_s", median(collective)},
            {"collective_alone_s", median(alone)},
            {"state_bytes", local.batch * shape.heads * config.features() * (shape.dim + 1) * 8},
            {"tokens_per_s", static_cast<double>(shape.batch * shape.tokens) / step},
            {"peak_rss_bytes", max_over_ranks(world, peak_rss_bytes())}, {"times_s", total}, {"machine", machine}};
        print_on_root(world, line.dump() + "\n");
    }
    return 0;
}

}  // namespace racesp::cli
