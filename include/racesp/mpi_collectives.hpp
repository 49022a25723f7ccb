// Collectives (collectives.hpp) over an MPI communicator on host float64 buffers (DESIGN.md §3):
// MPI_Allreduce, MPI_Exscan, and MPI_Exscan over a copy of the communicator with the rank order
// reversed for the sum over later ranks.
#pragma once

#include <mpi.h>

#include <climits>
#include <cstdint>

#include "racesp/collectives.hpp"

namespace racesp {

class MpiCollectives final : public Collectives {
public:
    // Collective over `comm`: splits the reversed communicator once, here. `comm` is not owned
    // and must outlive this object. Buffers longer than `max_piece` elements (MPI counts are
    // int) are summed in consecutive pieces of at most `max_piece`; tests pass a small value to
    // exercise the splitting. Throws ConfigError if max_piece < 1.
    explicit MpiCollectives(MPI_Comm comm, std::int64_t max_piece = INT_MAX);
    // Frees the reversed communicator: MPI_Comm_free, so every rank must destroy its object.
    ~MpiCollectives() override;
    MpiCollectives(const MpiCollectives&) = delete;
    MpiCollectives& operator=(const MpiCollectives&) = delete;

    int rank() const override { return rank_; }
    int size() const override { return size_; }
    MPI_Comm comm() const { return comm_; }

    // Every rank of the communicator must call these with the same count.
    void allreduce_sum(double* data, std::int64_t count) override;
    void exscan_sum(double* data, std::int64_t count) override;
    void reverse_exscan_sum(double* data, std::int64_t count) override;

private:
    MPI_Comm comm_;
    MPI_Comm reversed_ = MPI_COMM_NULL;  // same ranks, rank r of comm_ is rank size-1-r here
    int rank_ = 0, size_ = 1;
    std::int64_t max_piece_;
};

}  // namespace racesp
