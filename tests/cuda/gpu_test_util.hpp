// Helpers for the GPU tests: skip without a device, random data, device tensors of any dtype,
// relative errors.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "racesp/cuda_attention.hpp"

namespace racesp::testgpu {

#define GPU_CHECK(call)                                                                   \
    do {                                                                                  \
        const cudaError_t e_ = (call);                                                    \
        if (e_ != cudaSuccess) throw std::runtime_error(std::string(#call) + ": " + cudaGetErrorString(e_)); \
    } while (0)

inline bool have_gpu() { return cuda::device_count() > 0; }

#define SKIP_WITHOUT_GPU() \
    if (!::racesp::testgpu::have_gpu()) GTEST_SKIP() << "no CUDA device"

inline std::vector<float> random_vector(std::size_t n, std::uint64_t seed, float scale = 1.0f) {
    std::mt19937_64 gen(seed);
    std::normal_distribution<float> dist(0.0f, scale);
    std::vector<float> x(n);
    for (auto& e : x) e = dist(gen);
    return x;
}

// The value each element has after rounding to dtype (so references see the GPU's inputs).
inline float round_to(cuda::DType t, float x) {
    if (t == cuda::DType::bf16) return __bfloat162float(__float2bfloat16(x));
    if (t == cuda::DType::f16) return __half2float(__float2half(x));
    return x;
}

// Waits for the legacy default stream's writes. The engine computes on its own non-blocking stream,
// which a cudaMemset or a cudaMemcpy from pageable memory does not order against, and both may
// return before their data lands: a poison landing after the forward wrote o made o NaN once
// (gpu-notes.md, "The failure seen once"). Every host-side write below ends with it.
inline void device_writes_done() { GPU_CHECK(cudaDeviceSynchronize()); }

// A device tensor owning its memory.
class GpuTensor {
public:
    GpuTensor(const Shape& s, cuda::DType t) : shape_(s), dtype_(t) {
        bytes_ = static_cast<std::size_t>(s.elements()) * cuda::dtype_size(t);
        if (bytes_) GPU_CHECK(cudaMalloc(&data_, bytes_));
    }
    ~GpuTensor() { if (data_) cudaFree(data_); }
    GpuTensor(const GpuTensor&) = delete;
    GpuTensor& operator=(const GpuTensor&) = delete;

    cuda::DeviceTensor view() const { return {data_, shape_, dtype_}; }
    void upload(const std::vector<float>& x) {
        std::vector<unsigned char> buf(bytes_);
        for (std::size_t i = 0; i < x.size(); ++i) {
            if (dtype_ == cuda::DType::f32) std::memcpy(&buf[i * 4], &x[i], 4);
            else if (dtype_ == cuda::DType::bf16) { auto h = __float2bfloat16(x[i]); std::memcpy(&buf[i * 2], &h, 2); }
            else { auto h = __float2half(x[i]); std::memcpy(&buf[i * 2], &h, 2); }
        }
        if (bytes_) GPU_CHECK(cudaMemcpy(data_, buf.data(), bytes_, cudaMemcpyHostToDevice));
        device_writes_done();
    }
    // NaN everywhere, so an element the kernels never write fails the comparison.
    void poison() {
        if (bytes_) GPU_CHECK(cudaMemset(data_, 0xff, bytes_));
        device_writes_done();
    }
    std::vector<float> download() const {
        std::vector<unsigned char> buf(bytes_);
        if (bytes_) GPU_CHECK(cudaMemcpy(buf.data(), data_, bytes_, cudaMemcpyDeviceToHost));
        std::vector<float> x(shape_.elements());
        for (std::size_t i = 0; i < x.size(); ++i) {
            if (dtype_ == cuda::DType::f32) std::memcpy(&x[i], &buf[i * 4], 4);
            else if (dtype_ == cuda::DType::bf16) { __nv_bfloat16 h; std::memcpy(&h, &buf[i * 2], 2); x[i] = __bfloat162float(h); }
            else { __half h; std::memcpy(&h, &buf[i * 2], 2); x[i] = __half2float(h); }
        }
        return x;
    }

private:
    Shape shape_;
    cuda::DType dtype_;
    std::size_t bytes_ = 0;
    void* data_ = nullptr;
};

// ||a - ref|| / ||ref||; infinite when a holds a NaN.
template <class A, class B>
double rel_error(const std::vector<A>& a, const std::vector<B>& ref) {
    double num = 0, den = 0;
    for (std::size_t i = 0; i < ref.size(); ++i) {
        const double x = static_cast<double>(a[i]);
        if (!std::isfinite(x)) return INFINITY;
        num += (x - static_cast<double>(ref[i])) * (x - static_cast<double>(ref[i]));
        den += static_cast<double>(ref[i]) * static_cast<double>(ref[i]);
    }
    return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

}  // namespace racesp::testgpu
