// The RACE feature map of one vector through the per-plane sigmoid factorisation (DESIGN.md §1):
// phi_l(x)[r] = prod_p sigma(2 beta u_p c_{r,p}),  u = tanh(W_l x),
// with corner bit p of bucket r set when bit (P-1-p) of r is 1 (plane 0 is the most significant).
#pragma once

#include <cstdint>

namespace racesp::core {

// Feature map of x (length dim) over all tables: phi has tables * 2^planes entries (table-major),
// u has tables * planes entries and is kept for the backward.
void feature_map(const float* planes_of_head, int tables, int planes, std::int64_t dim, float beta,
                 const float* x, float* u, float* phi);

// Given g = dL/dphi (tables * 2^planes entries) and the forward's u and phi, adds dL/dx into dx
// (length dim) and returns this vector's part of dL/dbeta.
double feature_map_backward(const float* planes_of_head, int tables, int planes, std::int64_t dim,
                            float beta, const float* u, const float* phi, const float* g, float* dx);

}  // namespace racesp::core
