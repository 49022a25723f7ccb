// Results do not depend on how the work is cut: chunk size, OpenMP thread count and float32
// block size change o, dq, dk, dv and dbeta by less than 1e-6 relative.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <ostream>

#include "compare.hpp"
#include "problem.hpp"

namespace racesp::test {
namespace {

constexpr double kTol = 1e-6;

// Restores the OpenMP thread count when a test ends.
class ThreadCount {
public:
    ThreadCount() : saved_(omp_get_max_threads()) {}
    ~ThreadCount() { omp_set_num_threads(saved_); }
    ThreadCount(const ThreadCount&) = delete;
    ThreadCount& operator=(const ThreadCount&) = delete;

private:
    int saved_;
};

struct InvCase {
    Normalization norm;
    bool causal;
    Shape shape;
};

std::ostream& operator<<(std::ostream& os, const InvCase& c) {
    return os << to_string(c.norm) << (c.causal ? " causal " : " full ") << c.shape.str();
}

class Invariance : public ::testing::TestWithParam<InvCase> {};

TEST_P(Invariance, ChunkingAndThreadsDoNotChangeResults) {
    const InvCase& ic = GetParam();
    const ThreadCount restore;
    AttentionConfig config;
    config.normalization = ic.norm;
    config.causal = ic.causal;
    config.planes = 3;
    config.tables = 2;
    config.beta = 1.5;
    config.seed = 5;
    const auto p = make_problem(config, ic.shape, 31);
    const Planes planes(config, ic.shape.heads, ic.shape.dim);

    omp_set_num_threads(1);
    const auto o0 = library_forward(p, planes);
    const auto g0 = library_backward(p, planes);

    // Blocks up to 256 tokens: block_tokens is the length of float32 sums, so much longer
    // blocks legitimately round differently.
    const CpuOptions options[] = {{}, {1, 0}, {7, 0}, {256, 0}, {256, 1}, {64, 5}, {5, 13},
                                  {32, 100000}, {256, 777}};
    for (int threads : {1, 2, 3})
        for (const auto& opt : options) {
            // One-token chunks only on the short problems: thousands of work items cost time
            // and test nothing that five-token chunks do not.
            if (opt.chunk_tokens == 1 && ic.shape.tokens > 1000) continue;
            omp_set_num_threads(threads);
            const auto o = library_forward(p, planes, opt);
            const auto g = library_backward(p, planes, opt);
            const std::string where = "threads " + std::to_string(threads) + " block " +
                                      std::to_string(opt.block_tokens) + " chunk " +
                                      std::to_string(opt.chunk_tokens);
            EXPECT_LT(max_relative_error(o, o0), kTol) << where;
            EXPECT_LT(relative_error(g.dq, g0.dq), kTol) << where;
            EXPECT_LT(relative_error(g.dk, g0.dk), kTol) << where;
            EXPECT_LT(relative_error(g.dv, g0.dv), kTol) << where;
            EXPECT_NEAR(g.dbeta, g0.dbeta, kTol * std::abs(g0.dbeta)) << where;
        }
}

// A float32 block longer than the whole sequence is just one block: same results, and no
// memory sized by block_tokens rather than by the tokens there are.
TEST(Invariance, BlockLongerThanTheSequence) {
    AttentionConfig config;
    config.causal = true;
    config.planes = 2;
    config.tables = 2;
    const Shape shape{1, 50, 2, 4};
    const auto p = make_problem(config, shape, 4);
    const Planes planes(config, shape.heads, shape.dim);
    const auto o0 = library_forward(p, planes);
    const CpuOptions huge{std::int64_t{1} << 20, 0};
    EXPECT_LT(max_relative_error(library_forward(p, planes, huge), o0), kTol);
    EXPECT_LT(relative_error(library_backward(p, planes, huge).dq, library_backward(p, planes).dq), kTol);
}

// The same call twice gives bit-identical results, dbeta included (training runs and the
// distributed layer rely on reproducible sums; dynamic scheduling must not change the order).
TEST(Invariance, RepeatedCallsAreBitIdentical) {
    const ThreadCount restore;
    omp_set_num_threads(2);
    for (bool causal : {false, true}) {
        AttentionConfig config;
        config.causal = causal;
        config.planes = 2;
        config.tables = 2;
        const Shape shape{2, 300, 2, 3};
        const auto p = make_problem(config, shape, 14);
        const Planes planes(config, shape.heads, shape.dim);
        const CpuOptions small_chunks{16, 20};  // many work items, so the schedule varies
        const auto o0 = library_forward(p, planes, small_chunks);
        const auto g0 = library_backward(p, planes, small_chunks);
        int differ = 0;
        for (int repeat = 0; repeat < 20; ++repeat) {
            const auto g = library_backward(p, planes, small_chunks);
            differ += library_forward(p, planes, small_chunks) != o0;
            differ += g.dq != g0.dq || g.dk != g0.dk || g.dv != g0.dv;
            if (g.dbeta != g0.dbeta) {
                ++differ;
                ADD_FAILURE() << std::hexfloat << "dbeta " << g.dbeta << " vs " << g0.dbeta
                              << (causal ? " (causal)" : " (non-causal)");
            }
        }
        EXPECT_EQ(differ, 0) << (causal ? "causal" : "non-causal");
    }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, Invariance,
    ::testing::Values(InvCase{Normalization::kernel, false, {2, 203, 3, 9}},
                      InvCase{Normalization::kernel, true, {2, 203, 3, 9}},
                      InvCase{Normalization::bucket, false, {2, 203, 3, 9}},
                      InvCase{Normalization::bucket, true, {2, 203, 3, 9}},
                      // One long head: only the sequence itself can be split over threads.
                      InvCase{Normalization::kernel, true, {1, 4099, 1, 5}},
                      InvCase{Normalization::bucket, true, {1, 4099, 1, 5}}),
    [](const ::testing::TestParamInfo<InvCase>& i) {
        return std::string(to_string(i.param.norm)) + (i.param.causal ? "_causal" : "_full") +
               "_T" + std::to_string(i.param.shape.tokens);
    });

}  // namespace
}  // namespace racesp::test
