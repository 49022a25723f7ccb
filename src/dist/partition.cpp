// Balanced contiguous partition of tokens (or batch entries) over ranks (DESIGN.md §3).
#include <string>

#include "racesp/distributed.hpp"
#include "racesp/errors.hpp"

namespace racesp {

TokenRange shard_range(std::int64_t tokens, int rank, int ranks) {
    if (ranks < 1 || rank < 0 || rank >= ranks || tokens < 0) {
        throw ConfigError("shard_range: bad partition of " + std::to_string(tokens) + " items, rank " +
                          std::to_string(rank) + " of " + std::to_string(ranks));
    }
    // The first `extra` ranks take base + 1 items, the rest base: sizes differ by at most one
    // and a rank past the end of a short sequence gets an empty range.
    std::int64_t base = tokens / ranks;
    std::int64_t extra = tokens % ranks;
    std::int64_t r = rank;
    TokenRange range;
    range.begin = r * base + (r < extra ? r : extra);
    range.end = range.begin + base + (r < extra ? 1 : 0);
    return range;
}

}  // namespace racesp
