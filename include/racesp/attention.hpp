// RACE attention on the CPU over one shard of a sequence (DESIGN.md §1–§3).
//
// Every call works on the local tokens [B, T_local, H, D] of one shard and takes the state that
// the rest of the sequence contributes, so the sequence-parallel layer is only collectives
// around these calls:
//
//   non-causal: S = Allreduce(key_state(k, v));   forward(q, k, v, S)
//               U = Allreduce(query_state(..., S)); backward(..., S, U)
//   causal:     S = Exscan(key_state(k, v));       forward(q, k, v, S)
//               U = ReverseExscan(query_state(..., S)); backward(..., S, U)
//
// On one process: S = key_state (non-causal) or zeros (causal), and likewise for U;
// attention_forward / attention_backward below do exactly that.
//
// Features are recomputed, never stored per token. Sums over tokens accumulate in float32 over
// blocks of `block_tokens` and combine in float64. Work is split over OpenMP threads by batch
// entry, head and chunks of the sequence.
#pragma once

#include <cstdint>

#include "racesp/config.hpp"
#include "racesp/planes.hpp"
#include "racesp/state.hpp"
#include "racesp/tensor.hpp"

namespace racesp {

struct CpuOptions {
    std::int64_t block_tokens = 64;  // tokens per float32 block (matrix products); changes rounding only
    std::int64_t chunk_tokens = 0;    // tokens per parallel work item; 0 picks from the thread count
};

// An all-zero state shaped for these tensors and this configuration.
State zero_state(const AttentionConfig& config, const Shape& shape);

// Local key totals: sum over local j of phi(k_j) (x) [v_j, 1].
State key_state(const AttentionConfig& config, const Planes& planes, ConstTensor k, ConstTensor v,
                const CpuOptions& options = {});

// Outputs o for the local queries. `incoming`: non-causal, the global S over every key of the
// sequence; causal, the sum over the keys of earlier shards.
void forward(const AttentionConfig& config, const Planes& planes, ConstTensor q, ConstTensor k,
             ConstTensor v, const State& incoming, MutTensor o, const CpuOptions& options = {});

// Local query totals of the backward state U (DESIGN.md §2), given the forward `incoming`.
State query_state(const AttentionConfig& config, const Planes& planes, ConstTensor q, ConstTensor k,
                  ConstTensor v, ConstTensor dout, const State& incoming,
                  const CpuOptions& options = {});

// Gradients dq, dk, dv of the local tokens; returns this shard's part of dL/dbeta.
// `incoming` as in forward; `incoming_backward`: non-causal, the global U over every query;
// causal, the sum over the queries of later shards.
double backward(const AttentionConfig& config, const Planes& planes, ConstTensor q, ConstTensor k,
                ConstTensor v, ConstTensor dout, const State& incoming,
                const State& incoming_backward, MutTensor dq, MutTensor dk, MutTensor dv,
                const CpuOptions& options = {});

// Single-process attention over whole sequences.
void attention_forward(const AttentionConfig& config, const Planes& planes, ConstTensor q,
                       ConstTensor k, ConstTensor v, MutTensor o, const CpuOptions& options = {});
double attention_backward(const AttentionConfig& config, const Planes& planes, ConstTensor q,
                          ConstTensor k, ConstTensor v, ConstTensor dout, MutTensor dq,
                          MutTensor dk, MutTensor dv, const CpuOptions& options = {});

// Throws ShapeError unless q, k, v (and the others given) share one [B, T, H, D] shape that
// matches the planes, with every extent positive except T, which may be 0.
void check_shapes(const Planes& planes, ConstTensor q, ConstTensor k, ConstTensor v);

}  // namespace racesp
