// The GPU trainer (cuda_trainer.hpp).
#include "cuda_trainer.hpp"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>

#include "cuda_check.hpp"
#include "cuda_optimizer.hpp"
#include "device_buffer.hpp"
#include "host_memory.hpp"
#include "model_kernels.hpp"
#include "racesp/device_collectives.hpp"
#include "racesp/errors.hpp"

namespace racesp::model::gpu {

namespace {

double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Stream {
    cudaStream_t s = nullptr;
    Stream() { CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)); }
    ~Stream() {
        if (s) {
            cudaStreamSynchronize(s);
            cudaStreamDestroy(s);
        }
    }
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;
};

class CudaTrainer final : public Trainer {
public:
    CudaTrainer(const ModelConfig& model, const OptimizerConfig& optimizer, CudaModelOptions options, MPI_Comm world,
                MPI_Comm sp)
        : world_size_(comm_size(world)),
          sp_(sp, stream_.s),
          world_(world, stream_.s),
          net_(model, options, stream_.s),
          adam_(optimizer, net_.layout(), stream_.s),
          size_(net_.layout().size()) {
        params_.reserve(static_cast<std::size_t>(size_));
        grad_.reserve(static_cast<std::size_t>(size_));
        reduce_.reserve(static_cast<std::size_t>(size_) + 1);
    }

    const ParameterLayout& layout() const override { return net_.layout(); }

    void set_state(const std::vector<float>& params, const std::vector<float>& m, const std::vector<float>& v) override {
        upload(params, params_.data());
        upload(m, adam_.m());
        upload(v, adam_.v());
        CUDA_CHECK(cudaStreamSynchronize(stream_.s));
    }
    void get_state(std::vector<float>& params, std::vector<float>& m, std::vector<float>& v) override {
        download(params_.data(), params);
        download(adam_.m(), m);
        download(adam_.v(), v);
        CUDA_CHECK(cudaStreamSynchronize(stream_.s));
    }

    std::size_t prepare(std::int64_t batch, std::int64_t tokens) override {
        // The model's buffers for such a shard, against what the device has free (what the model
        // holds already counts as free for it).
        const std::size_t need = net_.estimate_bytes(batch, tokens, true);
        std::size_t free = 0, total = 0;
        CUDA_CHECK(cudaMemGetInfo(&free, &total));
        const std::size_t available = free + net_.reserved_bytes();
        auto too_large = [&] {
            return InputError("a shard of " + std::to_string(batch) + " x " + std::to_string(tokens) +
                              " tokens needs " + gib(need) + " of GPU memory for the model's buffers, more than the " +
                              gib(available) + " free on this GPU: use " +
                              (net_.options().recompute ? "" : "--recompute, ") +
                              "more --sp-size ranks or a shorter --seq-len");
        };
        if (need > available) throw too_large();
        try {
            net_.reserve(batch, tokens, true);
        } catch (const Error&) {
            cudaGetLastError();  // out of memory after all (fragmentation): the same message
            throw too_large();
        }
        return net_.reserved_bytes() + (params_.bytes() + grad_.bytes()) * 2 + reduce_.bytes();
    }

    StepResult step(std::int64_t step, const ShardTokens& shard, double loss_scale) override {
        StepResult r;
        float* grad = grad_.data();
        CUDA_CHECK(cudaMemsetAsync(grad, 0, static_cast<std::size_t>(size_) * sizeof(float), stream_.s));
        const double local_loss = net_.run(sp_.get(), params_.data(), shard, loss_scale, grad, r.times);
        // One float64 sum of the gradient and the loss over the world.
        const double reduce_start = now();
        double loss = local_loss;
        if (world_size_ > 1) {
            double* reduce = reduce_.data();
            float_to_double(size_, grad, reduce, stream_.s);
            CUDA_CHECK(cudaMemcpyAsync(reduce + size_, &local_loss, sizeof(double), cudaMemcpyHostToDevice, stream_.s));
            world_.get().allreduce_sum(reduce, size_ + 1);
            double_to_float(size_, reduce, grad, stream_.s);
            CUDA_CHECK(cudaMemcpyAsync(&loss, reduce + size_, sizeof(double), cudaMemcpyDeviceToHost, stream_.s));
            CUDA_CHECK(cudaStreamSynchronize(stream_.s));
        }
        r.reduce_s = now() - reduce_start;
        r.loss = loss * loss_scale;
        r.grad_norm = adam_.step(step, params_.data(), grad);
        CUDA_CHECK(cudaStreamSynchronize(stream_.s));
        return r;
    }

    double evaluate(const ShardTokens& shard, std::vector<std::int32_t>* predictions) override {
        PassTimes times;
        return net_.run(sp_.get(), params_.data(), shard, 1.0, nullptr, times, predictions);
    }

    std::vector<double> betas() override {
        std::vector<double> out;
        for (const auto& b : net_.layout().blocks) {
            float log_beta = 0;
            CUDA_CHECK(cudaMemcpy(&log_beta, params_.data() + b.log_beta, sizeof(float), cudaMemcpyDeviceToHost));
            out.push_back(std::exp(double(log_beta)));
        }
        return out;
    }

private:
    void upload(const std::vector<float>& host, float* device) {
        if (host.empty()) {  // moments of a fresh start
            CUDA_CHECK(cudaMemsetAsync(device, 0, static_cast<std::size_t>(size_) * sizeof(float), stream_.s));
            return;
        }
        if (static_cast<std::int64_t>(host.size()) != size_)
            throw Error("CudaTrainer: " + std::to_string(host.size()) + " values for " + std::to_string(size_) +
                        " parameters");
        CUDA_CHECK(cudaMemcpyAsync(device, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice, stream_.s));
        CUDA_CHECK(cudaStreamSynchronize(stream_.s));
    }
    void download(const float* device, std::vector<float>& host) {
        host.resize(static_cast<std::size_t>(size_));
        CUDA_CHECK(cudaMemcpyAsync(host.data(), device, host.size() * sizeof(float), cudaMemcpyDeviceToHost, stream_.s));
    }

    int world_size_;
    Stream stream_;
    racesp::cuda::DeviceCollectives sp_, world_;  // NCCL, or MPI staged through host memory
    CudaModel net_;
    CudaAdamW adam_;
    std::int64_t size_;
    racesp::cuda::DeviceBuffer<float> params_, grad_;
    racesp::cuda::DeviceBuffer<double> reduce_;
};

}  // namespace

std::unique_ptr<Trainer> make_cuda_trainer(const ModelConfig& model, const OptimizerConfig& optimizer,
                                           CudaModelOptions options, MPI_Comm world, MPI_Comm sp) {
    return std::make_unique<CudaTrainer>(model, optimizer, options, world, sp);
}

const char* cuda_collectives_name() {
#ifdef RACESP_HAVE_NCCL
    return "NCCL";
#else
    return "MPI (staged through host memory)";
#endif
}

}  // namespace racesp::model::gpu
