#include "reference64.hpp"

#include <algorithm>
#include <cmath>

namespace racesp::testref {

namespace {

// Corner r's bit p is +1 when bit (P-1-p) of r is set.
inline double corner(int r, int p, int P) { return ((r >> (P - 1 - p)) & 1) ? 1.0 : -1.0; }

// phi over all tables by softmax over corners; u kept for the backward.
template <class X>
void features(const AttentionConfig& c, const double* W, std::int64_t D, const X* x, double* u, double* phi) {
    const int L = c.tables, P = c.planes, R = 1 << P;
    for (int l = 0; l < L; ++l) {
        for (int p = 0; p < P; ++p) {
            double z = 0;
            for (std::int64_t d = 0; d < D; ++d) z += W[(l * P + p) * D + d] * static_cast<double>(x[d]);
            u[l * P + p] = std::tanh(z);
        }
        std::vector<double> logit(R);
        double mx = -1e300;
        for (int r = 0; r < R; ++r) {
            double s = 0;
            for (int p = 0; p < P; ++p) s += u[l * P + p] * corner(r, p, P);
            logit[r] = c.beta * s;
            mx = std::max(mx, logit[r]);
        }
        double sum = 0;
        for (int r = 0; r < R; ++r) sum += (logit[r] = std::exp(logit[r] - mx));
        for (int r = 0; r < R; ++r) phi[l * R + r] = logit[r] / sum;
    }
}

// dx += d(phi)/dx^T g through the softmax Jacobian; returns the dbeta part.
double features_backward(const AttentionConfig& c, const double* W, std::int64_t D, const double* u,
                         const double* phi, const double* g, double* dx) {
    const int L = c.tables, P = c.planes, R = 1 << P;
    double dbeta = 0;
    for (int l = 0; l < L; ++l) {
        double gphi = 0;
        for (int r = 0; r < R; ++r) gphi += g[l * R + r] * phi[l * R + r];
        std::vector<double> du(P, 0.0);
        for (int r = 0; r < R; ++r) {
            const double dl = phi[l * R + r] * (g[l * R + r] - gphi);  // dL/dlogit_r
            double uc = 0;
            for (int p = 0; p < P; ++p) {
                du[p] += c.beta * dl * corner(r, p, P);
                uc += u[l * P + p] * corner(r, p, P);
            }
            dbeta += dl * uc;
        }
        for (int p = 0; p < P; ++p) {
            const double dz = (1 - u[l * P + p] * u[l * P + p]) * du[p];
            for (std::int64_t d = 0; d < D; ++d) dx[d] += dz * W[(l * P + p) * D + d];
        }
    }
    return dbeta;
}

}  // namespace

Result reference(const AttentionConfig& c, const Problem& pr, bool backward) {
    const std::int64_t B = pr.B, T = pr.T, H = pr.H, D = pr.D, Wd = D + 1;
    const int L = c.tables, P = c.planes, M = c.features();
    const bool bucket = c.normalization == Normalization::bucket;
    Result res;
    res.o.assign(B * T * H * D, 0.0);
    if (backward) {
        res.dq.assign(B * T * H * D, 0.0);
        res.dk.assign(B * T * H * D, 0.0);
        res.dv.assign(B * T * H * D, 0.0);
    }
    auto at = [&](std::int64_t b, std::int64_t t, std::int64_t h) { return ((b * T + t) * H + h) * D; };
    for (std::int64_t b = 0; b < B; ++b)
        for (std::int64_t h = 0; h < H; ++h) {
            const double* W = pr.planes.data() + h * L * P * D;
            std::vector<double> fq(T * M), fk(T * M), uq(T * L * P), uk(T * L * P);
            for (std::int64_t t = 0; t < T; ++t) {
                features(c, W, D, pr.q.data() + at(b, t, h), uq.data() + t * L * P, fq.data() + t * M);
                features(c, W, D, pr.k.data() + at(b, t, h), uk.data() + t * L * P, fk.data() + t * M);
            }
            auto visible = [&](std::int64_t i, std::int64_t j) { return !c.causal || j <= i; };
            // Forward state seen by query i: running sum over the visible keys (all, non-causal).
            std::vector<double> S(M * Wd, 0.0);
            auto add_key = [&](std::int64_t j) {
                const double* vj = pr.v.data() + at(b, j, h);
                for (int m = 0; m < M; ++m) {
                    for (std::int64_t d = 0; d < D; ++d) S[m * Wd + d] += fk[j * M + m] * vj[d];
                    S[m * Wd + D] += fk[j * M + m];
                }
            };
            if (!c.causal)
                for (std::int64_t j = 0; j < T; ++j) add_key(j);
            std::vector<double> dfq(T * M, 0.0), u_a(T * M * Wd, 0.0);
            // u_a[i]: query i's contribution to U (DESIGN.md §2).
            for (std::int64_t i = 0; i < T; ++i) {
                if (c.causal) add_key(i);
                double* o = res.o.data() + at(b, i, h);
                const double* phi = fq.data() + i * M;
                if (!bucket) {
                    // Explicit kernel matrix row: K_ij = phi(q_i).phi(k_j).
                    double den = 0;
                    std::vector<double> num(D, 0.0);
                    for (std::int64_t j = 0; j < T; ++j) {
                        if (!visible(i, j)) continue;
                        double kij = 0;
                        for (int m = 0; m < M; ++m) kij += phi[m] * fk[j * M + m];
                        den += kij;
                        for (std::int64_t d = 0; d < D; ++d) num[d] += kij * pr.v[at(b, j, h) + d];
                    }
                    for (std::int64_t d = 0; d < D; ++d) o[d] = num[d] / den;
                    if (backward) {
                        const double* G = pr.dout.data() + at(b, i, h);
                        double go = 0;
                        for (std::int64_t d = 0; d < D; ++d) go += G[d] * o[d];
                        const double bb = -go / den;
                        for (int m = 0; m < M; ++m) {
                            double s = S[m * Wd + D] * bb;
                            for (std::int64_t d = 0; d < D; ++d) s += S[m * Wd + d] * G[d] / den;
                            dfq[i * M + m] = s;
                            for (std::int64_t d = 0; d < D; ++d) u_a[(i * M + m) * Wd + d] = phi[m] * G[d] / den;
                            u_a[(i * M + m) * Wd + D] = phi[m] * bb;
                        }
                    }
                } else {
                    for (int m = 0; m < M; ++m) {
                        const double w = phi[m] / (S[m * Wd + D] + c.eps) / L;
                        for (std::int64_t d = 0; d < D; ++d) o[d] += w * S[m * Wd + d];
                    }
                    if (backward) {
                        const double* G = pr.dout.data() + at(b, i, h);
                        for (int m = 0; m < M; ++m) {
                            const double den = S[m * Wd + D] + c.eps;
                            double ge = 0;
                            for (std::int64_t d = 0; d < D; ++d) ge += G[d] * S[m * Wd + d] / den;
                            dfq[i * M + m] = ge / L;
                            for (std::int64_t d = 0; d < D; ++d) u_a[(i * M + m) * Wd + d] = phi[m] * G[d] / (L * den);
                            u_a[(i * M + m) * Wd + D] = -phi[m] * ge / (L * den);
                        }
                    }
                }
            }
            if (!backward) continue;
            // U(j): contributions of the queries that see key j (running sum from the end).
            std::vector<double> U(M * Wd, 0.0);
            if (!c.causal)
                for (std::int64_t i = 0; i < T; ++i)
                    for (std::int64_t e = 0; e < M * Wd; ++e) U[e] += u_a[i * M * Wd + e];
            for (std::int64_t j = T - 1; j >= 0; --j) {
                if (c.causal)
                    for (std::int64_t e = 0; e < M * Wd; ++e) U[e] += u_a[j * M * Wd + e];
                const double* vj = pr.v.data() + at(b, j, h);
                std::vector<double> dfk(M);
                double* dv = res.dv.data() + at(b, j, h);
                for (int m = 0; m < M; ++m) {
                    double s = U[m * Wd + D];
                    for (std::int64_t d = 0; d < D; ++d) {
                        s += U[m * Wd + d] * vj[d];
                        dv[d] += fk[j * M + m] * U[m * Wd + d];
                    }
                    dfk[m] = s;
                }
                res.dbeta += features_backward(c, W, D, uk.data() + j * L * P, fk.data() + j * M, dfk.data(),
                                               res.dk.data() + at(b, j, h));
            }
            for (std::int64_t i = 0; i < T; ++i)
                res.dbeta += features_backward(c, W, D, uq.data() + i * L * P, fq.data() + i * M,
                                               dfq.data() + i * M, res.dq.data() + at(b, i, h));
        }
    return res;
}

std::vector<double> reference_one_output(const AttentionConfig& c, std::int64_t T, std::int64_t H,
                                         std::int64_t D, const float* q, const float* k, const float* v,
                                         const float* planes, std::int64_t h, std::int64_t t) {
    const int L = c.tables, P = c.planes, M = c.features();
    std::vector<double> W(planes + h * L * P * D, planes + (h + 1) * L * P * D);
    std::vector<double> phq(M), uq(L * P);
    features(c, W.data(), D, q + (t * H + h) * D, uq.data(), phq.data());
    const std::int64_t last = c.causal ? t + 1 : T;
    // Per-thread float64 partial states, summed at the end.
    std::vector<double> S(M * (D + 1), 0.0);
#pragma omp parallel
    {
        std::vector<double> part(M * (D + 1), 0.0), u(L * P), phi(M);
#pragma omp for schedule(static)
        for (std::int64_t j = 0; j < last; ++j) {
            features(c, W.data(), D, k + (j * H + h) * D, u.data(), phi.data());
            const float* vj = v + (j * H + h) * D;
            for (int m = 0; m < M; ++m) {
                for (std::int64_t d = 0; d < D; ++d) part[m * (D + 1) + d] += phi[m] * vj[d];
                part[m * (D + 1) + D] += phi[m];
            }
        }
#pragma omp critical
        for (std::size_t e = 0; e < part.size(); ++e) S[e] += part[e];
    }
    std::vector<double> o(D, 0.0);
    if (c.normalization == Normalization::kernel) {
        double den = 0;
        for (int m = 0; m < M; ++m) den += phq[m] * S[m * (D + 1) + D];
        for (int m = 0; m < M; ++m)
            for (std::int64_t d = 0; d < D; ++d) o[d] += phq[m] * S[m * (D + 1) + d] / den;
    } else {
        for (int m = 0; m < M; ++m)
            for (std::int64_t d = 0; d < D; ++d)
                o[d] += phq[m] * S[m * (D + 1) + d] / (S[m * (D + 1) + D] + c.eps) / L;
    }
    return o;
}

}  // namespace racesp::testref
