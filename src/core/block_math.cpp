#include "block_math.hpp"

#include <algorithm>

#include "feature_map.hpp"
#include "small_gemm.hpp"

namespace racesp::core {

Geometry::Geometry(const AttentionConfig& c, std::int64_t d)
    : tables(c.tables), planes(c.planes), features(c.features()), dim(d), width(d + 1),
      beta(static_cast<float>(c.beta)), eps(static_cast<float>(c.eps)), causal(c.causal),
      normalization(c.normalization) {}

State32::State32(std::int64_t features, std::int64_t width)
    : rows(static_cast<std::size_t>(features * width)), cols(rows.size()), M_(features), W_(width) {}

void State32::assign(const double* state) {
    for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<float>(state[i]);
    transpose(M_, W_, rows.data(), W_, cols.data(), M_);
}

Block::Block(const Geometry& g, std::int64_t capacity, const float* planes_of_head)
    : g_(g), capacity_(capacity), M_(g.features), W_(g.width), D_(g.dim), LP_(g.tables * g.planes),
      planes_(planes_of_head) {
    const auto sized = [](std::int64_t n) { return std::vector<float>(static_cast<std::size_t>(n)); };
    planesT_ = sized(D_ * LP_);
    transpose(LP_, D_, planes_, D_, planesT_.data(), LP_);
    dz_ = sized(capacity * LP_);
    phik_ = sized(capacity * M_);
    uk_ = sized(capacity * LP_);
    phikT_ = sized(M_ * capacity);
    v1_ = sized(capacity * W_);
    v1T_ = sized(W_ * capacity);
    phiq_ = sized(capacity * M_);
    uq_ = sized(capacity * LP_);
    x_weights_ = sized(capacity * M_);
    den_ = sized(capacity * M_);
    num_ = sized(capacity * W_);
    p_ = sized(capacity * capacity);
    pT_ = sized(capacity * capacity);
    y_ = sized(capacity * W_);
    gq_ = sized(capacity * M_);
    alpha_ = sized(capacity * M_);
    alphaT_ = sized(M_ * capacity);
    last_ = sized(capacity * M_);
    gk_ = sized(capacity * M_);
    suffix_ = sized(M_);
}

void Block::features(Rows x, float* u, float* phi) {
    gemm(n_, LP_, D_, x.base, x.stride, planesT_.data(), LP_, u, LP_, false);  // z = x W^T
    feature_map_rows(g_.tables, g_.planes, g_.beta, n_, u, phi);
}

double Block::feature_grad(const float* u, const float* phi, const float* g, MutRows dx) {
    const double dbeta = feature_map_backward_rows(g_.tables, g_.planes, g_.beta, n_, u, phi, g, dz_.data());
    gemm(n_, D_, LP_, dz_.data(), LP_, planes_, D_, dx.base, dx.stride, false);  // dx = dz W
    return dbeta;
}

void Block::load_keys(Rows k, Rows v, std::int64_t n) {
    n_ = n;
    features(k, uk_.data(), phik_.data());
    for (std::int64_t i = 0; i < n; ++i) {
        std::copy_n(v.row(i), D_, &v1_[i * W_]);
        v1_[i * W_ + D_] = 1.0f;
    }
    transpose(n, M_, phik_.data(), M_, phikT_.data(), n);
    transpose(n, W_, v1_.data(), W_, v1T_.data(), n);
}

void Block::load_queries(Rows q, std::int64_t n) {
    n_ = n;
    features(q, uq_.data(), phiq_.data());
}

void Block::add_key_total(float* total) {
    gemm(M_, W_, n_, phikT_.data(), n_, v1_.data(), W_, total, W_, true);
}

void Block::mask(bool keep_lower) {
    for (std::int64_t i = 0; i < n_; ++i)
        for (std::int64_t j = 0; j < n_; ++j)
            if (keep_lower ? j > i : j < i) p_[i * n_ + j] = 0.0f;
}

const float* Block::readout_weights(const float* S) {
    if (g_.normalization == Normalization::kernel) return phiq_.data();
    // Bucket: X = phi(q) / (L (A + eps)), with A counting the block's keys up to each query.
    const float inv_tables = 1.0f / static_cast<float>(g_.tables);
    for (std::int64_t i = 0; i < n_; ++i) {
        float* den = &den_[i * M_];
        for (std::int64_t m = 0; m < M_; ++m) {
            const float before = i == 0 ? S[m * W_ + D_] + g_.eps : den_[(i - 1) * M_ + m];
            den[m] = g_.causal ? before + phik_[i * M_ + m] : S[m * W_ + D_] + g_.eps;
        }
        for (std::int64_t m = 0; m < M_; ++m) x_weights_[i * M_ + m] = phiq_[i * M_ + m] / den[m] * inv_tables;
    }
    return x_weights_.data();
}

void Block::readout(const float* S) {
    const float* X = readout_weights(S);
    gemm(n_, W_, M_, X, M_, S, W_, num_.data(), W_, false);
    if (g_.causal) {
        gemm(n_, n_, M_, X, M_, phikT_.data(), n_, p_.data(), n_, false);
        mask(true);
        gemm(n_, W_, n_, p_.data(), n_, v1_.data(), W_, num_.data(), W_, true);
    }
}

void Block::forward(const State32& S, MutRows o) {
    readout(S.rows.data());
    const bool kernel = g_.normalization == Normalization::kernel;
    for (std::int64_t i = 0; i < n_; ++i) {
        const float* num = &num_[i * W_];
        const float scale = kernel ? 1.0f / num[D_] : 1.0f;
        float* out = o.row(i);
        for (std::int64_t d = 0; d < D_; ++d) out[d] = num[d] * scale;
    }
}

double Block::query_backward(const State32& S, Rows G, MutRows dq) {
    query_terms(S, G, true);
    return feature_grad(uq_.data(), phiq_.data(), gq_.data(), dq);
}

void Block::query_terms(const State32& state, Rows G, bool with_gq) {
    const bool kernel = g_.normalization == Normalization::kernel;
    const float* S = state.rows.data();
    // Y: kernel [a_i, b_i] = [G_i, -G_i.o_i] / den_i; bucket [G_i, 0].
    if (kernel) readout(S);
    for (std::int64_t i = 0; i < n_; ++i) {
        const float* Gi = G.row(i);
        float* y = &y_[i * W_];
        if (kernel) {
            const float* num = &num_[i * W_];
            const float inv_den = 1.0f / num[D_];
            float go = 0.0f;
            for (std::int64_t d = 0; d < D_; ++d) go += Gi[d] * num[d];
            for (std::int64_t d = 0; d < D_; ++d) y[d] = Gi[d] * inv_den;
            y[D_] = -go * inv_den * inv_den;
        } else {
            std::copy_n(Gi, D_, y);
            y[D_] = 0.0f;
        }
    }
    if (!kernel) readout_weights(S);

    // gq = Y S^T + tril(Y V1^T) phi(k); the kernel normalization's U terms do not need it.
    with_gq = with_gq || !kernel;
    if (with_gq) gemm(n_, M_, W_, y_.data(), W_, state.cols.data(), M_, gq_.data(), M_, false);
    if (with_gq && g_.causal) {
        gemm(n_, n_, W_, y_.data(), W_, v1T_.data(), n_, p_.data(), n_, false);
        mask(true);
        gemm(n_, M_, n_, p_.data(), n_, phik_.data(), M_, gq_.data(), M_, true);
    }

    // Each query's U terms; then Y keeps only x_i (column D zeroed) for the key side.
    const float inv_tables = 1.0f / static_cast<float>(g_.tables);
    for (std::int64_t i = 0; i < n_; ++i) {
        const float* phi = &phiq_[i * M_];
        float* gq = &gq_[i * M_];
        float* alpha = &alpha_[i * M_];
        float* last = &last_[i * M_];
        if (kernel) {
            const float b = y_[i * W_ + D_];
            for (std::int64_t m = 0; m < M_; ++m) {
                alpha[m] = phi[m];
                last[m] = phi[m] * b;
            }
        } else {
            const float* den = &den_[i * M_];
            for (std::int64_t m = 0; m < M_; ++m) {
                gq[m] *= inv_tables / den[m];
                alpha[m] = x_weights_[i * M_ + m];
                last[m] = -phi[m] * gq[m] / den[m];
            }
        }
        y_[i * W_ + D_] = 0.0f;
    }
    transpose(n_, M_, alpha_.data(), M_, alphaT_.data(), n_);
}

void Block::add_query_total(float* total) {
    gemm(M_, D_, n_, alphaT_.data(), n_, y_.data(), W_, total, W_, true);
    for (std::int64_t i = 0; i < n_; ++i)
        for (std::int64_t m = 0; m < M_; ++m) total[m * W_ + D_] += last_[i * M_ + m];
}

double Block::key_backward(const State32& state, MutRows dk, MutRows dv) {
    const float* U = state.rows.data();
    // gk = V1 U^T (+ triu(V1 Yx^T) alpha + revcumsum(last));  dv = phi(k) U_D (+ triu(phi(k) alpha^T) x)
    gemm(n_, M_, W_, v1_.data(), W_, state.cols.data(), M_, gk_.data(), M_, false);
    gemm(n_, D_, M_, phik_.data(), M_, U, W_, dv.base, dv.stride, false);
    if (g_.causal) {
        // p_[i, j] = x_i . v_j, transposed to [j, i] and kept for i >= j.
        gemm(n_, n_, W_, y_.data(), W_, v1T_.data(), n_, pT_.data(), n_, false);
        transpose(n_, n_, pT_.data(), n_, p_.data(), n_);
        mask(false);
        gemm(n_, M_, n_, p_.data(), n_, alpha_.data(), M_, gk_.data(), M_, true);
        std::vector<float>& running = suffix_;  // suffix sums of `last`
        std::fill(running.begin(), running.end(), 0.0f);
        for (std::int64_t j = n_ - 1; j >= 0; --j)
            for (std::int64_t m = 0; m < M_; ++m) {
                running[m] += last_[j * M_ + m];
                gk_[j * M_ + m] += running[m];
            }
        gemm(n_, n_, M_, phik_.data(), M_, alphaT_.data(), n_, p_.data(), n_, false);
        mask(false);
        gemm(n_, D_, n_, p_.data(), n_, y_.data(), W_, dv.base, dv.stride, true);
    }
    return feature_grad(uk_.data(), phik_.data(), gk_.data(), dk);
}

}  // namespace racesp::core
