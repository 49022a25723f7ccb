// check_all / run_collectively: every rank throws alike, carrying the lowest failing rank's
// message. (The printing and exit paths of run_mpi_main are checked by failure_probe.)
#include <gtest/gtest.h>
#include <mpi.h>

#include <stdexcept>
#include <string>

#include "racesp/distributed.hpp"
#include "racesp/errors.hpp"
#include "racesp/failure.hpp"

using namespace racesp;

namespace {

int world_rank() {
    int r = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}

int world_size() {
    int s = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &s);
    return s;
}

}  // namespace

TEST(CheckAll, ReturnsWhenEveryRankIsOk) {
    EXPECT_NO_THROW(check_all(MPI_COMM_WORLD, true, "unused"));
}

TEST(CheckAll, EveryRankThrowsTheLowestFailingRanksMessage) {
    int rank = world_rank(), size = world_size();
    // Ranks from the middle up fail, each with its own message; rank size/2 is the lowest.
    int lowest = size / 2;
    bool ok = rank < lowest;
    std::string message = "failure on rank " + std::to_string(rank);
    bool threw = false;
    try {
        check_all(MPI_COMM_WORLD, ok, message);
    } catch (const CollectiveError& e) {
        threw = true;
        EXPECT_EQ(std::string(e.what()), "failure on rank " + std::to_string(lowest));
        EXPECT_EQ(e.failing_rank(), lowest);
        EXPECT_TRUE(e.whole_world());
    }
    EXPECT_TRUE(threw);
}

TEST(CheckAll, SubgroupErrorsStayInTheGroupAndAreNotWholeWorld) {
    int rank = world_rank(), size = world_size();
    int sp = size % 2 == 0 ? 2 : 1;
    ProcessGrid grid(MPI_COMM_WORLD, sp);
    // Only the last group fails, from its last rank.
    bool last_group = grid.dp_rank() == grid.dp_size() - 1;
    bool ok = !(last_group && grid.sp_rank() == sp - 1);
    bool threw = false;
    try {
        check_all(grid.sp_comm(), ok, "group failure");
    } catch (const CollectiveError& e) {
        threw = true;
        EXPECT_EQ(std::string(e.what()), "group failure");
        EXPECT_EQ(e.failing_rank(), size - 1);
        EXPECT_EQ(e.whole_world(), sp == size);
    }
    EXPECT_EQ(threw, last_group) << "rank " << rank;
}

TEST(RunCollectively, ConvertsALocalExceptionOnAnyRankIntoOneOnEveryRank) {
    int size = world_size(), rank = world_rank();
    bool threw = false;
    try {
        run_collectively(MPI_COMM_WORLD, [&] {
            if (rank == size - 1) throw ConfigError("--planes 11 outside 1..10");
        });
    } catch (const CollectiveError& e) {
        threw = true;
        EXPECT_EQ(std::string(e.what()), "--planes 11 outside 1..10");
    }
    EXPECT_TRUE(threw);
    EXPECT_NO_THROW(run_collectively(MPI_COMM_WORLD, [] {}));
}
