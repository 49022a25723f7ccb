// The order in which training reads windows of a token stream: windows of seq_len + 1 tokens
// starting every seq_len tokens (the extra token is the last target), visited in a shuffled
// order per epoch that is a pure function of (seed, epoch): every rank computes the same order
// with no communication, and a resumed run continues from a position (windows consumed).
#pragma once

#include <cstdint>
#include <vector>

namespace racesp::model {

// Windows of seq_len + 1 tokens that fit in a stream of `tokens` tokens.
std::int64_t window_count(std::int64_t tokens, std::int64_t seq_len);

class WindowOrder {
public:
    WindowOrder(std::uint64_t seed, std::int64_t windows);
    // The window read at `position` (0, 1, 2, ... over all epochs): its first token is
    // window * seq_len.
    std::int64_t window(std::int64_t position);

private:
    std::uint64_t seed_;
    std::int64_t windows_, epoch_ = -1;
    std::vector<std::int64_t> permutation_;
};

}  // namespace racesp::model
