// The GPU model's token-local kernels (model_kernels.hpp). Rows are handled one warp each; element
// loops stride over the grid with 64-bit indices (a 16M-token shard of width 2048 has more than
// 2^31 elements).
#include "model_kernels.hpp"

#include <cuda_bf16.h>

#include <algorithm>

#include "convert.hpp"
#include "cuda_check.hpp"
#include "racesp/errors.hpp"
#include "state_scan.hpp"

namespace racesp::model::gpu {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr double kRmsEps = 1e-6;  // layers.hpp's rms_eps
constexpr std::int64_t kGainRows = 256;  // rows per float32 partial of the norm gains

template <class T> __device__ __forceinline__ float load(const T* p, std::int64_t i);
template <> __device__ __forceinline__ float load<float>(const float* p, std::int64_t i) { return p[i]; }
template <> __device__ __forceinline__ float load<__nv_bfloat16>(const __nv_bfloat16* p, std::int64_t i) {
    return __bfloat162float(p[i]);
}
template <class T> __device__ __forceinline__ void store(T* p, std::int64_t i, float v);
template <> __device__ __forceinline__ void store<float>(float* p, std::int64_t i, float v) { p[i] = v; }
template <> __device__ __forceinline__ void store<__nv_bfloat16>(__nv_bfloat16* p, std::int64_t i, float v) {
    p[i] = __float2bfloat16(v);
}

unsigned grid_for(std::int64_t count) {
    return static_cast<unsigned>(std::clamp<std::int64_t>((count + kThreads - 1) / kThreads, 1, 65535LL * 32));
}
unsigned row_blocks(std::int64_t rows) { return static_cast<unsigned>((rows + kWarps - 1) / kWarps); }

__device__ __forceinline__ std::int64_t global_index() {
    return static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ std::int64_t grid_stride() { return static_cast<std::int64_t>(gridDim.x) * blockDim.x; }

template <class V>
__device__ __forceinline__ V warp_sum(V v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Dispatch a typed launch on the activation dtype (float32 or bfloat16).
template <class F>
void dispatch(DType dtype, F&& f) {
    switch (dtype) {
        case DType::f32: f(float{}); return;
        case DType::bf16: f(__nv_bfloat16{}); return;
        case DType::f16: break;
    }
    throw Error("the GPU model computes in bf16 or fp32, not fp16");
}

__global__ void embedding_forward_kernel(std::int64_t n, std::int64_t c, const float* table, const std::int32_t* tokens,
                                         float* x) {
    for (std::int64_t e = global_index(); e < n * c; e += grid_stride()) {
        const std::int64_t i = e / c, j = e - i * c;
        x[e] = table[static_cast<std::int64_t>(tokens[i]) * c + j];
    }
}

template <class T>
__global__ void one_hot_kernel(std::int64_t n, std::int64_t vocab, const std::int32_t* tokens, T* out) {
    for (std::int64_t e = global_index(); e < n * vocab; e += grid_stride()) {
        const std::int64_t i = e / vocab, j = e - i * vocab;
        store(out, e, j == tokens[i] ? 1.0f : 0.0f);
    }
}

template <class T>
__global__ void rmsnorm_forward_kernel(std::int64_t n, std::int64_t c, const float* x, const float* g, T* y,
                                       float* inv_rms) {
    const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= n) return;
    const float* xi = x + row * c;
    double sum = 0;
    for (std::int64_t j = lane; j < c; j += 32) sum += double(xi[j]) * double(xi[j]);
    sum = warp_sum(sum);
    const float inv = static_cast<float>(1.0 / sqrt(sum / double(c) + kRmsEps));
    if (lane == 0) inv_rms[row] = inv;
    for (std::int64_t j = lane; j < c; j += 32) store(y, row * c + j, __fmul_rn(__fmul_rn(xi[j], inv), g[j]));
}

__global__ void rmsnorm_backward_input_kernel(std::int64_t n, std::int64_t c, const float* x, const float* g,
                                              const float* inv_rms, const float* dy, float* dx) {
    const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= n) return;
    const float* xi = x + row * c;
    const float* dyi = dy + row * c;
    const float inv = inv_rms[row];
    double dot = 0;
    for (std::int64_t j = lane; j < c; j += 32) dot += double(g[j] * dyi[j]) * double(xi[j]);
    dot = warp_sum(dot);
    const float coef = static_cast<float>(dot / double(c)) * inv * inv * inv;
    for (std::int64_t j = lane; j < c; j += 32) dx[row * c + j] += g[j] * dyi[j] * inv - xi[j] * coef;
}

// work[b, j] = sum over rows b*kGainRows .. of dy * x * inv (float32, rows in order).
__global__ void gain_partials_kernel(std::int64_t n, std::int64_t c, const float* x, const float* inv_rms,
                                     const float* dy, float* work) {
    const std::int64_t j = static_cast<std::int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
    if (j >= c) return;
    const std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * kGainRows;
    const std::int64_t last = first + kGainRows < n ? first + kGainRows : n;
    float acc = 0.0f;
    for (std::int64_t i = first; i < last; ++i) acc += dy[i * c + j] * x[i * c + j] * inv_rms[i];
    work[static_cast<std::int64_t>(blockIdx.x) * c + j] = acc;
}

// dg[j] += sum over blocks of work[b, j] (float64, blocks in order).
__global__ void gain_sum_kernel(std::int64_t blocks, std::int64_t c, const float* work, float* dg) {
    const std::int64_t j = global_index();
    if (j >= c) return;
    double sum = 0;
    for (std::int64_t b = 0; b < blocks; ++b) sum += work[b * c + j];
    dg[j] += static_cast<float>(sum);
}

__device__ __forceinline__ float gelu_tanh_arg(float u) { return 0.7978845608028654f * (u + 0.044715f * u * u * u); }

template <class T>
__global__ void gelu_forward_kernel(std::int64_t count, const T* u, T* y) {
    for (std::int64_t i = global_index(); i < count; i += grid_stride()) {
        const float v = load(u, i);
        store(y, i, 0.5f * v * (1.0f + tanhf(gelu_tanh_arg(v))));
    }
}

template <class T>
__global__ void gelu_backward_kernel(std::int64_t count, const T* u, T* dy) {
    for (std::int64_t i = global_index(); i < count; i += grid_stride()) {
        const float v = load(u, i);
        const float t = tanhf(gelu_tanh_arg(v));
        const float d = 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * 0.7978845608028654f *
                                                (1.0f + 3.0f * 0.044715f * v * v);
        store(dy, i, load(dy, i) * d);
    }
}

// One warp per row, cross_entropy_rows rows per block; partials[block] in float64.
template <class T>
__global__ void cross_entropy_kernel(std::int64_t n, std::int64_t vocab, const float* logits,
                                     const std::int32_t* targets, float scale, T* dlogits, double* partials,
                                     std::int32_t* predictions) {
    __shared__ double warp_loss[kWarps];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    constexpr std::int64_t per_warp = cross_entropy_rows / kWarps;
    double loss = 0;
    for (std::int64_t r = 0; r < per_warp; ++r) {
        const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * cross_entropy_rows + warp * per_warp + r;
        if (row >= n) break;
        const float* li = logits + row * vocab;
        // Largest logit and the first index holding it.
        float top = -INFINITY;
        std::int64_t arg = vocab;
        for (std::int64_t j = lane; j < vocab; j += 32)
            if (li[j] > top) top = li[j], arg = j;
        for (int o = 16; o > 0; o >>= 1) {
            const float t2 = __shfl_xor_sync(0xffffffffu, top, o);
            const std::int64_t a2 = __shfl_xor_sync(0xffffffffu, arg, o);
            if (t2 > top || (t2 == top && a2 < arg)) top = t2, arg = a2;
        }
        float sum = 0.0f;
        for (std::int64_t j = lane; j < vocab; j += 32) sum += expf(li[j] - top);
        sum = warp_sum(sum);
        const float log_sum = logf(sum) + top;
        const std::int32_t target = targets[row];
        loss += double(log_sum) - double(li[target]);
        if (lane == 0 && predictions) predictions[row] = static_cast<std::int32_t>(arg);
        if (dlogits)
            for (std::int64_t j = lane; j < vocab; j += 32)
                store(dlogits, row * vocab + j, expf(li[j] - log_sum) * scale - (j == target ? scale : 0.0f));
    }
    if (lane == 0) warp_loss[warp] = loss;
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0;
        for (int w = 0; w < kWarps; ++w) total += warp_loss[w];
        partials[blockIdx.x] = total;
    }
}

__global__ void add_scalar_kernel(float* p, float value) { *p += value; }

__global__ void float_to_double_kernel(std::int64_t count, const float* src, double* dst) {
    for (std::int64_t i = global_index(); i < count; i += grid_stride()) dst[i] = src[i];
}
__global__ void double_to_float_kernel(std::int64_t count, const double* src, float* dst) {
    for (std::int64_t i = global_index(); i < count; i += grid_stride()) dst[i] = static_cast<float>(src[i]);
}

}  // namespace

void embedding_forward(std::int64_t n, std::int64_t c, const float* table, const std::int32_t* tokens, float* x,
                       cudaStream_t stream) {
    if (n * c == 0) return;
    embedding_forward_kernel<<<grid_for(n * c), kThreads, 0, stream>>>(n, c, table, tokens, x);
    CUDA_CHECK_LAUNCH(embedding_forward_kernel);
}

void one_hot(std::int64_t n, std::int64_t vocab, const std::int32_t* tokens, void* out, DType dtype,
             cudaStream_t stream) {
    if (n * vocab == 0) return;
    dispatch(dtype, [&](auto t) {
        using T = decltype(t);
        one_hot_kernel<<<grid_for(n * vocab), kThreads, 0, stream>>>(n, vocab, tokens, static_cast<T*>(out));
    });
    CUDA_CHECK_LAUNCH(one_hot_kernel);
}

void rmsnorm_forward(std::int64_t n, std::int64_t c, const float* x, const float* g, void* y, DType dtype,
                     float* inv_rms, cudaStream_t stream) {
    if (n == 0) return;
    dispatch(dtype, [&](auto t) {
        using T = decltype(t);
        rmsnorm_forward_kernel<<<row_blocks(n), kThreads, 0, stream>>>(n, c, x, g, static_cast<T*>(y), inv_rms);
    });
    CUDA_CHECK_LAUNCH(rmsnorm_forward_kernel);
}

void rmsnorm_backward_input(std::int64_t n, std::int64_t c, const float* x, const float* g, const float* inv_rms,
                            const float* dy, float* dx, cudaStream_t stream) {
    if (n == 0) return;
    rmsnorm_backward_input_kernel<<<row_blocks(n), kThreads, 0, stream>>>(n, c, x, g, inv_rms, dy, dx);
    CUDA_CHECK_LAUNCH(rmsnorm_backward_input_kernel);
}

std::int64_t rmsnorm_gain_work(std::int64_t n, std::int64_t c) { return (n + kGainRows - 1) / kGainRows * c; }

void rmsnorm_backward_gain(std::int64_t n, std::int64_t c, const float* x, const float* inv_rms, const float* dy,
                           float* dg, float* work, cudaStream_t stream) {
    if (n == 0) return;
    const std::int64_t blocks = (n + kGainRows - 1) / kGainRows;
    constexpr int columns = 128;
    const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>((c + columns - 1) / columns));
    gain_partials_kernel<<<grid, columns, 0, stream>>>(n, c, x, inv_rms, dy, work);
    CUDA_CHECK_LAUNCH(gain_partials_kernel);
    gain_sum_kernel<<<static_cast<unsigned>((c + kThreads - 1) / kThreads), kThreads, 0, stream>>>(blocks, c, work, dg);
    CUDA_CHECK_LAUNCH(gain_sum_kernel);
}

void gelu_forward(std::int64_t count, const void* u, void* y, DType dtype, cudaStream_t stream) {
    if (count == 0) return;
    dispatch(dtype, [&](auto t) {
        using T = decltype(t);
        gelu_forward_kernel<<<grid_for(count), kThreads, 0, stream>>>(count, static_cast<const T*>(u), static_cast<T*>(y));
    });
    CUDA_CHECK_LAUNCH(gelu_forward_kernel);
}

void gelu_backward(std::int64_t count, const void* u, void* dy, DType dtype, cudaStream_t stream) {
    if (count == 0) return;
    dispatch(dtype, [&](auto t) {
        using T = decltype(t);
        gelu_backward_kernel<<<grid_for(count), kThreads, 0, stream>>>(count, static_cast<const T*>(u), static_cast<T*>(dy));
    });
    CUDA_CHECK_LAUNCH(gelu_backward_kernel);
}

void cross_entropy(std::int64_t n, std::int64_t vocab, const float* logits, const std::int32_t* targets,
                   double scale, void* dlogits, DType dtype, double* partials, std::int32_t* predictions,
                   cudaStream_t stream) {
    if (n == 0) return;
    const unsigned blocks = static_cast<unsigned>((n + cross_entropy_rows - 1) / cross_entropy_rows);
    dispatch(dtype, [&](auto t) {
        using T = decltype(t);
        cross_entropy_kernel<<<blocks, kThreads, 0, stream>>>(n, vocab, logits, targets, static_cast<float>(scale),
                                                              static_cast<T*>(dlogits), partials, predictions);
    });
    CUDA_CHECK_LAUNCH(cross_entropy_kernel);
}

void add_scalar(float* p, float value, cudaStream_t stream) {
    add_scalar_kernel<<<1, 1, 0, stream>>>(p, value);
    CUDA_CHECK_LAUNCH(add_scalar_kernel);
}

void sum_doubles(const double* values, std::int64_t count, double* out, cudaStream_t stream) {
    if (count == 0) {
        CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(double), stream));
        return;
    }
    racesp::cuda::sum_doubles(values, out, count, stream);
}

void from_float32(std::int64_t count, const float* src, void* dst, DType dtype, cudaStream_t stream) {
    racesp::cuda::convert_from_f32(src, dst, dtype, count, stream);
}

void float_to_double(std::int64_t count, const float* src, double* dst, cudaStream_t stream) {
    if (count == 0) return;
    float_to_double_kernel<<<grid_for(count), kThreads, 0, stream>>>(count, src, dst);
    CUDA_CHECK_LAUNCH(float_to_double_kernel);
}

void double_to_float(std::int64_t count, const double* src, float* dst, cudaStream_t stream) {
    if (count == 0) return;
    double_to_float_kernel<<<grid_for(count), kThreads, 0, stream>>>(count, src, dst);
    CUDA_CHECK_LAUNCH(double_to_float_kernel);
}

}  // namespace racesp::model::gpu
