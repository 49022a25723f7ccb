// The whole model's gradient (float32, through the RACE engine) against central finite
// differences: for every parameter tensor, the derivative of the loss along a random unit
// direction inside that tensor (layer by layer), and along a random direction over all
// parameters (end to end). h = 1e-2 on unit directions; float32 rounding of the loss (~1e-7)
// then contributes ~1e-5 and the O(h^2) term about as much, so the tolerance is 1e-3 relative
// to the gradient norm in that tensor plus 2e-5.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "model.hpp"
#include "racesp/mpi_collectives.hpp"

namespace racesp::model {
namespace {

struct Problem {
    ModelConfig config;
    ShardTokens shard;
    std::vector<float> params;
};

Problem make_problem(std::uint32_t seed) {
    Problem p;
    p.config.layers = 2;
    p.config.width = 8;
    p.config.heads = 2;
    p.config.tables = 2;
    p.config.planes = 2;
    p.config.beta = 1.5;
    p.config.seed = seed;
    ParameterLayout layout(p.config);
    p.params = initial_parameters(p.config, layout);
    // Away from the initial point: norms not all 1, larger embeddings, betas per layer.
    std::mt19937 gen(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (const ParameterTensor& t : layout.tensors())
        for (std::int64_t i = 0; i < t.size; ++i) {
            float& v = p.params[static_cast<std::size_t>(t.offset + i)];
            if (t.name == "embedding") v = 0.5f * normal(gen);
            else if (!t.decay) v += 0.2f * normal(gen);
        }
    p.shard.batch = 2;
    p.shard.tokens = 11;
    std::uniform_int_distribution<int> token(0, 255);
    for (int i = 0; i < 2 * 12; ++i) p.shard.ids.push_back(token(gen));
    return p;
}

double loss_at(Model& model, MpiCollectives& sp, const Problem& p, const std::vector<float>& params) {
    PassTimes times;
    const double scale = 1.0 / double(p.shard.batch * p.shard.tokens);
    return scale * model.run(sp, params, p.shard, scale, nullptr, times);
}

double directional(Model& model, MpiCollectives& sp, const Problem& p, const std::vector<double>& direction) {
    const double h = 3e-3;
    std::vector<float> up = p.params, down = p.params;
    for (std::size_t i = 0; i < up.size(); ++i) {
        up[i] = float(double(up[i]) + h * direction[i]);
        down[i] = float(double(down[i]) - h * direction[i]);
    }
    return (loss_at(model, sp, p, up) - loss_at(model, sp, p, down)) / (2 * h);
}

TEST(ModelGradients, EveryTensorAndEndToEnd) {
    MpiCollectives sp(MPI_COMM_SELF);
    Problem p = make_problem(7);
    Model model(p.config);
    std::vector<float> grad(p.params.size(), 0.0f);
    PassTimes times;
    const double scale = 1.0 / double(p.shard.batch * p.shard.tokens);
    const double loss = scale * model.run(sp, p.params, p.shard, scale, &grad, times);
    EXPECT_NEAR(loss, loss_at(model, sp, p, p.params), 1e-12);  // the backward does not change the loss
    EXPECT_GT(loss, 1.0);

    std::mt19937 gen(11);
    std::normal_distribution<double> normal(0.0, 1.0);
    auto check = [&](const std::string& name, std::int64_t offset, std::int64_t size) {
        std::vector<double> direction(p.params.size(), 0.0);
        double norm = 0, gnorm = 0;
        for (std::int64_t i = offset; i < offset + size; ++i) {
            direction[static_cast<std::size_t>(i)] = normal(gen);
            norm += direction[static_cast<std::size_t>(i)] * direction[static_cast<std::size_t>(i)];
            gnorm += double(grad[static_cast<std::size_t>(i)]) * grad[static_cast<std::size_t>(i)];
        }
        double analytic = 0;
        for (std::int64_t i = offset; i < offset + size; ++i) {
            direction[static_cast<std::size_t>(i)] /= std::sqrt(norm);
            analytic += direction[static_cast<std::size_t>(i)] * grad[static_cast<std::size_t>(i)];
        }
        const double numeric = directional(model, sp, p, direction);
        if (std::getenv("RACESP_VERBOSE"))
            std::printf("%-28s analytic %+.6e numeric %+.6e\n", name.c_str(), analytic, numeric);
        EXPECT_NEAR(analytic, numeric, 1e-3 * std::sqrt(gnorm) + 5e-5)
            << name << ": analytic " << analytic << " numeric " << numeric << " |grad| " << std::sqrt(gnorm);
    };
    for (const ParameterTensor& t : model.layout().tensors()) check(t.name, t.offset, t.size);
    check("all parameters", 0, model.layout().size());
    // Single entries with the largest gradients of two tensors that mix across tokens.
    for (const std::string name : {"block0.wqkv", "block1.log_beta"}) {
        for (const ParameterTensor& t : model.layout().tensors()) {
            if (t.name != name) continue;
            std::int64_t best = t.offset;
            for (std::int64_t i = t.offset; i < t.offset + t.size; ++i)
                if (std::abs(grad[static_cast<std::size_t>(i)]) > std::abs(grad[static_cast<std::size_t>(best)])) best = i;
            check(name + " largest entry", best, 1);
        }
    }
}

}  // namespace
}  // namespace racesp::model
