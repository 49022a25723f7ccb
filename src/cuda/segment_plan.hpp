// How long the segments are: every pass runs one thread block per (segment, head, batch), and
// every segment does the same work, so a pass takes as many block durations as it has waves
// (blocks over the blocks that run at once, rounded up), and each block has a fixed cost (its
// start states loaded, its totals stored, its first rows not fetched ahead), about 200 tokens'
// work in the v31 and v60 sweeps of the segment length (experiments/gpu-notes.md). At 8M tokens
// and 4 heads on 132 multiprocessors, segments of 16384 tokens make 2048 blocks: 15.5 waves of
// the passes that run one block per multiprocessor and 7.8 of those that run two, 16 and 8 with
// the last ones part-empty; segments of 16000 tokens make 2100 blocks, 15.9 and 7.95 waves: the
// same 16 and 8, each 2.3% shorter.
#pragma once

#include <cstdint>

namespace racesp::cuda {

// The segment length, in tokens, for `seqs` sequences (batch x heads) of `tokens` tokens each on
// `multiprocessors`: the multiple of `granule`, up to `longest` (the float32 accumulation span),
// with the least waves x (segment length + a block's fixed cost), the longest such on a tie.
// The waves are those of the passes that run one block per multiprocessor (v10 and v12, ~80% of
// the causal step at 8M) and of those that run two (the key totals, the causal totals), counted
// 4 to 1. `longest` must be a multiple of `granule`; no tokens or no `longest` give `longest`.
inline std::int64_t balanced_segment_tokens(std::int64_t tokens, std::int64_t seqs, std::int64_t longest,
                                            std::int64_t multiprocessors, std::int64_t granule) {
    constexpr std::int64_t kBlockCostTokens = 200, kOneBlockWeight = 4;
    if (tokens <= 0 || longest <= 0 || multiprocessors <= 0 || seqs <= 0) return longest;
    auto waves = [](std::int64_t blocks, std::int64_t slots) { return (blocks + slots - 1) / slots; };
    std::int64_t best = longest, best_cost = -1;
    for (std::int64_t ns = longest; ns > 0; ns -= granule) {
        const std::int64_t blocks = seqs * ((tokens + ns - 1) / ns);
        const std::int64_t cost = (kOneBlockWeight * waves(blocks, multiprocessors) + waves(blocks, 2 * multiprocessors)) *
                                  (ns + kBlockCostTokens);
        if (best_cost < 0 || cost < best_cost) best = ns, best_cost = cost;
    }
    return best;
}

}  // namespace racesp::cuda
