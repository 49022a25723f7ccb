// The RACE feature map through the per-plane sigmoid factorisation (DESIGN.md §1):
// phi_l(x)[r] = prod_p sigma(2 beta u_p c_{r,p}),  u = tanh(W_l x),
// with corner bit p of bucket r set when bit (P-1-p) of r is 1 (plane 0 is the most significant).
#pragma once

#include <cstdint>

namespace racesp::core {

// Each two-way probability sigma(+-2 beta u_p) is kept at or above this floor, e^{-87/P}, so that
// phi(q) . phi(k) for the best-matching bucket never underflows float32 (beta >~ 20 otherwise gives
// 0/0 under the kernel normalization). The floor only acts when 2 beta |u_p| > 87/P; the backward
// differentiates the unclamped map, whose slope there is below the floor times 2 beta.
float min_bit_probability(int planes);

// Feature map of one vector x (length dim) over all tables: phi has tables * 2^planes entries
// (table-major), u has tables * planes entries and is kept for the backward.
void feature_map(const float* planes_of_head, int tables, int planes, std::int64_t dim, float beta,
                 const float* x, float* u, float* phi);

// Given g = dL/dphi (tables * 2^planes entries) and the forward's u and phi, adds dL/dx into dx
// (length dim) and returns this vector's part of dL/dbeta.
double feature_map_backward(const float* planes_of_head, int tables, int planes, std::int64_t dim,
                            float beta, const float* u, const float* phi, const float* g, float* dx);

// The same for n vectors at once, given their projections z = W x (n x tables*planes, row-major):
// overwrites z with u = tanh(z) and fills phi (n x tables*2^planes).
void feature_map_rows(int tables, int planes, float beta, std::int64_t n, float* z_to_u, float* phi);

// For n vectors: dz = dL/dz (n x tables*planes) from u, phi and g = dL/dphi; returns their dbeta.
// dL/dx = dz W is left to the caller (a matrix product).
double feature_map_backward_rows(int tables, int planes, float beta, std::int64_t n, const float* u,
                                 const float* phi, const float* g, float* dz);

}  // namespace racesp::core
