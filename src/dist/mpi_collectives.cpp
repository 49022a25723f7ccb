// Float64 sums across the ranks of an MPI communicator (DESIGN.md §3).
#include "racesp/mpi_collectives.hpp"

#include <algorithm>
#include <string>

#include "racesp/errors.hpp"

namespace racesp {

MpiCollectives::MpiCollectives(MPI_Comm comm, std::int64_t max_piece) : comm_(comm), max_piece_(max_piece) {
    if (max_piece < 1 || max_piece > INT_MAX) {
        throw ConfigError("MpiCollectives: piece size " + std::to_string(max_piece) + " outside 1.." +
                          std::to_string(INT_MAX));
    }
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    // One colour, key size-1-rank: rank r here is rank size-1-r there, so an exclusive scan
    // there sums the ranks after r here.
    MPI_Comm_split(comm_, 0, size_ - 1 - rank_, &reversed_);
}

MpiCollectives::~MpiCollectives() {
    if (reversed_ != MPI_COMM_NULL) MPI_Comm_free(&reversed_);
}

void MpiCollectives::allreduce_sum(double* data, std::int64_t count) {
    for (std::int64_t done = 0; done < count; done += max_piece_) {
        int n = static_cast<int>(std::min(max_piece_, count - done));
        MPI_Allreduce(MPI_IN_PLACE, data + done, n, MPI_DOUBLE, MPI_SUM, comm_);
    }
}

// MPI_Exscan in place over `comm`, pieces of at most max_piece; the first rank's buffer is left
// undefined by MPI, so it is set to the empty sum.
static void exscan_pieces(MPI_Comm comm, int rank, std::int64_t max_piece, double* data, std::int64_t count) {
    for (std::int64_t done = 0; done < count; done += max_piece) {
        int n = static_cast<int>(std::min(max_piece, count - done));
        MPI_Exscan(MPI_IN_PLACE, data + done, n, MPI_DOUBLE, MPI_SUM, comm);
    }
    if (rank == 0) std::fill(data, data + count, 0.0);
}

void MpiCollectives::exscan_sum(double* data, std::int64_t count) {
    exscan_pieces(comm_, rank_, max_piece_, data, count);
}

void MpiCollectives::reverse_exscan_sum(double* data, std::int64_t count) {
    exscan_pieces(reversed_, size_ - 1 - rank_, max_piece_, data, count);
}

}  // namespace racesp
