// The one place where --device picks the engine that runs a rank's shard. A new backend (CUDA)
// adds its case to run_forward / run_backward in device.cpp and to require_device.
#pragma once

#include <mpi.h>

#include <string_view>

#include "racesp/collectives.hpp"
#include "racesp/distributed.hpp"

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

}  // namespace racesp::cli
