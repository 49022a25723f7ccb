// The GPU model (src/model/cuda) against the CPU model (src/model), which its own tests check
// against finite differences: the loss, every parameter tensor's gradient and the argmax
// predictions on the same parameters and tokens, in fp32 (tight) and bf16 (loose) compute; the
// recomputing backward against the storing one (bit for bit); GPU AdamW against CPU AdamW.
// Tolerances, relative (per tensor: ||gpu - cpu|| / ||cpu||), with what an H200 gave:
//   fp32: loss 1e-6, gradients 1e-4 (float32 rounding in different summation orders; measured
//         4e-9 and 1.3e-6, and 1.3e-5 for the gradients with a 20000-token vocabulary);
//   bf16: loss 2e-3, gradients 5e-2 (every matrix product's inputs rounded to 8 bits of mantissa;
//         measured 1.2e-4 and 2.2e-2).
// Each test skips itself without a GPU.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "cuda_model.hpp"
#include "cuda_optimizer.hpp"
#include "gpu_test_util.hpp"
#include "model.hpp"
#include "optimizer.hpp"
#include "racesp/cuda_distributed.hpp"
#include "racesp/mpi_collectives.hpp"

namespace racesp::model {
namespace {

using cuda::DType;

// A device copy of a host float vector.
class DeviceFloats {
public:
    explicit DeviceFloats(const std::vector<float>& host) : n_(host.size()) {
        GPU_CHECK(cudaMalloc(&data_, std::max<std::size_t>(1, n_) * sizeof(float)));
        GPU_CHECK(cudaMemcpy(data_, host.data(), n_ * sizeof(float), cudaMemcpyHostToDevice));
    }
    ~DeviceFloats() { cudaFree(data_); }
    DeviceFloats(const DeviceFloats&) = delete;
    DeviceFloats& operator=(const DeviceFloats&) = delete;
    float* data() const { return data_; }
    std::vector<float> download() const {
        std::vector<float> host(n_);
        GPU_CHECK(cudaMemcpy(host.data(), data_, n_ * sizeof(float), cudaMemcpyDeviceToHost));
        return host;
    }

private:
    std::size_t n_;
    float* data_ = nullptr;
};

struct Problem {
    ModelConfig config;
    ShardTokens shard;
    std::vector<float> params;
};

// Parameters away from the initial point (norms not all 1, larger embeddings, betas per layer),
// random tokens.
Problem make_problem(int layers, int width, int heads, int vocab, std::int64_t batch, std::int64_t tokens,
                     std::uint32_t seed, int tables = 2, int planes = 3) {
    Problem p;
    p.config.layers = layers;
    p.config.width = width;
    p.config.heads = heads;
    p.config.tables = tables;
    p.config.planes = planes;
    p.config.beta = 1.5;
    p.config.vocab = vocab;
    p.config.seed = seed;
    ParameterLayout layout(p.config);
    p.params = initial_parameters(p.config, layout);
    std::mt19937 gen(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (const ParameterTensor& t : layout.tensors())
        for (std::int64_t i = 0; i < t.size; ++i) {
            float& v = p.params[static_cast<std::size_t>(t.offset + i)];
            if (t.name == "embedding") v = 0.5f * normal(gen);
            else if (!t.decay) v += 0.2f * normal(gen);
        }
    p.shard.batch = batch;
    p.shard.tokens = tokens;
    std::uniform_int_distribution<int> token(0, vocab - 1);
    for (std::int64_t i = 0; i < batch * (tokens + 1); ++i) p.shard.ids.push_back(token(gen));
    return p;
}

struct Result {
    double loss = 0;
    std::vector<float> grad;
    std::vector<std::int32_t> predictions;
};

Result run_cpu(const Problem& p) {
    MpiCollectives sp(MPI_COMM_SELF);
    Model model(p.config);
    Result r;
    r.grad.assign(p.params.size(), 0.0f);
    PassTimes times;
    const double scale = 1.0 / double(p.shard.batch * p.shard.tokens);
    r.loss = model.run(sp, p.params, p.shard, scale, &r.grad, times, &r.predictions);
    return r;
}

Result run_gpu(const Problem& p, gpu::CudaModelOptions options) {
    MpiCollectives self(MPI_COMM_SELF);
    cuda::StagedCollectives sp(self);
    cudaStream_t stream;
    GPU_CHECK(cudaStreamCreate(&stream));
    Result r;
    {
        gpu::CudaModel model(p.config, options, stream);
        DeviceFloats params(p.params), grad(std::vector<float>(p.params.size(), 0.0f));
        PassTimes times;
        const double scale = 1.0 / double(p.shard.batch * p.shard.tokens);
        r.loss = model.run(sp, params.data(), p.shard, scale, grad.data(), times);
        r.grad = grad.download();
        // Forward only: the same loss, and the predictions.
        const double again = model.run(sp, params.data(), p.shard, scale, nullptr, times, &r.predictions);
        EXPECT_EQ(again, r.loss) << "the forward-only loss differs from the training one";
    }
    GPU_CHECK(cudaStreamDestroy(stream));
    return r;
}

// Compares every parameter tensor's gradient; returns the largest relative error.
double compare(const Problem& p, const Result& gpu, const Result& cpu, double loss_tol, double grad_tol,
               const char* label) {
    const double loss_err = std::abs(gpu.loss - cpu.loss) / std::abs(cpu.loss);
    EXPECT_LE(loss_err, loss_tol) << label << ": loss gpu " << gpu.loss << " cpu " << cpu.loss;
    double worst = 0;
    ParameterLayout layout(p.config);
    for (const ParameterTensor& t : layout.tensors()) {
        const std::vector<float> g(gpu.grad.begin() + t.offset, gpu.grad.begin() + t.offset + t.size);
        const std::vector<float> c(cpu.grad.begin() + t.offset, cpu.grad.begin() + t.offset + t.size);
        const double err = testgpu::rel_error(g, c);
        worst = std::max(worst, err);
        EXPECT_LE(err, grad_tol) << label << ": gradient of " << t.name;
        if (std::getenv("RACESP_VERBOSE")) std::printf("%s %-16s rel error %.2e\n", label, t.name.c_str(), err);
    }
    std::printf("[ %s ] loss rel error %.2e, worst gradient tensor rel error %.2e\n", label, loss_err, worst);
    return worst;
}

double agreement(const std::vector<std::int32_t>& a, const std::vector<std::int32_t>& b) {
    if (a.size() != b.size() || a.empty()) return 0;
    std::size_t same = 0;
    for (std::size_t i = 0; i < a.size(); ++i) same += a[i] == b[i];
    return double(same) / double(a.size());
}

TEST(CudaModel, Fp32MatchesCpu) {
    SKIP_WITHOUT_GPU();
    // Two blocks, two heads of 16; a 2 x 45-token shard (several engine chunks).
    const Problem p = make_problem(2, 32, 2, 256, 2, 45, 7);
    const Result cpu = run_cpu(p);
    gpu::CudaModelOptions options;
    options.dtype = DType::f32;
    const Result gpu = run_gpu(p, options);
    compare(p, gpu, cpu, 1e-6, 1e-4, "fp32");
    EXPECT_GE(agreement(gpu.predictions, cpu.predictions), 0.99);
}

TEST(CudaModel, Bf16MatchesCpuLoosely) {
    SKIP_WITHOUT_GPU();
    // A longer shard (several engine segments) and wider heads.
    const Problem p = make_problem(2, 64, 2, 256, 1, 2500, 8);
    const Result cpu = run_cpu(p);
    const Result gpu = run_gpu(p, {});
    compare(p, gpu, cpu, 2e-3, 5e-2, "bf16");
    EXPECT_GE(agreement(gpu.predictions, cpu.predictions), 0.9);
}

// Heads of 64 with P = L = 4: the attention runs the warp-tile kernels, and each block's backward
// reuses its forward's key totals and normalisers (the engine kept in the block's cache).
TEST(CudaModel, Bf16OnTheWarpTileKernelsMatchesCpuLoosely) {
    SKIP_WITHOUT_GPU();
    const Problem p = make_problem(2, 128, 2, 256, 1, 2500, 11, 4, 4);
    const Result cpu = run_cpu(p);
    const Result gpu = run_gpu(p, {});
    compare(p, gpu, cpu, 2e-3, 5e-2, "bf16 warp tiles");
    EXPECT_GE(agreement(gpu.predictions, cpu.predictions), 0.9);
    gpu::CudaModelOptions recompute;
    recompute.recompute = true;
    const Result again = run_gpu(p, recompute);
    EXPECT_EQ(again.loss, gpu.loss);
    EXPECT_EQ(again.grad, gpu.grad);
}

TEST(CudaModel, LargeVocabularyInSeveralHeadPasses) {
    SKIP_WITHOUT_GPU();
    // 20000 tokens: the LM head runs in passes of 1664 rows, so 2000 rows take two.
    const Problem p = make_problem(1, 32, 2, 20000, 2, 1000, 9);
    const Result cpu = run_cpu(p);
    gpu::CudaModelOptions options;
    options.dtype = DType::f32;
    compare(p, run_gpu(p, options), cpu, 1e-6, 1e-4, "fp32 vocab 20000");
}

TEST(CudaModel, RecomputeGivesTheSameBits) {
    SKIP_WITHOUT_GPU();
    const Problem p = make_problem(3, 32, 2, 256, 2, 300, 10);
    for (DType dtype : {DType::f32, DType::bf16}) {
        gpu::CudaModelOptions store, recompute;
        store.dtype = recompute.dtype = dtype;
        recompute.recompute = true;
        const Result a = run_gpu(p, store), b = run_gpu(p, recompute);
        EXPECT_EQ(a.loss, b.loss) << cuda::to_string(dtype);
        EXPECT_EQ(a.grad, b.grad) << cuda::to_string(dtype);
    }
}

TEST(CudaModel, EmptyShard) {
    SKIP_WITHOUT_GPU();
    // A rank may hold no tokens of a sequence: zero loss, zero gradient.
    Problem p = make_problem(2, 32, 2, 256, 2, 0, 11);
    const Result gpu = run_gpu(p, {});
    EXPECT_EQ(gpu.loss, 0.0);
    for (float g : gpu.grad) ASSERT_EQ(g, 0.0f);
}

TEST(CudaAdamW, MatchesCpuAdamW) {
    SKIP_WITHOUT_GPU();
    ModelConfig config;
    config.layers = 2;
    config.width = 16;
    config.heads = 2;
    const ParameterLayout layout(config);
    OptimizerConfig oc;
    oc.lr = 3e-3;
    oc.warmup = 2;
    oc.steps = 5;
    oc.weight_decay = 0.1;
    oc.clip = 0.5;
    std::vector<float> params = initial_parameters(config, layout);
    AdamW cpu(oc, layout);
    cudaStream_t stream;
    GPU_CHECK(cudaStreamCreate(&stream));
    {
        gpu::CudaAdamW gpu(oc, layout, stream);
        DeviceFloats dparams(params);
        std::mt19937 gen(3);
        std::normal_distribution<float> normal(0.0f, 1.0f);
        for (std::int64_t step = 1; step <= 5; ++step) {
            std::vector<float> grad(params.size());
            for (float& g : grad) g = (step == 3 ? 0.001f : 0.05f) * normal(gen);  // clipped but at step 3
            DeviceFloats dgrad(grad);
            const double gpu_norm = gpu.step(step, dparams.data(), dgrad.data());
            const double cpu_norm = cpu.step(step, params, grad);
            EXPECT_NEAR(gpu_norm, cpu_norm, 1e-12 * cpu_norm) << "step " << step;
            const std::vector<float> p = dparams.download();
            std::vector<float> m(params.size()), v(params.size());
            GPU_CHECK(cudaMemcpy(m.data(), gpu.m(), m.size() * 4, cudaMemcpyDeviceToHost));
            GPU_CHECK(cudaMemcpy(v.data(), gpu.v(), v.size() * 4, cudaMemcpyDeviceToHost));
            // Operation for operation the same arithmetic, but the CPU compiler may fuse a
            // multiply-add (g++ contracts by default) and the norm sums in another order: equal to
            // float32 rounding of the terms, i.e. 1e-6 of each vector's largest entry (a moment
            // that is a near-cancelling sum can differ by more relative to itself).
            auto largest = [](const std::vector<float>& x) {
                float top = 0;
                for (float e : x) top = std::max(top, std::abs(e));
                return top;
            };
            const float pm = largest(params), mm = largest(cpu.m()), vm = largest(cpu.v());
            for (std::size_t i = 0; i < params.size(); ++i) {
                ASSERT_NEAR(p[i], params[i], 1e-6f * pm) << "step " << step << " param " << i;
                ASSERT_NEAR(m[i], cpu.m()[i], 1e-6f * mm) << "step " << step << " m " << i;
                ASSERT_NEAR(v[i], cpu.v()[i], 1e-6f * vm) << "step " << step << " v " << i;
            }
        }
    }
    GPU_CHECK(cudaStreamDestroy(stream));
}

}  // namespace
}  // namespace racesp::model

int main(int argc, char** argv) {
    MPI_Init(&argc, &argv);
    ::testing::InitGoogleTest(&argc, argv);
    const int result = RUN_ALL_TESTS();
    MPI_Finalize();
    return result;
}
