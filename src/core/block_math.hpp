// RACE attention on one block of n tokens of one sequence, as small dense matrix products
// (DESIGN.md §4 on the CPU). With phi(q), phi(k) the n x M feature rows, V1 = [V, 1] (n x W),
// S the forward state before the block and U the backward state after it (both M x W):
//
//   forward:   Num = X S + tril(X phi(k)^T) V1     (X = phi(q); bucket: phi(q) / (L (A + eps)))
//   query side of the backward: gq = Y S^T + tril(Y V1^T) phi(k)
//   key side:  gk = V1 U^T + triu(V1 Yx^T) alpha + revcumsum(last),  dv = phi(k) U_D + triu(phi(k) alpha^T) x
//
// where a query's contribution to U is U_i[m, :D] = alpha[i, m] x_i, U_i[m, D] = last[i, m]
// (DESIGN.md §2). The tril/triu terms are the causal within-block parts and vanish otherwise.
// Everything here is float32 over at most one block: the callers combine blocks in float64.
#pragma once

#include <cstdint>
#include <vector>

#include "racesp/config.hpp"

namespace racesp::core {

struct Geometry {
    int tables, planes;
    std::int64_t features, dim, width;  // M, D, D + 1
    float beta, eps;
    bool causal;
    Normalization normalization;

    Geometry(const AttentionConfig& c, std::int64_t d);
    std::int64_t state_size() const { return features * width; }
};

// Rows of one block in the shard's memory: token i of the block starts at base + i * stride.
struct Rows {
    const float* base;
    std::int64_t stride;
    const float* row(std::int64_t i) const { return base + i * stride; }
};
struct MutRows {
    float* base;
    std::int64_t stride;
    float* row(std::int64_t i) const { return base + i * stride; }
};

// A float32 copy of one M x W float64 state in both layouts the products need: rows (M x W) and
// cols (its transpose, W x M). Made once per state change, not once per block.
struct State32 {
    std::vector<float> rows, cols;
    State32(std::int64_t features, std::int64_t width);
    void assign(const double* state);

private:
    std::int64_t M_, W_;
};

// Scratch for one block, reused from block to block by one thread.
class Block {
public:
    // planes_of_head: the L*P x D planes of the sequence's head.
    Block(const Geometry& g, std::int64_t capacity, const float* planes_of_head);

    std::int64_t size() const { return n_; }

    // Loads keys (features, [V, 1]) or queries (features) of the block's n tokens.
    void load_keys(Rows k, Rows v, std::int64_t n);
    void load_queries(Rows q, std::int64_t n);

    // Adds phi(k)^T V1 (the block's key total) to `total` (M x W, float32).
    void add_key_total(float* total);

    // Outputs o for the loaded queries from the forward state S before the block.
    void forward(const State32& S, MutRows o);

    // The query side of the backward: gq, and each query's U terms (alpha, x, last); writes dq and
    // returns the queries' dbeta part. S as in forward; G = dL/do rows.
    double query_backward(const State32& S, Rows G, MutRows dq);
    // The same without dq: only what the queries' U terms need.
    void query_terms(const State32& S, Rows G, bool with_gq);
    // Adds the loaded queries' U terms to `total` (M x W, float32); needs query_terms first.
    void add_query_total(float* total);
    // The key side: dk, dv from U, the backward state after the block; needs
    // query_backward first when causal. Returns the keys' dbeta part.
    double key_backward(const State32& U, MutRows dk, MutRows dv);

private:
    const float* readout_weights(const float* S);  // X: phi(q), or bucket's phi(q) / (L (A + eps))
    void readout(const float* S);                  // num = X S + tril(X phi(k)^T) V1
    void mask(bool keep_lower);                    // zero p_ above (keep_lower) or below the diagonal
    void features(Rows x, float* u, float* phi);   // u, phi of the block's n rows of x
    double feature_grad(const float* u, const float* phi, const float* g, MutRows dx);  // dx; returns dbeta

    const Geometry& g_;
    std::int64_t capacity_, n_ = 0;
    std::int64_t M_, W_, D_, LP_;
    const float* planes_;          // L*P x D
    std::vector<float> planesT_;   // D x L*P
    std::vector<float> dz_;        // n x L*P
    std::vector<float> phik_, uk_, phikT_, v1_, v1T_;  // keys
    std::vector<float> phiq_, uq_, x_weights_;   // queries, readout weights X
    std::vector<float> den_;                     // bucket: A + eps per query and feature
    std::vector<float> num_, p_, pT_;            // products
    std::vector<float> y_, gq_, alpha_, alphaT_, last_, gk_, suffix_;
};

}  // namespace racesp::core
