// Collectives (collectives.hpp) over NCCL on device float64 buffers (DESIGN.md §3):
// ncclAllReduce, and the exclusive and reverse exclusive scans, which NCCL lacks, by recursive
// doubling with grouped ncclSend/ncclRecv: in round k every rank sends its running inclusive sum
// to the rank 2^k above (below, for the reverse scan) and adds what it receives from 2^k below
// to both its inclusive and its exclusive sum. log2(p) rounds; the exclusive sum is the sum of
// what was received, so no subtraction and no extra shift round.
//
// The communicator is bootstrapped through MPI (ncclGetUniqueId on rank 0, MPI_Bcast). Every
// operation is enqueued on `stream` and returns without waiting; NCCL and CUDA failures throw
// racesp::Error naming the call. One rank per GPU: select the device before constructing.
#pragma once

#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <cstdint>

#include "racesp/collectives.hpp"

namespace racesp::cuda {

class NcclCollectives final : public Collectives {
public:
    NcclCollectives(MPI_Comm comm, cudaStream_t stream);
    ~NcclCollectives() override;
    NcclCollectives(const NcclCollectives&) = delete;
    NcclCollectives& operator=(const NcclCollectives&) = delete;

    int rank() const override { return rank_; }
    int size() const override { return size_; }
    cudaStream_t stream() const { return stream_; }

    // `data` is device memory; every rank calls with the same count.
    void allreduce_sum(double* data, std::int64_t count) override;
    void exscan_sum(double* data, std::int64_t count) override;
    void reverse_exscan_sum(double* data, std::int64_t count) override;

private:
    void scan(double* data, std::int64_t count, bool reverse);
    void reserve(std::int64_t count);

    ncclComm_t comm_ = nullptr;
    cudaStream_t stream_;
    int rank_ = 0, size_ = 1;
    double* incl_ = nullptr;  // running inclusive sum
    double* recv_ = nullptr;  // what arrives in a round
    std::int64_t capacity_ = 0;
};

}  // namespace racesp::cuda
