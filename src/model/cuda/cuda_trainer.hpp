// The GPU trainer (trainer.hpp) for one rank and its CUDA device: CudaModel and CudaAdamW with
// parameters, gradient and moments in device memory; attention states cross the sequence-parallel
// group and the gradient (with the loss) is summed over the world in float64 through NCCL
// (communicators bootstrapped through MPI), or through MPI from pinned host memory where the
// build has no NCCL.
#pragma once

#include <mpi.h>

#include <memory>

#include "cuda_model.hpp"
#include "trainer.hpp"

namespace racesp::model::gpu {

// Collective over `world` (NCCL initialisation). The CUDA device must be selected already (one
// rank per GPU).
std::unique_ptr<Trainer> make_cuda_trainer(const ModelConfig& model, const OptimizerConfig& optimizer,
                                           CudaModelOptions options, MPI_Comm world, MPI_Comm sp);

// "NCCL" or "MPI (staged through host memory)": how this build's GPU trainer communicates.
const char* cuda_collectives_name();

}  // namespace racesp::model::gpu
