#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "block_ops.cuh"
#include "convert.hpp"
#include "cuda_check.hpp"

namespace racesp::cuda {

namespace {

constexpr int threads = 256;

unsigned blocks_for(std::int64_t n) {
    const std::int64_t b = (n + threads - 1) / threads;
    return static_cast<unsigned>(b < 65535LL * 64 ? b : 65535LL * 64);  // grid-stride beyond
}

template <class T>
__global__ void from_f32_kernel(const float* src, T* dst, long long n) {
    for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<long long>(gridDim.x) * blockDim.x)
        dst[i] = from_float<T>(src[i]);
}

template <class T>
__global__ void to_f32_kernel(const T* src, float* dst, long long n) {
    for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<long long>(gridDim.x) * blockDim.x)
        dst[i] = to_float(src[i]);
}

__device__ inline unsigned long long splitmix64(unsigned long long x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

// Sum of four uniforms, centred and scaled: close enough to a normal for benchmark data.
template <class T>
__global__ void fill_kernel(T* dst, long long n, unsigned long long seed, float scale) {
    for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<long long>(gridDim.x) * blockDim.x) {
        const unsigned long long h = splitmix64(seed ^ splitmix64(static_cast<unsigned long long>(i)));
        float s = 0.0f;
        for (int j = 0; j < 4; ++j) s += static_cast<float>((h >> (16 * j)) & 0xffff) * (1.0f / 65536.0f);
        dst[i] = from_float<T>((s - 2.0f) * 1.7320508f * scale);
    }
}

}  // namespace

void convert_from_f32(const float* src, void* dst, DType dtype, std::int64_t n, cudaStream_t stream) {
    if (n == 0) return;
    switch (dtype) {
        case DType::f32:
            CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, stream));
            return;
        case DType::bf16: from_f32_kernel<<<blocks_for(n), threads, 0, stream>>>(src, static_cast<__nv_bfloat16*>(dst), n); break;
        case DType::f16: from_f32_kernel<<<blocks_for(n), threads, 0, stream>>>(src, static_cast<__half*>(dst), n); break;
    }
    CUDA_CHECK_LAUNCH(from_f32_kernel);
}

void convert_to_f32(const void* src, DType dtype, float* dst, std::int64_t n, cudaStream_t stream) {
    if (n == 0) return;
    switch (dtype) {
        case DType::f32:
            CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, stream));
            return;
        case DType::bf16: to_f32_kernel<<<blocks_for(n), threads, 0, stream>>>(static_cast<const __nv_bfloat16*>(src), dst, n); break;
        case DType::f16: to_f32_kernel<<<blocks_for(n), threads, 0, stream>>>(static_cast<const __half*>(src), dst, n); break;
    }
    CUDA_CHECK_LAUNCH(to_f32_kernel);
}

void fill_random(void* dst, DType dtype, std::int64_t n, std::uint64_t seed, float scale, cudaStream_t stream) {
    if (n == 0) return;
    switch (dtype) {
        case DType::f32: fill_kernel<<<blocks_for(n), threads, 0, stream>>>(static_cast<float*>(dst), n, seed, scale); break;
        case DType::bf16: fill_kernel<<<blocks_for(n), threads, 0, stream>>>(static_cast<__nv_bfloat16*>(dst), n, seed, scale); break;
        case DType::f16: fill_kernel<<<blocks_for(n), threads, 0, stream>>>(static_cast<__half*>(dst), n, seed, scale); break;
    }
    CUDA_CHECK_LAUNCH(fill_kernel);
}

}  // namespace racesp::cuda
