// Splitting a sequence into contiguous shards and combining only their states by hand
// (key_state / query_state, summed the way the MPI layer's Allreduce and (reverse) Exscan
// will) gives the single-process attention_forward / attention_backward result.
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>

#include "compare.hpp"
#include "problem.hpp"

namespace racesp::test {
namespace {

constexpr double kTol = 1e-6;

// Tokens [begin, end) of every batch entry, as a problem of its own.
Problem take_tokens(const Problem& p, std::int64_t begin, std::int64_t end) {
    Problem s{p.config, p.shape, {}, {}, {}, {}};
    s.shape.tokens = end - begin;
    const std::int64_t row = p.shape.heads * p.shape.dim;
    auto copy = [&](const std::vector<float>& from, std::vector<float>& to) {
        for (std::int64_t b = 0; b < p.shape.batch; ++b)
            to.insert(to.end(), from.begin() + (b * p.shape.tokens + begin) * row,
                      from.begin() + (b * p.shape.tokens + end) * row);
    };
    copy(p.q, s.q);
    copy(p.k, s.k);
    copy(p.v, s.v);
    copy(p.dout, s.dout);
    return s;
}

// Writes a shard's [B, end - begin, H, D] result into the whole sequence's tensor.
void put_tokens(const Shape& whole, std::int64_t begin, std::int64_t end,
                const std::vector<float>& part, std::vector<float>& to) {
    const std::int64_t row = whole.heads * whole.dim, n = end - begin;
    for (std::int64_t b = 0; b < whole.batch; ++b)
        std::copy(part.begin() + b * n * row, part.begin() + (b + 1) * n * row,
                  to.begin() + (b * whole.tokens + begin) * row);
}

struct Sharded {
    std::vector<float> o, dq, dk, dv;
    double dbeta = 0;
};

// Runs forward and backward shard by shard; `bounds` are the shard edges 0 = e0 <= ... <= T.
Sharded run_sharded(const Problem& p, const Planes& planes, const std::vector<std::int64_t>& bounds) {
    const AttentionConfig& c = p.config;
    const std::size_t n = bounds.size() - 1;
    std::vector<Problem> shards;
    for (std::size_t s = 0; s < n; ++s) shards.push_back(take_tokens(p, bounds[s], bounds[s + 1]));

    // Forward: S_in = Allreduce (non-causal) or Exscan (causal) of the local key totals.
    std::vector<State> keys, s_in;
    for (const auto& sh : shards) keys.push_back(key_state(c, planes, sh.ck(), sh.cv()));
    for (std::size_t s = 0; s < n; ++s) {
        State in = zero_state(c, shards[s].shape);
        for (std::size_t r = 0; r < n; ++r)
            if (!c.causal || r < s) in += keys[r];
        s_in.push_back(std::move(in));
    }
    Sharded out{std::vector<float>(p.q.size(), NAN), std::vector<float>(p.q.size(), NAN),
                std::vector<float>(p.q.size(), NAN), std::vector<float>(p.q.size(), NAN), 0};
    for (std::size_t s = 0; s < n; ++s) {
        const auto& sh = shards[s];
        std::vector<float> o(sh.q.size(), NAN);
        forward(c, planes, sh.cq(), sh.ck(), sh.cv(), s_in[s], MutTensor{o.data(), sh.shape});
        put_tokens(p.shape, bounds[s], bounds[s + 1], o, out.o);
    }

    // Backward: U_in = Allreduce (non-causal) or reverse Exscan (causal) of the query totals.
    std::vector<State> queries;
    for (std::size_t s = 0; s < n; ++s) {
        const auto& sh = shards[s];
        queries.push_back(query_state(c, planes, sh.cq(), sh.ck(), sh.cv(), sh.cdout(), s_in[s]));
    }
    for (std::size_t s = 0; s < n; ++s) {
        const auto& sh = shards[s];
        State u_in = zero_state(c, sh.shape);
        for (std::size_t r = 0; r < n; ++r)
            if (!c.causal || r > s) u_in += queries[r];
        std::vector<float> dq(sh.q.size(), NAN), dk(sh.q.size(), NAN), dv(sh.q.size(), NAN);
        out.dbeta += backward(c, planes, sh.cq(), sh.ck(), sh.cv(), sh.cdout(), s_in[s], u_in,
                              MutTensor{dq.data(), sh.shape}, MutTensor{dk.data(), sh.shape},
                              MutTensor{dv.data(), sh.shape});
        put_tokens(p.shape, bounds[s], bounds[s + 1], dq, out.dq);
        put_tokens(p.shape, bounds[s], bounds[s + 1], dk, out.dk);
        put_tokens(p.shape, bounds[s], bounds[s + 1], dv, out.dv);
    }
    return out;
}

struct ShardCase {
    Normalization norm;
    bool causal;
};

std::ostream& operator<<(std::ostream& os, const ShardCase& c) {
    return os << to_string(c.norm) << (c.causal ? " causal" : " full");
}

class Shards : public ::testing::TestWithParam<ShardCase> {};

TEST_P(Shards, ShardedStatesReproduceSingleProcess) {
    AttentionConfig config;
    config.normalization = GetParam().norm;
    config.causal = GetParam().causal;
    config.planes = 3;
    config.tables = 3;
    config.beta = 1.25;
    config.seed = 9;
    const Shape shape{2, 41, 2, 7};
    const auto p = make_problem(config, shape, 71);
    const Planes planes(config, shape.heads, shape.dim);
    const auto o_ref = library_forward(p, planes);
    const auto g_ref = library_backward(p, planes);

    // Two shards (even, uneven), three with an empty one, four, single tokens at the edges.
    const std::vector<std::vector<std::int64_t>> splits = {
        {0, 20, 41}, {0, 13, 41}, {0, 20, 20, 41}, {0, 0, 30, 41}, {0, 11, 21, 31, 41},
        {0, 1, 40, 41}, {0, 41, 41}};
    for (const auto& bounds : splits) {
        const auto s = run_sharded(p, planes, bounds);
        std::ostringstream where;
        where << "shards at";
        for (auto b : bounds) where << ' ' << b;
        EXPECT_LT(max_relative_error(s.o, o_ref), kTol) << where.str();
        EXPECT_LT(relative_error(s.dq, g_ref.dq), kTol) << where.str();
        EXPECT_LT(relative_error(s.dk, g_ref.dk), kTol) << where.str();
        EXPECT_LT(relative_error(s.dv, g_ref.dv), kTol) << where.str();
        EXPECT_NEAR(s.dbeta, g_ref.dbeta, kTol * std::abs(g_ref.dbeta)) << where.str();
    }
}

// One shard with the single-process incoming states is exactly what attention_forward and
// attention_backward compute (attention.hpp: "do exactly that").
TEST_P(Shards, OneShardIsBitIdenticalToSingleProcess) {
    AttentionConfig config;
    config.normalization = GetParam().norm;
    config.causal = GetParam().causal;
    config.planes = 2;
    config.tables = 4;
    const Shape shape{1, 33, 3, 5};
    const auto p = make_problem(config, shape, 72);
    const Planes planes(config, shape.heads, shape.dim);
    const auto o_ref = library_forward(p, planes);
    const auto g_ref = library_backward(p, planes);
    const auto s = run_sharded(p, planes, {0, shape.tokens});
    EXPECT_EQ(s.o, o_ref);
    EXPECT_EQ(s.dq, g_ref.dq);
    EXPECT_EQ(s.dk, g_ref.dk);
    EXPECT_EQ(s.dv, g_ref.dv);
    // dbeta to rounding only: its bitwise reproducibility is Invariance.RepeatedCallsAreBitIdentical.
    EXPECT_NEAR(s.dbeta, g_ref.dbeta, 1e-12 * std::abs(g_ref.dbeta));
}

INSTANTIATE_TEST_SUITE_P(Modes, Shards,
                         ::testing::Values(ShardCase{Normalization::kernel, false},
                                           ShardCase{Normalization::kernel, true},
                                           ShardCase{Normalization::bucket, false},
                                           ShardCase{Normalization::bucket, true}),
                         [](const ::testing::TestParamInfo<ShardCase>& i) {
                             return std::string(to_string(i.param.norm)) +
                                    (i.param.causal ? "_causal" : "_full");
                         });

}  // namespace
}  // namespace racesp::test
