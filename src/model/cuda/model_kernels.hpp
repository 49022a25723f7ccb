// The GPU model's token-local layers (the CUDA counterparts of layers.hpp), forward and backward.
// Rows are tokens: x is [n, c] row-major. The residual stream, its gradient, norms and gains are
// float32; activations that feed matrix products (`void*` with a DType) are bfloat16 or float32.
// Sums over rows are taken deterministically: float32 inside blocks of rows, float64 across
// blocks, in a fixed order, so a run gives the same bits every time.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "racesp/cuda_attention.hpp"

namespace racesp::model::gpu {

using racesp::cuda::DType;

// x[i, :] = table[tokens[i], :].
void embedding_forward(std::int64_t n, std::int64_t c, const float* table, const std::int32_t* tokens, float* x,
                       cudaStream_t stream);

// out[i, j] = (j == tokens[i]), [n, vocab] in dtype: the embedding gradient is then the matrix
// product one_hot^T dx.
void one_hot(std::int64_t n, std::int64_t vocab, const std::int32_t* tokens, void* out, DType dtype,
             cudaStream_t stream);

// y = x / r * g (y in dtype), r = sqrt(mean(x^2) + eps) per row (float64 sum); inv_rms = 1/r.
void rmsnorm_forward(std::int64_t n, std::int64_t c, const float* x, const float* g, void* y, DType dtype,
                     float* inv_rms, cudaStream_t stream);

// dx += dL/dx of the norm; with a = g * dy: dx = a / r - x * sum(a * x) / (c r^3).
void rmsnorm_backward_input(std::int64_t n, std::int64_t c, const float* x, const float* g, const float* inv_rms,
                            const float* dy, float* dx, cudaStream_t stream);

// dg += sum over rows of dy * x / r. `work` holds rmsnorm_gain_work(n, c) floats.
std::int64_t rmsnorm_gain_work(std::int64_t n, std::int64_t c);
void rmsnorm_backward_gain(std::int64_t n, std::int64_t c, const float* x, const float* inv_rms, const float* dy,
                           float* dg, float* work, cudaStream_t stream);

// y = gelu(u) (tanh form), count elements of dtype.
void gelu_forward(std::int64_t count, const void* u, void* y, DType dtype, cudaStream_t stream);
// dy *= gelu'(u), in place.
void gelu_backward(std::int64_t count, const void* u, void* dy, DType dtype, cudaStream_t stream);

// Cross-entropy of float32 logits [n, vocab] against targets. Rows are taken in blocks of
// cross_entropy_rows: partials[b] (float64) is the sum over block b's rows of
// -log softmax(logits)[target]. With dlogits non-null, dlogits = scale * (softmax - onehot) in
// dtype (the gradient of scale * the loss); with predictions non-null, the first most likely
// token of every row.
constexpr std::int64_t cross_entropy_rows = 32;
void cross_entropy(std::int64_t n, std::int64_t vocab, const float* logits, const std::int32_t* targets,
                   double scale, void* dlogits, DType dtype, double* partials, std::int32_t* predictions,
                   cudaStream_t stream);

// *p += value (one device float).
void add_scalar(float* p, float value, cudaStream_t stream);

// *out = sum of count float64 values, in a fixed order.
void sum_doubles(const double* values, std::int64_t count, double* out, cudaStream_t stream);

// Element conversions: dst (dtype) = src (float32); float32 <-> float64.
void from_float32(std::int64_t count, const float* src, void* dst, DType dtype, cudaStream_t stream);
void float_to_double(std::int64_t count, const float* src, double* dst, cudaStream_t stream);
void double_to_float(std::int64_t count, const double* src, float* dst, cudaStream_t stream);

}  // namespace racesp::model::gpu
