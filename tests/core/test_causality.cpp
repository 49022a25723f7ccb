// Causal mode: changing q, k, v at tokens after i leaves o (and dq, which only depends on tokens
// up to i and dout_i) at tokens up to i bit-identical, whatever the chunking.
#include <gtest/gtest.h>

#include <cstring>

#include "problem.hpp"

namespace racesp::test {
namespace {

// Rows 0..last of every (batch, head) are bitwise equal.
bool prefix_identical(const std::vector<float>& a, const std::vector<float>& b, const Shape& s,
                      std::int64_t last) {
    for (std::int64_t batch = 0; batch < s.batch; ++batch) {
        const std::size_t begin = static_cast<std::size_t>(batch * s.tokens * s.heads * s.dim);
        const std::size_t count = static_cast<std::size_t>((last + 1) * s.heads * s.dim);
        if (std::memcmp(a.data() + begin, b.data() + begin, count * sizeof(float)) != 0) return false;
    }
    return true;
}

// Overwrites q, k, v, dout at every token after `last` with fresh random values.
void perturb_after(Problem& p, std::int64_t last, std::uint64_t seed) {
    const auto fresh = make_problem(p.config, p.shape, seed);
    const Shape& s = p.shape;
    for (std::int64_t b = 0; b < s.batch; ++b)
        for (std::int64_t t = last + 1; t < s.tokens; ++t)
            for (std::int64_t e = 0; e < s.heads * s.dim; ++e) {
                const auto at = static_cast<std::size_t>((b * s.tokens + t) * s.heads * s.dim + e);
                p.q[at] = fresh.q[at];
                p.k[at] = fresh.k[at];
                p.v[at] = fresh.v[at];
                p.dout[at] = fresh.dout[at];
            }
}

TEST(Causality, OutputsUpToIAreBitIdenticalWhenLaterTokensChange) {
    const Shape shape{2, 37, 2, 5};
    const CpuOptions options[] = {{}, {3, 4}, {1, 1}, {16, 10}};
    for (auto norm : {Normalization::kernel, Normalization::bucket})
        for (const auto& opt : options) {
            AttentionConfig config;
            config.causal = true;
            config.normalization = norm;
            config.planes = 3;
            config.tables = 3;
            config.beta = 2.0;
            const Planes planes(config, shape.heads, shape.dim);
            const auto base = make_problem(config, shape, 3);
            const auto o_base = library_forward(base, planes, opt);
            const auto g_base = library_backward(base, planes, opt);
            for (std::int64_t last : {0, 1, 9, 18, 35}) {
                auto changed = base;
                perturb_after(changed, last, 1000 + static_cast<std::uint64_t>(last));
                const auto o = library_forward(changed, planes, opt);
                const auto g = library_backward(changed, planes, opt);
                EXPECT_TRUE(prefix_identical(o, o_base, shape, last))
                    << to_string(norm) << " block " << opt.block_tokens << " chunk "
                    << opt.chunk_tokens << " last " << last;
                EXPECT_TRUE(prefix_identical(g.dq, g_base.dq, shape, last))
                    << "dq: " << to_string(norm) << " block " << opt.block_tokens << " chunk "
                    << opt.chunk_tokens << " last " << last;
                // The perturbation is real: the token right after `last` does change.
                EXPECT_FALSE(prefix_identical(o, o_base, shape, last + 1));
            }
        }
}

// Non-causal mode is the control: there, a change at the last token reaches the first output.
TEST(Causality, NonCausalOutputsSeeLaterTokens) {
    const Shape shape{1, 9, 1, 4};
    AttentionConfig config;
    config.planes = 2;
    config.tables = 2;
    const Planes planes(config, 1, 4);
    const auto base = make_problem(config, shape, 8);
    auto changed = base;
    perturb_after(changed, 7, 99);
    EXPECT_FALSE(prefix_identical(library_forward(base, planes), library_forward(changed, planes),
                                  shape, 0));
}

}  // namespace
}  // namespace racesp::test
