// Checks of the test reference itself, independent of the library's kernels: if these fail, the
// other comparisons mean nothing.
#include <gtest/gtest.h>

#include <cmath>

#include "compare.hpp"
#include "dual.hpp"
#include "problem.hpp"
#include "reference.hpp"

namespace racesp::test {
namespace {

// The explicit corner softmax equals the per-plane sigmoid product of DESIGN.md §1, computed
// here in double from the same u: two different formulas for phi must agree.
TEST(Reference, CornerSoftmaxEqualsSigmoidProduct) {
    for (int P : {1, 2, 3, 5, 8}) {
        AttentionConfig config;
        config.planes = P;
        config.tables = 2;
        const Planes planes(config, 2, 6);
        const RefPlanes ref(planes);
        const auto x = random_normal(6, 31 + static_cast<std::uint64_t>(P));
        const double beta = 1.7;
        for (std::int64_t h = 0; h < 2; ++h)
            for (int l = 0; l < 2; ++l) {
                const auto phi = corner_softmax(ref, h, l, x.data(), beta);
                ASSERT_EQ(phi.size(), std::size_t{1} << P);
                const double* W = ref.table(h, l);
                for (int r = 0; r < (1 << P); ++r) {
                    double prod = 1;
                    for (int p = 0; p < P; ++p) {
                        double z = 0;
                        for (int d = 0; d < 6; ++d) z += W[p * 6 + d] * x[static_cast<std::size_t>(d)];
                        const double c = ((r >> (P - 1 - p)) & 1) ? 1.0 : -1.0;
                        prod *= 1 / (1 + std::exp(-2 * beta * std::tanh(z) * c));
                    }
                    EXPECT_NEAR(phi[static_cast<std::size_t>(r)], prod, 1e-14) << "P=" << P << " r=" << r;
                }
            }
    }
}

// Forward-mode derivatives of the reference match central differences of the reference: the
// Dual arithmetic and the seeding are right.
TEST(Reference, DualDerivativesMatchFiniteDifferences) {
    for (auto norm : {Normalization::kernel, Normalization::bucket})
        for (bool causal : {false, true}) {
            AttentionConfig config;
            config.normalization = norm;
            config.causal = causal;
            config.planes = 3;
            config.tables = 2;
            config.beta = 1.25;
            config.eps = 0.01;
            const Shape shape{2, 4, 2, 3};
            const auto p = make_problem(config, shape, 11);
            const Planes planes(config, shape.heads, shape.dim);
            const auto g = reference_gradients(config, planes, shape, p.q.data(), p.k.data(),
                                               p.v.data(), p.dout.data());
            const RefPlanes ref(planes);
            std::vector<double> in[3] = {{p.q.begin(), p.q.end()}, {p.k.begin(), p.k.end()},
                                         {p.v.begin(), p.v.end()}};
            const std::vector<double> dout(p.dout.begin(), p.dout.end());
            const std::vector<double>* grads[3] = {&g.dq, &g.dk, &g.dv};
            const double h = 1e-6;
            auto loss = [&](double beta) {
                return reference_loss(config, ref, shape, in[0].data(), in[1].data(), in[2].data(),
                                      beta, dout.data());
            };
            for (int which = 0; which < 3; ++which)
                for (std::size_t e = 0; e < in[which].size(); ++e) {
                    const double x0 = in[which][e];
                    in[which][e] = x0 + h;
                    const double up = loss(config.beta);
                    in[which][e] = x0 - h;
                    const double down = loss(config.beta);
                    in[which][e] = x0;
                    EXPECT_NEAR((*grads[which])[e], (up - down) / (2 * h), 1e-7)
                        << "tensor " << which << " element " << e;
                }
            EXPECT_NEAR(g.dbeta, (loss(config.beta + h) - loss(config.beta - h)) / (2 * h), 1e-7);
        }
}

// Under `kernel`, equal values give that value back, and a single token returns its own v.
TEST(Reference, KernelNormalisationReproducesConstantValues) {
    AttentionConfig config;
    config.planes = 4;
    config.tables = 3;
    const Shape shape{1, 6, 1, 3};
    auto p = make_problem(config, shape, 5);
    for (std::int64_t t = 0; t < 6; ++t)
        for (int d = 0; d < 3; ++d) p.v[static_cast<std::size_t>(t * 3 + d)] = static_cast<float>(d + 1);
    const Planes planes(config, 1, 3);
    const auto o = reference_forward(config, planes, shape, p.q.data(), p.k.data(), p.v.data());
    for (std::size_t e = 0; e < o.size(); ++e) EXPECT_NEAR(o[e], static_cast<double>(e % 3 + 1), 1e-14);
}

}  // namespace
}  // namespace racesp::test
