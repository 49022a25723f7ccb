#include "racesp/planes.hpp"

#include <cmath>
#include <numbers>

#include "racesp/errors.hpp"

namespace racesp {

namespace {

// SplitMix64's finaliser: a bijective mix of 64 bits (Steele, Lea & Flood 2014).
std::uint64_t splitmix64(std::uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

// A uniform double in (0, 1]: the top 53 bits, shifted away from zero so log() is finite.
double unit_interval(std::uint64_t bits) {
    return static_cast<double>((bits >> 11) + 1) * 0x1.0p-53;
}

}  // namespace

float plane_entry(std::uint64_t seed, std::int64_t head, int table, int plane, std::int64_t dim) {
    // A counter-based generator: hash the coordinates into one key, then draw two uniforms.
    std::uint64_t key = splitmix64(seed);
    key = splitmix64(key ^ static_cast<std::uint64_t>(head));
    key = splitmix64(key ^ static_cast<std::uint64_t>(table));
    key = splitmix64(key ^ static_cast<std::uint64_t>(plane));
    key = splitmix64(key ^ static_cast<std::uint64_t>(dim));
    const double u1 = unit_interval(key);
    const double u2 = unit_interval(splitmix64(key));
    // Box–Muller in double, rounded once: the float result does not depend on the libm's last bit.
    const double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
    return static_cast<float>(z);
}

Planes::Planes(const AttentionConfig& config, std::int64_t heads, std::int64_t dim)
    : heads_(heads), dim_(dim), tables_(config.tables), planes_(config.planes) {
    config.validate();
    if (heads < 1 || dim < 1)
        throw ShapeError("planes need at least one head and one dimension, got heads=" +
                         std::to_string(heads) + " dim=" + std::to_string(dim));
    values_.resize(static_cast<std::size_t>(heads * tables_ * planes_ * dim));
    float* out = values_.data();
    for (std::int64_t h = 0; h < heads; ++h) {
        const std::int64_t source_head = config.share_planes ? 0 : h;
        for (int l = 0; l < tables_; ++l)
            for (int p = 0; p < planes_; ++p)
                for (std::int64_t d = 0; d < dim; ++d) *out++ = plane_entry(config.seed, source_head, l, p, d);
    }
}

}  // namespace racesp
