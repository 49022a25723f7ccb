// racesp generate: random q, k, v (and do) written collectively into a new HDF5 file. Each rank
// generates and writes its token range block by block, so memory stays at one block per rank
// and any number of ranks writes the same file.
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <vector>

#include "commands.hpp"
#include "metrics.hpp"
#include "options.hpp"
#include "progress.hpp"
#include "racesp/errors.hpp"
#include "racesp/failure.hpp"
#include "racesp/io.hpp"
#include "recall_task.hpp"
#include "synthetic.hpp"
#include "token_file.hpp"

namespace racesp::cli {

namespace {

struct GenerateArgs {
    std::string output;
    // -1: not given (required for the task; checked after parsing).
    std::int64_t batch = -1, heads = -1, dim = -1;
    Count tokens{-1};
    Seed seed;
    std::string dtype = "float32";
    bool with_grad = false, overwrite = false, quiet = false;
    std::string task = "qkv";
    std::int64_t pairs = 4, val_batch = 0;
    DatasetNames names;
};

po::options_description generate_options(GenerateArgs& a) {
    po::options_description options("options", 100, 40);
    options.add_options()
        ("output", po::value<std::string>(&a.output)->required()->value_name("FILE"), "the new HDF5 file")
        ("task", po::value<std::string>(&a.task)->default_value(a.task)->value_name("TASK"),
         "qkv: q, k, v (and do) for attention; recall: a token file of the long-range recall task for train")
        ("batch", po::value<std::int64_t>(&a.batch)->value_name("B"), "sequences (required)")
        ("tokens", po::value<Count>(&a.tokens)->value_name("T"), "tokens per sequence (1M, 100M, ...) (required)")
        ("heads", po::value<std::int64_t>(&a.heads)->value_name("H"), "heads (required for qkv)")
        ("dim", po::value<std::int64_t>(&a.dim)->value_name("D"), "head dimension (required for qkv)")
        ("pairs", po::value<std::int64_t>(&a.pairs)->default_value(a.pairs)->value_name("K"),
         "recall: key-value pairs per sequence (1..12)")
        ("val-batch", po::value<std::int64_t>(&a.val_batch)->default_value(0, "batch/10, at least 1")->value_name("N"),
         "recall: validation sequences")
        ("seed", po::value<Seed>(&a.seed)->default_value(a.seed, "0")->value_name("S"), "seed of the values")
        ("dtype", po::value<std::string>(&a.dtype)->default_value(a.dtype)->value_name("TYPE"), "file type: float32 | float16 | float64")
        ("with-grad", po::bool_switch(&a.with_grad), "also write 'do' (dL/do), for attention --backward")
        ("overwrite", po::bool_switch(&a.overwrite), "replace an existing output file")
        ("quiet", po::bool_switch(&a.quiet), "no progress lines on stderr");
    a.names.add_to(options);
    add_common_options(options);
    return options;
}

const char* const usage = "racesp generate --output FILE --batch B --tokens T --heads H --dim D [options]\n"
                          "       racesp generate --task recall --output FILE --batch B --tokens T [--pairs K]";
const char* const description =
    "Writes datasets q, k, v (and do with --with-grad) shaped [B, T, H, D] with standard normal values\n"
    "that depend only on (seed, dataset, index): any number of ranks writes the same file. Run it under\n"
    "mpirun to write large files in parallel.\n"
    "With --task recall: a token file for racesp train (tokens, val_tokens, val_scored) of B sequences of\n"
    "T tokens in which K key-value pairs appear at the start and the queries for them at the end.";

// The token file of the recall task; rank 0 writes it (it is small), the others share errors.
int generate_recall(MPI_Comm world, const GenerateArgs& a) {
    const auto start = std::chrono::steady_clock::now();
    RecallSpec spec;
    spec.sequences = a.batch;
    spec.val_sequences = a.val_batch > 0 ? a.val_batch : std::max<std::int64_t>(1, a.batch / 10);
    spec.tokens = a.tokens.value;
    spec.pairs = a.pairs;
    spec.seed = a.seed.value;
    run_collectively(world, [&] { check_recall(spec); });
    io::check_output_path(world, a.output, {}, a.overwrite);
    int rank = 0;
    MPI_Comm_rank(world, &rank);
    run_collectively(world, [&] {
        if (rank == 0) io::write_token_file(a.output, make_recall(spec));
    });
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    print_on_root(world, "racesp: generate: recall task, " + std::to_string(spec.sequences) + " + " +
                             std::to_string(spec.val_sequences) + " validation sequences of " +
                             std::to_string(spec.tokens) + " tokens with " + std::to_string(spec.pairs) +
                             " pairs, in " + human_duration(seconds) + " -> " + a.output + "\n");
    return 0;
}

}  // namespace

std::string generate_help() {
    GenerateArgs a;
    return help_text(usage, description, generate_options(a));
}

int run_generate(MPI_Comm world, const Args& args) {
    const auto start = std::chrono::steady_clock::now();
    int rank = 0, ranks = 1;
    MPI_Comm_rank(world, &rank);
    MPI_Comm_size(world, &ranks);

    GenerateArgs a;
    po::options_description options = generate_options(a);
    bool run = true;
    io::ElementType dtype = io::ElementType::float32;
    run_collectively(world, [&] {
        run = parse_options("generate", args, options);
        if (!run) return;
        if (a.task != "qkv" && a.task != "recall")
            throw ConfigError("--task must be qkv or recall, got '" + a.task + "'");
        const std::pair<const char*, std::int64_t> needed[] = {
            {"batch", a.batch}, {"tokens", a.tokens.value}, {"heads", a.heads}, {"dim", a.dim}};
        for (const auto& [name, value] : needed) {
            if (a.task == "recall" && (std::string(name) == "heads" || std::string(name) == "dim")) continue;
            if (value == -1)
                throw ConfigError(std::string("the option '--") + name +
                                  "' is required but missing (see 'racesp generate --help')");
        }
        if (a.task == "recall") return;
        require_at_least("--batch", a.batch, 1);
        require_at_least("--tokens", a.tokens.value, 1);
        require_at_least("--heads", a.heads, 1);
        require_at_least("--dim", a.dim, 1);
        dtype = io::parse_element_type(a.dtype);
    });
    if (!run) {
        print_on_root(world, generate_help());
        return 0;
    }
    if (a.task == "recall") return generate_recall(world, a);

    const Shape shape{a.batch, a.tokens.value, a.heads, a.dim};
    std::vector<std::pair<std::string, Stream>> tensors = {
        {a.names.q, stream_q}, {a.names.k, stream_k}, {a.names.v, stream_v}};
    if (a.with_grad) tensors.push_back({a.names.dout, stream_do});

    io::OutputFile out(world, a.output, a.overwrite);
    for (const auto& [name, stream] : tensors) out.create_tensor(name, shape, dtype);

    // Every rank writes all batch entries of its token range.
    const io::Slab mine{{0, shape.batch}, shard_range(shape.tokens, rank, ranks)};
    const std::int64_t block = io::block_tokens(shape, shape.batch, 32 << 20);
    const std::int64_t blocks = (shard_range(shape.tokens, 0, ranks).size() + block - 1) / block;  // rank 0 has most
    const std::size_t element = dtype == io::ElementType::float16 ? 2 : dtype == io::ElementType::float64 ? 8 : 4;
    std::vector<unsigned char> buffer;
    run_collectively(world, [&] {
        buffer.resize(static_cast<std::size_t>(std::min(block, std::max<std::int64_t>(mine.tokens.size(), 1)) *
                                               shape.batch * shape.heads * shape.dim) * element);
    });

    Progress progress(rank == 0 && !a.quiet, "generate");
    const std::int64_t total = static_cast<std::int64_t>(tensors.size()) * shape.batch * shape.tokens;
    std::int64_t index = 0;
    for (const auto& [name, stream] : tensors) {
        for (std::int64_t i = 0; i < blocks; ++i) {
            TokenRange part{std::min(mine.tokens.begin + i * block, mine.tokens.end),
                            std::min(mine.tokens.begin + (i + 1) * block, mine.tokens.end)};
            io::Slab piece{mine.batch, part};
            fill_slab(a.seed.value, stream, shape, piece, dtype, buffer.data());
            out.write_block(name, piece, buffer.data(), dtype);
            progress.update((index * blocks + i + 1) * shape.batch * shape.tokens / blocks, total);
        }
        ++index;
    }
    out.set_attribute("seed", a.seed.value);
    out.set_attribute("racesp_version", std::string(RACESP_VERSION));
    out.commit();

    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    double bytes = static_cast<double>(total * shape.heads * shape.dim) * static_cast<double>(element);
    {
        std::string names;
        for (const auto& t : tensors) names += (names.empty() ? "" : ", ") + t.first;
        print_on_root(world, "racesp: generate: wrote " + names + " " + shape.str() + " " + a.dtype + " to '" +
                                 a.output + "': " + human_bytes(bytes) + " in " + human_duration(seconds) + " (" +
                                 human_bytes(bytes / seconds) + "/s, " +
                                 human_count(double(shape.batch * shape.tokens) / seconds) + " tokens/s) on " +
                                 std::to_string(ranks) + " rank" + (ranks > 1 ? "s" : "") + "\n");
    }
    return 0;
}

}  // namespace racesp::cli
