// racesp: the command-line front end (DESIGN.md §5). `racesp help` lists the subcommands.
#include <cstdio>
#include <string>

#include "commands.hpp"
#include "racesp/errors.hpp"
#include "racesp/failure.hpp"

namespace racesp::cli {

namespace {

const char* const overview =
    "usage: racesp COMMAND [options]\n"
    "\n"
    "RaceSP: sequence-parallel RACE attention. Run under mpirun to shard long sequences over ranks:\n"
    "  mpirun -np 4 racesp attention --input seq.h5 --output out.h5 --causal --backward\n"
    "\n"
    "commands:\n"
    "  attention   RACE attention (forward; backward with --backward) on HDF5 q, k, v -> HDF5 o\n"
    "  generate    write random q, k, v (and do) to a new HDF5 file, or a recall-task token file\n"
    "  bench       time forward + backward on synthetic data; one JSON line per configuration\n"
    "  prep        text files -> a byte-level token file for train\n"
    "  train       train a RACE transformer on a token file, sequences sharded over the ranks\n"
    "  help        this list; 'racesp help COMMAND' shows one command's options\n"
    "\n"
    "'racesp COMMAND --help' shows a command's options; 'racesp --version' the version.\n";

// What the words ask for; throws ConfigError for an unknown command (no communication).
std::string choose(const Args& words) {
    if (words.empty()) throw ConfigError("no command given; 'racesp help' lists the commands");
    const std::string& first = words.front();
    if (first == "attention" || first == "generate" || first == "bench" || first == "prep" || first == "train")
        return first;
    if (first == "--version" || first == "version") return "version";
    if (first == "help" || first == "--help" || first == "-h") {
        if (words.size() == 1) return "help";
        const std::string& topic = words[1];
        if (topic == "attention" || topic == "generate" || topic == "bench" || topic == "prep" || topic == "train")
            return "help " + topic;
        throw ConfigError("unknown command '" + topic + "'; 'racesp help' lists the commands");
    }
    throw ConfigError("unknown command '" + first + "'; 'racesp help' lists the commands");
}

int dispatch(MPI_Comm world, const Args& words) {
    std::string action;
    // Every rank sees the same words, so a bad command fails alike everywhere.
    run_collectively(world, [&] { action = choose(words); });
    Args rest(words.begin() + 1, words.end());
    if (action == "attention") return run_attention(world, rest);
    if (action == "generate") return run_generate(world, rest);
    if (action == "bench") return run_bench(world, rest);
    if (action == "prep") return run_prep(world, rest);
    if (action == "train") return run_train(world, rest);
    if (action == "version") print_on_root(world, std::string("racesp ") + RACESP_VERSION + "\n");
    else if (action == "help") print_on_root(world, overview);
    else if (action == "help attention") print_on_root(world, attention_help());
    else if (action == "help generate") print_on_root(world, generate_help());
    else if (action == "help bench") print_on_root(world, bench_help());
    else if (action == "help prep") print_on_root(world, prep_help());
    else if (action == "help train") print_on_root(world, train_help());
    return 0;
}

}  // namespace

void print_on_root(MPI_Comm world, const std::string& text) {
    int rank = 0;
    MPI_Comm_rank(world, &rank);
    if (rank == 0) {
        std::fwrite(text.data(), 1, text.size(), stdout);
        std::fflush(stdout);
    }
}

}  // namespace racesp::cli

int main(int argc, char** argv) {
    return racesp::run_mpi_main(argc, argv, [&](MPI_Comm world) {
        return racesp::cli::dispatch(world, racesp::cli::Args(argv + 1, argv + argc));
    });
}
