// The CPU trainer (trainer.hpp).
#include <algorithm>
#include <cmath>
#include <string>

#include "host_memory.hpp"
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
          reduce_(params_.size() + 1) {
        MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node_);
    }
    ~CpuTrainer() override { MPI_Comm_free(&node_); }

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

    // The activations of every rank on this node against the host memory the node (or the job's
    // cgroup) still has: a step that would not fit stops here with one error instead of being
    // killed by the out-of-memory killer halfway through. Collective over the world.
    std::size_t prepare(std::int64_t batch, std::int64_t tokens) override {
        const std::uint64_t need = net_.activation_bytes(batch, tokens);
        unsigned long long mine = need, on_node = 0;
        int ranks = 1;
        MPI_Allreduce(&mine, &on_node, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, node_);
        MPI_Comm_size(node_, &ranks);
        const std::uint64_t available = available_host_bytes();
        // 10% of headroom for what the count leaves out (MPI, BLAS and allocator buffers: measured
        // 139-141 KB per token at width 512 and 4 layers, against 136 KB counted).
        if (available > 0 && double(on_node) > 0.9 * double(available)) {
            std::string what = "a shard of " + std::to_string(batch) + " x " + std::to_string(tokens) + " tokens needs ";
            what += gib(need);
            what += " of host memory for the model's activations";
            if (ranks > 1) what += " (" + gib(on_node) + " for the " + std::to_string(ranks) + " ranks on this node)";
            what += ", more than the " + gib(available) + " available there: use a shorter --seq-len, a smaller --batch, "
                    "or more nodes for the ranks";
            throw InputError(what);
        }
        return 0;
    }

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
    MPI_Comm node_ = MPI_COMM_NULL;  // the ranks that share this host's memory
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
