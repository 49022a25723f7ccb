// One rank's side of training, on the CPU or a GPU: the model, the replicated parameters and the
// AdamW state, and the step that sums the gradient over the world. `racesp train` drives it
// (data, schedule, metrics, checkpoints) the same way whatever the device, so a checkpoint of one
// device resumes on the other: parameters and moments cross as host float32 vectors in the
// ParameterLayout of model.hpp.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model.hpp"
#include "optimizer.hpp"

namespace racesp::model {

class Trainer {
public:
    virtual ~Trainer() = default;

    virtual const ParameterLayout& layout() const = 0;

    // Parameters and AdamW moments (layout().size() floats each) from or to the host; set them
    // before the first step (initial_parameters and zero moments for a fresh run).
    virtual void set_state(const std::vector<float>& params, const std::vector<float>& m,
                           const std::vector<float>& v) = 0;
    virtual void get_state(std::vector<float>& params, std::vector<float>& m, std::vector<float>& v) = 0;

    // Makes room for steps on shards of `batch` sequences of `tokens` tokens; throws when they
    // cannot fit: in GPU memory, or in the host memory of the node (the CPU trainer sums what the
    // ranks of a node need). Collective over the world. Returns the device bytes held for them (0
    // on the CPU, which allocates as it goes).
    virtual std::size_t prepare(std::int64_t batch, std::int64_t tokens) = 0;

    struct StepResult {
        double loss = 0;       // loss_scale * (sum of the cross-entropy over every rank's tokens)
        double grad_norm = 0;  // global gradient norm before clipping
        PassTimes times;       // this rank's forward and backward
        double reduce_s = 0;   // the gradient sum over the world
    };
    // One optimiser step (`step` is 1-based): forward and backward over this rank's shard, the
    // gradient and the loss summed over the world in float64, then the same AdamW step on every
    // rank. Collective over the world.
    virtual StepResult step(std::int64_t step, const ShardTokens& shard, double loss_scale) = 0;

    // The sum of the cross-entropy over this rank's shard, no gradient; with `predictions`, the
    // most likely next token of every local token. Collective over the sequence-parallel group.
    virtual double evaluate(const ShardTokens& shard, std::vector<std::int32_t>* predictions) = 0;

    // Every block's beta (exp of its log_beta).
    virtual std::vector<double> betas() = 0;
};

// The CPU trainer: Model, AdamW and one float64 MPI_Allreduce of gradient and loss per step.
// `sp` is the sequence-parallel group of this rank (ProcessGrid::sp_comm), `world` every rank.
std::unique_ptr<Trainer> make_cpu_trainer(const ModelConfig& model, const OptimizerConfig& optimizer, MPI_Comm world,
                                          MPI_Comm sp);

}  // namespace racesp::model
