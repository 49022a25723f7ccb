// One causal head of 10M tokens (DESIGN.md §3 "Precision"): outputs at a few positions, the
// last one included, match a float64 computation from the same float32 data to 1e-5 relative.
// A single float32 running sum over the sequence would lose that; chunked float32 blocks
// combined in float64 must not.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "compare.hpp"
#include "racesp/attention.hpp"

namespace racesp {
namespace {

constexpr std::int64_t kTokens = 10'000'000;
constexpr std::int64_t kDim = 4;

// A cheap reproducible uniform in [-1, 1): SplitMix64 of the index.
float uniform(std::uint64_t i) {
    i += 0x9e3779b97f4a7c15ULL;
    i = (i ^ (i >> 30)) * 0xbf58476d1ce4e5b9ULL;
    i = (i ^ (i >> 27)) * 0x94d049bb133111ebULL;
    i ^= i >> 31;
    return static_cast<float>(static_cast<double>(i >> 40) * 0x1.0p-23 - 1.0);
}

// phi of one table in float64 by doubling over planes (plane 0 the most significant bit).
void phi_table(const float* W, int P, const float* x, double beta, double* phi) {
    phi[0] = 1;
    for (int p = 0; p < P; ++p) {
        double z = 0;
        for (std::int64_t d = 0; d < kDim; ++d) z += double{W[p * kDim + d]} * double{x[d]};
        const double s = 1 / (1 + std::exp(-2 * beta * std::tanh(z)));
        for (int r = (1 << p) - 1; r >= 0; --r) {
            phi[2 * r + 1] = phi[r] * s;
            phi[2 * r] = phi[r] * (1 - s);
        }
    }
}

TEST(LongSequence, TenMillionTokensCausalMatchesFloat64) {
#ifndef NDEBUG
    // Unoptimised (debug, sanitizer) builds need over ten minutes for 10M tokens; the same code
    // paths run there on short sequences, and this test runs in every release build (CI).
    GTEST_SKIP() << "10M tokens: release builds only";
#endif
    AttentionConfig config;
    config.causal = true;
    config.planes = 2;  // small P and L: the point is the length of the sums, and the time in CI
    config.tables = 2;
    config.beta = 1.0;
    config.seed = 10;
    const Shape shape{1, kTokens, 1, kDim};
    const auto n = static_cast<std::size_t>(shape.elements());
    std::vector<float> q(n), k(n), v(n);
    // Values with non-zero means, so that the outputs are O(1) and relative error means something.
    const float offset[kDim] = {1.0f, -2.0f, 0.5f, 3.0f};
    for (std::size_t e = 0; e < n; ++e) {
        q[e] = uniform(3 * e);
        k[e] = uniform(3 * e + 1);
        v[e] = offset[e % kDim] + uniform(3 * e + 2);
    }
    const Planes planes(config, 1, kDim);

    // The float64 computation: bucket sums A, B over keys 0..i in float64, read at checkpoints.
    const std::int64_t checkpoints[] = {0, 999'999, 5'000'000, kTokens - 1};
    const int L = config.tables, P = config.planes, R = 1 << P, M = L * R;
    std::vector<double> A(static_cast<std::size_t>(M), 0.0), B(static_cast<std::size_t>(M * kDim), 0.0);
    std::vector<double> phik(static_cast<std::size_t>(M)), phiq(static_cast<std::size_t>(M));
    std::vector<std::vector<double>> want_kernel, want_bucket;
    std::size_t next = 0;
    for (std::int64_t j = 0; j < kTokens; ++j) {
        for (int l = 0; l < L; ++l)
            phi_table(planes.head(0) + l * P * kDim, P, &k[static_cast<std::size_t>(j * kDim)], config.beta,
                      &phik[static_cast<std::size_t>(l * R)]);
        for (int m = 0; m < M; ++m) {
            A[static_cast<std::size_t>(m)] += phik[static_cast<std::size_t>(m)];
            for (std::int64_t d = 0; d < kDim; ++d)
                B[static_cast<std::size_t>(m * kDim + d)] += phik[static_cast<std::size_t>(m)] * double{v[static_cast<std::size_t>(j * kDim + d)]};
        }
        if (next < std::size(checkpoints) && j == checkpoints[next]) {
            ++next;
            for (int l = 0; l < L; ++l)
                phi_table(planes.head(0) + l * P * kDim, P, &q[static_cast<std::size_t>(j * kDim)], config.beta,
                          &phiq[static_cast<std::size_t>(l * R)]);
            std::vector<double> kern(kDim), buck(kDim);
            double den = 0;
            for (int m = 0; m < M; ++m) den += phiq[static_cast<std::size_t>(m)] * A[static_cast<std::size_t>(m)];
            for (std::int64_t d = 0; d < kDim; ++d) {
                double num = 0, mix = 0;
                for (int m = 0; m < M; ++m) {
                    const double b = B[static_cast<std::size_t>(m * kDim + d)];
                    num += phiq[static_cast<std::size_t>(m)] * b;
                    mix += phiq[static_cast<std::size_t>(m)] * b / (A[static_cast<std::size_t>(m)] + config.eps);
                }
                kern[static_cast<std::size_t>(d)] = num / den;
                buck[static_cast<std::size_t>(d)] = mix / L;
            }
            want_kernel.push_back(kern);
            want_bucket.push_back(buck);
        }
    }

    std::vector<float> o(n);
    for (auto norm : {Normalization::kernel, Normalization::bucket}) {
        config.normalization = norm;
        attention_forward(config, planes, ConstTensor{q.data(), shape}, ConstTensor{k.data(), shape},
                          ConstTensor{v.data(), shape}, MutTensor{o.data(), shape});
        const auto& want = norm == Normalization::kernel ? want_kernel : want_bucket;
        for (std::size_t c = 0; c < std::size(checkpoints); ++c) {
            const auto at = static_cast<std::size_t>(checkpoints[c] * kDim);
            const std::vector<float> got(o.begin() + static_cast<std::ptrdiff_t>(at),
                                         o.begin() + static_cast<std::ptrdiff_t>(at + kDim));
            EXPECT_LT(test::relative_error(got, want[c]), 1e-5)
                << to_string(norm) << " token " << checkpoints[c] << ": got " << got[0] << " " << got[1] << " "
                << got[2] << " " << got[3] << ", want " << want[c][0] << " " << want[c][1] << " "
                << want[c][2] << " " << want[c][3];
        }
    }
}

}  // namespace
}  // namespace racesp
