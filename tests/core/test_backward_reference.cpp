// attention_backward (dq, dk, dv, dbeta) against exact derivatives of the float64 reference over
// the sweep of cases.hpp: relative error below 1e-4. Small problems compare every element;
// longer ones compare derivatives along random directions, one tensor at a time.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "cases.hpp"
#include "compare.hpp"
#include "problem.hpp"
#include "reference.hpp"

namespace racesp::test {
namespace {

constexpr double kTol = 1e-4;
constexpr double kFullGradientBudget = 4e7;  // scalar operations of the reference, per case

class BackwardReference : public ::testing::TestWithParam<Case> {};

TEST_P(BackwardReference, MatchesExactReferenceDerivatives) {
    const Case& c = GetParam();
    const auto p = make_problem(c.config, c.shape, c.seed, c.qk_scale);
    const Planes planes(c.config, c.shape.heads, c.shape.dim);
    const auto g = library_backward(p, planes);
    const double passes = 3.0 * static_cast<double>(c.shape.tokens * c.shape.dim);

    if (passes * reference_pass_cost(c) <= kFullGradientBudget) {
        const auto ref = reference_gradients(c.config, planes, c.shape, p.q.data(), p.k.data(),
                                             p.v.data(), p.dout.data());
        const double scale = std::max({l2_norm(ref.dq), l2_norm(ref.dk), l2_norm(ref.dv)});
        if (c.config.normalization == Normalization::kernel && c.shape.tokens == 1) {
            // o = v whatever q, k and beta are: those gradients vanish exactly, and float32 can
            // only get them to rounding (a difference of terms of the size of dv).
            EXPECT_LT(l2_norm(g.dq), 1e-5 * scale);
            EXPECT_LT(l2_norm(g.dk), 1e-5 * scale);
            EXPECT_LT(std::abs(g.dbeta), 1e-5 * scale);
            EXPECT_LT(relative_error(g.dv, ref.dv), kTol);
            return;
        }
        // A gradient much smaller than the others is computed in float32 as a difference of
        // terms of their size (bucket with T = 1: dq, dk are O(eps)), so its rounding is judged
        // against 1e-2 of the largest gradient.
        const double floor = 1e-2 * scale;
        EXPECT_LT(relative_error(g.dq, ref.dq, floor), kTol);
        EXPECT_LT(relative_error(g.dk, ref.dk, floor), kTol);
        EXPECT_LT(relative_error(g.dv, ref.dv, floor), kTol);
        EXPECT_LT(max_relative_error(g.dq, ref.dq, floor), 10 * kTol);
        EXPECT_LT(max_relative_error(g.dk, ref.dk, floor), 10 * kTol);
        EXPECT_LT(max_relative_error(g.dv, ref.dv, floor), 10 * kTol);
        EXPECT_NEAR(g.dbeta, ref.dbeta, kTol * std::max(std::abs(ref.dbeta), floor))
            << "reference dbeta " << ref.dbeta;
        return;
    }

    // A random N(0,1) direction gives a derivative of typical size ||g||, which floors the
    // denominator when the projection happens to be small.
    const auto n = p.q.size();
    const std::vector<double> zero(n, 0.0);
    const std::vector<float>* lib[3] = {&g.dq, &g.dk, &g.dv};
    for (int which = 0; which < 3; ++which)
        for (std::uint64_t trial = 0; trial < 2; ++trial) {
            const auto dir = random_normal(n, c.seed * 10 + static_cast<std::uint64_t>(which) * 3 + trial);
            const double want = reference_directional(
                c.config, planes, c.shape, p.q.data(), p.k.data(), p.v.data(), p.dout.data(),
                which == 0 ? dir.data() : zero.data(), which == 1 ? dir.data() : zero.data(),
                which == 2 ? dir.data() : zero.data(), 0.0);
            double got = 0;
            for (std::size_t e = 0; e < n; ++e) got += static_cast<double>((*lib[which])[e]) * dir[e];
            EXPECT_NEAR(got, want, kTol * std::max(std::abs(want), l2_norm(*lib[which])))
                << "tensor " << "qkv"[which] << " trial " << trial;
        }
    const double want_beta = reference_directional(c.config, planes, c.shape, p.q.data(), p.k.data(),
                                                   p.v.data(), p.dout.data(), zero.data(),
                                                   zero.data(), zero.data(), 1.0);
    EXPECT_NEAR(g.dbeta, want_beta, kTol * std::abs(want_beta));
}

INSTANTIATE_TEST_SUITE_P(Sweep, BackwardReference, ::testing::ValuesIn(sweep_cases()),
                         CaseName{});

}  // namespace
}  // namespace racesp::test
