// A float64 reference of RACE attention for the GPU tests, computed differently from the
// kernels: features by an explicit softmax over all 2^P corners (not the sigmoid product),
// outputs by the explicit T x T kernel matrix (kernel normalisation) or explicit per-query
// bucket sums (bucket), gradients by DESIGN.md §2 with per-token states and the softmax
// Jacobian for the feature map.
#pragma once

#include <cstdint>
#include <vector>

#include "racesp/config.hpp"

namespace racesp::testref {

struct Problem {
    std::int64_t B, T, H, D;
    std::vector<double> q, k, v, dout;  // [B, T, H, D]
    std::vector<double> planes;         // [H, L, P, D]
};

struct Result {
    std::vector<double> o, dq, dk, dv;
    double dbeta = 0.0;
};

// Forward only (o), or forward and backward (with `backward`).
Result reference(const AttentionConfig& config, const Problem& p, bool backward);

// o of one query token t (batch 0, head h) over every key visible to it, OpenMP-parallel over keys:
// for long sequences.
std::vector<double> reference_one_output(const AttentionConfig& config, std::int64_t T, std::int64_t H,
                                         std::int64_t D, const float* q, const float* k, const float* v,
                                         const float* planes, std::int64_t h, std::int64_t t);

}  // namespace racesp::testref
