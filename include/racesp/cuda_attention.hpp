// RACE attention on one CUDA device over one shard of a sequence (DESIGN.md §1–§4).
//
// The same contract as the CPU engine (attention.hpp): every call works on the local tokens
// [B, T_local, H, D] of one shard, already on the device, and takes the state that the rest of
// the sequence contributes as a device float64 buffer [B, H, M, D+1], so sequence parallelism is
// only collectives around these calls (NcclCollectives, or any Collectives on device buffers).
//
//   non-causal: S = Allreduce(key_state(k, v));   o = forward(q, k, v, S)
//               U = Allreduce(query_state(..., S)); backward(..., S, U)
//   causal:     S = Exscan(key_state(k, v));       o = forward(q, k, v, S)
//               U = ReverseExscan(query_state(..., S)); backward(..., S, U)
//
// The backward takes the forward's output o, as FlashAttention does: the gradient through the
// normaliser needs dout . o per token, which the warp-tile kernels read instead of recomputing
// the forward (v14, experiments/gpu-notes.md); o must be what forward gave for these inputs.
//
// Tensors are float32, bfloat16 or float16 (all of one call alike); arithmetic is float32.
// Tokens are cut into segments of at most `segment_chunks` chunks of `chunk` tokens, shortened
// so that their thread blocks fill whole waves of the device: sums over tokens accumulate in
// float32 within a segment, segment totals combine in float64. Features are
// recomputed in every pass, never stored; the per-token buffers are the caller's q, k, v, o,
// dout, dq, dk, dv, and (causal, KeyTotals::keep below) one float per token and head. Workspace:
// two float32 states per segment, three per (batch, head) and one float64 per block.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

#include "racesp/config.hpp"
#include "racesp/planes.hpp"
#include "racesp/tensor.hpp"

namespace racesp::cuda {

enum class DType { f32, bf16, f16 };
std::size_t dtype_size(DType t);
const char* to_string(DType t);
DType parse_dtype(const char* name);  // "fp32"/"float32", "bf16"/"bfloat16", "fp16"/"float16"

// A device tensor [B, T, H, D] in row-major order. Not owned.
struct DeviceTensor {
    void* data = nullptr;
    Shape shape;
    DType dtype = DType::f32;
};

// An owned device buffer of float64 states [B, H, M, D+1] (the layout of racesp::State).
class DeviceState {
public:
    DeviceState() = default;
    DeviceState(std::int64_t batch, std::int64_t heads, std::int64_t features, std::int64_t dim);
    ~DeviceState();
    DeviceState(DeviceState&& other) noexcept;
    DeviceState& operator=(DeviceState&& other) noexcept;
    DeviceState(const DeviceState&) = delete;
    DeviceState& operator=(const DeviceState&) = delete;

    double* data() const { return data_; }
    std::int64_t size() const { return batch_ * heads_ * features_ * (dim_ + 1); }
    std::int64_t batch() const { return batch_; }
    std::int64_t heads() const { return heads_; }
    std::int64_t features() const { return features_; }
    std::int64_t dim() const { return dim_; }
    void zero(cudaStream_t stream);

private:
    std::int64_t batch_ = 0, heads_ = 0, features_ = 0, dim_ = 0;
    double* data_ = nullptr;
};

struct EngineOptions {
    int chunk = 0;            // tokens per chunk (tile); 0 picks the largest of 32, 16, 8 that fits
    // Chunks per segment at most (float32 accumulation span, one thread block). v60: 512, i.e.
    // 16384 tokens at the chunk of 32, shortened to whole waves of blocks (experiments/gpu-notes.md).
    int segment_chunks = 512;
    int device = -1;          // CUDA device; -1 keeps the current one
};

class Engine {
public:
    // Copies the planes to the device (bit-identical to the host's). Throws ConfigError when
    // a state M x (D+1) does not fit in one multiprocessor's shared memory.
    Engine(const AttentionConfig& config, const Planes& planes, EngineOptions options = {});
    ~Engine();
    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;

    cudaStream_t stream() const;
    const AttentionConfig& config() const;
    int chunk() const;  // the chunk chosen

    // A zeroed state shaped for `shape`.
    DeviceState make_state(const Shape& shape) const;

    // Local key totals into `out` (every call below is asynchronous on stream()).
    void key_state(const DeviceTensor& k, const DeviceTensor& v, DeviceState& out);
    void forward(const DeviceTensor& q, const DeviceTensor& k, const DeviceTensor& v,
                 const DeviceState& incoming, const DeviceTensor& o);
    void query_state(const DeviceTensor& q, const DeviceTensor& k, const DeviceTensor& v,
                     const DeviceTensor& o, const DeviceTensor& dout, const DeviceState& incoming,
                     DeviceState& out);
    // Returns this shard's part of dL/dbeta (waits for the stream).
    double backward(const DeviceTensor& q, const DeviceTensor& k, const DeviceTensor& v,
                    const DeviceTensor& o, const DeviceTensor& dout, const DeviceState& incoming,
                    const DeviceState& incoming_backward, const DeviceTensor& dq,
                    const DeviceTensor& dk, const DeviceTensor& dv);

    // Whole steps with the collectives as callbacks, computing each segment-total pass once:
    // `combine_keys` turns the local key totals into the incoming state (Allreduce, or Exscan when
    // causal), `combine_queries` likewise for the backward (Allreduce, or reverse Exscan). The
    // per-call methods above recompute the causal segment totals on every call; these reuse them
    // (causal: key totals once instead of five times, query totals once instead of twice).
    //
    // KeyTotals::keep: forward_step keeps its combined key totals in the engine, and the next
    // backward_step with KeyTotals::reuse over the same k and v buffers (same addresses, shape and
    // type) takes them instead of recomputing them and calling `combine_keys` again: the caller
    // promises that the contents of k and v did not change in between. Any other call that
    // computes key totals drops what was kept; reuse with nothing matching kept throws Error.
    // Causal: keep also keeps each query's normaliser (what o was divided by), and a reuse with
    // the same q and o buffers too takes them instead of recomputing them in the query totals:
    // o must be the forward's output for these inputs, as everywhere (v50).
    using StateCollective = std::function<void(DeviceState&)>;
    enum class KeyTotals { recompute, keep, reuse };
    void forward_step(const DeviceTensor& q, const DeviceTensor& k, const DeviceTensor& v,
                      const DeviceTensor& o, const StateCollective& combine_keys,
                      KeyTotals key_totals = KeyTotals::recompute);
    // Returns this shard's part of dL/dbeta.
    double backward_step(const DeviceTensor& q, const DeviceTensor& k, const DeviceTensor& v,
                         const DeviceTensor& o, const DeviceTensor& dout, const DeviceTensor& dq,
                         const DeviceTensor& dk, const DeviceTensor& dv, const StateCollective& combine_keys,
                         const StateCollective& combine_queries,
                         KeyTotals key_totals = KeyTotals::recompute);

    // Single-device attention over whole sequences.
    void attention_forward(const DeviceTensor& q, const DeviceTensor& k, const DeviceTensor& v,
                           const DeviceTensor& o);
    double attention_backward(const DeviceTensor& q, const DeviceTensor& k, const DeviceTensor& v,
                              const DeviceTensor& o, const DeviceTensor& dout, const DeviceTensor& dq,
                              const DeviceTensor& dk, const DeviceTensor& dv);

    // Device bytes of workspace the engine holds for a shard of this shape.
    std::size_t workspace_bytes(const Shape& shape) const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// Number of CUDA devices (0 when there is no driver or no device; never throws).
int device_count();

}  // namespace racesp::cuda
