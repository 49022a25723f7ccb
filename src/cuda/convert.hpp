// Element conversions between float32 and the device dtypes, and a deterministic random fill
// (for benchmarks: never time on zeros).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "racesp/cuda_attention.hpp"

namespace racesp::cuda {

// dst (dtype) = src (float32), count elements, on the device.
void convert_from_f32(const float* src, void* dst, DType dtype, std::int64_t count, cudaStream_t stream);
// dst (float32) = src (dtype).
void convert_to_f32(const void* src, DType dtype, float* dst, std::int64_t count, cudaStream_t stream);
// Approximately N(0, scale^2) values from a counter-based hash of (seed, index).
void fill_random(void* dst, DType dtype, std::int64_t count, std::uint64_t seed, float scale, cudaStream_t stream);

}  // namespace racesp::cuda
