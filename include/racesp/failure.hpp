// Failure handling for MPI programs (DESIGN.md §5: "a clear one-line error from rank 0 and a
// non-zero exit from every rank, never a hang or a stack trace").
//
// Two kinds of failure:
//   - An error every rank knows about alike (a bad option, bad input found collectively): it is
//     a CollectiveError, thrown on every rank at once by check_all / run_collectively. All ranks
//     can still talk, so run_mpi_main prints it once, from world rank 0, as
//         racesp: error: <message>
//     and every rank finalises MPI and returns 1.
//   - Anything else thrown on some ranks only: the other ranks may be blocked in a collective
//     waiting for this one, so run_mpi_main prints
//         racesp: rank N: error: <message>
//     (N the rank in MPI_COMM_WORLD) and calls MPI_Abort(MPI_COMM_WORLD, 1), which ends every
//     rank with a non-zero exit instead of a hang.
//
// Typical use in a command's main:
//
//   int main(int argc, char** argv) {
//       return racesp::run_mpi_main(argc, argv, [&](MPI_Comm world) {
//           Options options;
//           racesp::run_collectively(world, [&] { options = parse(argc, argv); });  // ConfigError
//           ...                                                                    // on any rank
//           bool ok = read_my_shard(...);                                          // -> one line
//           racesp::check_all(world, ok, "input.h5: dataset 'q' holds NaN");
//           return 0;
//       });
//   }
#pragma once

#include <mpi.h>

#include <functional>
#include <string>

#include "racesp/errors.hpp"

namespace racesp {

// Thrown on every rank of a communicator at once by check_all / run_collectively.
class CollectiveError : public Error {
public:
    CollectiveError(const std::string& message, int failing_rank, bool whole_world)
        : Error(message), failing_rank_(failing_rank), whole_world_(whole_world) {}

    // World rank of the lowest rank that failed (the one whose message this is).
    int failing_rank() const { return failing_rank_; }
    // True when the communicator was all of MPI_COMM_WORLD, so every rank holds this error.
    bool whole_world() const { return whole_world_; }

private:
    int failing_rank_;
    bool whole_world_;
};

// Collective over `comm`: every rank calls it with its own `ok`. Returns if every rank is ok;
// otherwise throws CollectiveError on every rank of `comm`, carrying `message` of the lowest
// failing rank (MPI_Allreduce of the lowest failing rank, then MPI_Bcast of its message).
void check_all(MPI_Comm comm, bool ok, const std::string& message);

// Runs `local` on this rank, then check_all: if it threw a std::exception on any rank, every
// rank of `comm` throws CollectiveError with the lowest failing rank's what(). `local` must
// not communicate (a rank that throws half-way through a collective would leave the others
// blocked in it).
void run_collectively(MPI_Comm comm, const std::function<void()>& local);

// Initialises MPI (MPI_THREAD_FUNNELED: only the main thread calls MPI), runs body on
// MPI_COMM_WORLD and finalises. Returns body's result, which must be the same on every rank.
// Exceptions leaving body are handled as described at the top of this file: a CollectiveError
// over the whole world gives exit code 1 on every rank with one line from rank 0; anything else
// (including a CollectiveError over a smaller communicator, which the other groups do not
// know about) prints one line with the rank and aborts the job with exit code 1.
int run_mpi_main(int argc, char** argv, const std::function<int(MPI_Comm)>& body);

}  // namespace racesp
