// Sums of device float64 buffers over one communicator, one GPU per rank: NcclCollectives where
// this build has NCCL (RACESP_HAVE_NCCL, which linking racesp_nccl defines), else MpiCollectives
// through pinned host memory (StagedCollectives). For the GPU trainer and `racesp bench --device
// cuda`; every target that includes this header must link racesp_nccl whenever it exists, so that
// the class has one definition in a program.
#pragma once

#include <cuda_runtime.h>
#include <mpi.h>

#include "racesp/collectives.hpp"
#include "racesp/cuda_distributed.hpp"
#include "racesp/mpi_collectives.hpp"
#ifdef RACESP_HAVE_NCCL
#include "racesp/nccl_collectives.hpp"
#endif

namespace racesp::cuda {

class DeviceCollectives {
public:
    // `stream`: where NCCL enqueues its work (unused without NCCL). Collective over `comm`.
    DeviceCollectives(MPI_Comm comm, cudaStream_t stream)
#ifdef RACESP_HAVE_NCCL
        : nccl_(comm, stream) {
    }
    Collectives& get() { return nccl_; }
    static constexpr const char* kName = "nccl";
#else
        : mpi_(comm), staged_(mpi_) {
        (void)stream;
    }
    Collectives& get() { return staged_; }
    static constexpr const char* kName = "mpi";
#endif

private:
#ifdef RACESP_HAVE_NCCL
    NcclCollectives nccl_;
#else
    MpiCollectives mpi_;
    StagedCollectives staged_;
#endif
};

}  // namespace racesp::cuda
