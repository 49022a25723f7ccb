#include "feature_map.hpp"

#include <bit>
#include <cmath>
#include <cstdint>
#include <vector>

namespace racesp::core {

namespace {

// exp(x) in float32 to about 2 ulp, written so that loops over it vectorise (libm's expf is not
// vectorised without -ffast-math). Arguments are clamped to [-87, 88]: results below e^-87
// (1.6e-38) are of no consequence next to the sums they enter.
inline float fast_exp(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    // Round to nearest by adding and removing 1.5 * 2^23 (vectorises, unlike roundevenf).
    const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;  // x - n ln2, two parts
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const std::int32_t bits = (static_cast<std::int32_t>(n) + 127) << 23;
    return p * std::bit_cast<float>(bits);
}

// tanh(x) = sign(x) (1 - 2 / (e^{2|x|} + 1)): accurate in absolute terms, which is what u needs
// (it enters only through sigma(2 beta u) and 1 - u^2).
inline float fast_tanh(float x) {
    const float a = x < 0 ? -x : x;
    const float t = 1.0f - 2.0f / (fast_exp(2.0f * a) + 1.0f);
    return x < 0 ? -t : t;
}

}  // namespace

float min_bit_probability(int planes) {
    // e^{-87/P}: P such factors stay above float32's smallest normal number (about e^-87.3).
    return static_cast<float>(std::exp(-87.0 / planes));
}

void feature_map_rows(int tables, int planes, float beta, std::int64_t n, float* z_to_u, float* phi) {
    const std::int64_t lp = static_cast<std::int64_t>(tables) * planes, buckets = std::int64_t{1} << planes;
    const float floor = min_bit_probability(planes);
    // sigma(+-y) for every plane of every row, y = 2 beta u, from one exponential e^{-|y|} each,
    // so both keep full relative precision.
    thread_local std::vector<float> plus, minus;
    plus.resize(static_cast<std::size_t>(n * lp));
    minus.resize(static_cast<std::size_t>(n * lp));
    float* sp = plus.data();
    float* sm = minus.data();
#pragma omp simd
    for (std::int64_t j = 0; j < n * lp; ++j) {
        const float u = fast_tanh(z_to_u[j]);
        z_to_u[j] = u;
        const float y = 2.0f * beta * u;
        const float e = fast_exp(y < 0 ? y : -y);
        const float big = 1.0f / (1.0f + e), small = e * big;
        const float hi = y >= 0 ? big : small, lo = y >= 0 ? small : big;
        sp[j] = hi < floor ? floor : hi;
        sm[j] = lo < floor ? floor : lo;
    }
    // Product of P two-way choices, built plane by plane: after step p, index bits hold planes
    // 0..p with plane 0 the most significant.
    for (std::int64_t i = 0; i < n; ++i)
        for (int l = 0; l < tables; ++l) {
            float* f = phi + (i * tables + l) * buckets;
            const float* s1 = sp + i * lp + l * planes;
            const float* s0 = sm + i * lp + l * planes;
            f[0] = 1.0f;
            for (int p = 0; p < planes; ++p)
                for (std::int64_t r = (std::int64_t{1} << p) - 1; r >= 0; --r) {
                    f[2 * r + 1] = f[r] * s1[p];
                    f[2 * r] = f[r] * s0[p];
                }
        }
}

double feature_map_backward_rows(int tables, int planes, float beta, std::int64_t n, const float* u,
                                 const float* phi, const float* g, float* dz) {
    const std::int64_t buckets = std::int64_t{1} << planes, lp = static_cast<std::int64_t>(tables) * planes;
    double dbeta = 0.0;
    for (std::int64_t i = 0; i < n; ++i) {
        for (int l = 0; l < tables; ++l) {
            const std::int64_t row = (i * tables + l) * buckets;
            // m0 = sum_r g_r phi_r;  m_p = sum_r g_r phi_r c_{r,p}, with c_{r,p} = +1 when bit
            // (P-1-p) of r is set, else -1. (Short loops: scalar code beats vector reductions here.)
            float m[10] = {};
            float m0 = 0.0f;
            for (std::int64_t r = 0; r < buckets; ++r) {
                const float gf = g[row + r] * phi[row + r];
                m0 += gf;
                for (int p = 0; p < planes; ++p) m[p] += (r >> (planes - 1 - p)) & 1 ? gf : -gf;
            }
            const float* ul = u + i * lp + l * planes;
            float* dzl = dz + i * lp + l * planes;
            for (int p = 0; p < planes; ++p) {
                const float t = fast_tanh(beta * ul[p]);  // = 2 sigma(2 beta u) - 1
                const float common = m[p] - t * m0;
                dbeta += static_cast<double>(ul[p]) * common;
                dzl[p] = (1.0f - ul[p] * ul[p]) * beta * common;
            }
        }
    }
    return dbeta;
}

void feature_map(const float* planes_of_head, int tables, int planes, std::int64_t dim, float beta,
                 const float* x, float* u, float* phi) {
    for (std::int64_t j = 0; j < static_cast<std::int64_t>(tables) * planes; ++j) {
        const float* w = planes_of_head + j * dim;
        float z = 0.0f;
        for (std::int64_t d = 0; d < dim; ++d) z += w[d] * x[d];
        u[j] = z;
    }
    feature_map_rows(tables, planes, beta, 1, u, phi);
}

double feature_map_backward(const float* planes_of_head, int tables, int planes, std::int64_t dim,
                            float beta, const float* u, const float* phi, const float* g, float* dx) {
    const std::int64_t lp = static_cast<std::int64_t>(tables) * planes;
    std::vector<float> dz(static_cast<std::size_t>(lp));
    const double dbeta = feature_map_backward_rows(tables, planes, beta, 1, u, phi, g, dz.data());
    for (std::int64_t j = 0; j < lp; ++j)
        for (std::int64_t d = 0; d < dim; ++d) dx[d] += dz[j] * planes_of_head[j * dim + d];
    return dbeta;
}

}  // namespace racesp::core
