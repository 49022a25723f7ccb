// Measurements for summaries and JSON: peak memory, the machine, reductions over ranks.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace racesp::cli {

// Peak resident memory of this process so far (getrusage ru_maxrss), in bytes.
std::int64_t peak_rss_bytes();

// Collective: the largest value over the ranks of `comm`, on every rank.
std::int64_t max_over_ranks(MPI_Comm comm, std::int64_t value);
double max_over_ranks(MPI_Comm comm, double value);

// Collective: where this runs: ranks, distinct hosts, OpenMP threads per rank, CPU model,
// racesp version. The same object on every rank.
nlohmann::json machine_description(MPI_Comm world);

// Collective: rank 0 writes `text` to `path` (replacing it); every rank throws the same
// CollectiveError if it could not.
void write_text_file(MPI_Comm world, const std::string& path, const std::string& text);

// Collective: rank 0 checks that `path` could be created (its directory exists and takes files)
// and that it is none of `others` (the input, the output), which it would overwrite.
void check_writable_file(MPI_Comm world, const std::string& path, const std::string& option,
                         const std::vector<std::string>& others);

}  // namespace racesp::cli
