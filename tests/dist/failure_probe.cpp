// A program that fails on purpose in one of several ways, run by check_failure.sh under mpiexec
// to check that run_mpi_main prints one line and ends every rank with a non-zero exit.
//
//   failure_probe rank-throws   rank 1 (rank 0 alone) throws while the others wait in a collective
//   failure_probe collective    ranks 1.. fail check_all with their own messages
//   failure_probe bad-sp-size   every rank finds --sp-size invalid (run_collectively)
//   failure_probe group-fails   the last sequence-parallel group fails check_all on its own
//                               communicator while the other groups wait in a world barrier
//   failure_probe ok            succeeds
#include <mpi.h>

#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>

#include "racesp/distributed.hpp"
#include "racesp/errors.hpp"
#include "racesp/failure.hpp"

using namespace racesp;

namespace {

int probe(MPI_Comm world, const std::string& mode) {
    int rank = 0, size = 0;
    MPI_Comm_rank(world, &rank);
    MPI_Comm_size(world, &size);
    if (mode == "rank-throws") {
        int thrower = size > 1 ? 1 : 0;
        if (rank == thrower) {
            // Let the others reach the collective first, so they are blocked in it.
            std::this_thread::sleep_for(std::chrono::milliseconds(300));
            throw std::runtime_error("injected failure on rank " + std::to_string(rank));
        }
        double x = 1, y = 0;
        MPI_Allreduce(&x, &y, 1, MPI_DOUBLE, MPI_SUM, world);
        return 0;
    }
    if (mode == "collective") {
        bool ok = size > 1 ? rank == 0 : false;
        check_all(world, ok, "bad input found by rank " + std::to_string(rank));
        return 0;
    }
    if (mode == "bad-sp-size") {
        int sp_size = size + 1;
        run_collectively(world, [&] {
            if (size % sp_size != 0) {
                throw ConfigError("--sp-size " + std::to_string(sp_size) + " does not divide " + std::to_string(size) +
                                  " ranks");
            }
        });
        return 0;
    }
    if (mode == "group-fails") {
        ProcessGrid grid(world, size % 2 == 0 ? 2 : 1);
        bool failing_group = grid.dp_rank() == grid.dp_size() - 1;
        if (failing_group) {
            bool ok = grid.sp_rank() != grid.sp_size() - 1;
            check_all(grid.sp_comm(), ok, "group input bad on rank " + std::to_string(rank));
        }
        MPI_Barrier(world);
        return 0;
    }
    if (mode == "ok") {
        MPI_Barrier(world);
        return 0;
    }
    throw ConfigError("unknown mode " + mode);
}

}  // namespace

int main(int argc, char** argv) {
    std::string mode = argc > 1 ? argv[1] : "";
    return run_mpi_main(argc, argv, [&](MPI_Comm world) { return probe(world, mode); });
}
