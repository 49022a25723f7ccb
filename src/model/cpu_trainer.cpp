// The CPU trainer (trainer.hpp).
#include <algorithm>
#include <cmath>

#include "racesp/errors.hpp"
#include "racesp/mpi_collectives.hpp"
#include "trainer.hpp"

namespace racesp::model {

namespace {

class CpuTrainer final : public Trainer {
public:
    CpuTrainer(const ModelConfig& model, const OptimizerConfig& optimizer, MPI_Comm world, MPI_Comm sp)
        : world_(world),
          sp_(sp),
          net_(model),
          adam_(optimizer, net_.layout()),
          params_(static_cast<std::size_t>(net_.layout().size())),
          grad_(params_.size()),
          reduce_(params_.size() + 1) {}

    const ParameterLayout& layout() const override { return net_.layout(); }

    void set_state(const std::vector<float>& params, const std::vector<float>& m, const std::vector<float>& v) override {
        params_ = params;
        adam_.m() = m;
        adam_.v() = v;
    }
    void get_state(std::vector<float>& params, std::vector<float>& m, std::vector<float>& v) override {
        params = params_;
        m = adam_.m();
        v = adam_.v();
    }

    std::size_t prepare(std::int64_t, std::int64_t) override { return 0; }

    StepResult step(std::int64_t step, const ShardTokens& shard, double loss_scale) override {
        StepResult r;
        std::fill(grad_.begin(), grad_.end(), 0.0f);
        const double local_loss = net_.run(sp_, params_, shard, loss_scale, &grad_, r.times);
        // One allreduce for the gradient and the loss, in float64.
        const double reduce_start = MPI_Wtime();
        for (std::size_t i = 0; i < grad_.size(); ++i) reduce_[i] = grad_[i];
        reduce_.back() = local_loss;
        if (MPI_Allreduce(MPI_IN_PLACE, reduce_.data(), static_cast<int>(reduce_.size()), MPI_DOUBLE, MPI_SUM,
                          world_) != MPI_SUCCESS)
            throw Error("MPI error in MPI_Allreduce of the gradient");
        r.reduce_s = MPI_Wtime() - reduce_start;
        for (std::size_t i = 0; i < grad_.size(); ++i) grad_[i] = static_cast<float>(reduce_[i]);
        r.loss = reduce_.back() * loss_scale;
        r.grad_norm = adam_.step(step, params_, grad_);
        return r;
    }

    double evaluate(const ShardTokens& shard, std::vector<std::int32_t>* predictions) override {
        PassTimes times;
        return net_.run(sp_, params_, shard, 1.0, nullptr, times, predictions);
    }

    std::vector<double> betas() override {
        std::vector<double> out;
        for (const auto& b : net_.layout().blocks) out.push_back(std::exp(double(params_[static_cast<std::size_t>(b.log_beta)])));
        return out;
    }

private:
    MPI_Comm world_;
    MpiCollectives sp_;
    Model net_;
    AdamW adam_;
    std::vector<float> params_, grad_;
    std::vector<double> reduce_;
};

}  // namespace

std::unique_ptr<Trainer> make_cpu_trainer(const ModelConfig& model, const OptimizerConfig& optimizer, MPI_Comm world,
                                          MPI_Comm sp) {
    return std::make_unique<CpuTrainer>(model, optimizer, world, sp);
}

}  // namespace racesp::model
