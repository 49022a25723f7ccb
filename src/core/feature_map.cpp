#include "feature_map.hpp"

#include <cmath>

namespace racesp::core {

namespace {

// sigma(x) = 1 / (1 + e^-x); exp overflow gives inf and a clean 0, never NaN.
inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

}  // namespace

void feature_map(const float* planes_of_head, int tables, int planes, std::int64_t dim, float beta,
                 const float* x, float* u, float* phi) {
    const int buckets = 1 << planes;
    for (int l = 0; l < tables; ++l) {
        float* ul = u + l * planes;
        for (int p = 0; p < planes; ++p) {
            const float* w = planes_of_head + (static_cast<std::int64_t>(l) * planes + p) * dim;
            float z = 0.0f;
#pragma omp simd reduction(+ : z)
            for (std::int64_t d = 0; d < dim; ++d) z += w[d] * x[d];
            ul[p] = std::tanh(z);
        }
        // Product of P two-way choices, built plane by plane: after step p, index bits hold planes
        // 0..p with plane 0 most significant. sigma(-y) is computed directly, not as 1 - sigma(y),
        // so a near-certain bit keeps its small probability's digits.
        float* f = phi + static_cast<std::int64_t>(l) * buckets;
        f[0] = 1.0f;
        for (int p = 0; p < planes; ++p) {
            const float y = 2.0f * beta * ul[p];
            const float plus = sigmoid(y), minus = sigmoid(-y);
            for (int r = (1 << p) - 1; r >= 0; --r) {
                f[2 * r + 1] = f[r] * plus;
                f[2 * r] = f[r] * minus;
            }
        }
    }
}

double feature_map_backward(const float* planes_of_head, int tables, int planes, std::int64_t dim,
                            float beta, const float* u, const float* phi, const float* g, float* dx) {
    const int buckets = 1 << planes;
    double dbeta = 0.0;
    for (int l = 0; l < tables; ++l) {
        const float* ul = u + l * planes;
        const float* f = phi + static_cast<std::int64_t>(l) * buckets;
        const float* gl = g + static_cast<std::int64_t>(l) * buckets;
        // m0 = sum_r g_r phi_r;  m_p = sum_r g_r phi_r c_{r,p}
        float m[10] = {};
        float m0 = 0.0f;
        for (int r = 0; r < buckets; ++r) {
            const float gf = gl[r] * f[r];
            m0 += gf;
            for (int p = 0; p < planes; ++p) m[p] += (r >> (planes - 1 - p)) & 1 ? gf : -gf;
        }
        for (int p = 0; p < planes; ++p) {
            const float t = std::tanh(beta * ul[p]);  // = 2 sigma(2 beta u) - 1
            const float common = m[p] - t * m0;
            dbeta += static_cast<double>(ul[p]) * common;
            const float dz = (1.0f - ul[p] * ul[p]) * beta * common;
            const float* w = planes_of_head + (static_cast<std::int64_t>(l) * planes + p) * dim;
#pragma omp simd
            for (std::int64_t d = 0; d < dim; ++d) dx[d] += dz * w[d];
        }
    }
    return dbeta;
}

}  // namespace racesp::core
