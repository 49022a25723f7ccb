// The one place where --device picks the engine that runs a rank's shard. A new backend (CUDA)
// adds its case to run_forward / run_backward in device.cpp and to require_device.
#pragma once

#include <mpi.h>

#include <memory>
#include <string>
#include <string_view>

#include "racesp/collectives.hpp"
#include "racesp/distributed.hpp"
#include "trainer.hpp"

namespace racesp::cli {

enum class Device { cpu, cuda };

Device parse_device(std::string_view name);  // "cpu" | "cuda"; throws ConfigError
std::string_view to_string(Device device);
// Throws ConfigError when this build cannot run on `device`; call it before any work.
void require_device(Device device);

// Distributed forward of this rank's shard on `device`: o for the local queries.
// `sp` sums over the sequence-parallel group.
StepTimes run_forward(Device device, Collectives& sp, const AttentionConfig& config, const Planes& planes,
                      ConstTensor q, ConstTensor k, ConstTensor v, MutTensor o);

// Distributed backward of this rank's shard on `device`: dq, dk, dv, and dbeta summed over
// `world` (the same on every rank).
StepTimes run_backward(Device device, Collectives& sp, MPI_Comm world, const AttentionConfig& config,
                       const Planes& planes, ConstTensor q, ConstTensor k, ConstTensor v, ConstTensor dout,
                       MutTensor dq, MutTensor dk, MutTensor dv, double& dbeta);

// Where and how `racesp train` runs: --device, and for cuda --precision (bf16 | fp32) and
// --recompute (activation checkpointing).
struct TrainDevice {
    Device device = Device::cpu;
    std::string precision = "bf16";
    bool recompute = false;
    // Throws ConfigError on a bad --precision, or --recompute without --device cuda.
    void validate() const;
    // "cpu", or e.g. "cuda bf16, NCCL" (with ", recompute").
    std::string describe() const;
};

// The trainer of this rank on `where` (call require_device first). Collective over `world`
// (the GPU trainer sets up its NCCL communicators); `sp` is this rank's sequence-parallel group.
std::unique_ptr<model::Trainer> make_trainer(const TrainDevice& where, const model::ModelConfig& model,
                                             const model::OptimizerConfig& optimizer, MPI_Comm world, MPI_Comm sp);

}  // namespace racesp::cli
