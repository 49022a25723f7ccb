// The grid of ranks: sequence-parallel groups of consecutive world ranks, data-parallel across.
#include <string>

#include "racesp/distributed.hpp"
#include "racesp/errors.hpp"

namespace racesp {

int comm_rank(MPI_Comm comm) {
    int r = 0;
    MPI_Comm_rank(comm, &r);
    return r;
}

int comm_size(MPI_Comm comm) {
    int s = 0;
    MPI_Comm_size(comm, &s);
    return s;
}

ProcessGrid::ProcessGrid(MPI_Comm world, int sp_size) : world_(world), sp_(MPI_COMM_NULL), dp_(MPI_COMM_NULL) {
    int rank = comm_rank(world);
    int size = comm_size(world);
    // Every rank sees the same world size and (from the same options) the same sp_size, so
    // every rank throws alike, before any collective call.
    if (sp_size < 1 || size % sp_size != 0) {
        throw ConfigError("--sp-size " + std::to_string(sp_size) + " must divide the number of ranks (" +
                          std::to_string(size) + ")");
    }
    // World ranks g*sp_size .. g*sp_size + sp_size - 1 hold one sequence; keys keep world order
    // so the sequence-parallel rank is the shard index.
    MPI_Comm_split(world, rank / sp_size, rank, &sp_);
    MPI_Comm_split(world, rank % sp_size, rank, &dp_);
}

ProcessGrid::~ProcessGrid() {
    if (sp_ != MPI_COMM_NULL) MPI_Comm_free(&sp_);
    if (dp_ != MPI_COMM_NULL) MPI_Comm_free(&dp_);
}

int ProcessGrid::world_rank() const { return comm_rank(world_); }
int ProcessGrid::world_size() const { return comm_size(world_); }
int ProcessGrid::sp_rank() const { return comm_rank(sp_); }
int ProcessGrid::sp_size() const { return comm_size(sp_); }
int ProcessGrid::dp_rank() const { return comm_rank(dp_); }
int ProcessGrid::dp_size() const { return comm_size(dp_); }

}  // namespace racesp
