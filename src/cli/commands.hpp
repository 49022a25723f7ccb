// The racesp subcommands. Each runs on every rank of `world` with the words after its name,
// returns the exit code (the same on every rank), and reports user errors by throwing
// CollectiveError on every rank (failure.hpp): run_mpi_main prints it once from rank 0.
#pragma once

#include <mpi.h>

#include <string>
#include <vector>

namespace racesp::cli {

using Args = std::vector<std::string>;

int run_attention(MPI_Comm world, const Args& args);
int run_generate(MPI_Comm world, const Args& args);
int run_bench(MPI_Comm world, const Args& args);
int run_prep(MPI_Comm world, const Args& args);
int run_train(MPI_Comm world, const Args& args);

// The --help text of each command (also `racesp help COMMAND`).
std::string attention_help();
std::string generate_help();
std::string bench_help();
std::string prep_help();
std::string train_help();

// Prints `text` to stdout on world rank 0 only.
void print_on_root(MPI_Comm world, const std::string& text);

}  // namespace racesp::cli
