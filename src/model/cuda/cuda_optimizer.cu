// AdamW on the GPU (cuda_optimizer.hpp).
#include "cuda_optimizer.hpp"

#include <cmath>

#include "cuda_check.hpp"
#include "model_kernels.hpp"

namespace racesp::model::gpu {

namespace {

constexpr int kThreads = 256;
constexpr int kNormBlocks = 1024;  // fixed, so the float64 sum of squares has a fixed order

// partials[block] = sum of g^2 over this block's grid-stride share (float64).
__global__ void sum_squares_kernel(std::int64_t count, const float* grad, double* partials) {
    __shared__ double part[kThreads];
    double acc = 0;
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < count;
         i += static_cast<std::int64_t>(kNormBlocks) * kThreads)
        acc += double(grad[i]) * double(grad[i]);
    part[threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        double s = 0;
        for (int t = 0; t < kThreads; ++t) s += part[t];
        partials[blockIdx.x] = s;
    }
}

struct StepValues {
    double scale, lr, c1, c2, eps, lr_decay;
    float b1, b2, one_minus_b1, one_minus_b2;
};

// optimizer.cpp's loop, with explicit rounding so that no multiply-add is fused.
__global__ void adamw_kernel(std::int64_t count, StepValues s, const unsigned char* decay, float* params, float* grad,
                             float* m, float* v) {
    for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
         i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
        const float g = static_cast<float>(__dmul_rn(double(grad[i]), s.scale));
        grad[i] = g;
        const float mi = __fadd_rn(__fmul_rn(s.b1, m[i]), __fmul_rn(s.one_minus_b1, g));
        const float vi = __fadd_rn(__fmul_rn(s.b2, v[i]), __fmul_rn(__fmul_rn(s.one_minus_b2, g), g));
        m[i] = mi;
        v[i] = vi;
        const double update =
            __ddiv_rn(__ddiv_rn(double(mi), s.c1), __dadd_rn(__dsqrt_rn(__ddiv_rn(double(vi), s.c2)), s.eps));
        double p = params[i];
        if (decay[i]) p = __dsub_rn(p, __dmul_rn(s.lr_decay, p));
        params[i] = static_cast<float>(__dsub_rn(p, __dmul_rn(s.lr, update)));
    }
}

}  // namespace

CudaAdamW::CudaAdamW(const OptimizerConfig& config, const ParameterLayout& layout, cudaStream_t stream)
    : config_(config), stream_(stream), size_(layout.size()) {
    std::vector<unsigned char> decay(static_cast<std::size_t>(size_), 0);
    for (const ParameterTensor& t : layout.tensors())
        std::fill_n(decay.begin() + t.offset, t.size, t.decay ? 1 : 0);
    decay_.reserve(decay.size());
    m_.reserve(decay.size());
    v_.reserve(decay.size());
    partials_.reserve(kNormBlocks);
    norm_.reserve(1);
    CUDA_CHECK(cudaMemcpyAsync(decay_.data(), decay.data(), decay.size(), cudaMemcpyHostToDevice, stream_));
    CUDA_CHECK(cudaMemsetAsync(m_.data(), 0, decay.size() * sizeof(float), stream_));
    CUDA_CHECK(cudaMemsetAsync(v_.data(), 0, decay.size() * sizeof(float), stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));  // `decay` is freed on return
}

double CudaAdamW::step(std::int64_t step, float* params, float* grad) {
    sum_squares_kernel<<<kNormBlocks, kThreads, 0, stream_>>>(size_, grad, partials_.data());
    CUDA_CHECK_LAUNCH(sum_squares_kernel);
    sum_doubles(partials_.data(), kNormBlocks, norm_.data(), stream_);
    double sum = 0;
    CUDA_CHECK(cudaMemcpyAsync(&sum, norm_.data(), sizeof(double), cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    const double norm = std::sqrt(sum);

    // The scalars exactly as AdamW::step computes them.
    StepValues s{};
    s.scale = config_.clip > 0 && norm > config_.clip ? config_.clip / norm : 1.0;
    s.lr = learning_rate(config_, step);
    s.c1 = 1 - std::pow(config_.beta1, double(step));
    s.c2 = 1 - std::pow(config_.beta2, double(step));
    s.eps = config_.eps;
    s.lr_decay = s.lr * config_.weight_decay;
    s.b1 = float(config_.beta1);
    s.b2 = float(config_.beta2);
    s.one_minus_b1 = 1 - s.b1;
    s.one_minus_b2 = 1 - s.b2;
    const unsigned blocks = static_cast<unsigned>(std::min<std::int64_t>((size_ + kThreads - 1) / kThreads, 65535LL * 16));
    if (size_ > 0) {
        adamw_kernel<<<blocks, kThreads, 0, stream_>>>(size_, s, decay_.data(), params, grad, m_.data(), v_.data());
        CUDA_CHECK_LAUNCH(adamw_kernel);
    }
    return norm;
}

}  // namespace racesp::model::gpu
