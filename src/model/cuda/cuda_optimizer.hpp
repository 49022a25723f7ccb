// AdamW on the GPU: the same step as optimizer.hpp's AdamW (clipping by the global gradient norm,
// linear warm-up and cosine decay, decoupled weight decay on matrices and the embedding), on
// float32 master parameters and moments that stay in device memory. The arithmetic is the CPU's
// operation for operation (float32 moments, the update in float64, no fused multiply-adds), so
// given the same gradient both give the same bits.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "device_buffer.hpp"
#include "optimizer.hpp"

namespace racesp::model::gpu {

class CudaAdamW {
public:
    CudaAdamW(const OptimizerConfig& config, const ParameterLayout& layout, cudaStream_t stream);

    // Clips grad (device, in place) to the global norm, then updates params (device); `step` is
    // 1-based. Returns the gradient norm before clipping (float64 sum of squares).
    double step(std::int64_t step, float* params, float* grad);

    // The moments in device memory (layout().size() floats each), for checkpoints.
    float* m() const { return m_.data(); }
    float* v() const { return v_.data(); }
    std::int64_t size() const { return size_; }

private:
    OptimizerConfig config_;
    cudaStream_t stream_;
    std::int64_t size_;
    racesp::cuda::DeviceBuffer<unsigned char> decay_;  // per element: weight decay applies
    racesp::cuda::DeviceBuffer<float> m_, v_;
    racesp::cuda::DeviceBuffer<double> partials_, norm_;
};

}  // namespace racesp::model::gpu
