// MpiCollectives against serial sums of values every rank can compute for every other rank.
// Values are small integers, so every sum is exact in float64 and compared with ==.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdint>
#include <vector>

#include "racesp/distributed.hpp"
#include "racesp/errors.hpp"
#include "racesp/mpi_collectives.hpp"

using namespace racesp;

namespace {

// What rank r of a group contributes at index i: different on every rank and index, including
// non-zero values on rank 0 and on the last rank so that the zeros there are checked.
double value(int r, std::int64_t i) { return static_cast<double>((r + 1) * 1000 + (i * 7 + r * 3) % 11 - 5); }

std::vector<double> contribution(int r, std::int64_t count) {
    std::vector<double> x(static_cast<std::size_t>(count));
    for (std::int64_t i = 0; i < count; i++) x[i] = value(r, i);
    return x;
}

// Serial sum over ranks [first, last) of the group.
double serial_sum(int first, int last, std::int64_t i) {
    double s = 0;
    for (int r = first; r < last; r++) s += value(r, i);
    return s;
}

// Runs all three collectives on `comm` with the given piece size and counts.
void check_collectives(MPI_Comm comm, std::int64_t max_piece) {
    MpiCollectives c(comm, max_piece);
    int rank = c.rank(), size = c.size();
    for (std::int64_t count : {0, 1, 5, 10, 1000}) {
        SCOPED_TRACE("count " + std::to_string(count) + " max_piece " + std::to_string(max_piece) + " rank " +
                     std::to_string(rank) + " of " + std::to_string(size));
        // Mismatches are counted, not ASSERTed: a rank leaving early would strand the others
        // in the next collective.
        std::int64_t bad_allreduce = 0, bad_exscan = 0, bad_reverse = 0;
        std::vector<double> x = contribution(rank, count);
        c.allreduce_sum(x.data(), count);
        for (std::int64_t i = 0; i < count; i++) bad_allreduce += x[i] != serial_sum(0, size, i);

        x = contribution(rank, count);
        c.exscan_sum(x.data(), count);  // rank 0: serial_sum(0, 0, i) = 0
        for (std::int64_t i = 0; i < count; i++) bad_exscan += x[i] != serial_sum(0, rank, i);

        x = contribution(rank, count);
        c.reverse_exscan_sum(x.data(), count);  // last rank: serial_sum(size, size, i) = 0
        for (std::int64_t i = 0; i < count; i++) bad_reverse += x[i] != serial_sum(rank + 1, size, i);

        EXPECT_EQ(bad_allreduce, 0);
        EXPECT_EQ(bad_exscan, 0);
        EXPECT_EQ(bad_reverse, 0);
    }
}

}  // namespace

TEST(MpiCollectives, WorldSumsEqualSerialSums) {
    check_collectives(MPI_COMM_WORLD, INT32_MAX);
}

// Counts above the piece size go in several MPI calls (as counts over INT_MAX must); a piece
// size of 3 splits 10 and 1000 unevenly.
TEST(MpiCollectives, SplitIntoPiecesEqualSerialSums) {
    check_collectives(MPI_COMM_WORLD, 3);
    check_collectives(MPI_COMM_WORLD, 1);
}

// On the sequence-parallel groups of a grid: sums stay inside each group, with group ranks.
TEST(MpiCollectives, SequenceParallelGroups) {
    int size = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    for (int sp = 1; sp <= size; sp++) {
        if (size % sp != 0) continue;
        ProcessGrid grid(MPI_COMM_WORLD, sp);
        check_collectives(grid.sp_comm(), INT32_MAX);
        check_collectives(grid.sp_comm(), 4);
    }
}

TEST(MpiCollectives, RejectsBadPieceSize) {
    EXPECT_THROW((void)MpiCollectives(MPI_COMM_WORLD, 0), ConfigError);
    EXPECT_THROW((void)MpiCollectives(MPI_COMM_WORLD, -5), ConfigError);
}
