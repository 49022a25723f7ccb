// CPU RACE attention: forward, backward and the state totals of one shard (see attention.hpp).
//
// Work is split into items of (batch entry, head, chunk of tokens) spread over OpenMP threads.
// Inside a chunk, tokens are taken in blocks: every sum over tokens accumulates in float32 within
// a block and the block totals combine in float64, so a 10^8-token shard keeps its digits.
// Causal passes first total each chunk, scan the chunk totals in float64, then sweep each chunk
// from its starting state.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "feature_map.hpp"
#include "racesp/attention.hpp"
#include "racesp/errors.hpp"

namespace racesp {

namespace {

// The sizes every loop needs, taken once from the configuration and the tensors.
struct Geometry {
    int tables, planes;
    std::int64_t features, dim, width;  // M, D, D + 1
    float beta, eps;
    bool causal;
    Normalization normalization;

    Geometry(const AttentionConfig& c, std::int64_t d)
        : tables(c.tables), planes(c.planes), features(c.features()), dim(d), width(d + 1),
          beta(static_cast<float>(c.beta)), eps(static_cast<float>(c.eps)), causal(c.causal),
          normalization(c.normalization) {}
    std::int64_t state_size() const { return features * width; }
};

// Pointers to one (batch entry, head) of the local shard; token t's vector starts at t * stride.
struct Sequence {
    const float* planes = nullptr;
    const float* q = nullptr;
    const float* k = nullptr;
    const float* v = nullptr;
    const float* dout = nullptr;
    float* o = nullptr;
    float* dq = nullptr;
    float* dk = nullptr;
    float* dv = nullptr;
    std::int64_t stride = 0;
};

template <class T>
T* row_of(T* base, std::int64_t t, std::int64_t stride) {
    return base ? base + t * stride : nullptr;
}

// How the tokens of every sequence are cut into chunks (parallel work) and blocks (float32 sums).
struct Plan {
    std::int64_t batch, heads, tokens, chunk, chunks, block;
    std::int64_t sequences() const { return batch * heads; }
    std::int64_t items() const { return sequences() * chunks; }
    std::int64_t chunk_begin(std::int64_t c) const { return std::min(tokens, c * chunk); }
    std::int64_t chunk_end(std::int64_t c) const { return std::min(tokens, (c + 1) * chunk); }
};

Plan make_plan(const Shape& s, const CpuOptions& options) {
    Plan p{s.batch, s.heads, s.tokens, 0, 0, std::max<std::int64_t>(1, options.block_tokens)};
    if (options.chunk_tokens > 0) {
        p.chunk = options.chunk_tokens;
    } else {
        // About four items per thread, so dynamic scheduling can even out the load.
        const std::int64_t want = 4 * omp_get_max_threads();
        const std::int64_t per_sequence = std::max<std::int64_t>(1, (want + p.sequences() - 1) / p.sequences());
        p.chunk = std::max(p.block, (s.tokens + per_sequence - 1) / per_sequence);
    }
    p.chunks = s.tokens == 0 ? 0 : (s.tokens + p.chunk - 1) / p.chunk;
    return p;
}

// ---- small dense helpers (inner loops run over the D+1 columns and vectorise) ----

void widen_add(double* dst, const float* src, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) dst[i] += src[i];
}
void narrow_copy(float* dst, const double* src, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

// S[m, :D] += alpha[m] * x;  S[m, D] += last[m].  Keys: alpha = last = phi(k), x = v.
void add_rows(const Geometry& g, float* S, const float* alpha, const float* x, const float* last) {
    const std::int64_t D = g.dim, W = g.width;
    for (std::int64_t m = 0; m < g.features; ++m) {
        const float a = alpha[m];
        float* row = S + m * W;
#pragma omp simd
        for (std::int64_t d = 0; d < D; ++d) row[d] += a * x[d];
        row[D] += last[m];
    }
}

// The feature map of one vector: phi (M) and the tanh'd projections u (L*P) kept for the backward.
struct Features {
    std::vector<float> phi, u;
    explicit Features(const Geometry& g) : phi(g.features), u(g.tables * g.planes) {}
    void compute(const Geometry& g, const float* planes, const float* x) {
        core::feature_map(planes, g.tables, g.planes, g.dim, g.beta, x, u.data(), phi.data());
    }
};

// The forward state at one token is base + intra (intra may be null): the float32 copy of the
// float64 state at the block's start, plus the float32 sum within the block.
struct StateView {
    const float* base;
    const float* intra;
    float at(std::int64_t i) const { return intra ? base[i] + intra[i] : base[i]; }
};

// o = normalised phi . S for one query (DESIGN.md §1).
void read_output(const Geometry& g, StateView S, const float* phi, float* out, float* num) {
    const std::int64_t D = g.dim, W = g.width;
    if (g.normalization == Normalization::kernel) {
        std::fill(num, num + W, 0.0f);
        for (std::int64_t m = 0; m < g.features; ++m) {
            const float f = phi[m];
            const float* b = S.base + m * W;
            if (S.intra) {
                const float* i = S.intra + m * W;
#pragma omp simd
                for (std::int64_t d = 0; d < W; ++d) num[d] += f * (b[d] + i[d]);
            } else {
#pragma omp simd
                for (std::int64_t d = 0; d < W; ++d) num[d] += f * b[d];
            }
        }
        const float inv = 1.0f / num[D];
        for (std::int64_t d = 0; d < D; ++d) out[d] = num[d] * inv;
    } else {
        std::fill(out, out + D, 0.0f);
        for (std::int64_t m = 0; m < g.features; ++m) {
            const float w = phi[m] / (S.at(m * W + D) + g.eps);
            const float* b = S.base + m * W;
            if (S.intra) {
                const float* i = S.intra + m * W;
#pragma omp simd
                for (std::int64_t d = 0; d < D; ++d) out[d] += w * (b[d] + i[d]);
            } else {
#pragma omp simd
                for (std::int64_t d = 0; d < D; ++d) out[d] += w * b[d];
            }
        }
        const float inv_tables = 1.0f / static_cast<float>(g.tables);
        for (std::int64_t d = 0; d < D; ++d) out[d] *= inv_tables;
    }
}

// The backward of one query (DESIGN.md §2): gq = dL/dphi(q), and its contribution to the
// backward state U in the factored form U[m, :D] += alpha[m] * x,  U[m, D] += last[m].
struct QueryTerms {
    std::vector<float> gq, alpha, last, x, num, o;
    explicit QueryTerms(const Geometry& g)
        : gq(g.features), alpha(g.features), last(g.features), x(g.dim), num(g.width), o(g.dim) {}
};

void query_backward(const Geometry& g, StateView S, const float* phi, const float* G, QueryTerms& t) {
    const std::int64_t D = g.dim, W = g.width;
    if (g.normalization == Normalization::kernel) {
        read_output(g, S, phi, t.o.data(), t.num.data());
        const float den = t.num[D];
        float go = 0.0f;
        for (std::int64_t d = 0; d < D; ++d) go += G[d] * t.o[d];
        const float b = -go / den;
        for (std::int64_t d = 0; d < D; ++d) t.x[d] = G[d] / den;  // a_i
        for (std::int64_t m = 0; m < g.features; ++m) {
            const float* row = S.base + m * W;
            float s = 0.0f;
            if (S.intra) {
                const float* in = S.intra + m * W;
#pragma omp simd reduction(+ : s)
                for (std::int64_t d = 0; d < D; ++d) s += (row[d] + in[d]) * t.x[d];
            } else {
#pragma omp simd reduction(+ : s)
                for (std::int64_t d = 0; d < D; ++d) s += row[d] * t.x[d];
            }
            t.gq[m] = s + S.at(m * W + D) * b;
            t.alpha[m] = phi[m];
            t.last[m] = phi[m] * b;
        }
    } else {
        const float inv_tables = 1.0f / static_cast<float>(g.tables);
        for (std::int64_t d = 0; d < D; ++d) t.x[d] = G[d];
        for (std::int64_t m = 0; m < g.features; ++m) {
            const float den = S.at(m * W + D) + g.eps;
            const float* row = S.base + m * W;
            float s = 0.0f;  // G . B[m]
            if (S.intra) {
                const float* in = S.intra + m * W;
#pragma omp simd reduction(+ : s)
                for (std::int64_t d = 0; d < D; ++d) s += (row[d] + in[d]) * G[d];
            } else {
#pragma omp simd reduction(+ : s)
                for (std::int64_t d = 0; d < D; ++d) s += row[d] * G[d];
            }
            t.gq[m] = s / den * inv_tables;  // G . E[m] / L
            t.alpha[m] = phi[m] / den * inv_tables;
            t.last[m] = -phi[m] * t.gq[m] / den;
        }
    }
}

// dL/dphi(k_j) and dL/dv_j from the backward state U(j) = base + intra.
void key_backward(const Geometry& g, StateView U, const float* phi, const float* v, float* gk, float* dv) {
    const std::int64_t D = g.dim, W = g.width;
    std::fill(dv, dv + D, 0.0f);
    for (std::int64_t m = 0; m < g.features; ++m) {
        const float* row = U.base + m * W;
        const float f = phi[m];
        float s = 0.0f;
        if (U.intra) {
            const float* in = U.intra + m * W;
#pragma omp simd reduction(+ : s)
            for (std::int64_t d = 0; d < D; ++d) {
                const float u = row[d] + in[d];
                s += u * v[d];
                dv[d] += f * u;
            }
        } else {
#pragma omp simd reduction(+ : s)
            for (std::int64_t d = 0; d < D; ++d) {
                s += row[d] * v[d];
                dv[d] += f * row[d];
            }
        }
        gk[m] = s + U.at(m * W + D);
    }
}

// ---- passes over one chunk [t0, t1) of one sequence ----

// Adds sum_j phi(k_j) (x) [v_j, 1] over the chunk to `total` (float64).
void chunk_key_total(const Geometry& g, const Plan& p, const Sequence& s, std::int64_t t0,
                     std::int64_t t1, double* total) {
    Features fk(g);
    std::vector<float> block_sum(g.state_size());
    for (std::int64_t b0 = t0; b0 < t1; b0 += p.block) {
        std::fill(block_sum.begin(), block_sum.end(), 0.0f);
        for (std::int64_t t = b0; t < std::min(t1, b0 + p.block); ++t) {
            const float* v = row_of(s.v, t, s.stride);
            fk.compute(g, s.planes, row_of(s.k, t, s.stride));
            add_rows(g, block_sum.data(), fk.phi.data(), v, fk.phi.data());
        }
        widen_add(total, block_sum.data(), g.state_size());
    }
}

// Calls visit(t, view) for every token of the chunk with the forward state S(t) (inclusive of
// key t when causal), starting from `start` (float64; constant S when not causal).
template <class Visit>
void sweep_forward(const Geometry& g, const Plan& p, const Sequence& s, std::int64_t t0, std::int64_t t1,
                   const double* start, Visit&& visit) {
    const std::int64_t n = g.state_size();
    std::vector<double> base(start, start + n);
    std::vector<float> base32(n), intra(n);
    narrow_copy(base32.data(), base.data(), n);
    if (!g.causal) {
        for (std::int64_t t = t0; t < t1; ++t) visit(t, StateView{base32.data(), nullptr});
        return;
    }
    Features fk(g);
    for (std::int64_t b0 = t0; b0 < t1; b0 += p.block) {
        std::fill(intra.begin(), intra.end(), 0.0f);
        for (std::int64_t t = b0; t < std::min(t1, b0 + p.block); ++t) {
            fk.compute(g, s.planes, row_of(s.k, t, s.stride));
            add_rows(g, intra.data(), fk.phi.data(), row_of(s.v, t, s.stride), fk.phi.data());
            visit(t, StateView{base32.data(), intra.data()});
        }
        widen_add(base.data(), intra.data(), n);
        narrow_copy(base32.data(), base.data(), n);
    }
}

void chunk_forward(const Geometry& g, const Plan& p, const Sequence& s, std::int64_t t0, std::int64_t t1,
                   const double* start) {
    Features fq(g);
    std::vector<float> num(g.width);
    sweep_forward(g, p, s, t0, t1, start, [&](std::int64_t t, StateView S) {
        fq.compute(g, s.planes, row_of(s.q, t, s.stride));
        read_output(g, S, fq.phi.data(), row_of(s.o, t, s.stride), num.data());
    });
}

// Adds the chunk's queries' contributions to the backward state U into `total` (float64).
void chunk_query_total(const Geometry& g, const Plan& p, const Sequence& s, std::int64_t t0,
                       std::int64_t t1, const double* start, double* total) {
    Features fq(g);
    QueryTerms terms(g);
    std::vector<float> block_sum(g.state_size(), 0.0f);
    std::int64_t in_block = 0;
    sweep_forward(g, p, s, t0, t1, start, [&](std::int64_t t, StateView S) {
        fq.compute(g, s.planes, row_of(s.q, t, s.stride));
        query_backward(g, S, fq.phi.data(), row_of(s.dout, t, s.stride), terms);
        add_rows(g, block_sum.data(), terms.alpha.data(), terms.x.data(), terms.last.data());
        if (++in_block == p.block) {
            widen_add(total, block_sum.data(), g.state_size());
            std::fill(block_sum.begin(), block_sum.end(), 0.0f);
            in_block = 0;
        }
    });
    widen_add(total, block_sum.data(), g.state_size());
}

// dq for one query from the forward state; returns its dbeta part and leaves the U terms in `terms`.
double query_gradient(const Geometry& g, const Sequence& s, std::int64_t t, StateView S, Features& fq,
                      QueryTerms& terms) {
    const float* q = row_of(s.q, t, s.stride);
    fq.compute(g, s.planes, q);
    query_backward(g, S, fq.phi.data(), row_of(s.dout, t, s.stride), terms);
    float* dq = row_of(s.dq, t, s.stride);
    std::fill(dq, dq + g.dim, 0.0f);
    return core::feature_map_backward(s.planes, g.tables, g.planes, g.dim, g.beta, fq.u.data(),
                                      fq.phi.data(), terms.gq.data(), dq);
}

// dk and dv for one key from the backward state; returns its dbeta part.
double key_gradient(const Geometry& g, const Sequence& s, std::int64_t t, StateView U, const float* phi,
                    const float* u, std::vector<float>& gk) {
    key_backward(g, U, phi, row_of(s.v, t, s.stride), gk.data(), row_of(s.dv, t, s.stride));
    float* dk = row_of(s.dk, t, s.stride);
    std::fill(dk, dk + g.dim, 0.0f);
    return core::feature_map_backward(s.planes, g.tables, g.planes, g.dim, g.beta, u, phi, gk.data(), dk);
}

// Non-causal gradients: S and U are the same for every token.
double chunk_backward_global(const Geometry& g, const Sequence& s, std::int64_t t0, std::int64_t t1,
                             const double* S64, const double* U64) {
    const std::int64_t n = g.state_size();
    std::vector<float> S(n), U(n), gk(g.features);
    narrow_copy(S.data(), S64, n);
    narrow_copy(U.data(), U64, n);
    Features fq(g), fk(g);
    QueryTerms terms(g);
    double dbeta = 0.0;
    for (std::int64_t t = t0; t < t1; ++t) {
        dbeta += query_gradient(g, s, t, StateView{S.data(), nullptr}, fq, terms);
        fk.compute(g, s.planes, row_of(s.k, t, s.stride));
        dbeta += key_gradient(g, s, t, StateView{U.data(), nullptr}, fk.phi.data(), fk.u.data(), gk);
    }
    return dbeta;
}

// Causal gradients of one chunk. `S_end`: forward state after the chunk's last key; `U_end`:
// backward state of the queries after the chunk. Blocks are taken last to first: each block's
// starting forward state is S_end minus the block's key total; a forward sweep over the block
// gives dq and the U terms of its queries, kept per token, then a reverse sweep gives dk, dv.
double chunk_backward_causal(const Geometry& g, const Plan& p, const Sequence& s, std::int64_t t0,
                             std::int64_t t1, const double* S_end_in, const double* U_end_in) {
    const std::int64_t n = g.state_size(), M = g.features, LP = g.tables * g.planes, D = g.dim;
    std::vector<double> S_end(S_end_in, S_end_in + n), U_end(U_end_in, U_end_in + n);
    std::vector<float> base32(n), intra(n), gk(M);
    // Per-token scratch for one block.
    std::vector<float> phik(p.block * M), uk(p.block * LP), alpha(p.block * M), last(p.block * M), x(p.block * D);
    Features f(g);
    QueryTerms terms(g);
    double dbeta = 0.0;

    const std::int64_t blocks = (t1 - t0 + p.block - 1) / p.block;
    for (std::int64_t bi = blocks - 1; bi >= 0; --bi) {
        const std::int64_t b0 = t0 + bi * p.block, b1 = std::min(t1, b0 + p.block);
        // Key features and the block's key total, summed in the same order as the forward.
        std::fill(intra.begin(), intra.end(), 0.0f);
        for (std::int64_t t = b0; t < b1; ++t) {
            const std::int64_t i = t - b0;
            f.compute(g, s.planes, row_of(s.k, t, s.stride));
            std::copy(f.phi.begin(), f.phi.end(), phik.begin() + i * M);
            std::copy(f.u.begin(), f.u.end(), uk.begin() + i * LP);
            add_rows(g, intra.data(), f.phi.data(), row_of(s.v, t, s.stride), f.phi.data());
        }
        for (std::int64_t j = 0; j < n; ++j) S_end[j] -= intra[j];  // now the block's starting state
        narrow_copy(base32.data(), S_end.data(), n);

        // Forward sweep: dq and the U terms of each query.
        std::fill(intra.begin(), intra.end(), 0.0f);
        for (std::int64_t t = b0; t < b1; ++t) {
            const std::int64_t i = t - b0;
            add_rows(g, intra.data(), &phik[i * M], row_of(s.v, t, s.stride), &phik[i * M]);
            dbeta += query_gradient(g, s, t, StateView{base32.data(), intra.data()}, f, terms);
            std::copy(terms.alpha.begin(), terms.alpha.end(), alpha.begin() + i * M);
            std::copy(terms.last.begin(), terms.last.end(), last.begin() + i * M);
            std::copy(terms.x.begin(), terms.x.end(), x.begin() + i * D);
        }

        // Reverse sweep: U(j) = U_end + terms of queries j..b1-1.
        narrow_copy(base32.data(), U_end.data(), n);
        std::fill(intra.begin(), intra.end(), 0.0f);
        for (std::int64_t t = b1 - 1; t >= b0; --t) {
            const std::int64_t i = t - b0;
            add_rows(g, intra.data(), &alpha[i * M], &x[i * D], &last[i * M]);
            dbeta += key_gradient(g, s, t, StateView{base32.data(), intra.data()}, &phik[i * M], &uk[i * LP], gk);
        }
        widen_add(U_end.data(), intra.data(), n);
    }
    return dbeta;
}

// ---- whole-shard drivers ----

Sequence sequence_of(const Planes& planes, std::int64_t b, std::int64_t h, ConstTensor q, ConstTensor k,
                     ConstTensor v) {
    Sequence s;
    s.planes = planes.head(h);
    s.stride = k.row_stride();
    s.q = q.data() ? q.row(b, 0, h) : nullptr;
    s.k = k.row(b, 0, h);
    s.v = v.row(b, 0, h);
    return s;
}

// Per-chunk float64 key totals of every sequence: [sequence][chunk][M x W].
std::vector<double> chunk_key_totals(const Geometry& g, const Plan& p, const Planes& planes, ConstTensor k,
                                     ConstTensor v) {
    const std::int64_t n = g.state_size();
    std::vector<double> totals(static_cast<std::size_t>(p.items() * n), 0.0);
#pragma omp parallel for schedule(dynamic)
    for (std::int64_t item = 0; item < p.items(); ++item) {
        const std::int64_t seq = item / p.chunks, c = item % p.chunks;
        const Sequence s = sequence_of(planes, seq / p.heads, seq % p.heads, ConstTensor{}, k, v);
        chunk_key_total(g, p, s, p.chunk_begin(c), p.chunk_end(c), &totals[item * n]);
    }
    return totals;
}

// Turns per-chunk totals into per-chunk starting states, in place: exclusive scan from `incoming`
// (forward, first to last) or from `incoming` at the end (reverse, last to first).
void scan_chunks(const Plan& p, std::int64_t n, const State& incoming, std::vector<double>& totals, bool reverse) {
#pragma omp parallel for
    for (std::int64_t seq = 0; seq < p.sequences(); ++seq) {
        std::vector<double> running(incoming.block(seq / p.heads, seq % p.heads),
                                    incoming.block(seq / p.heads, seq % p.heads) + n);
        for (std::int64_t i = 0; i < p.chunks; ++i) {
            const std::int64_t c = reverse ? p.chunks - 1 - i : i;
            double* chunk = &totals[(seq * p.chunks + c) * n];
            for (std::int64_t j = 0; j < n; ++j) {
                const double add = chunk[j];
                chunk[j] = running[j];
                running[j] += add;
            }
        }
    }
}

void check_state(const State& s, const AttentionConfig& config, const Shape& shape, const char* what) {
    if (s.batch() != shape.batch || s.heads() != shape.heads || s.features() != config.features() ||
        s.dim() != shape.dim)
        throw ShapeError(std::string(what) + " state does not match the tensors and configuration");
}

}  // namespace

void check_shapes(const Planes& planes, ConstTensor q, ConstTensor k, ConstTensor v) {
    const Shape& s = q.shape();
    if (!(k.shape() == s) || !(v.shape() == s))
        throw ShapeError("q, k and v must have one shape; got q " + s.str() + ", k " + k.shape().str() +
                         ", v " + v.shape().str());
    if (s.batch < 1 || s.heads < 1 || s.dim < 1 || s.tokens < 0)
        throw ShapeError("tensors must have batch, heads and dim >= 1, got " + s.str());
    if (s.heads != planes.heads() || s.dim != planes.dim())
        throw ShapeError("tensors " + s.str() + " do not match planes made for " +
                         std::to_string(planes.heads()) + " heads of dim " + std::to_string(planes.dim()));
}

namespace {
void check_like(ConstTensor ref, ConstTensor t, const char* name) {
    if (!(t.shape() == ref.shape()))
        throw ShapeError(std::string(name) + " has shape " + t.shape().str() + ", expected " + ref.shape().str());
}
}  // namespace

State zero_state(const AttentionConfig& config, const Shape& shape) {
    return State(shape.batch, shape.heads, config.features(), shape.dim);
}

State key_state(const AttentionConfig& config, const Planes& planes, ConstTensor k, ConstTensor v,
                const CpuOptions& options) {
    config.validate();
    check_shapes(planes, k, k, v);
    const Geometry g(config, k.shape().dim);
    const Plan p = make_plan(k.shape(), options);
    const std::vector<double> totals = chunk_key_totals(g, p, planes, k, v);
    State out = zero_state(config, k.shape());
    for (std::int64_t seq = 0; seq < p.sequences(); ++seq) {
        double* dst = out.block(seq / p.heads, seq % p.heads);
        for (std::int64_t c = 0; c < p.chunks; ++c)
            for (std::int64_t j = 0; j < g.state_size(); ++j) dst[j] += totals[(seq * p.chunks + c) * g.state_size() + j];
    }
    return out;
}

namespace {

// The forward state at the start of every chunk: the incoming state, plus (causal) the keys of
// earlier chunks. Non-causal chunks all start from the incoming global state.
std::vector<double> chunk_starts(const Geometry& g, const Plan& p, const Planes& planes, ConstTensor k,
                                 ConstTensor v, const State& incoming) {
    const std::int64_t n = g.state_size();
    if (g.causal) {
        std::vector<double> starts = chunk_key_totals(g, p, planes, k, v);
        scan_chunks(p, n, incoming, starts, false);
        return starts;
    }
    std::vector<double> starts(static_cast<std::size_t>(p.items() * n));
    for (std::int64_t item = 0; item < p.items(); ++item) {
        const std::int64_t seq = item / p.chunks;
        std::copy_n(incoming.block(seq / p.heads, seq % p.heads), n, &starts[item * n]);
    }
    return starts;
}

}  // namespace

void forward(const AttentionConfig& config, const Planes& planes, ConstTensor q, ConstTensor k, ConstTensor v,
             const State& incoming, MutTensor o, const CpuOptions& options) {
    config.validate();
    check_shapes(planes, q, k, v);
    check_like(q, o, "o");
    check_state(incoming, config, q.shape(), "incoming forward");
    const Geometry g(config, q.shape().dim);
    const Plan p = make_plan(q.shape(), options);
    const std::vector<double> starts = chunk_starts(g, p, planes, k, v, incoming);
#pragma omp parallel for schedule(dynamic)
    for (std::int64_t item = 0; item < p.items(); ++item) {
        const std::int64_t seq = item / p.chunks, c = item % p.chunks;
        Sequence s = sequence_of(planes, seq / p.heads, seq % p.heads, q, k, v);
        s.o = o.row(seq / p.heads, 0, seq % p.heads);
        chunk_forward(g, p, s, p.chunk_begin(c), p.chunk_end(c), &starts[item * g.state_size()]);
    }
}

namespace {

// Per-chunk float64 totals of the queries' U terms: [sequence][chunk][M x W].
std::vector<double> chunk_query_totals(const Geometry& g, const Plan& p, const Planes& planes, ConstTensor q,
                                       ConstTensor k, ConstTensor v, ConstTensor dout,
                                       const std::vector<double>& starts) {
    const std::int64_t n = g.state_size();
    std::vector<double> totals(static_cast<std::size_t>(p.items() * n), 0.0);
#pragma omp parallel for schedule(dynamic)
    for (std::int64_t item = 0; item < p.items(); ++item) {
        const std::int64_t seq = item / p.chunks, c = item % p.chunks;
        Sequence s = sequence_of(planes, seq / p.heads, seq % p.heads, q, k, v);
        s.dout = dout.row(seq / p.heads, 0, seq % p.heads);
        chunk_query_total(g, p, s, p.chunk_begin(c), p.chunk_end(c), &starts[item * n], &totals[item * n]);
    }
    return totals;
}

}  // namespace

State query_state(const AttentionConfig& config, const Planes& planes, ConstTensor q, ConstTensor k,
                  ConstTensor v, ConstTensor dout, const State& incoming, const CpuOptions& options) {
    config.validate();
    check_shapes(planes, q, k, v);
    check_like(q, dout, "dout");
    check_state(incoming, config, q.shape(), "incoming forward");
    const Geometry g(config, q.shape().dim);
    const Plan p = make_plan(q.shape(), options);
    const std::vector<double> starts = chunk_starts(g, p, planes, k, v, incoming);
    const std::vector<double> totals = chunk_query_totals(g, p, planes, q, k, v, dout, starts);
    State out = zero_state(config, q.shape());
    const std::int64_t n = g.state_size();
    for (std::int64_t seq = 0; seq < p.sequences(); ++seq) {
        double* dst = out.block(seq / p.heads, seq % p.heads);
        for (std::int64_t c = 0; c < p.chunks; ++c)
            for (std::int64_t j = 0; j < n; ++j) dst[j] += totals[(seq * p.chunks + c) * n + j];
    }
    return out;
}

double backward(const AttentionConfig& config, const Planes& planes, ConstTensor q, ConstTensor k, ConstTensor v,
                ConstTensor dout, const State& incoming, const State& incoming_backward, MutTensor dq,
                MutTensor dk, MutTensor dv, const CpuOptions& options) {
    config.validate();
    check_shapes(planes, q, k, v);
    check_like(q, dout, "dout");
    check_like(q, dq, "dq");
    check_like(q, dk, "dk");
    check_like(q, dv, "dv");
    check_state(incoming, config, q.shape(), "incoming forward");
    check_state(incoming_backward, config, q.shape(), "incoming backward");
    const Geometry g(config, q.shape().dim);
    const Plan p = make_plan(q.shape(), options);
    const std::int64_t n = g.state_size();

    std::vector<double> S_ends, U_ends;  // causal: per-chunk forward state after the chunk, U after it
    if (g.causal) {
        std::vector<double> starts = chunk_starts(g, p, planes, k, v, incoming);
        U_ends = chunk_query_totals(g, p, planes, q, k, v, dout, starts);
        scan_chunks(p, n, incoming_backward, U_ends, true);
        // The state after chunk c is the start of chunk c+1; after the last, start + its keys.
        S_ends.assign(starts.size(), 0.0);
        for (std::int64_t seq = 0; seq < p.sequences(); ++seq)
            for (std::int64_t c = 0; c + 1 < p.chunks; ++c)
                std::copy_n(&starts[(seq * p.chunks + c + 1) * n], n, &S_ends[(seq * p.chunks + c) * n]);
        const std::vector<double> totals = chunk_key_totals(g, p, planes, k, v);
        for (std::int64_t seq = 0; seq < p.sequences() && p.chunks > 0; ++seq) {
            const std::int64_t last = seq * p.chunks + p.chunks - 1;
            for (std::int64_t j = 0; j < n; ++j) S_ends[last * n + j] = starts[last * n + j] + totals[last * n + j];
        }
    }

    double dbeta = 0.0;
#pragma omp parallel for schedule(dynamic) reduction(+ : dbeta)
    for (std::int64_t item = 0; item < p.items(); ++item) {
        const std::int64_t seq = item / p.chunks, c = item % p.chunks;
        const std::int64_t b = seq / p.heads, h = seq % p.heads;
        Sequence s = sequence_of(planes, b, h, q, k, v);
        s.dout = dout.row(b, 0, h);
        s.dq = dq.row(b, 0, h);
        s.dk = dk.row(b, 0, h);
        s.dv = dv.row(b, 0, h);
        if (g.causal)
            dbeta += chunk_backward_causal(g, p, s, p.chunk_begin(c), p.chunk_end(c), &S_ends[item * n], &U_ends[item * n]);
        else
            dbeta += chunk_backward_global(g, s, p.chunk_begin(c), p.chunk_end(c), incoming.block(b, h),
                                           incoming_backward.block(b, h));
    }
    return dbeta;
}

void attention_forward(const AttentionConfig& config, const Planes& planes, ConstTensor q, ConstTensor k,
                       ConstTensor v, MutTensor o, const CpuOptions& options) {
    const State incoming = config.causal ? zero_state(config, q.shape()) : key_state(config, planes, k, v, options);
    forward(config, planes, q, k, v, incoming, o, options);
}

double attention_backward(const AttentionConfig& config, const Planes& planes, ConstTensor q, ConstTensor k,
                          ConstTensor v, ConstTensor dout, MutTensor dq, MutTensor dk, MutTensor dv,
                          const CpuOptions& options) {
    const State incoming = config.causal ? zero_state(config, q.shape()) : key_state(config, planes, k, v, options);
    const State incoming_backward = config.causal ? zero_state(config, q.shape())
                                                  : query_state(config, planes, q, k, v, dout, incoming, options);
    return backward(config, planes, q, k, v, dout, incoming, incoming_backward, dq, dk, dv, options);
}

}  // namespace racesp
