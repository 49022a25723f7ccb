// A decoder-only language model whose attention is causal RACE (DESIGN.md §1–§3), in float32 on
// the CPU: token embedding; `layers` blocks of
//     RMSNorm -> QKV projection -> causal RACE attention (H heads, learnable beta) -> output
//     projection -> residual -> RMSNorm -> GELU MLP (4x width) -> residual;
// final RMSNorm; LM head tied to the embedding; next-token cross-entropy.
//
// Each rank holds a contiguous token range of `batch` sequences (its shard). Token-local layers
// need no communication; attention runs the sequence-parallel engine over the sp group, so the
// model's forward and backward on the shards of one sequence equal those on the whole sequence.
// Parameters are replicated on every rank; the backward gives this rank's part of the gradient
// (the caller sums over ranks).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "racesp/collectives.hpp"
#include "racesp/distributed.hpp"
#include "racesp/planes.hpp"

namespace racesp::model {

struct ModelConfig {
    int layers = 2;
    int width = 64;
    int heads = 4;
    int tables = 4;   // L of every attention layer
    int planes = 4;   // P of every attention layer
    int vocab = 256;
    double beta = 1.0;         // initial beta of every layer (then learned, as log beta)
    std::uint64_t seed = 0;    // of the initial parameters and of the planes

    int head_dim() const { return width / heads; }
    // Throws ConfigError naming the first bad value.
    void validate() const;
};

// One named tensor inside the flat parameter vector.
struct ParameterTensor {
    std::string name;
    std::int64_t offset = 0, size = 0;
    bool decay = true;  // AdamW weight decay applies (matrices, not norms or beta)
};

// Where every parameter lives in one flat float vector.
class ParameterLayout {
public:
    explicit ParameterLayout(const ModelConfig& config);
    const std::vector<ParameterTensor>& tensors() const { return tensors_; }
    std::int64_t size() const { return size_; }

    struct Block {
        std::int64_t norm1, wqkv, wo, norm2, w1, w2, log_beta;
    };
    std::int64_t embedding = 0, final_norm = 0;
    std::vector<Block> blocks;

private:
    std::int64_t add(const std::string& name, std::int64_t size, bool decay);
    std::vector<ParameterTensor> tensors_;
    std::int64_t size_ = 0;
};

// Initial parameters: a pure function of the configuration (seed included), the same on every
// rank and compiler (the planes' portable normal generator).
std::vector<float> initial_parameters(const ModelConfig& config, const ParameterLayout& layout);

// The attention of block `layer`: causal RACE, kernel normalization, the model's tables and
// planes, planes seeded by seed + 1 + layer (beta is set from the block's log_beta at each use).
// The CPU and the GPU model share it, so both hash with the same planes.
AttentionConfig attention_config(const ModelConfig& config, int layer);

// Tokens of this rank's shard: `batch` sequences of `tokens` inputs each, stored with one more
// token per sequence ([batch, tokens + 1]): the target of the last input.
struct ShardTokens {
    std::int64_t batch = 0, tokens = 0;
    std::vector<std::int32_t> ids;  // [batch, tokens + 1]
};

struct PassTimes {
    double compute_s = 0, collective_s = 0;
    // Of compute_s + collective_s: the attention layers (engine and their collectives), where a
    // model measures it (the GPU model; 0 otherwise).
    double attention_s = 0;
};

class Model {
public:
    explicit Model(const ModelConfig& config);
    const ModelConfig& config() const { return config_; }
    const ParameterLayout& layout() const { return layout_; }

    // Forward over this shard; returns the sum over its tokens of the cross-entropy (double).
    // With `grad` non-null, also runs the backward of loss_scale * (global sum) and adds this
    // rank's part of the gradient to grad (beta's part as d/d(log beta)). Collective over `sp`
    // (every rank of the group calls it with the same batch size; token counts may differ).
    // With `predictions` non-null, also gives the most likely next token of every local token
    // ([batch, tokens]).
    double run(Collectives& sp, const std::vector<float>& params, const ShardTokens& shard, double loss_scale,
               std::vector<float>* grad, PassTimes& times, std::vector<std::int32_t>* predictions = nullptr);

    // Host bytes that run() with a gradient holds at once for a shard of batch x tokens (every
    // block's activations and the backward's buffers; not the parameters).
    std::uint64_t activation_bytes(std::int64_t batch, std::int64_t tokens) const;

private:
    struct Cache;
    ModelConfig config_;
    ParameterLayout layout_;
    std::vector<Planes> planes_;  // per layer
};

}  // namespace racesp::model
