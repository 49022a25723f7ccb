// Invalid configurations throw racesp::ConfigError and mismatched shapes racesp::ShapeError,
// from validate() and from every entry point, with a message that names the problem.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>

#include "problem.hpp"
#include "racesp/errors.hpp"

namespace racesp::test {
namespace {

// Runs f, expects exception E whose message contains `needle`.
template <class E>
void expect_error(const std::function<void()>& f, const std::string& needle, const std::string& what) {
    try {
        f();
        ADD_FAILURE() << what << ": no exception";
    } catch (const E& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
            << what << ": message '" << e.what() << "' does not mention '" << needle << "'";
    } catch (const std::exception& e) {
        ADD_FAILURE() << what << ": wrong exception type: " << e.what();
    }
}

struct BadConfig {
    std::string what, needle;
    std::function<void(AttentionConfig&)> set;
};

std::vector<BadConfig> bad_configs() {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const double inf = std::numeric_limits<double>::infinity();
    return {
        {"P = 0", "planes", [](AttentionConfig& c) { c.planes = 0; }},
        {"P = 11", "planes", [](AttentionConfig& c) { c.planes = 11; }},
        {"P = -3", "planes", [](AttentionConfig& c) { c.planes = -3; }},
        {"L = 0", "tables", [](AttentionConfig& c) { c.tables = 0; }},
        {"L = -1", "tables", [](AttentionConfig& c) { c.tables = -1; }},
        {"beta = 0", "beta", [](AttentionConfig& c) { c.beta = 0; }},
        {"beta < 0", "beta", [](AttentionConfig& c) { c.beta = -0.5; }},
        {"beta = NaN", "beta", [nan](AttentionConfig& c) { c.beta = nan; }},
        {"beta = inf", "beta", [inf](AttentionConfig& c) { c.beta = inf; }},
        {"eps < 0", "eps", [](AttentionConfig& c) { c.eps = -1e-9; }},
        {"eps = NaN", "eps", [nan](AttentionConfig& c) { c.eps = nan; }},
    };
}

TEST(Errors, ValidateRejectsEachBadValue) {
    for (const auto& bad : bad_configs()) {
        AttentionConfig config;
        bad.set(config);
        expect_error<ConfigError>([&] { config.validate(); }, bad.needle, bad.what);
        expect_error<ConfigError>([&] { Planes(config, 1, 4); }, bad.needle, "Planes, " + bad.what);
    }
}

TEST(Errors, ValidateAcceptsTheEdgesOfTheRanges) {
    for (int P : {1, 10}) {
        AttentionConfig config;
        config.planes = P;
        config.tables = 1;
        config.eps = 0;
        config.beta = 1e-12;
        EXPECT_NO_THROW(config.validate()) << "P=" << P;
    }
}

// The attention entry points validate the configuration they are given, even when the planes
// were made from a valid one.
TEST(Errors, EntryPointsRejectBadConfig) {
    AttentionConfig good;
    good.planes = 2;
    good.tables = 2;
    const Shape shape{1, 3, 1, 4};
    const auto p = make_problem(good, shape, 1);
    const Planes planes(good, 1, 4);
    std::vector<float> o(p.q.size()), dq(o.size()), dk(o.size()), dv(o.size());
    const MutTensor to{o.data(), shape}, tdq{dq.data(), shape}, tdk{dk.data(), shape},
        tdv{dv.data(), shape};
    for (const auto& bad : bad_configs()) {
        if (bad.needle != "beta" && bad.needle != "eps") continue;  // keep P, L, hence the state shape
        AttentionConfig config = good;
        bad.set(config);
        const State s = zero_state(good, shape);
        expect_error<ConfigError>([&] { attention_forward(config, planes, p.cq(), p.ck(), p.cv(), to); },
                                  bad.needle, "attention_forward, " + bad.what);
        expect_error<ConfigError>(
            [&] { attention_backward(config, planes, p.cq(), p.ck(), p.cv(), p.cdout(), tdq, tdk, tdv); },
            bad.needle, "attention_backward, " + bad.what);
        expect_error<ConfigError>([&] { key_state(config, planes, p.ck(), p.cv()); }, bad.needle,
                                  "key_state, " + bad.what);
        expect_error<ConfigError>([&] { forward(config, planes, p.cq(), p.ck(), p.cv(), s, to); },
                                  bad.needle, "forward, " + bad.what);
        expect_error<ConfigError>(
            [&] { query_state(config, planes, p.cq(), p.ck(), p.cv(), p.cdout(), s); }, bad.needle,
            "query_state, " + bad.what);
        expect_error<ConfigError>(
            [&] { backward(config, planes, p.cq(), p.ck(), p.cv(), p.cdout(), s, s, tdq, tdk, tdv); },
            bad.needle, "backward, " + bad.what);
    }
}

TEST(Errors, ParseNormalization) {
    EXPECT_EQ(parse_normalization("kernel"), Normalization::kernel);
    EXPECT_EQ(parse_normalization("bucket"), Normalization::bucket);
    EXPECT_EQ(parse_normalization(to_string(Normalization::bucket)), Normalization::bucket);
    expect_error<ConfigError>([] { parse_normalization("softmax"); }, "softmax", "normalization 'softmax'");
    expect_error<ConfigError>([] { parse_normalization(""); }, "normalization", "empty normalization");
}

// Tensors for the shape tests: q, k, v, dout and outputs of a given shape each.
struct Buffers {
    explicit Buffers(const Shape& s)
        : shape(s), data(static_cast<std::size_t>(std::max<std::int64_t>(s.elements(), 1)), 0.25f) {}
    ConstTensor in() const { return {data.data(), shape}; }
    MutTensor out() { return {data.data(), shape}; }
    Shape shape;
    std::vector<float> data;
};

TEST(Errors, MismatchedShapesThrowShapeError) {
    AttentionConfig config;
    config.planes = 2;
    config.tables = 2;
    const Shape good{2, 5, 3, 4};
    const Planes planes(config, 3, 4);
    Buffers q(good), k(good), v(good), dout(good), o(good), dq(good), dk(good), dv(good);

    // Each names the tensor that differs and how.
    const std::vector<std::pair<std::string, Shape>> odd = {
        {"tokens differ", {2, 6, 3, 4}}, {"batch differs", {1, 5, 3, 4}},
        {"heads differ", {2, 5, 2, 4}},  {"dim differs", {2, 5, 3, 5}}};
    for (const auto& [what, shape] : odd)
        for (int which = 0; which < 3; ++which) {
            Buffers x(shape);
            const ConstTensor tq = which == 0 ? x.in() : q.in(), tk = which == 1 ? x.in() : k.in(),
                              tv = which == 2 ? x.in() : v.in();
            const std::string label = std::string("qkv").substr(static_cast<std::size_t>(which), 1) + " " + what;
            EXPECT_THROW(check_shapes(planes, tq, tk, tv), ShapeError) << label;
            EXPECT_THROW(attention_forward(config, planes, tq, tk, tv, o.out()), ShapeError) << label;
            EXPECT_THROW(attention_backward(config, planes, tq, tk, tv, dout.in(), dq.out(), dk.out(), dv.out()),
                         ShapeError)
                << label;
        }
    // q, k, v agree with each other but not with the planes.
    for (const Shape& s : {Shape{2, 5, 2, 4}, Shape{2, 5, 4, 4}, Shape{2, 5, 3, 3}, Shape{2, 5, 3, 8}}) {
        Buffers a(s), b(s), c(s), out(s);
        EXPECT_THROW(check_shapes(planes, a.in(), b.in(), c.in()), ShapeError) << s.str();
        EXPECT_THROW(attention_forward(config, planes, a.in(), b.in(), c.in(), out.out()), ShapeError) << s.str();
        EXPECT_THROW(key_state(config, planes, b.in(), c.in()), ShapeError) << s.str();
    }
    // Outputs and dout of the wrong shape.
    for (const auto& [what, shape] : odd) {
        Buffers x(shape);
        EXPECT_THROW(attention_forward(config, planes, q.in(), k.in(), v.in(), x.out()), ShapeError) << "o " << what;
        EXPECT_THROW(attention_backward(config, planes, q.in(), k.in(), v.in(), x.in(), dq.out(), dk.out(), dv.out()),
                     ShapeError)
            << "dout " << what;
        EXPECT_THROW(attention_backward(config, planes, q.in(), k.in(), v.in(), dout.in(), x.out(), dk.out(), dv.out()),
                     ShapeError)
            << "dq " << what;
        EXPECT_THROW(attention_backward(config, planes, q.in(), k.in(), v.in(), dout.in(), dq.out(), x.out(), dv.out()),
                     ShapeError)
            << "dk " << what;
        EXPECT_THROW(attention_backward(config, planes, q.in(), k.in(), v.in(), dout.in(), dq.out(), dk.out(), x.out()),
                     ShapeError)
            << "dv " << what;
    }
    // The shape error names both shapes.
    Buffers x({2, 5, 3, 5});
    expect_error<ShapeError>([&] { check_shapes(planes, q.in(), x.in(), v.in()); }, "[2, 5, 3, 5]",
                             "k dim differs");
}

// States of the wrong size for the tensors or the configuration.
TEST(Errors, MismatchedStatesThrowShapeError) {
    AttentionConfig config;
    config.planes = 2;
    config.tables = 2;
    const Shape shape{2, 5, 3, 4};
    const Planes planes(config, 3, 4);
    Buffers q(shape), o(shape), dq(shape), dk(shape), dv(shape);
    AttentionConfig more_tables = config;
    more_tables.tables = 3;
    const State good = zero_state(config, shape);
    const State wrong[] = {zero_state(config, {1, 5, 3, 4}), zero_state(config, {2, 5, 2, 4}),
                           zero_state(config, {2, 5, 3, 5}), zero_state(more_tables, shape), State{}};
    for (const auto& s : wrong) {
        EXPECT_THROW(forward(config, planes, q.in(), q.in(), q.in(), s, o.out()), ShapeError);
        EXPECT_THROW(query_state(config, planes, q.in(), q.in(), q.in(), q.in(), s), ShapeError);
        EXPECT_THROW(backward(config, planes, q.in(), q.in(), q.in(), q.in(), s, good, dq.out(), dk.out(), dv.out()),
                     ShapeError);
        EXPECT_THROW(backward(config, planes, q.in(), q.in(), q.in(), q.in(), good, s, dq.out(), dk.out(), dv.out()),
                     ShapeError);
        State sum = good;
        EXPECT_THROW(sum += s, ShapeError);
    }
}

// Planes made for another P or L than the configuration would be read out of bounds.
TEST(Errors, PlanesFromAnotherConfigurationAreRejected) {
    AttentionConfig config;
    config.planes = 3;
    config.tables = 2;
    const Shape shape{1, 4, 1, 4};
    const auto p = make_problem(config, shape, 2);
    std::vector<float> o(p.q.size());
    for (auto [P, L] : {std::pair{2, 2}, std::pair{4, 2}, std::pair{3, 1}, std::pair{3, 3}}) {
        AttentionConfig other = config;
        other.planes = P;
        other.tables = L;
        const Planes planes(other, 1, 4);
        ASSERT_THROW(attention_forward(config, planes, p.cq(), p.ck(), p.cv(), MutTensor{o.data(), shape}), Error)
            << "planes made for P=" << P << " L=" << L;
    }
}

// Every extent but T must be positive (attention.hpp, check_shapes).
TEST(Errors, EmptyBatchHeadsOrDimThrowShapeError) {
    AttentionConfig config;
    config.planes = 2;
    config.tables = 1;
    const Planes planes(config, 1, 4);
    for (const Shape& s : {Shape{0, 5, 1, 4}, Shape{1, 5, 0, 4}, Shape{1, 5, 1, 0}, Shape{-1, 5, 1, 4},
                           Shape{1, -2, 1, 4}}) {
        Buffers a(s), out(s);
        bool rejected = false;
        try {
            check_shapes(planes, a.in(), a.in(), a.in());
        } catch (const ShapeError&) {
            rejected = true;
        }
        EXPECT_TRUE(rejected) << "check_shapes accepts " << s.str();
        // Shapes the check lets through are not fed to the kernels (batch 0 divides by zero).
        if (rejected) {
            EXPECT_THROW(attention_forward(config, planes, a.in(), a.in(), a.in(), out.out()), ShapeError) << s.str();
        }
    }
    EXPECT_THROW(Planes(config, 0, 4), ShapeError);
    EXPECT_THROW(Planes(config, 1, 0), ShapeError);
}

}  // namespace
}  // namespace racesp::test
