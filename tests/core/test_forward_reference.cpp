// attention_forward against the float64 reference over the sweep of cases.h: relative error
// below 1e-5 in norm and in the largest element.
#include <gtest/gtest.h>

#include "cases.hpp"
#include "compare.hpp"
#include "problem.hpp"
#include "reference.hpp"

namespace racesp::test {
namespace {

class ForwardReference : public ::testing::TestWithParam<Case> {};

TEST_P(ForwardReference, MatchesFloat64Reference) {
    const Case& c = GetParam();
    const auto p = make_problem(c.config, c.shape, c.seed, c.qk_scale);
    const Planes planes(c.config, c.shape.heads, c.shape.dim);
    const auto o = library_forward(p, planes);
    const auto ref = reference_forward(c.config, planes, c.shape, p.q.data(), p.k.data(), p.v.data());
    EXPECT_LT(relative_error(o, ref), 1e-5);
    EXPECT_LT(max_relative_error(o, ref), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Sweep, ForwardReference, ::testing::ValuesIn(sweep_cases()),
                         CaseName{});

}  // namespace
}  // namespace racesp::test
