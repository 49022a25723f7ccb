// Row-major matrix products on the GPU through cuBLAS (cublasGemmEx): inputs in bfloat16 (tensor
// cores) or float32, float32 accumulation, output in float32 or bfloat16. Every matrix product of
// the GPU model goes through here, so the cuBLAS dependency stays in one file.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "racesp/cuda_attention.hpp"

typedef struct cublasContext* cublasHandle_t;

namespace racesp::model::gpu {

using racesp::cuda::DType;

// A row-major matrix in device memory: element (i, j) at data[i * ld + j].
struct Matrix {
    const void* data = nullptr;
    DType dtype = DType::f32;
    std::int64_t ld = 0;
};
struct MutMatrix {
    void* data = nullptr;
    DType dtype = DType::f32;
    std::int64_t ld = 0;
};

class DeviceGemm {
public:
    explicit DeviceGemm(cudaStream_t stream);
    ~DeviceGemm();
    DeviceGemm(const DeviceGemm&) = delete;
    DeviceGemm& operator=(const DeviceGemm&) = delete;

    // C[m, n] = alpha * op(A) op(B) + beta * C; op(A) is [m, k] (A stored [k, m] when trans_a),
    // op(B) is [k, n] (B stored [n, k] when trans_b). A and B share a dtype (bf16 or f32); C is
    // float32 or the inputs' dtype; float32 arithmetic (no TF32). Empty products only scale C.
    void operator()(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
                    Matrix a, Matrix b, float beta, MutMatrix c);

private:
    cudaStream_t stream_;
    cublasHandle_t handle_ = nullptr;
};

}  // namespace racesp::model::gpu
