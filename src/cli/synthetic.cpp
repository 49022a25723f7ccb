// Counter-based normal numbers: SplitMix64 of (key, pair index) -> two uniforms -> Box-Muller
// (synthetic.hpp).
#include "synthetic.hpp"

#include <cmath>
#include <vector>

namespace racesp::cli {

namespace {

std::uint64_t splitmix64(std::uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// Values 2m and 2m + 1 of the stream come from one Box-Muller pair, in float: one 64-bit draw
// gives two 24-bit uniforms (|z| <= 5.8), about twice as fast as double and exact enough for
// synthetic data. Scalar code only, so every element is computed the same way wherever a rank's
// range starts.
void normal_pair(std::uint64_t key, std::int64_t m, float& z0, float& z1) {
    const float two_pi = 6.28318530717958647692f;
    std::uint64_t a = splitmix64(key + static_cast<std::uint64_t>(m));
    float u1 = static_cast<float>((a >> 40) + 1) * 0x1.0p-24f;  // (0, 1]: log is finite
    float u2 = static_cast<float>(a & 0xffffffu) * 0x1.0p-24f;
    float r = std::sqrt(-2.0f * std::log(u1));
    z0 = r * std::cos(two_pi * u2);
    z1 = r * std::sin(two_pi * u2);
}

}  // namespace

void fill_normal(std::uint64_t seed, std::uint64_t stream, std::int64_t first, std::int64_t count, float* out) {
    const std::uint64_t key = splitmix64(seed ^ splitmix64(stream * 0x632be59bd9b4e019ull));
    std::int64_t i = first, end = first + count;
    float z0, z1;
    if (i < end && (i & 1)) {  // odd start: the second half of a pair
        normal_pair(key, i / 2, z0, z1);
        out[i++ - first] = z1;
    }
    for (; i + 1 < end; i += 2) {
        normal_pair(key, i / 2, z0, z1);
        out[i - first] = z0;
        out[i + 1 - first] = z1;
    }
    if (i < end) {
        normal_pair(key, i / 2, z0, z1);
        out[i - first] = z0;
    }
}

void fill_slab(std::uint64_t seed, std::uint64_t stream, const Shape& g, const io::Slab& slab, io::ElementType type,
               void* out) {
    const std::int64_t row = g.heads * g.dim;
    const std::int64_t nb = slab.batch.size(), nt = slab.tokens.size();
    if (nb <= 0 || nt <= 0) return;
    // Pieces of about 64K values (whole tokens of one batch entry), one per OpenMP iteration.
    const std::int64_t piece = std::max<std::int64_t>(1, std::min<std::int64_t>(nt, (1 << 16) / std::max<std::int64_t>(1, row)));
    const std::int64_t pieces_per_b = (nt + piece - 1) / piece;
#pragma omp parallel
    {
        std::vector<float> buf(static_cast<std::size_t>(piece * row));
#pragma omp for schedule(static)
        for (std::int64_t w = 0; w < nb * pieces_per_b; ++w) {
            std::int64_t b = w / pieces_per_b, t0 = (w % pieces_per_b) * piece;
            std::int64_t t1 = std::min(nt, t0 + piece);
            std::int64_t count = (t1 - t0) * row;
            std::int64_t first = ((slab.batch.begin + b) * g.tokens + slab.tokens.begin + t0) * row;
            fill_normal(seed, stream, first, count, buf.data());
            std::int64_t at = (b * nt + t0) * row;
            if (type == io::ElementType::float64) {
                double* dst = static_cast<double*>(out) + at;
                for (std::int64_t i = 0; i < count; ++i) dst[i] = buf[i];
            } else if (type == io::ElementType::float16) {
                std::uint16_t* dst = static_cast<std::uint16_t*>(out) + at;
                for (std::int64_t i = 0; i < count; ++i) dst[i] = io::to_half(buf[i]);
            } else {
                float* dst = static_cast<float*>(out) + at;
                for (std::int64_t i = 0; i < count; ++i) dst[i] = buf[i];
            }
        }
    }
}

}  // namespace racesp::cli
