// Plane generation (DESIGN.md §1): entries are a pure function of (seed, head, table, plane,
// dim), distributed N(0, 1); Planes lays them out as [H, L, P, D] and shares head 0's with
// share_planes.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "racesp/planes.hpp"

namespace racesp {
namespace {

TEST(Planes, EntryIsAPureFunctionOfItsCoordinates) {
    for (std::uint64_t seed : {0ULL, 1ULL, 0xdeadbeefULL, ~0ULL})
        for (std::int64_t h : {0, 1, 7})
            for (int l : {0, 3})
                for (int p : {0, 9})
                    for (std::int64_t d : {0, 1, 127, 100000}) {
                        const float a = plane_entry(seed, h, l, p, d);
                        const float b = plane_entry(seed, h, l, p, d);
                        EXPECT_EQ(a, b);
                        EXPECT_TRUE(std::isfinite(a));
                    }
}

// Changing any one coordinate gives a different value (ties between independent N(0,1)
// floats are vanishingly rare, so every one of these must differ).
TEST(Planes, EntriesDifferAcrossEachCoordinate) {
    const float base = plane_entry(5, 2, 3, 1, 4);
    EXPECT_NE(base, plane_entry(6, 2, 3, 1, 4));
    EXPECT_NE(base, plane_entry(5, 3, 3, 1, 4));
    EXPECT_NE(base, plane_entry(5, 2, 4, 1, 4));
    EXPECT_NE(base, plane_entry(5, 2, 3, 2, 4));
    EXPECT_NE(base, plane_entry(5, 2, 3, 1, 5));
    // Swapping coordinates must not collide either (a hash that just adds them would).
    EXPECT_NE(plane_entry(5, 1, 2, 3, 4), plane_entry(5, 2, 1, 3, 4));
    EXPECT_NE(plane_entry(5, 0, 0, 1, 0), plane_entry(5, 0, 0, 0, 1));
    std::set<float> distinct;
    for (int l = 0; l < 5; ++l)
        for (int p = 0; p < 5; ++p)
            for (std::int64_t d = 0; d < 8; ++d) distinct.insert(plane_entry(1, 0, l, p, d));
    EXPECT_EQ(distinct.size(), 200U);
}

// Sample moments of 2^20 entries against N(0, 1): mean 0, variance 1, skewness 0, kurtosis 3,
// each within about 5 standard errors; and the fraction beyond 1, 2, 3 sigma.
TEST(Planes, EntriesHaveStandardNormalMoments) {
    const int n = 1 << 20;
    double m1 = 0, m2 = 0, m3 = 0, m4 = 0;
    int beyond[3] = {0, 0, 0};
    int i = 0;
    for (std::int64_t h = 0; h < 4; ++h)
        for (int l = 0; l < 16; ++l)
            for (int p = 0; p < 8; ++p)
                for (std::int64_t d = 0; d < 2048; ++d, ++i) {
                    const double x = plane_entry(99, h, l, p, d);
                    m1 += x;
                    m2 += x * x;
                    m3 += x * x * x;
                    m4 += x * x * x * x;
                    for (int s = 0; s < 3; ++s) beyond[s] += std::abs(x) > s + 1;
                }
    ASSERT_EQ(i, n);
    m1 /= n;
    m2 /= n;
    m3 /= n;
    m4 /= n;
    const double se = 1 / std::sqrt(double{n});
    EXPECT_NEAR(m1, 0, 5 * se);
    EXPECT_NEAR(m2, 1, 5 * std::sqrt(2.0) * se);
    EXPECT_NEAR(m3, 0, 5 * std::sqrt(15.0) * se);
    EXPECT_NEAR(m4, 3, 5 * std::sqrt(96.0) * se);
    const double tail[3] = {0.31731050786291415, 0.04550026389635842, 0.0026997960632601866};
    for (int s = 0; s < 3; ++s)
        EXPECT_NEAR(beyond[s] / double{n}, tail[s], 5 * std::sqrt(tail[s] * (1 - tail[s])) * se)
            << "beyond " << s + 1 << " sigma";
}

TEST(Planes, LayoutIsHeadTablePlaneDim) {
    AttentionConfig config;
    config.tables = 3;
    config.planes = 4;
    config.seed = 1234;
    const Planes planes(config, 2, 5);
    EXPECT_EQ(planes.heads(), 2);
    EXPECT_EQ(planes.dim(), 5);
    EXPECT_EQ(planes.tables(), 3);
    EXPECT_EQ(planes.planes_per_table(), 4);
    ASSERT_EQ(planes.values().size(), 2U * 3 * 4 * 5);
    for (std::int64_t h = 0; h < 2; ++h)
        for (int l = 0; l < 3; ++l)
            for (int p = 0; p < 4; ++p)
                for (std::int64_t d = 0; d < 5; ++d)
                    EXPECT_EQ(planes.head(h)[(l * 4 + p) * 5 + d], plane_entry(1234, h, l, p, d));
    // Per-head planes differ between heads.
    EXPECT_NE(std::vector<float>(planes.head(0), planes.head(0) + 60),
              std::vector<float>(planes.head(1), planes.head(1) + 60));
}

TEST(Planes, SharedPlanesAreHeadZerosForEveryHead) {
    AttentionConfig config;
    config.tables = 2;
    config.planes = 3;
    config.seed = 8;
    config.share_planes = true;
    const Planes shared(config, 4, 6);
    config.share_planes = false;
    const Planes own(config, 4, 6);
    const std::vector<float> head0(own.head(0), own.head(0) + 36);
    for (std::int64_t h = 0; h < 4; ++h)
        EXPECT_EQ(std::vector<float>(shared.head(h), shared.head(h) + 36), head0) << "head " << h;
}

// The same planes from a second construction and a different seed giving different ones:
// what lets every rank build the planes without communication.
TEST(Planes, ReconstructionIsIdenticalAndSeedMatters) {
    AttentionConfig config;
    config.tables = 4;
    config.planes = 4;
    config.seed = 31;
    EXPECT_EQ(Planes(config, 3, 16).values(), Planes(config, 3, 16).values());
    AttentionConfig other = config;
    other.seed = 32;
    EXPECT_NE(Planes(config, 3, 16).values(), Planes(other, 3, 16).values());
    // The other options do not change the planes.
    other = config;
    other.beta = 7;
    other.causal = true;
    other.normalization = Normalization::bucket;
    EXPECT_EQ(Planes(config, 3, 16).values(), Planes(other, 3, 16).values());
}

}  // namespace
}  // namespace racesp
