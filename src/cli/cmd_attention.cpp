// racesp attention: HDF5 q, k, v (and do) in, HDF5 o (and dq, dk, dv), planes and attributes out
// (DESIGN.md §5). Each rank reads, computes and writes only its batch range x token range.
#include <mpi.h>

#include <cstdio>
#include <vector>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "device.hpp"
#include "metrics.hpp"
#include "options.hpp"
#include "progress.hpp"
#include "racesp/errors.hpp"
#include "racesp/failure.hpp"
#include "racesp/io.hpp"
#include "racesp/mpi_collectives.hpp"

namespace racesp::cli {

namespace {

struct AttentionArgs {
    std::string input, output, metrics;
    bool backward = false, overwrite = false, quiet = false;
    RaceOptions race;
    DatasetNames names;
};

po::options_description attention_options(AttentionArgs& a) {
    po::options_description options("options", 100, 40);
    options.add_options()
        ("input", po::value<std::string>(&a.input)->required()->value_name("FILE"),
         "HDF5 file with q, k, v [B, T, H, D] (and do); opened read-only")
        ("output", po::value<std::string>(&a.output)->required()->value_name("FILE"),
         "new HDF5 file for o (and dq, dk, dv), planes and attributes")
        ("backward", po::bool_switch(&a.backward), "also compute dq, dk, dv and dbeta from do")
        ("overwrite", po::bool_switch(&a.overwrite), "replace an existing output file")
        ("quiet", po::bool_switch(&a.quiet), "no progress lines on stderr")
        ("metrics", po::value<std::string>(&a.metrics)->value_name("FILE"), "write the run's summary as JSON");
    a.race.add_to(options);
    a.names.add_to(options);
    add_common_options(options);
    return options;
}

const char* const usage = "racesp attention --input IN --output OUT [--backward] [options]";
const char* const description =
    "Runs RACE attention over the sequences of IN, sharded over the ranks of mpirun: each rank reads,\n"
    "computes and writes only its token range; ranks exchange only RACE states. OUT appears only when\n"
    "complete.";

std::vector<float> allocate(std::int64_t elements) { return std::vector<float>(static_cast<std::size_t>(elements)); }

// Expected seconds of the forward and backward of this rank's shard, from the same calls on the
// first `sample` tokens of its first sequence, alone (over MPI_COMM_SELF). Only for the progress
// lines of long runs (rank 0, not --quiet, >= 32 samples of tokens): about 3% more work, after
// which the lines can say tokens done, tokens/s and ETA while the engine runs.
struct Estimate {
    double forward_s = 0, backward_s = 0;
};

Estimate estimate_compute(Device device, const AttentionConfig& config, const Planes& planes, const Shape& local,
                          const std::vector<std::vector<float>>& data, bool backward) {
    constexpr std::int64_t sample = 32768;
    Estimate e;
    const std::int64_t local_tokens = local.batch * local.tokens;
    if (local.tokens < sample || local_tokens < 32 * sample) return e;
    const Shape part{1, sample, local.heads, local.dim};
    const std::int64_t n = part.elements();
    std::vector<float> out = allocate(backward ? 3 * n : n);
    MpiCollectives self(MPI_COMM_SELF);
    const double scale = static_cast<double>(local_tokens) / static_cast<double>(sample);
    ConstTensor q(data[0].data(), part), k(data[1].data(), part), v(data[2].data(), part);
    double t0 = MPI_Wtime();
    run_forward(device, self, config, planes, q, k, v, MutTensor(out.data(), part));
    e.forward_s = (MPI_Wtime() - t0) * scale;
    if (backward) {
        double dbeta = 0;
        t0 = MPI_Wtime();
        run_backward(device, self, MPI_COMM_SELF, config, planes, q, k, v, ConstTensor(data[3].data(), part),
                     MutTensor(out.data(), part), MutTensor(out.data() + n, part), MutTensor(out.data() + 2 * n, part),
                     dbeta);
        e.backward_s = (MPI_Wtime() - t0) * scale;
    }
    return e;
}

}  // namespace

std::string attention_help() {
    AttentionArgs a;
    return help_text(usage, description, attention_options(a));
}

int run_attention(MPI_Comm world, const Args& args) {
    const double start = MPI_Wtime();
    int rank = 0, ranks = 1;
    MPI_Comm_rank(world, &rank);
    MPI_Comm_size(world, &ranks);

    AttentionArgs a;
    po::options_description options = attention_options(a);
    bool run = true;
    Device device = Device::cpu;
    run_collectively(world, [&] {
        run = parse_options("attention", args, options);
        if (!run) return;
        a.race.finish(ranks);
        device = parse_device(a.race.device);
        require_device(device);
    });
    if (!run) {
        print_on_root(world, attention_help());
        return 0;
    }
    const AttentionConfig& config = a.race.config;
    const bool talk = rank == 0 && !a.quiet;

    // Cheap checks first: a bad output path must not wait for an hour of reading.
    if (!a.metrics.empty()) check_writable_file(world, a.metrics, "--metrics", {a.input, a.output});
    io::check_output_path(world, a.output, {a.input}, a.overwrite);

    io::InputFile in(world, a.input);
    std::vector<io::TensorInfo> inputs = {in.inspect(a.names.q), in.inspect(a.names.k), in.inspect(a.names.v)};
    if (a.backward) {
        bool has_do = in.contains(a.names.dout);
        check_all(world, has_do,
                  "input '" + a.input + "' has no dataset '" + a.names.dout + "', which --backward needs (dL/do; "
                  "set its name with --do-dataset)");
        inputs.push_back(in.inspect(a.names.dout));
    }
    run_collectively(world, [&] {
        for (const io::TensorInfo& t : inputs)
            if (!(t.shape == inputs[0].shape))
                throw ShapeError("datasets '" + inputs[0].name + "' " + inputs[0].shape.str() + " and '" + t.name +
                                 "' " + t.shape.str() + " in '" + a.input +
                                 "' have different shapes; q, k, v and do must share one [B, T, H, D]");
    });
    const Shape shape = inputs[0].shape;

    ProcessGrid grid(world, a.race.sp_size);
    MpiCollectives sp(grid.sp_comm());
    const io::Slab slab{grid.batch(shape.batch), grid.tokens(shape.tokens)};
    const Shape local{slab.batch.size(), slab.tokens.size(), shape.heads, shape.dim};
    const std::int64_t total_tokens = shape.batch * shape.tokens;

    // Read q, k, v (and do): four shard-sized buffers.
    std::vector<std::vector<float>> data(inputs.size());
    run_collectively(world, [&] {
        for (auto& d : data) d = allocate(local.elements());
    });
    const double read_start = MPI_Wtime();
    {
        Progress progress(talk, "reading");
        const std::int64_t n = static_cast<std::int64_t>(inputs.size());
        for (std::int64_t i = 0; i < n; ++i)
            in.read(inputs[i], slab, data[i].data(), [&](std::int64_t done, std::int64_t total) {
                progress.update(i * total + done, n * total);
            });
    }
    in.close();
    const double read_s = MPI_Wtime() - read_start;
    ConstTensor q(data[0].data(), local), k(data[1].data(), local), v(data[2].data(), local);

    Planes planes(config, shape.heads, shape.dim);
    io::OutputFile out(world, a.output, a.overwrite);
    out.create_tensor("o", shape, io::ElementType::float32);
    if (a.backward)
        for (const char* name : {"dq", "dk", "dv"}) out.create_tensor(name, shape, io::ElementType::float32);

    const Estimate estimate = talk ? estimate_compute(device, config, planes, local, data, a.backward) : Estimate{};

    // Forward, then write o and free it before the backward needs its three buffers.
    StepTimes fwd, bwd;
    double write_s = 0, forward_s = 0, backward_s = 0;
    {
        std::vector<float> o;
        run_collectively(world, [&] { o = allocate(local.elements()); });
        double t0 = MPI_Wtime();
        {
            Heartbeat beat(talk, "forward", estimate.forward_s, total_tokens);
            fwd = run_forward(device, sp, config, planes, q, k, v, MutTensor(o.data(), local));
        }
        forward_s = MPI_Wtime() - t0;
        t0 = MPI_Wtime();
        Progress progress(talk, "writing o");
        out.write("o", slab, o.data(), [&](std::int64_t done, std::int64_t total) { progress.update(done, total); });
        write_s += MPI_Wtime() - t0;
    }
    double dbeta = 0;
    if (a.backward) {
        std::vector<std::vector<float>> grads(3);
        run_collectively(world, [&] {
            for (auto& g : grads) g = allocate(local.elements());
        });
        double t0 = MPI_Wtime();
        {
            Heartbeat beat(talk, "backward", estimate.backward_s, total_tokens);
            ConstTensor dout(data[3].data(), local);
            bwd = run_backward(device, sp, world, config, planes, q, k, v, dout, MutTensor(grads[0].data(), local),
                               MutTensor(grads[1].data(), local), MutTensor(grads[2].data(), local), dbeta);
        }
        backward_s = MPI_Wtime() - t0;
        t0 = MPI_Wtime();
        Progress progress(talk, "writing dq, dk, dv");
        const char* names[3] = {"dq", "dk", "dv"};
        for (std::int64_t i = 0; i < 3; ++i)
            out.write(names[i], slab, grads[static_cast<std::size_t>(i)].data(),
                      [&](std::int64_t done, std::int64_t total) { progress.update(i * total + done, 3 * total); });
        write_s += MPI_Wtime() - t0;
    }

    out.write_planes(planes);
    out.set_attribute("tables", std::int64_t{config.tables});
    out.set_attribute("planes", std::int64_t{config.planes});
    out.set_attribute("beta", config.beta);
    out.set_attribute("eps", config.eps);
    out.set_attribute("seed", std::uint64_t{config.seed});
    out.set_attribute("causal", std::int64_t{config.causal ? 1 : 0});
    out.set_attribute("normalization", std::string(to_string(config.normalization)));
    out.set_attribute("ranks", std::int64_t{ranks});
    out.set_attribute("sp_size", std::int64_t{a.race.sp_size});
    out.set_attribute("racesp_version", std::string(RACESP_VERSION));
    if (a.backward) out.set_attribute("dbeta", dbeta);
    out.commit();

    const double wall = MPI_Wtime() - start;
    const std::int64_t peak = max_over_ranks(world, peak_rss_bytes());
    const double compute_s = max_over_ranks(world, fwd.compute_s + bwd.compute_s);
    const double collective_s = max_over_ranks(world, fwd.collective_s + bwd.collective_s);
    const double rate = static_cast<double>(total_tokens) / wall;
    print_on_root(world, "racesp: attention: " + std::to_string(total_tokens) + " tokens (" +
                             std::to_string(shape.batch) + " x " + std::to_string(shape.tokens) + ")" +
                             (a.backward ? ", forward + backward" : ", forward") + ", " + std::to_string(ranks) +
                             " rank" + (ranks > 1 ? "s" : "") + ", wall " + human_duration(wall) + ", " +
                             human_count(rate) + " tokens/s, peak memory " + human_bytes(double(peak)) +
                             " per rank (max) -> " + a.output + "\n");

    if (!a.metrics.empty()) {
        nlohmann::json m = {
            {"command", "attention"}, {"input", a.input}, {"output", a.output},
            {"batch", shape.batch}, {"tokens", shape.tokens}, {"heads", shape.heads}, {"dim", shape.dim},
            {"total_tokens", total_tokens}, {"backward", a.backward}, {"device", to_string(device)},
            {"tables", config.tables}, {"planes", config.planes}, {"beta", config.beta}, {"eps", config.eps},
            {"seed", config.seed}, {"causal", config.causal}, {"normalization", to_string(config.normalization)},
            {"share_planes", config.share_planes}, {"sp_size", a.race.sp_size},
            {"wall_s", wall}, {"read_s", max_over_ranks(world, read_s)}, {"forward_s", forward_s},
            {"backward_s", backward_s}, {"write_s", write_s}, {"compute_s", compute_s},
            {"collective_s", collective_s}, {"tokens_per_s", rate}, {"peak_rss_bytes", peak},
            {"machine", machine_description(world)}};
        if (a.backward) m["dbeta"] = dbeta;
        write_text_file(world, a.metrics, m.dump(2) + "\n");
    }
    return 0;
}

}  // namespace racesp::cli
