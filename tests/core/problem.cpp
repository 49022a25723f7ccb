#include "problem.hpp"

#include <cmath>
#include <random>

namespace racesp::test {

std::vector<double> random_normal(std::size_t n, std::uint64_t seed) {
    std::mt19937_64 gen(seed);
    std::normal_distribution<double> normal(0.0, 1.0);
    std::vector<double> out(n);
    for (auto& x : out) x = normal(gen);
    return out;
}

Problem make_problem(const AttentionConfig& config, const Shape& shape, std::uint64_t seed,
                     double qk_scale) {
    Problem p{config, shape, {}, {}, {}, {}};
    const auto n = static_cast<std::size_t>(shape.elements());
    const double s = qk_scale / std::sqrt(static_cast<double>(shape.dim));
    auto fill = [&](std::vector<float>& x, std::uint64_t stream, double scale) {
        const auto r = random_normal(n, seed * 4 + stream);
        x.resize(n);
        for (std::size_t e = 0; e < n; ++e) x[e] = static_cast<float>(scale * r[e]);
    };
    fill(p.q, 0, s);
    fill(p.k, 1, s);
    fill(p.v, 2, 1.0);
    fill(p.dout, 3, 1.0);
    return p;
}

std::vector<float> library_forward(const Problem& p, const Planes& planes,
                                   const CpuOptions& options) {
    std::vector<float> o(p.q.size(), NAN);
    attention_forward(p.config, planes, p.cq(), p.ck(), p.cv(), MutTensor{o.data(), p.shape},
                      options);
    return o;
}

LibraryGradients library_backward(const Problem& p, const Planes& planes,
                                  const CpuOptions& options) {
    // NaN-filled so that an element the library forgets to write cannot pass.
    LibraryGradients g{std::vector<float>(p.q.size(), NAN), std::vector<float>(p.q.size(), NAN),
                       std::vector<float>(p.q.size(), NAN), 0};
    g.dbeta = attention_backward(p.config, planes, p.cq(), p.ck(), p.cv(), p.cdout(),
                                 MutTensor{g.dq.data(), p.shape}, MutTensor{g.dk.data(), p.shape},
                                 MutTensor{g.dv.data(), p.shape}, options);
    return g;
}

}  // namespace racesp::test
