// Under `kernel` normalisation every o_i is a convex combination of the visible v_j, so each
// output coordinate lies between the smallest and largest visible value of that coordinate
// (up to float32 rounding of numerator and denominator: 1e-5 of the largest visible |v|).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <ostream>
#include <sstream>

#include "problem.hpp"

namespace racesp::test {
namespace {

struct BoundsCase {
    bool causal;
    int planes, tables;
    double beta, qk_scale;
    float v_offset;  // large offsets make rounding outside the hull easy to see
};

std::ostream& operator<<(std::ostream& os, const BoundsCase& c) {
    return os << (c.causal ? "causal" : "full") << " P=" << c.planes << " L=" << c.tables
              << " beta=" << c.beta << " qk_scale=" << c.qk_scale << " v_offset=" << c.v_offset;
}

class KernelBounds : public ::testing::TestWithParam<BoundsCase> {};

TEST_P(KernelBounds, OutputsLieBetweenVisibleMinAndMax) {
    const BoundsCase& bc = GetParam();
    AttentionConfig config;
    config.causal = bc.causal;
    config.planes = bc.planes;
    config.tables = bc.tables;
    config.beta = bc.beta;
    config.seed = 12;
    const Shape shape{2, 29, 2, 6};
    auto p = make_problem(config, shape, 21, bc.qk_scale);
    for (auto& x : p.v) x += bc.v_offset;
    const Planes planes(config, shape.heads, shape.dim);
    const auto o = library_forward(p, planes);
    const ConstTensor vt = p.cv(), ot{o.data(), shape};
    int outside = 0;
    for (std::int64_t b = 0; b < shape.batch; ++b)
        for (std::int64_t h = 0; h < shape.heads; ++h)
            for (std::int64_t d = 0; d < shape.dim; ++d) {
                float lo = INFINITY, hi = -INFINITY, mag = 0;
                if (!bc.causal)
                    for (std::int64_t j = 0; j < shape.tokens; ++j) {
                        lo = std::min(lo, vt.row(b, j, h)[d]);
                        hi = std::max(hi, vt.row(b, j, h)[d]);
                    }
                for (std::int64_t i = 0; i < shape.tokens; ++i) {
                    if (bc.causal) {
                        lo = std::min(lo, vt.row(b, i, h)[d]);
                        hi = std::max(hi, vt.row(b, i, h)[d]);
                    }
                    mag = std::max(std::abs(lo), std::abs(hi));
                    const double slack = 1e-5 * mag;
                    const float x = ot.row(b, i, h)[d];
                    // Written so that NaN counts as outside.
                    if (!(x >= lo - slack && x <= hi + slack)) {
                        if (++outside <= 5)
                            ADD_FAILURE() << "o[" << b << "," << i << "," << h << "," << d << "] = " << x
                                          << " outside [" << lo << ", " << hi << "]";
                    }
                }
            }
    EXPECT_EQ(outside, 0);
}

INSTANTIATE_TEST_SUITE_P(Cases, KernelBounds,
                         ::testing::Values(BoundsCase{false, 4, 4, 1.0, 1.0, 0.0f},
                                           BoundsCase{true, 4, 4, 1.0, 1.0, 0.0f},
                                           BoundsCase{true, 1, 1, 0.25, 1.0, 0.0f},
                                           BoundsCase{false, 8, 2, 3.0, 2.0, 0.0f},
                                           BoundsCase{true, 6, 3, 8.0, 3.0, 1000.0f},
                                           BoundsCase{false, 2, 5, 1.0, 1.0, -1000.0f},
                                           BoundsCase{true, 4, 2, 50.0, 1.0, 0.0f},
                                           BoundsCase{false, 4, 2, 50.0, 1.0, 0.0f}),
                         [](const ::testing::TestParamInfo<BoundsCase>& i) {
                             std::ostringstream name;
                             name << (i.param.causal ? "causal" : "full") << "_P" << i.param.planes
                                  << "_L" << i.param.tables << "_beta" << static_cast<int>(i.param.beta)
                                  << "_" << i.index;
                             return name.str();
                         });

}  // namespace
}  // namespace racesp::test
