// An independent float64 reference for RACE attention (DESIGN.md §1, §6), written from the
// definitions rather than from the kernels' algorithm:
// - phi_l(x) is an explicit softmax over all 2^P corners, not the per-plane sigmoid product;
// - `kernel` builds the explicit T x T kernel matrix and normalises each row;
// - `bucket` sums A and B over the visible keys and reads B / (A + eps) per bucket.
// It is a template on its scalar: on Dual it yields exact derivatives (forward mode), which
// stand in for the hand-derived backward of DESIGN.md §2.
#pragma once

#include <cstdint>
#include <vector>

#include "racesp/config.hpp"
#include "racesp/planes.hpp"
#include "racesp/tensor.hpp"

namespace racesp::test {

// The library's planes, converted to double: [heads][L][P][D].
struct RefPlanes {
    explicit RefPlanes(const Planes& planes);

    std::int64_t heads, dim;
    int tables, planes;
    std::vector<double> w;

    const double* table(std::int64_t h, int l) const {
        return w.data() + (h * tables + l) * planes * dim;
    }
};

// phi_l(x) of table l, head h: softmax over every corner r of beta * (tanh(W_l x) . c_r), with
// corner bit p = +1 when bit (P-1-p) of r is set. Returns 2^P probabilities.
template <class S>
std::vector<S> corner_softmax(const RefPlanes& planes, std::int64_t h, int l, const S* x, S beta);

// Attention output of one head of one batch entry; q, k, v, o are T x D row-major.
template <class S>
void reference_head(const AttentionConfig& config, const RefPlanes& planes, std::int64_t h,
                    std::int64_t tokens, const S* q, const S* k, const S* v, S beta, S* o);

// o for whole [B, T, H, D] float tensors (what the library sees), in float64.
std::vector<double> reference_forward(const AttentionConfig& config, const Planes& planes,
                                      const Shape& shape, const float* q, const float* k,
                                      const float* v);

// The loss sum_i dout_i . o_i at float64 inputs and an explicit beta (for finite differences).
double reference_loss(const AttentionConfig& config, const RefPlanes& planes, const Shape& shape,
                      const double* q, const double* k, const double* v, double beta,
                      const double* dout);

struct Gradients {
    std::vector<double> dq, dk, dv;  // [B, T, H, D]
    double dbeta = 0;
};

// Exact gradients of the loss, one forward-mode pass per input element: small problems only.
Gradients reference_gradients(const AttentionConfig& config, const Planes& planes,
                              const Shape& shape, const float* q, const float* k, const float* v,
                              const float* dout);

// Exact derivative of the loss along (dir_q, dir_k, dir_v, dir_beta): one pass per head.
double reference_directional(const AttentionConfig& config, const Planes& planes,
                             const Shape& shape, const float* q, const float* k, const float* v,
                             const float* dout, const double* dir_q, const double* dir_k,
                             const double* dir_v, double dir_beta);

}  // namespace racesp::test
