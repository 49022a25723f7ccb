#include "racesp/nccl_collectives.hpp"

#include <string>

#include "../cuda/cuda_check.hpp"
#include "../cuda/state_scan.hpp"
#include "racesp/errors.hpp"

#define NCCL_CHECK(call)                                                                          \
    do {                                                                                          \
        const ncclResult_t racesp_nr_ = (call);                                                   \
        if (racesp_nr_ != ncclSuccess)                                                            \
            throw ::racesp::Error(std::string("NCCL error in ") + #call + ": " +                 \
                                  ncclGetErrorString(racesp_nr_) + " (" __FILE__ ":" +           \
                                  std::to_string(__LINE__) + ")");                                \
    } while (0)

#define MPI_CHECK(call)                                                                          \
    do {                                                                                         \
        if ((call) != MPI_SUCCESS) throw ::racesp::Error(std::string("MPI error in ") + #call); \
    } while (0)

namespace racesp::cuda {

NcclCollectives::NcclCollectives(MPI_Comm comm, cudaStream_t stream) : stream_(stream) {
    MPI_CHECK(MPI_Comm_rank(comm, &rank_));
    MPI_CHECK(MPI_Comm_size(comm, &size_));
    ncclUniqueId id;
    if (rank_ == 0) NCCL_CHECK(ncclGetUniqueId(&id));
    MPI_CHECK(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, comm));
    NCCL_CHECK(ncclCommInitRank(&comm_, size_, id, rank_));
}

NcclCollectives::~NcclCollectives() {
    if (incl_) cudaFree(incl_);
    if (recv_) cudaFree(recv_);
    if (comm_) ncclCommDestroy(comm_);
}

void NcclCollectives::reserve(std::int64_t count) {
    if (count <= capacity_) return;
    if (incl_) CUDA_CHECK(cudaFree(incl_));
    if (recv_) CUDA_CHECK(cudaFree(recv_));
    incl_ = recv_ = nullptr;
    capacity_ = 0;
    CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&incl_), count * sizeof(double)));
    CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&recv_), count * sizeof(double)));
    capacity_ = count;
}

void NcclCollectives::allreduce_sum(double* data, std::int64_t count) {
    if (count == 0 || size_ == 1) return;
    NCCL_CHECK(ncclAllReduce(data, data, static_cast<size_t>(count), ncclFloat64, ncclSum, comm_, stream_));
}

void NcclCollectives::exscan_sum(double* data, std::int64_t count) { scan(data, count, false); }
void NcclCollectives::reverse_exscan_sum(double* data, std::int64_t count) { scan(data, count, true); }

void NcclCollectives::scan(double* data, std::int64_t count, bool reverse) {
    if (count == 0) return;
    // Position in scan order: the reverse scan runs over ranks numbered from the last.
    const int pos = reverse ? size_ - 1 - rank_ : rank_;
    auto rank_at = [&](int p) { return reverse ? size_ - 1 - p : p; };
    reserve(count);
    CUDA_CHECK(cudaMemcpyAsync(incl_, data, count * sizeof(double), cudaMemcpyDeviceToDevice, stream_));
    CUDA_CHECK(cudaMemsetAsync(data, 0, count * sizeof(double), stream_));  // the exclusive sum
    for (int step = 1; step < size_; step *= 2) {
        const bool sends = pos + step < size_, receives = pos - step >= 0;
        NCCL_CHECK(ncclGroupStart());
        if (sends) NCCL_CHECK(ncclSend(incl_, static_cast<size_t>(count), ncclFloat64, rank_at(pos + step), comm_, stream_));
        if (receives) NCCL_CHECK(ncclRecv(recv_, static_cast<size_t>(count), ncclFloat64, rank_at(pos - step), comm_, stream_));
        NCCL_CHECK(ncclGroupEnd());
        // Stream order puts this after the send has read incl_.
        if (receives) add_received(incl_, data, recv_, count, stream_);
    }
}

}  // namespace racesp::cuda
