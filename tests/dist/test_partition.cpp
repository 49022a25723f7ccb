// shard_range and ProcessGrid against their definitions (distributed.hpp).
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdint>

#include "racesp/distributed.hpp"
#include "racesp/errors.hpp"

using namespace racesp;

namespace {

int world_size() {
    int s = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &s);
    return s;
}

int world_rank() {
    int r = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}

}  // namespace

TEST(ShardRange, ContiguousBalancedEarlierRanksLarger) {
    for (int ranks = 1; ranks <= 9; ranks++) {
        for (std::int64_t tokens : {0, 1, 2, 5, 8, 13, 1000003}) {
            SCOPED_TRACE("tokens " + std::to_string(tokens) + " ranks " + std::to_string(ranks));
            std::int64_t next = 0;
            for (int r = 0; r < ranks; r++) {
                TokenRange range = shard_range(tokens, r, ranks);
                EXPECT_EQ(range.begin, next);  // contiguous, in rank order
                // ceil or floor of tokens / ranks, the larger ones first
                std::int64_t expected = tokens / ranks + (r < tokens % ranks ? 1 : 0);
                EXPECT_EQ(range.size(), expected);
                next = range.end;
            }
            EXPECT_EQ(next, tokens);  // covers the whole sequence
        }
    }
}

TEST(ShardRange, FewerTokensThanRanksGivesEmptyShards) {
    EXPECT_EQ(shard_range(2, 0, 4).size(), 1);
    EXPECT_EQ(shard_range(2, 1, 4).size(), 1);
    EXPECT_EQ(shard_range(2, 2, 4).size(), 0);
    EXPECT_EQ(shard_range(2, 3, 4).begin, 2);
    EXPECT_EQ(shard_range(2, 3, 4).size(), 0);
}

TEST(ShardRange, RejectsBadArguments) {
    EXPECT_THROW(shard_range(5, 0, 0), ConfigError);
    EXPECT_THROW(shard_range(5, 3, 3), ConfigError);
    EXPECT_THROW(shard_range(5, -1, 3), ConfigError);
    EXPECT_THROW(shard_range(-1, 0, 3), ConfigError);
}

TEST(ProcessGrid, ConsecutiveRanksShareASequence) {
    int size = world_size(), rank = world_rank();
    for (int sp = 1; sp <= size; sp++) {
        if (size % sp != 0) continue;
        SCOPED_TRACE("sp " + std::to_string(sp));
        ProcessGrid grid(MPI_COMM_WORLD, sp);
        EXPECT_EQ(grid.world_rank(), rank);
        EXPECT_EQ(grid.world_size(), size);
        EXPECT_EQ(grid.sp_size(), sp);
        EXPECT_EQ(grid.sp_rank(), rank % sp);
        EXPECT_EQ(grid.dp_size(), size / sp);
        EXPECT_EQ(grid.dp_rank(), rank / sp);
        // The sp communicator holds exactly world ranks of this group: its sum of world ranks
        // is g*sp + (g*sp+1) + ... + (g*sp+sp-1).
        int mine = rank, sum = 0;
        MPI_Allreduce(&mine, &sum, 1, MPI_INT, MPI_SUM, grid.sp_comm());
        int g = rank / sp;
        EXPECT_EQ(sum, g * sp * sp + sp * (sp - 1) / 2);
        MPI_Allreduce(&mine, &sum, 1, MPI_INT, MPI_SUM, grid.dp_comm());
        int c = rank % sp, groups = size / sp;
        EXPECT_EQ(sum, c * groups + sp * groups * (groups - 1) / 2);
        EXPECT_EQ(grid.tokens(10).begin, shard_range(10, rank % sp, sp).begin);
        EXPECT_EQ(grid.batch(3).end, shard_range(3, rank / sp, size / sp).end);
    }
}

TEST(ProcessGrid, RejectsSpSizeThatDoesNotDivideTheWorld) {
    int size = world_size();
    EXPECT_THROW((void)ProcessGrid(MPI_COMM_WORLD, 0), ConfigError);
    EXPECT_THROW((void)ProcessGrid(MPI_COMM_WORLD, size + 1), ConfigError);
    if (size > 2) {
        EXPECT_THROW((void)ProcessGrid(MPI_COMM_WORLD, size - 1), ConfigError);
    }
}
