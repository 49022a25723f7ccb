// Sequence-parallel RACE attention over MPI (DESIGN.md §3): each rank of a sequence-parallel
// group holds a contiguous shard of the tokens; ranks exchange only RACE states.
#pragma once

#include <mpi.h>

#include <cstdint>

#include "racesp/attention.hpp"
#include "racesp/collectives.hpp"

namespace racesp {

// Contiguous token range [begin, end) of `rank` among `ranks` for a sequence of `tokens`:
// balanced, earlier ranks take the extra token; a rank may get none.
struct TokenRange {
    std::int64_t begin = 0, end = 0;
    std::int64_t size() const { return end - begin; }
};
TokenRange shard_range(std::int64_t tokens, int rank, int ranks);

// Rank and size of a communicator, as plain values.
int comm_rank(MPI_Comm comm);
int comm_size(MPI_Comm comm);

// The grid of ranks: groups of `sp_size` consecutive world ranks share one sequence; the
// groups are data-parallel. The batch entries are split over the data-parallel groups
// with the same balanced rule as tokens.
class ProcessGrid {
public:
    ProcessGrid(MPI_Comm world, int sp_size);  // throws ConfigError unless sp_size divides the world
    ~ProcessGrid();
    ProcessGrid(const ProcessGrid&) = delete;
    ProcessGrid& operator=(const ProcessGrid&) = delete;

    MPI_Comm world() const { return world_; }
    MPI_Comm sp_comm() const { return sp_; }
    MPI_Comm dp_comm() const { return dp_; }
    int world_rank() const;
    int world_size() const;
    int sp_rank() const;
    int sp_size() const;
    int dp_rank() const;
    int dp_size() const;

    TokenRange tokens(std::int64_t total_tokens) const { return shard_range(total_tokens, sp_rank(), sp_size()); }
    TokenRange batch(std::int64_t total_batch) const { return shard_range(total_batch, dp_rank(), dp_size()); }

private:
    MPI_Comm world_, sp_, dp_;
};

// Time spent in one distributed call, split for scaling studies.
struct StepTimes {
    double compute_s = 0;
    double collective_s = 0;
};

// Distributed forward/backward on this rank's shard [B_local, T_local, H, D]; `sp` sums over
// the sequence-parallel group. The backward returns dL/dbeta summed over `world` (every
// batch entry and every token), identical on every rank.
StepTimes distributed_forward(Collectives& sp, const AttentionConfig& config, const Planes& planes,
                              ConstTensor q, ConstTensor k, ConstTensor v, MutTensor o,
                              const CpuOptions& options = {});
StepTimes distributed_backward(Collectives& sp, MPI_Comm world, const AttentionConfig& config,
                               const Planes& planes, ConstTensor q, ConstTensor k, ConstTensor v,
                               ConstTensor dout, MutTensor dq, MutTensor dk, MutTensor dv,
                               double& dbeta, const CpuOptions& options = {});

}  // namespace racesp
