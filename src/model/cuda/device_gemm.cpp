// cuBLAS matrix products (device_gemm.hpp).
#include "device_gemm.hpp"

#include <cublas_v2.h>

#include <string>

#include "cuda_check.hpp"
#include "racesp/errors.hpp"

namespace racesp::model::gpu {

namespace {

void check(cublasStatus_t status, const char* call) {
    if (status != CUBLAS_STATUS_SUCCESS)
        throw Error(std::string("cuBLAS error in ") + call + ": " + cublasGetStatusName(status) + " (" +
                    cublasGetStatusString(status) + ")");
}

cudaDataType_t data_type(DType t) {
    switch (t) {
        case DType::f32: return CUDA_R_32F;
        case DType::bf16: return CUDA_R_16BF;
        case DType::f16: return CUDA_R_16F;
    }
    return CUDA_R_32F;
}

}  // namespace

DeviceGemm::DeviceGemm(cudaStream_t stream) : stream_(stream) {
    check(cublasCreate(&handle_), "cublasCreate");
    check(cublasSetStream(handle_, stream_), "cublasSetStream");
    // Plain float32 arithmetic for float32 inputs (no TF32), tensor cores for bfloat16 ones.
    check(cublasSetMathMode(handle_, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
}

DeviceGemm::~DeviceGemm() {
    if (handle_) cublasDestroy(handle_);
}

void DeviceGemm::operator()(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
                            Matrix a, Matrix b, float beta, MutMatrix c) {
    if (m <= 0 || n <= 0) return;
    if (k <= 0) {
        // Nothing to multiply: C = beta * C, which the model only asks for with beta 0 or 1.
        if (beta == 1.0f) return;
        if (beta != 0.0f) throw Error("DeviceGemm: an empty product with beta other than 0 or 1");
        const std::size_t row = static_cast<std::size_t>(n) * racesp::cuda::dtype_size(c.dtype);
        CUDA_CHECK(cudaMemset2DAsync(c.data, static_cast<std::size_t>(c.ld) * racesp::cuda::dtype_size(c.dtype), 0,
                                     row, static_cast<std::size_t>(m), stream_));
        return;
    }
    if (a.dtype != b.dtype) throw Error("DeviceGemm: A and B must share a dtype");
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: the same buffers with the
    // roles of A and B exchanged.
    check(cublasGemmEx(handle_, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                       static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &alpha, b.data,
                       data_type(b.dtype), static_cast<int>(b.ld), a.data, data_type(a.dtype), static_cast<int>(a.ld),
                       &beta, c.data, data_type(c.dtype), static_cast<int>(c.ld), CUBLAS_COMPUTE_32F,
                       CUBLAS_GEMM_DEFAULT),
          "cublasGemmEx");
}

}  // namespace racesp::model::gpu
