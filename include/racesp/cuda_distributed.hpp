// Sequence-parallel RACE attention on CUDA devices (DESIGN.md §3): the same steps as
// racesp::distributed_forward / distributed_backward (distributed.hpp), with the CUDA engine
// and collectives on device float64 states (NcclCollectives, or StagedCollectives around a host
// implementation such as MpiCollectives).
#pragma once

#include <mpi.h>

#include <memory>

#include "racesp/collectives.hpp"
#include "racesp/cuda_attention.hpp"
#include "racesp/distributed.hpp"

namespace racesp::cuda {

// Collectives on device buffers through a host implementation: copies the state to pinned host
// memory, runs `host`, copies back. For runs without NCCL (or to compare against MPI).
class StagedCollectives final : public Collectives {
public:
    explicit StagedCollectives(Collectives& host);
    ~StagedCollectives() override;
    int rank() const override { return host_.rank(); }
    int size() const override { return host_.size(); }
    void allreduce_sum(double* data, std::int64_t count) override;
    void exscan_sum(double* data, std::int64_t count) override;
    void reverse_exscan_sum(double* data, std::int64_t count) override;

private:
    template <class F>
    void staged(double* data, std::int64_t count, F op);
    Collectives& host_;
    double* pinned_ = nullptr;
    std::int64_t capacity_ = 0;
};

// Device-level steps on this rank's shard, already on the device. `sp` sums device states over
// the sequence-parallel group. Both wait for the device before returning. `key_totals`: see
// Engine::forward_step (keep in the forward, reuse in a backward over unchanged k and v).
StepTimes device_distributed_forward(Engine& engine, Collectives& sp, const DeviceTensor& q,
                                     const DeviceTensor& k, const DeviceTensor& v, const DeviceTensor& o,
                                     Engine::KeyTotals key_totals = Engine::KeyTotals::recompute);
// o: the forward's output for these inputs (Engine::backward_step). dbeta: dL/dbeta summed over
// `world` (MPI_Allreduce), identical on every rank.
StepTimes device_distributed_backward(Engine& engine, Collectives& sp, MPI_Comm world, const DeviceTensor& q,
                                      const DeviceTensor& k, const DeviceTensor& v, const DeviceTensor& o,
                                      const DeviceTensor& dout,
                                      const DeviceTensor& dq, const DeviceTensor& dk, const DeviceTensor& dv,
                                      double& dbeta, Engine::KeyTotals key_totals = Engine::KeyTotals::recompute);

// The local GPU for this MPI rank: the rank's index among the ranks of its node
// (MPI_Comm_split_type, collective over `comm`) modulo the device count. Calls cudaSetDevice and
// returns the device; throws Error when there is no device.
int select_local_device(MPI_Comm comm);
// The same without communication, from the launcher's environment (OMPI_COMM_WORLD_LOCAL_RANK,
// SLURM_LOCALID, MV2_COMM_WORLD_LOCAL_RANK, PMI_LOCAL_RANK; 0 when none is set).
int select_device_from_environment();

struct CudaRunOptions {
    DType dtype = DType::f32;  // device storage of q, k, v, o, dout, dq, dk, dv
    EngineOptions engine;
};

// Host-level entry points for the command line: host float32 tensors (as read from HDF5),
// staged through pinned memory to the current device and back; the same signature as
// racesp::distributed_forward / distributed_backward plus the CUDA options. Staging time counts
// as compute_s.
StepTimes cuda_distributed_forward(Collectives& sp, const AttentionConfig& config, const Planes& planes,
                                   ConstTensor q, ConstTensor k, ConstTensor v, MutTensor o,
                                   const CudaRunOptions& options = {});
StepTimes cuda_distributed_backward(Collectives& sp, MPI_Comm world, const AttentionConfig& config,
                                    const Planes& planes, ConstTensor q, ConstTensor k, ConstTensor v,
                                    ConstTensor dout, MutTensor dq, MutTensor dk, MutTensor dv, double& dbeta,
                                    const CudaRunOptions& options = {});

}  // namespace racesp::cuda
