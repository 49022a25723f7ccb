// CPU RACE attention: forward, backward and the state totals of one shard (see attention.hpp).
//
// Work is split into items of (batch entry, head, chunk of tokens) spread over OpenMP threads.
// A chunk is taken in blocks of tokens (block_math.hpp): every sum over tokens is float32 within
// a block, and block totals combine in float64, so a 10^8-token shard keeps its digits. Causal
// passes first total each chunk, scan the chunk totals in float64, then sweep each chunk from its
// starting state.
#include <omp.h>

#include <algorithm>
#include <string>
#include <vector>

#include "block_math.hpp"
#include "racesp/attention.hpp"
#include "racesp/errors.hpp"

namespace racesp {

namespace {

using core::Block;
using core::Geometry;
using core::MutRows;
using core::Rows;
using core::State32;

// Pointers to one (batch entry, head) of the local shard; token t's vector starts at t * stride.
struct Sequence {
    const float* planes = nullptr;
    const float *q = nullptr, *k = nullptr, *v = nullptr, *dout = nullptr;
    float *o = nullptr, *dq = nullptr, *dk = nullptr, *dv = nullptr;
    std::int64_t stride = 0;

    Rows rows(const float* base, std::int64_t t) const { return {base + t * stride, stride}; }
    MutRows rows(float* base, std::int64_t t) const { return {base + t * stride, stride}; }
};

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
        p.block = std::min(p.block, p.chunk);
    } else {
        // About four items per thread, so dynamic scheduling evens out the load.
        const std::int64_t want = 4 * omp_get_max_threads();
        const std::int64_t per_sequence = std::max<std::int64_t>(1, (want + p.sequences() - 1) / p.sequences());
        p.chunk = std::max(p.block, (s.tokens + per_sequence - 1) / per_sequence);
    }
    p.chunks = s.tokens == 0 ? 0 : (s.tokens + p.chunk - 1) / p.chunk;
    // Blocks hold block^2 scratch: never larger than the longest chunk.
    p.block = std::max<std::int64_t>(1, std::min(p.block, std::min(p.chunk, s.tokens)));
    return p;
}

void widen_add(double* dst, const std::vector<float>& src) {
    for (std::size_t i = 0; i < src.size(); ++i) dst[i] += src[i];
}

// ---- passes over one chunk [t0, t1) of one sequence ----

// Adds sum_j phi(k_j) (x) [v_j, 1] over the chunk to `total` (float64).
void chunk_key_total(const Geometry& g, const Plan& p, const Sequence& s, std::int64_t t0, std::int64_t t1,
                     double* total) {
    Block block(g, p.block, s.planes);
    std::vector<float> sum(g.state_size());
    for (std::int64_t b0 = t0; b0 < t1; b0 += p.block) {
        block.load_keys(s.rows(s.k, b0), s.rows(s.v, b0), std::min(p.block, t1 - b0));
        std::fill(sum.begin(), sum.end(), 0.0f);
        block.add_key_total(sum.data());
        widen_add(total, sum);
    }
}

// Runs visit(block, S) for each block of the chunk, first to last, with the keys and queries loaded
// and S the float32 forward state before the block: `start` plus (causal) the earlier blocks' keys.
template <class Visit>
void sweep_blocks(const Geometry& g, const Plan& p, const Sequence& s, std::int64_t t0, std::int64_t t1,
                  const double* start, Visit&& visit) {
    Block block(g, p.block, s.planes);
    std::vector<double> state(start, start + g.state_size());
    std::vector<float> sum(g.state_size());
    State32 state32(g.features, g.width);
    state32.assign(state.data());
    for (std::int64_t b0 = t0; b0 < t1; b0 += p.block) {
        const std::int64_t n = std::min(p.block, t1 - b0);
        if (g.causal) block.load_keys(s.rows(s.k, b0), s.rows(s.v, b0), n);  // keys within the block
        block.load_queries(s.rows(s.q, b0), n);
        visit(block, b0, state32);
        if (g.causal) {
            std::fill(sum.begin(), sum.end(), 0.0f);
            block.add_key_total(sum.data());
            widen_add(state.data(), sum);
            state32.assign(state.data());
        }
    }
}

void chunk_forward(const Geometry& g, const Plan& p, const Sequence& s, std::int64_t t0, std::int64_t t1,
                   const double* start) {
    sweep_blocks(g, p, s, t0, t1, start, [&](Block& block, std::int64_t b0, const State32& S) {
        block.forward(S, s.rows(s.o, b0));
    });
}

// Adds the chunk's queries' U terms to `total` (float64).
void chunk_query_total(const Geometry& g, const Plan& p, const Sequence& s, std::int64_t t0, std::int64_t t1,
                       const double* start, double* total) {
    std::vector<float> sum(g.state_size());
    sweep_blocks(g, p, s, t0, t1, start, [&](Block& block, std::int64_t b0, const State32& S) {
        block.query_terms(S, s.rows(s.dout, b0), false);
        std::fill(sum.begin(), sum.end(), 0.0f);
        block.add_query_total(sum.data());
        widen_add(total, sum);
    });
}

// Gradients of one chunk. `S_end`: forward state after the chunk's last key; `U_end`: backward
// state of the queries after the chunk (both the same for every chunk when not causal). Blocks are
// taken last to first: a block's starting forward state is S_end minus its key total, and the
// backward state after it is U_end plus the later blocks' query terms.
double chunk_backward(const Geometry& g, const Plan& p, const Sequence& s, std::int64_t t0, std::int64_t t1,
                      const double* S_end_in, const double* U_end_in) {
    const std::int64_t n = g.state_size();
    std::vector<double> S(S_end_in, S_end_in + n), U(U_end_in, U_end_in + n);
    std::vector<float> sum(n);
    State32 S32(g.features, g.width), U32(g.features, g.width);
    S32.assign(S.data());
    U32.assign(U.data());
    Block block(g, p.block, s.planes);
    double dbeta = 0.0;
    const std::int64_t blocks = (t1 - t0 + p.block - 1) / p.block;
    for (std::int64_t bi = blocks - 1; bi >= 0; --bi) {
        const std::int64_t b0 = t0 + bi * p.block;
        const std::int64_t tokens = std::min(p.block, t1 - b0);
        block.load_keys(s.rows(s.k, b0), s.rows(s.v, b0), tokens);
        block.load_queries(s.rows(s.q, b0), tokens);
        if (g.causal) {
            std::fill(sum.begin(), sum.end(), 0.0f);
            block.add_key_total(sum.data());
            for (std::int64_t j = 0; j < n; ++j) S[j] -= sum[j];
            S32.assign(S.data());
        }
        dbeta += block.query_backward(S32, s.rows(s.dout, b0), s.rows(s.dq, b0));
        dbeta += block.key_backward(U32, s.rows(s.dk, b0), s.rows(s.dv, b0));
        if (g.causal) {
            std::fill(sum.begin(), sum.end(), 0.0f);
            block.add_query_total(sum.data());
            widen_add(U.data(), sum);
            U32.assign(U.data());
        }
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

// Per-sequence sums of per-chunk totals, as a State.
State sum_chunks(const AttentionConfig& config, const Shape& shape, const Plan& p, const std::vector<double>& totals) {
    State out = zero_state(config, shape);
    const std::int64_t n = out.block_size();
    for (std::int64_t seq = 0; seq < p.sequences(); ++seq) {
        double* dst = out.block(seq / p.heads, seq % p.heads);
        for (std::int64_t c = 0; c < p.chunks; ++c)
            for (std::int64_t j = 0; j < n; ++j) dst[j] += totals[(seq * p.chunks + c) * n + j];
    }
    return out;
}

// Turns per-chunk totals into per-chunk starting states in place: an exclusive scan seeded with
// `incoming`, first to last (forward) or last to first (reverse).
void scan_chunks(const Plan& p, std::int64_t n, const State& incoming, std::vector<double>& totals, bool reverse) {
#pragma omp parallel for
    for (std::int64_t seq = 0; seq < p.sequences(); ++seq) {
        const double* in = incoming.block(seq / p.heads, seq % p.heads);
        std::vector<double> running(in, in + n);
        for (std::int64_t i = 0; i < p.chunks; ++i) {
            double* chunk = &totals[(seq * p.chunks + (reverse ? p.chunks - 1 - i : i)) * n];
            for (std::int64_t j = 0; j < n; ++j) {
                const double add = chunk[j];
                chunk[j] = running[j];
                running[j] += add;
            }
        }
    }
}

// The forward state at the start of every chunk: the incoming state plus (causal) the keys of
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

void check_like(ConstTensor ref, ConstTensor t, const char* name) {
    if (!(t.shape() == ref.shape()))
        throw ShapeError(std::string(name) + " has shape " + t.shape().str() + ", expected " + ref.shape().str());
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
        throw ShapeError("q, k and v must have one shape; got q " + s.str() + ", k " + k.shape().str() + ", v " +
                         v.shape().str());
    if (s.batch < 1 || s.heads < 1 || s.dim < 1 || s.tokens < 0)
        throw ShapeError("tensors must have batch, heads and dim >= 1, got " + s.str());
    if (s.heads != planes.heads() || s.dim != planes.dim())
        throw ShapeError("tensors " + s.str() + " do not match planes made for " + std::to_string(planes.heads()) +
                         " heads of dim " + std::to_string(planes.dim()));
}

namespace {
// The configuration is valid, the planes were made from it, and the tensors fit both.
void check_inputs(const AttentionConfig& config, const Planes& planes, ConstTensor q, ConstTensor k, ConstTensor v) {
    config.validate();
    if (planes.tables() != config.tables || planes.planes_per_table() != config.planes)
        throw ShapeError("planes were made for L=" + std::to_string(planes.tables()) + ", P=" +
                         std::to_string(planes.planes_per_table()) + " but the configuration has L=" +
                         std::to_string(config.tables) + ", P=" + std::to_string(config.planes));
    check_shapes(planes, q, k, v);
}
}  // namespace

State zero_state(const AttentionConfig& config, const Shape& shape) {
    return State(shape.batch, shape.heads, config.features(), shape.dim);
}

State key_state(const AttentionConfig& config, const Planes& planes, ConstTensor k, ConstTensor v,
                const CpuOptions& options) {
    check_inputs(config, planes, k, k, v);
    const Geometry g(config, k.shape().dim);
    const Plan p = make_plan(k.shape(), options);
    return sum_chunks(config, k.shape(), p, chunk_key_totals(g, p, planes, k, v));
}

void forward(const AttentionConfig& config, const Planes& planes, ConstTensor q, ConstTensor k, ConstTensor v,
             const State& incoming, MutTensor o, const CpuOptions& options) {
    check_inputs(config, planes, q, k, v);
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

State query_state(const AttentionConfig& config, const Planes& planes, ConstTensor q, ConstTensor k,
                  ConstTensor v, ConstTensor dout, const State& incoming, const CpuOptions& options) {
    check_inputs(config, planes, q, k, v);
    check_like(q, dout, "dout");
    check_state(incoming, config, q.shape(), "incoming forward");
    const Geometry g(config, q.shape().dim);
    const Plan p = make_plan(q.shape(), options);
    const std::vector<double> starts = chunk_starts(g, p, planes, k, v, incoming);
    return sum_chunks(config, q.shape(), p, chunk_query_totals(g, p, planes, q, k, v, dout, starts));
}

double backward(const AttentionConfig& config, const Planes& planes, ConstTensor q, ConstTensor k, ConstTensor v,
                ConstTensor dout, const State& incoming, const State& incoming_backward, MutTensor dq,
                MutTensor dk, MutTensor dv, const CpuOptions& options) {
    check_inputs(config, planes, q, k, v);
    check_like(q, dout, "dout");
    check_like(q, dq, "dq");
    check_like(q, dk, "dk");
    check_like(q, dv, "dv");
    check_state(incoming, config, q.shape(), "incoming forward");
    check_state(incoming_backward, config, q.shape(), "incoming backward");
    const Geometry g(config, q.shape().dim);
    const Plan p = make_plan(q.shape(), options);
    const std::int64_t n = g.state_size();

    // Per chunk: the forward state after its last key and the backward state after its last query.
    std::vector<double> S_ends, U_ends;
    if (g.causal) {
        const std::vector<double> starts = chunk_starts(g, p, planes, k, v, incoming);
        U_ends = chunk_query_totals(g, p, planes, q, k, v, dout, starts);
        scan_chunks(p, n, incoming_backward, U_ends, true);
        // The state after chunk c is the start of chunk c + 1; after the last, its start plus its keys.
        S_ends.assign(starts.size(), 0.0);
        for (std::int64_t seq = 0; seq < p.sequences(); ++seq) {
            for (std::int64_t c = 0; c + 1 < p.chunks; ++c)
                std::copy_n(&starts[(seq * p.chunks + c + 1) * n], n, &S_ends[(seq * p.chunks + c) * n]);
            if (p.chunks == 0) continue;
            const std::int64_t last = seq * p.chunks + p.chunks - 1;
            std::copy_n(&starts[last * n], n, &S_ends[last * n]);
            Sequence s = sequence_of(planes, seq / p.heads, seq % p.heads, ConstTensor{}, k, v);
            chunk_key_total(g, p, s, p.chunk_begin(p.chunks - 1), p.tokens, &S_ends[last * n]);
        }
    }

    // Per-item parts, summed in item order afterwards so dbeta does not depend on the schedule.
    std::vector<double> dbeta_items(static_cast<std::size_t>(p.items()), 0.0);
#pragma omp parallel for schedule(dynamic)
    for (std::int64_t item = 0; item < p.items(); ++item) {
        const std::int64_t seq = item / p.chunks, c = item % p.chunks;
        const std::int64_t b = seq / p.heads, h = seq % p.heads;
        Sequence s = sequence_of(planes, b, h, q, k, v);
        s.dout = dout.row(b, 0, h);
        s.dq = dq.row(b, 0, h);
        s.dk = dk.row(b, 0, h);
        s.dv = dv.row(b, 0, h);
        const double* S_end = g.causal ? &S_ends[item * n] : incoming.block(b, h);
        const double* U_end = g.causal ? &U_ends[item * n] : incoming_backward.block(b, h);
        dbeta_items[item] = chunk_backward(g, p, s, p.chunk_begin(c), p.chunk_end(c), S_end, U_end);
    }
    double dbeta = 0.0;
    for (const double part : dbeta_items) dbeta += part;
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
