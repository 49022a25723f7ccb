// racesp::core::feature_map and its backward against the explicit corner softmax of the
// reference: localises a mistake to the feature map before the attention sweeps run.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "compare.hpp"
#include "dual.hpp"
#include "feature_map.hpp"
#include "problem.hpp"
#include "reference.hpp"

namespace racesp::test {
namespace {

struct MapCase {
    int planes, tables;
    std::int64_t dim;
    float beta;
};

const MapCase kCases[] = {{1, 1, 1, 1.0f}, {2, 3, 5, 0.5f}, {3, 2, 8, 2.0f},  {4, 4, 7, 8.0f},
                          {6, 2, 17, 1.5f}, {8, 3, 3, 0.25f}, {10, 1, 4, 1.0f}};

TEST(FeatureMap, MatchesExplicitCornerSoftmax) {
    for (const auto& mc : kCases) {
        AttentionConfig config;
        config.planes = mc.planes;
        config.tables = mc.tables;
        const Planes planes(config, 1, mc.dim);
        const RefPlanes ref(planes);
        const int R = 1 << mc.planes;
        for (std::uint64_t trial = 0; trial < 5; ++trial) {
            const auto xd = random_normal(static_cast<std::size_t>(mc.dim), 100 + trial);
            std::vector<float> x(xd.size());
            for (std::size_t d = 0; d < x.size(); ++d)
                x[d] = static_cast<float>(xd[d] * (0.5 + static_cast<double>(trial)) / std::sqrt(static_cast<double>(mc.dim)));
            std::vector<double> xr(x.begin(), x.end());
            std::vector<float> u(static_cast<std::size_t>(mc.tables * mc.planes), NAN),
                phi(static_cast<std::size_t>(mc.tables * R), NAN);
            core::feature_map(planes.head(0), mc.tables, mc.planes, mc.dim, mc.beta, x.data(),
                              u.data(), phi.data());
            for (int l = 0; l < mc.tables; ++l) {
                const auto expect = corner_softmax(ref, 0, l, xr.data(), double{mc.beta});
                for (int r = 0; r < R; ++r) {
                    const double got = phi[static_cast<std::size_t>(l * R + r)];
                    const double want = expect[static_cast<std::size_t>(r)];
                    // float32: a few ulps per factor of the product, times beta's amplification.
                    EXPECT_NEAR(got, want, 2e-6 * want + 1e-9)
                        << "P=" << mc.planes << " l=" << l << " r=" << r << " trial=" << trial;
                }
                const double* W = ref.table(0, l);
                for (int p = 0; p < mc.planes; ++p) {
                    double z = 0;
                    for (std::int64_t d = 0; d < mc.dim; ++d) z += W[p * mc.dim + d] * xr[static_cast<std::size_t>(d)];
                    EXPECT_NEAR(u[static_cast<std::size_t>(l * mc.planes + p)], std::tanh(z), 1e-6);
                }
            }
        }
    }
}

// dL/dx and dL/dbeta of L = sum g . phi(x), against exact forward-mode derivatives of the
// corner softmax. dx must be accumulated into, not overwritten.
TEST(FeatureMap, BackwardMatchesExactDerivatives) {
    for (const auto& mc : kCases) {
        AttentionConfig config;
        config.planes = mc.planes;
        config.tables = mc.tables;
        const Planes planes(config, 1, mc.dim);
        const RefPlanes ref(planes);
        const int R = 1 << mc.planes;
        for (std::uint64_t trial = 0; trial < 3; ++trial) {
            const auto xd = random_normal(static_cast<std::size_t>(mc.dim), 200 + trial);
            const auto gd = random_normal(static_cast<std::size_t>(mc.tables * R), 300 + trial);
            std::vector<float> x(xd.size()), g(gd.begin(), gd.end());
            for (std::size_t d = 0; d < x.size(); ++d)
                x[d] = static_cast<float>(xd[d] / std::sqrt(static_cast<double>(mc.dim)));
            std::vector<float> u(static_cast<std::size_t>(mc.tables * mc.planes)),
                phi(static_cast<std::size_t>(mc.tables * R));
            core::feature_map(planes.head(0), mc.tables, mc.planes, mc.dim, mc.beta, x.data(),
                              u.data(), phi.data());
            const float offset = 0.0625f;  // small, so its rounding stays below the tolerance
            std::vector<float> dx(x.size(), offset);
            const double dbeta = core::feature_map_backward(planes.head(0), mc.tables, mc.planes,
                                                            mc.dim, mc.beta, u.data(), phi.data(),
                                                            g.data(), dx.data());

            auto directional = [&](std::size_t seed_dim, double seed_beta) {
                std::vector<Dual> xs(x.begin(), x.end());
                if (seed_dim < xs.size()) xs[seed_dim].d = 1;
                double total = 0;
                for (int l = 0; l < mc.tables; ++l) {
                    const auto phi_l = corner_softmax(ref, 0, l, xs.data(), Dual(mc.beta, seed_beta));
                    for (int r = 0; r < R; ++r) total += gd[static_cast<std::size_t>(l * R + r)] * phi_l[static_cast<std::size_t>(r)].d;
                }
                return total;
            };
            std::vector<double> want(x.size());
            std::vector<double> got(x.size());
            for (std::size_t d = 0; d < x.size(); ++d) {
                want[d] = directional(d, 0);
                got[d] = static_cast<double>(dx[d]) - offset;
            }
            const double want_beta = directional(x.size(), 1);
            EXPECT_LT(relative_error(got, want, 1e-3), 1e-4) << "P=" << mc.planes << " trial=" << trial;
            EXPECT_NEAR(dbeta, want_beta, 1e-4 * std::max(std::abs(want_beta), 1e-3))
                << "P=" << mc.planes << " trial=" << trial;
        }
    }
}

}  // namespace
}  // namespace racesp::test
