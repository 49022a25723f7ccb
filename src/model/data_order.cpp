// Shuffled window order (data_order.hpp).
#include "data_order.hpp"

#include <numeric>

namespace racesp::model {

std::int64_t window_count(std::int64_t tokens, std::int64_t seq_len) {
    if (seq_len < 1 || tokens < seq_len + 1) return 0;
    return (tokens - 1) / seq_len;
}

namespace {

std::uint64_t splitmix64(std::uint64_t& state) {
    std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

}  // namespace

WindowOrder::WindowOrder(std::uint64_t seed, std::int64_t windows) : seed_(seed), windows_(windows) {}

std::int64_t WindowOrder::window(std::int64_t position) {
    const std::int64_t epoch = position / windows_;
    if (epoch != epoch_) {
        // Fisher–Yates with a generator seeded by (seed, epoch); the modulo bias is negligible
        // for any realistic window count and, above all, identical everywhere.
        permutation_.resize(static_cast<std::size_t>(windows_));
        std::iota(permutation_.begin(), permutation_.end(), std::int64_t{0});
        std::uint64_t state = seed_ * 0x9e3779b97f4a7c15ull + static_cast<std::uint64_t>(epoch) + 1;
        for (std::int64_t i = windows_ - 1; i > 0; --i) {
            const auto j = static_cast<std::int64_t>(splitmix64(state) % static_cast<std::uint64_t>(i + 1));
            std::swap(permutation_[static_cast<std::size_t>(i)], permutation_[static_cast<std::size_t>(j)]);
        }
        epoch_ = epoch;
    }
    return permutation_[static_cast<std::size_t>(position % windows_)];
}

}  // namespace racesp::model
