// The library's backward against central finite differences of the float64 reference forward
// on tiny problems: dq, dk, dv element by element and dbeta, 1e-3 relative (the library is
// float32; the differences are float64 with step 1e-5, truncation ~1e-10).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <ostream>

#include "compare.hpp"
#include "problem.hpp"
#include "reference.hpp"

namespace racesp::test {
namespace {

constexpr double kStep = 1e-5;
constexpr double kTol = 1e-3;

struct FdCase {
    Normalization norm;
    bool causal;
    bool share;
    int planes, tables;
    double beta, eps;
    Shape shape;
};

std::ostream& operator<<(std::ostream& os, const FdCase& c) {
    return os << to_string(c.norm) << (c.causal ? " causal" : " full") << (c.share ? " shared" : "")
              << " P=" << c.planes << " L=" << c.tables << " beta=" << c.beta << " eps=" << c.eps
              << " " << c.shape.str();
}

class FiniteDifferences : public ::testing::TestWithParam<FdCase> {};

TEST_P(FiniteDifferences, BackwardMatchesCentralDifferences) {
    const FdCase& fc = GetParam();
    AttentionConfig config;
    config.normalization = fc.norm;
    config.causal = fc.causal;
    config.share_planes = fc.share;
    config.planes = fc.planes;
    config.tables = fc.tables;
    config.beta = fc.beta;
    config.eps = fc.eps;
    config.seed = 4242;
    const auto p = make_problem(config, fc.shape, 17);
    const Planes planes(config, fc.shape.heads, fc.shape.dim);
    const auto g = library_backward(p, planes);

    const RefPlanes ref(planes);
    std::vector<double> in[3] = {{p.q.begin(), p.q.end()}, {p.k.begin(), p.k.end()},
                                 {p.v.begin(), p.v.end()}};
    const std::vector<double> dout(p.dout.begin(), p.dout.end());
    auto loss = [&](double beta) {
        return reference_loss(config, ref, fc.shape, in[0].data(), in[1].data(), in[2].data(),
                              beta, dout.data());
    };
    const std::vector<float>* lib[3] = {&g.dq, &g.dk, &g.dv};
    double largest = 0;
    for (int which = 0; which < 3; ++which) {
        std::vector<double> fd(in[which].size());
        for (std::size_t e = 0; e < fd.size(); ++e) {
            const double x0 = in[which][e];
            in[which][e] = x0 + kStep;
            const double up = loss(config.beta);
            in[which][e] = x0 - kStep;
            const double down = loss(config.beta);
            in[which][e] = x0;
            fd[e] = (up - down) / (2 * kStep);
        }
        largest = std::max(largest, l2_norm(fd));
        EXPECT_LT(relative_error(*lib[which], fd), kTol) << "d" << "qkv"[which];
        EXPECT_LT(max_relative_error(*lib[which], fd), kTol) << "d" << "qkv"[which];
    }
    const double fd_beta = (loss(config.beta + kStep) - loss(config.beta - kStep)) / (2 * kStep);
    EXPECT_NEAR(g.dbeta, fd_beta, kTol * std::max(std::abs(fd_beta), 1e-2 * largest));
}

INSTANTIATE_TEST_SUITE_P(
    Tiny, FiniteDifferences,
    ::testing::Values(FdCase{Normalization::kernel, false, false, 2, 2, 1.0, 1e-6, {1, 4, 2, 3}},
                      FdCase{Normalization::kernel, true, false, 3, 2, 2.0, 1e-6, {2, 5, 1, 3}},
                      FdCase{Normalization::bucket, false, true, 2, 3, 0.5, 1e-6, {1, 4, 2, 2}},
                      FdCase{Normalization::bucket, true, false, 3, 1, 1.5, 0.125, {2, 3, 2, 3}},
                      FdCase{Normalization::kernel, true, true, 1, 4, 3.0, 1e-6, {1, 6, 2, 2}},
                      FdCase{Normalization::bucket, true, true, 4, 2, 1.0, 1e-6, {1, 5, 1, 5}}),
    [](const ::testing::TestParamInfo<FdCase>& i) {
        return std::string(to_string(i.param.norm)) + (i.param.causal ? "_causal" : "_full") +
               (i.param.share ? "_shared" : "") + "_" + std::to_string(i.index);
    });

}  // namespace
}  // namespace racesp::test
