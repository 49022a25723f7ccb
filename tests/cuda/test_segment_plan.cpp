// The segment length (src/cuda/segment_plan.hpp): worked cases computed by hand, and over a grid
// of shapes the least (waves x (length + 200 tokens)) found by walking every length and counting
// the waves one by one. Host arithmetic only: runs without a GPU.
#include <gtest/gtest.h>

#include <cstdint>
#include <initializer_list>
#include <utility>

#include "segment_plan.hpp"

namespace racesp::cuda {
namespace {

TEST(SegmentPlan, WorkedCases) {
    // 8M tokens, 4 heads, 132 multiprocessors: 8192 tokens give 4096 blocks (32 waves, 8392 each:
    // 268,544); 7296 give 1150 segments, 4600 blocks in 35 waves of 7496: 262,360, the least.
    EXPECT_EQ(balanced_segment_tokens(8388608, 4, 8192, 132, 128), 7296);
    // 128K tokens: 4096 give 128 blocks, one wave (4296), where 3968 gives 34 segments, 136 blocks
    // and two waves.
    EXPECT_EQ(balanced_segment_tokens(131072, 4, 8192, 132, 128), 4096);
    // 1000 tokens fit in one wave at any length: the shortest, 128 (8 segments, 32 blocks).
    EXPECT_EQ(balanced_segment_tokens(1000, 4, 8192, 132, 128), 128);
    // No tokens, or no segment length yet: the longest, unchanged.
    EXPECT_EQ(balanced_segment_tokens(0, 4, 8192, 132, 128), 8192);
    EXPECT_EQ(balanced_segment_tokens(1000, 4, 0, 132, 128), 0);
}

TEST(SegmentPlan, LeastWavesTimesLengthOverAGrid) {
    const std::int64_t cost = 200;
    for (std::int64_t tokens : {1, 100, 4097, 131072, 1000003, 8388608}) {
        for (std::int64_t seqs : {1, 4, 32, 300}) {
            for (std::int64_t slots : {1, 7, 132}) {
                for (auto [longest, granule] : {std::pair<std::int64_t, std::int64_t>{8192, 128}, {96, 32}, {4096, 64}}) {
                    std::int64_t best = 0, best_time = 0;
                    for (std::int64_t ns = granule; ns <= longest; ns += granule) {
                        std::int64_t blocks = seqs * ((tokens + ns - 1) / ns), waves = 0;
                        for (; blocks > 0; blocks -= slots) ++waves;
                        const std::int64_t time = waves * (ns + cost);
                        if (best == 0 || time <= best_time) best = ns, best_time = time;  // longest on a tie
                    }
                    const std::int64_t got = balanced_segment_tokens(tokens, seqs, longest, slots, granule);
                    EXPECT_EQ(got, best) << tokens << " tokens, " << seqs << " sequences, " << slots << " slots, longest "
                                         << longest;
                    EXPECT_EQ(got % granule, 0);
                    EXPECT_LE(got, longest);
                }
            }
        }
    }
}

}  // namespace
}  // namespace racesp::cuda
