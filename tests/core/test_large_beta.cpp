// Large beta (the hard-hashing end of DESIGN.md §1, e.g. beta = 50 as in the hashing test):
// outputs stay finite and match the float64 reference. In float32 a key whose corner differs
// from the query's in several planes has phi(q) . phi(k) ~ exp(-2 beta)^planes, far below
// float32's range, while the float64 reference still resolves it.
#include <gtest/gtest.h>

#include <cmath>

#include "compare.hpp"
#include "problem.hpp"
#include "reference.hpp"

namespace racesp::test {
namespace {

// One token whose key is minus its query: every plane disagrees, so the only visible kernel
// weight is tiny, yet under `kernel` the output is a convex combination of one value: v itself.
TEST(LargeBeta, SingleOpposedTokenReturnsItsValue) {
    for (double beta : {20.0, 50.0}) {
        AttentionConfig config;
        config.causal = true;
        config.planes = 4;
        config.tables = 1;
        config.beta = beta;
        const Shape shape{1, 1, 1, 3};
        auto p = make_problem(config, shape, 6);
        for (std::size_t d = 0; d < 3; ++d) p.k[d] = -p.q[d];
        const Planes planes(config, 1, 3);
        const auto o = library_forward(p, planes);
        for (std::size_t d = 0; d < 3; ++d) EXPECT_NEAR(o[d], p.v[d], 1e-5 * std::abs(p.v[d])) << "beta " << beta;
    }
}

// Random problems at beta = 10 and 20 against the float64 reference. Tolerance 1e-3: a float32
// rounding of u moves sigma(2 beta u) by a relative 2 beta * 6e-8 per plane. Beyond that
// (beta = 50 at P = 4) the engine floors each bit probability at e^{-87/P} to stay inside
// float32's range (feature_map.hpp), so it no longer follows the unfloored float64 reference;
// there the kernel-bounds test checks that outputs stay finite convex combinations.
TEST(LargeBeta, MatchesReference) {
    for (auto norm : {Normalization::kernel, Normalization::bucket})
        for (bool causal : {false, true})
            for (double beta : {10.0, 20.0}) {
                AttentionConfig config;
                config.normalization = norm;
                config.causal = causal;
                config.planes = 4;
                config.tables = 2;
                config.beta = beta;
                config.seed = 3;
                const Shape shape{2, 17, 2, 6};
                const auto p = make_problem(config, shape, 19);
                const Planes planes(config, shape.heads, shape.dim);
                const auto o = library_forward(p, planes);
                const auto ref = reference_forward(config, planes, shape, p.q.data(), p.k.data(), p.v.data());
                EXPECT_LT(max_relative_error(o, ref), 1e-3)
                    << to_string(norm) << (causal ? " causal" : " full") << " beta " << beta;
            }
}

}  // namespace
}  // namespace racesp::test
