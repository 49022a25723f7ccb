// The segment length (src/cuda/segment_plan.hpp): worked cases computed by hand, and over a grid
// of shapes the least (4 x waves at one block per multiprocessor + waves at two) x (length + 200
// tokens) found by walking every length and counting the waves one by one. Host arithmetic only: runs without a GPU.
#include <gtest/gtest.h>

#include <cstdint>
#include <initializer_list>
#include <utility>

#include "segment_plan.hpp"

namespace racesp::cuda {
namespace {

TEST(SegmentPlan, WorkedCases) {
    // 8M tokens, 4 heads, 132 multiprocessors, weights 4 (one block per multiprocessor) to 1 (two):
    // 16384 tokens give 2048 blocks, 16 and 8 waves: (4 x 16 + 8) x 16584 = 1,194,048; 16000 give
    // 525 segments, 2100 blocks, 16 and 8 waves: 72 x 16200 = 1,166,400; 14976 give 2244 blocks,
    // 17 and 9 waves: 77 x 15176 = 1,168,552.
    EXPECT_EQ(balanced_segment_tokens(8388608, 4, 16384, 132, 128), 16000);
    // 128K tokens: 2048 give 256 blocks, 2 and 1 waves: 9 x 2248 = 20,232, where 4096 give 128
    // blocks, 1 and 1: 5 x 4296 = 21,480.
    EXPECT_EQ(balanced_segment_tokens(131072, 4, 16384, 132, 128), 2048);
    // 1000 tokens fit in one wave at any length: the shortest, 128 (8 segments, 32 blocks).
    EXPECT_EQ(balanced_segment_tokens(1000, 4, 16384, 132, 128), 128);
    // No tokens, or no segment length yet: the longest, unchanged.
    EXPECT_EQ(balanced_segment_tokens(0, 4, 16384, 132, 128), 16384);
    EXPECT_EQ(balanced_segment_tokens(1000, 4, 0, 132, 128), 0);
}

TEST(SegmentPlan, LeastWeightedWavesTimesLengthOverAGrid) {
    const std::int64_t cost = 200;
    for (std::int64_t tokens : {1, 100, 4097, 131072, 1000003, 8388608}) {
        for (std::int64_t seqs : {1, 4, 32, 300}) {
            for (std::int64_t slots : {1, 7, 132}) {
                for (auto [longest, granule] : {std::pair<std::int64_t, std::int64_t>{8192, 128}, {96, 32}, {4096, 64}}) {
                    std::int64_t best = 0, best_time = 0;
                    for (std::int64_t ns = granule; ns <= longest; ns += granule) {
                        const std::int64_t blocks = seqs * ((tokens + ns - 1) / ns);
                        std::int64_t one = 0, two = 0;  // waves at one and two blocks per multiprocessor
                        for (std::int64_t left = blocks; left > 0; left -= slots) ++one;
                        for (std::int64_t left = blocks; left > 0; left -= 2 * slots) ++two;
                        const std::int64_t time = (4 * one + two) * (ns + cost);
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
