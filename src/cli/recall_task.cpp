// The recall task (recall_task.hpp).
#include "recall_task.hpp"

#include <algorithm>
#include <numeric>
#include <vector>

#include "racesp/errors.hpp"

namespace racesp::cli {

namespace {

constexpr int max_keys = 12;     // keys 'A'..'L'
constexpr int pair_base = 128;   // pair token of key k and value v: 128 + 10 k + v (128..247)

std::uint64_t next(std::uint64_t& state) {  // SplitMix64: the same stream on every machine
    std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// Sequence `index` into tokens[0 .. T) and its answer marks into scored.
void recall_sequence(const RecallSpec& spec, std::uint64_t index, std::uint8_t* tokens, std::uint8_t* scored) {
    const std::int64_t t = spec.tokens, k = spec.pairs;
    std::uint64_t state = spec.seed * 0x2545f4914f6cdd1dull + index;
    std::vector<int> keys(max_keys);
    std::iota(keys.begin(), keys.end(), 0);
    for (int i = max_keys - 1; i > 0; --i) std::swap(keys[static_cast<std::size_t>(i)], keys[next(state) % static_cast<std::uint64_t>(i + 1)]);
    std::vector<int> values(static_cast<std::size_t>(k));
    for (int& v : values) v = static_cast<int>(next(state) % 10);
    std::vector<std::int64_t> order(static_cast<std::size_t>(k));
    std::iota(order.begin(), order.end(), std::int64_t{0});
    for (std::int64_t i = k - 1; i > 0; --i)
        std::swap(order[static_cast<std::size_t>(i)], order[next(state) % static_cast<std::uint64_t>(i + 1)]);
    std::fill(tokens, tokens + t, static_cast<std::uint8_t>('.'));
    std::fill(scored, scored + t, std::uint8_t{0});
    for (std::int64_t i = 0; i < k; ++i) {
        tokens[i] = static_cast<std::uint8_t>(pair_base + 10 * keys[static_cast<std::size_t>(i)] +
                                              values[static_cast<std::size_t>(i)]);
        const std::int64_t q = order[static_cast<std::size_t>(i)], at = t - 2 * k + 2 * i;
        tokens[at] = static_cast<std::uint8_t>('A' + keys[static_cast<std::size_t>(q)]);
        tokens[at + 1] = static_cast<std::uint8_t>('0' + values[static_cast<std::size_t>(q)]);
        scored[at + 1] = 1;
    }
}

std::vector<std::uint8_t> stream(const RecallSpec& spec, std::int64_t count, std::uint64_t first,
                                 std::vector<std::uint8_t>* scored) {
    std::vector<std::uint8_t> out(static_cast<std::size_t>(count * spec.tokens + 1), '.');
    std::vector<std::uint8_t> marks(out.size(), 0);
    for (std::int64_t i = 0; i < count; ++i)
        recall_sequence(spec, first + static_cast<std::uint64_t>(i), out.data() + i * spec.tokens,
                        marks.data() + i * spec.tokens);
    if (scored) *scored = std::move(marks);
    return out;
}

}  // namespace

void check_recall(const RecallSpec& spec) {
    if (spec.pairs < 1 || spec.pairs > max_keys)
        throw ConfigError("--pairs must be in 1.." + std::to_string(max_keys) + ", got " + std::to_string(spec.pairs));
    if (spec.tokens < 3 * spec.pairs + 1)
        throw ConfigError("--tokens " + std::to_string(spec.tokens) + " is too short for " + std::to_string(spec.pairs) +
                          " pairs and their queries; the recall task needs at least " +
                          std::to_string(3 * spec.pairs + 1));
    if (spec.sequences < 1) throw ConfigError("--batch must be at least 1, got " + std::to_string(spec.sequences));
    if (spec.val_sequences < 1)
        throw ConfigError("--val-batch must be at least 1, got " + std::to_string(spec.val_sequences));
}

io::TokenFileContents make_recall(const RecallSpec& spec) {
    io::TokenFileContents c;
    // Validation sequences are numbered after the training ones: no sequence appears in both.
    c.tokens = stream(spec, spec.sequences, 0, nullptr);
    c.val_tokens = stream(spec, spec.val_sequences, static_cast<std::uint64_t>(spec.sequences), &c.val_scored);
    c.sources = {"racesp generate --task recall"};
    c.source_bytes = {static_cast<std::int64_t>(c.tokens.size() + c.val_tokens.size())};
    c.val_fraction = double(c.val_tokens.size()) / double(c.tokens.size() + c.val_tokens.size());
    return c;
}

}  // namespace racesp::cli
