#include "reference.hpp"

#include <algorithm>
#include <cmath>

#include "dual.hpp"

namespace racesp::test {
namespace {

std::int64_t row_offset(const Shape& shape, std::int64_t b, std::int64_t t, std::int64_t h) {
    return ((b * shape.tokens + t) * shape.heads + h) * shape.dim;
}

// One (batch, head) slice of a [B, T, H, D] tensor as a T x D array of scalars.
template <class S, class F>
std::vector<S> slice(const Shape& shape, const F* x, std::int64_t b, std::int64_t h) {
    std::vector<S> out(static_cast<std::size_t>(shape.tokens * shape.dim));
    for (std::int64_t t = 0; t < shape.tokens; ++t) {
        const std::int64_t offset = row_offset(shape, b, t, h);
        for (std::int64_t d = 0; d < shape.dim; ++d)
            out[static_cast<std::size_t>(t * shape.dim + d)] = S(static_cast<double>(x[offset + d]));
    }
    return out;
}

// Features of x over all tables, table-major: L * 2^P entries.
template <class S>
std::vector<S> all_features(const RefPlanes& planes, std::int64_t h, const S* x, S beta) {
    std::vector<S> phi;
    for (int l = 0; l < planes.tables; ++l) {
        const auto table = corner_softmax(planes, h, l, x, beta);
        phi.insert(phi.end(), table.begin(), table.end());
    }
    return phi;
}

}  // namespace

RefPlanes::RefPlanes(const Planes& p)
    : heads(p.heads()), dim(p.dim()), tables(p.tables()), planes(p.planes_per_table()),
      w(p.values().begin(), p.values().end()) {}

template <class S>
std::vector<S> corner_softmax(const RefPlanes& planes, std::int64_t h, int l, const S* x, S beta) {
    using std::exp;
    using std::tanh;
    const int P = planes.planes;
    const std::int64_t D = planes.dim;
    const double* W = planes.table(h, l);
    std::vector<S> u(static_cast<std::size_t>(P));
    for (int p = 0; p < P; ++p) {
        S z = 0;
        for (std::int64_t d = 0; d < D; ++d) z += S(W[p * D + d]) * x[d];
        u[static_cast<std::size_t>(p)] = tanh(z);
    }
    const int R = 1 << P;
    std::vector<S> logit(static_cast<std::size_t>(R));
    for (int r = 0; r < R; ++r) {
        S s = 0;
        for (int p = 0; p < P; ++p) {
            const bool plus = ((r >> (P - 1 - p)) & 1) != 0;
            s += plus ? u[static_cast<std::size_t>(p)] : -u[static_cast<std::size_t>(p)];
        }
        logit[static_cast<std::size_t>(r)] = beta * s;
    }
    // The usual max shift keeps exp in range; it changes neither phi nor its derivative.
    const S shift = *std::max_element(logit.begin(), logit.end());
    S total = 0;
    for (auto& e : logit) {
        e = exp(e - shift);
        total += e;
    }
    for (auto& e : logit) e /= total;
    return logit;
}

template <class S>
void reference_head(const AttentionConfig& config, const RefPlanes& planes, std::int64_t h,
                    std::int64_t tokens, const S* q, const S* k, const S* v, S beta, S* o) {
    const std::int64_t T = tokens, D = planes.dim;
    std::vector<std::vector<S>> fq, fk;
    for (std::int64_t t = 0; t < T; ++t) {
        fq.push_back(all_features(planes, h, q + t * D, beta));
        fk.push_back(all_features(planes, h, k + t * D, beta));
    }
    const std::size_t M = fq.empty() ? 0 : fq[0].size();

    if (config.normalization == Normalization::kernel) {
        // Explicit kernel matrix K(i, j) = sum_l phi_l(q_i) . phi_l(k_j), masked when causal.
        std::vector<S> K(static_cast<std::size_t>(T * T), S(0));
        for (std::int64_t i = 0; i < T; ++i)
            for (std::int64_t j = 0; j < T; ++j) {
                if (config.causal && j > i) continue;
                S dot = 0;
                for (std::size_t m = 0; m < M; ++m) dot += fq[i][m] * fk[j][m];
                K[static_cast<std::size_t>(i * T + j)] = dot;
            }
        for (std::int64_t i = 0; i < T; ++i) {
            S den = 0;
            for (std::int64_t j = 0; j < T; ++j) den += K[static_cast<std::size_t>(i * T + j)];
            for (std::int64_t d = 0; d < D; ++d) {
                S num = 0;
                for (std::int64_t j = 0; j < T; ++j)
                    num += K[static_cast<std::size_t>(i * T + j)] * v[j * D + d];
                o[i * D + d] = num / den;
            }
        }
        return;
    }

    // bucket: per-bucket mass A and value sums B over the visible keys.
    std::vector<S> A(M, S(0)), B(M * static_cast<std::size_t>(D), S(0));
    auto add_key = [&](std::int64_t j) {
        for (std::size_t m = 0; m < M; ++m) {
            A[m] += fk[j][m];
            for (std::int64_t d = 0; d < D; ++d)
                B[m * static_cast<std::size_t>(D) + static_cast<std::size_t>(d)] += fk[j][m] * v[j * D + d];
        }
    };
    if (!config.causal)
        for (std::int64_t j = 0; j < T; ++j) add_key(j);
    const S eps(config.eps), inv_tables(1.0 / config.tables);
    for (std::int64_t i = 0; i < T; ++i) {
        if (config.causal) add_key(i);
        for (std::int64_t d = 0; d < D; ++d) {
            S acc = 0;
            for (std::size_t m = 0; m < M; ++m)
                acc += fq[i][m] * B[m * static_cast<std::size_t>(D) + static_cast<std::size_t>(d)] / (A[m] + eps);
            o[i * D + d] = inv_tables * acc;
        }
    }
}

template std::vector<double> corner_softmax(const RefPlanes&, std::int64_t, int, const double*, double);
template std::vector<Dual> corner_softmax(const RefPlanes&, std::int64_t, int, const Dual*, Dual);
template void reference_head(const AttentionConfig&, const RefPlanes&, std::int64_t, std::int64_t,
                             const double*, const double*, const double*, double, double*);
template void reference_head(const AttentionConfig&, const RefPlanes&, std::int64_t, std::int64_t,
                             const Dual*, const Dual*, const Dual*, Dual, Dual*);

std::vector<double> reference_forward(const AttentionConfig& config, const Planes& planes,
                                      const Shape& shape, const float* q, const float* k,
                                      const float* v) {
    const RefPlanes ref(planes);
    std::vector<double> o(static_cast<std::size_t>(shape.elements()));
    std::vector<double> os(static_cast<std::size_t>(shape.tokens * shape.dim));
    for (std::int64_t b = 0; b < shape.batch; ++b)
        for (std::int64_t h = 0; h < shape.heads; ++h) {
            const auto qs = slice<double>(shape, q, b, h), ks = slice<double>(shape, k, b, h),
                       vs = slice<double>(shape, v, b, h);
            reference_head<double>(config, ref, h, shape.tokens, qs.data(), ks.data(), vs.data(),
                                   config.beta, os.data());
            for (std::int64_t t = 0; t < shape.tokens; ++t)
                for (std::int64_t d = 0; d < shape.dim; ++d)
                    o[static_cast<std::size_t>(row_offset(shape, b, t, h) + d)] =
                        os[static_cast<std::size_t>(t * shape.dim + d)];
        }
    return o;
}

double reference_loss(const AttentionConfig& config, const RefPlanes& planes, const Shape& shape,
                      const double* q, const double* k, const double* v, double beta,
                      const double* dout) {
    double loss = 0;
    std::vector<double> os(static_cast<std::size_t>(shape.tokens * shape.dim));
    for (std::int64_t b = 0; b < shape.batch; ++b)
        for (std::int64_t h = 0; h < shape.heads; ++h) {
            const auto qs = slice<double>(shape, q, b, h), ks = slice<double>(shape, k, b, h),
                       vs = slice<double>(shape, v, b, h), gs = slice<double>(shape, dout, b, h);
            reference_head<double>(config, planes, h, shape.tokens, qs.data(), ks.data(), vs.data(),
                                   beta, os.data());
            for (std::size_t e = 0; e < os.size(); ++e) loss += gs[e] * os[e];
        }
    return loss;
}

namespace {

// d/ds of sum dout . o for one head, with the seeds already placed in the dual inputs.
double head_derivative(const AttentionConfig& config, const RefPlanes& planes, std::int64_t h,
                       std::int64_t T, const std::vector<Dual>& q, const std::vector<Dual>& k,
                       const std::vector<Dual>& v, Dual beta, const std::vector<double>& dout) {
    std::vector<Dual> o(q.size());
    reference_head<Dual>(config, planes, h, T, q.data(), k.data(), v.data(), beta, o.data());
    double d = 0;
    for (std::size_t e = 0; e < o.size(); ++e) d += dout[e] * o[e].d;
    return d;
}

}  // namespace

Gradients reference_gradients(const AttentionConfig& config, const Planes& planes,
                              const Shape& shape, const float* q, const float* k, const float* v,
                              const float* dout) {
    const RefPlanes ref(planes);
    const auto n = static_cast<std::size_t>(shape.elements());
    Gradients g{std::vector<double>(n), std::vector<double>(n), std::vector<double>(n), 0};
    for (std::int64_t b = 0; b < shape.batch; ++b)
        for (std::int64_t h = 0; h < shape.heads; ++h) {
            std::vector<Dual> in[3] = {slice<Dual>(shape, q, b, h), slice<Dual>(shape, k, b, h),
                                       slice<Dual>(shape, v, b, h)};
            const auto gs = slice<double>(shape, dout, b, h);
            std::vector<double>* out[3] = {&g.dq, &g.dk, &g.dv};
            for (int which = 0; which < 3; ++which)
                for (std::int64_t t = 0; t < shape.tokens; ++t)
                    for (std::int64_t d = 0; d < shape.dim; ++d) {
                        auto& seed = in[which][static_cast<std::size_t>(t * shape.dim + d)];
                        seed.d = 1;
                        (*out[which])[static_cast<std::size_t>(row_offset(shape, b, t, h) + d)] =
                            head_derivative(config, ref, h, shape.tokens, in[0], in[1], in[2],
                                            Dual(config.beta), gs);
                        seed.d = 0;
                    }
            g.dbeta += head_derivative(config, ref, h, shape.tokens, in[0], in[1], in[2],
                                       Dual(config.beta, 1), gs);
        }
    return g;
}

double reference_directional(const AttentionConfig& config, const Planes& planes,
                             const Shape& shape, const float* q, const float* k, const float* v,
                             const float* dout, const double* dir_q, const double* dir_k,
                             const double* dir_v, double dir_beta) {
    const RefPlanes ref(planes);
    double total = 0;
    for (std::int64_t b = 0; b < shape.batch; ++b)
        for (std::int64_t h = 0; h < shape.heads; ++h) {
            auto qs = slice<Dual>(shape, q, b, h), ks = slice<Dual>(shape, k, b, h),
                 vs = slice<Dual>(shape, v, b, h);
            const auto dq = slice<double>(shape, dir_q, b, h), dk = slice<double>(shape, dir_k, b, h),
                       dv = slice<double>(shape, dir_v, b, h);
            for (std::size_t e = 0; e < qs.size(); ++e) {
                qs[e].d = dq[e];
                ks[e].d = dk[e];
                vs[e].d = dv[e];
            }
            total += head_derivative(config, ref, h, shape.tokens, qs, ks, vs,
                                     Dual(config.beta, dir_beta), slice<double>(shape, dout, b, h));
        }
    return total;
}

}  // namespace racesp::test
