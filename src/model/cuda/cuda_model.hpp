// The RACE transformer of model.hpp on one CUDA device: the same layers, parameter layout,
// planes and loss, so parameters and checkpoints move freely between the CPU and the GPU model.
//
// Precision (`dtype`): with bf16, activations that feed matrix products (the normed inputs,
// q, k, v, the attention output, the MLP's hidden layer and the gradients flowing into matrix
// products) are bfloat16, the products run on tensor cores through cuBLAS with float32
// accumulation, and the attention runs the CUDA engine on bfloat16 tensors; the residual stream,
// its gradient, norms, parameters and their gradients stay float32. With fp32 everything is
// float32 (no TF32), for checks against the CPU model.
//
// Sequence parallelism as on the CPU: each rank holds a contiguous token range of `batch`
// sequences; token-local layers need no communication; attention runs the sequence-parallel
// engine over the sp group (device float64 states through `sp`: NcclCollectives, or
// StagedCollectives around MPI). Parameters are replicated; the backward gives this rank's part
// of the gradient (the caller sums over ranks).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "model.hpp"
#include "racesp/cuda_attention.hpp"

namespace racesp::model::gpu {

using racesp::cuda::DType;

struct CudaModelOptions {
    DType dtype = DType::bf16;  // bf16 or f32
    // Activation checkpointing: keep only each block's input and recompute the block's forward
    // (attention included) in the backward. About a third more work; per token, one block's
    // activations instead of every block's.
    bool recompute = false;
};

class CudaModel {
public:
    // Works on the current CUDA device, in `stream`.
    CudaModel(const ModelConfig& config, CudaModelOptions options, cudaStream_t stream);
    ~CudaModel();
    CudaModel(const CudaModel&) = delete;
    CudaModel& operator=(const CudaModel&) = delete;

    const ModelConfig& config() const;
    const ParameterLayout& layout() const;
    const CudaModelOptions& options() const;

    // Allocates every buffer a shard of `batch` sequences of `tokens` tokens needs (for the
    // backward too with `backward`), so that a shard too large for the device fails here, before
    // any step. run() calls it itself.
    void reserve(std::int64_t batch, std::int64_t tokens, bool backward);
    // Device bytes held by the model's buffers (the attention engine's workspace not included).
    std::size_t reserved_bytes() const;
    // Device bytes that reserve(batch, tokens, backward) would hold in all.
    std::size_t estimate_bytes(std::int64_t batch, std::int64_t tokens, bool backward) const;

    // Model::run on the device: `params` and `grad` are device arrays of layout().size() floats.
    // Returns the sum over this shard's tokens of the cross-entropy; with `grad` non-null, adds
    // this rank's part of the gradient of loss_scale * (global sum), beta's as d/d(log beta).
    // Collective over `sp`. With `predictions`, the most likely next token of every local token.
    double run(Collectives& sp, const float* params, const ShardTokens& shard, double loss_scale, float* grad,
               PassTimes& times, std::vector<std::int32_t>* predictions = nullptr);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace racesp::model::gpu
