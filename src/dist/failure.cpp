// Failure handling across ranks: agree on errors collectively, or abort the job (failure.hpp).
#include "racesp/failure.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <new>
#include <string>

namespace racesp {

namespace {

int world_rank() {
    int r = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}

// One line, written with a single call and flushed, so that it is not interleaved with other
// output and survives the MPI_Abort that usually follows.
void print_line(const std::string& line) {
    std::string text = line + "\n";
    std::fwrite(text.data(), 1, text.size(), stderr);
    std::fflush(stderr);
}

[[noreturn]] void abort_job(const std::string& message) {
    print_line("racesp: rank " + std::to_string(world_rank()) + ": error: " + message);
    MPI_Abort(MPI_COMM_WORLD, 1);
    std::_Exit(1);  // MPI_Abort does not return; this is for a broken MPI
}

// The one line a user sees for an exception; an allocation failure says what it means.
std::string describe(const std::exception& e) {
    if (dynamic_cast<const std::bad_alloc*>(&e))
        return "out of host memory: a buffer could not be allocated (std::bad_alloc); use fewer tokens per rank "
               "(a shorter sequence, a smaller batch) or more ranks";
    return e.what();
}

}  // namespace

void check_all(MPI_Comm comm, bool ok, const std::string& message) {
    int rank = 0, size = 0;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    int mine = ok ? size : rank;
    int lowest = size;
    MPI_Allreduce(&mine, &lowest, 1, MPI_INT, MPI_MIN, comm);
    if (lowest == size) return;

    // Only the lowest failing rank's message travels: one line, whatever the number of failures.
    int header[2] = {0, 0};  // world rank, message length
    std::string text;
    if (rank == lowest) {
        text = message.substr(0, std::min<std::size_t>(message.size(), 1 << 20));
        header[0] = world_rank();
        header[1] = static_cast<int>(text.size());
    }
    MPI_Bcast(header, 2, MPI_INT, lowest, comm);
    text.resize(static_cast<std::size_t>(header[1]));
    MPI_Bcast(text.data(), header[1], MPI_CHAR, lowest, comm);

    int same = MPI_UNEQUAL;
    MPI_Comm_compare(comm, MPI_COMM_WORLD, &same);
    throw CollectiveError(text, header[0], same == MPI_IDENT || same == MPI_CONGRUENT);
}

void run_collectively(MPI_Comm comm, const std::function<void()>& local) {
    bool ok = true;
    std::string message;
    try {
        local();
    } catch (const std::exception& e) {
        ok = false;
        message = describe(e);
    } catch (...) {
        ok = false;
        message = "unknown exception";
    }
    check_all(comm, ok, message);
}

int run_mpi_main(int argc, char** argv, const std::function<int(MPI_Comm)>& body) {
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    int code = 1;
    try {
        code = body(MPI_COMM_WORLD);
    } catch (const CollectiveError& e) {
        if (!e.whole_world()) {
            // Only one group knows: the failing rank reports and ends the job; its group peers
            // wait for that (a receive that never completes) rather than abort first and race
            // the message.
            if (world_rank() == e.failing_rank()) abort_job(e.what());
            const int never_sent = 32767;  // a valid tag under any MPI_TAG_UB
            MPI_Recv(nullptr, 0, MPI_BYTE, e.failing_rank(), never_sent, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            std::_Exit(1);
        }
        if (world_rank() == 0) print_line(std::string("racesp: error: ") + e.what());
        code = 1;
    } catch (const std::exception& e) {
        abort_job(describe(e));
    } catch (...) {
        abort_job("unknown exception");
    }
    MPI_Finalize();
    return code;
}

}  // namespace racesp
