// How long the segments are: every pass runs one thread block per (segment, head, batch), and
// every segment does the same work, so a pass takes as many block durations as it has waves
// (blocks over the blocks that run at once, rounded up), and each block has a fixed cost (its
// start states loaded, its totals stored, its first rows not fetched ahead), about 200 tokens'
// work in the v31 and v60 sweeps of the segment length (experiments/gpu-notes.md). At 8M tokens
// and 4 heads on 132 multiprocessors, segments of 8192 tokens make 4096 blocks, 31.03 waves
// (the last one 4 blocks): 32 x (8192 + 200) token-times; segments of 7296 tokens make 4600
// blocks, 34.85 waves: 35 x (7296 + 200), 2.3% less.
#pragma once

#include <cstdint>

namespace racesp::cuda {

// The segment length, in tokens, for `seqs` sequences (batch x heads) of `tokens` tokens each:
// the multiple of `granule`, up to `longest` (the float32 accumulation span), whose blocks, at
// `slots` blocks at once, take the least waves x (segment length + a block's fixed cost); the
// longest such on a tie. `longest` must be a multiple of `granule`; 0 tokens
// or 0 longest give longest.
inline std::int64_t balanced_segment_tokens(std::int64_t tokens, std::int64_t seqs, std::int64_t longest,
                                            std::int64_t slots, std::int64_t granule) {
    constexpr std::int64_t kBlockCostTokens = 200;
    if (tokens <= 0 || longest <= 0 || slots <= 0 || seqs <= 0) return longest;
    std::int64_t best = longest, best_cost = -1;
    for (std::int64_t ns = longest; ns > 0; ns -= granule) {
        const std::int64_t blocks = seqs * ((tokens + ns - 1) / ns);
        const std::int64_t cost = (blocks + slots - 1) / slots * (ns + kBlockCostTokens);
        if (best_cost < 0 || cost < best_cost) best = ns, best_cost = cost;
    }
    return best;
}

}  // namespace racesp::cuda
