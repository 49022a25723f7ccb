// Token-local layers against central finite differences in double precision (h = 1e-6,
// tolerance 1e-7 absolute + 1e-6 relative), on small random problems.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "gemm.hpp"
#include "layers.hpp"

namespace racesp::model {
namespace {

std::vector<double> random_vector(std::size_t n, std::uint32_t seed, double scale = 1.0) {
    std::mt19937 gen(seed);
    std::normal_distribution<double> normal(0.0, scale);
    std::vector<double> v(n);
    for (double& x : v) x = normal(gen);
    return v;
}

// Loss = sum(w * f(input)) for fixed random weights w; returns the central difference of the
// loss with respect to every entry of `input`.
std::vector<double> numeric_gradient(std::vector<double>& input, const std::function<double()>& loss) {
    const double h = 1e-6;
    std::vector<double> grad(input.size());
    for (std::size_t i = 0; i < input.size(); ++i) {
        const double saved = input[i];
        input[i] = saved + h;
        const double up = loss();
        input[i] = saved - h;
        const double down = loss();
        input[i] = saved;
        grad[i] = (up - down) / (2 * h);
    }
    return grad;
}

void expect_close(const std::vector<double>& analytic, const std::vector<double>& numeric) {
    ASSERT_EQ(analytic.size(), numeric.size());
    for (std::size_t i = 0; i < analytic.size(); ++i)
        EXPECT_NEAR(analytic[i], numeric[i], 1e-7 + 1e-6 * std::abs(numeric[i])) << "index " << i;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
    double s = 0;
    for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
    return s;
}

TEST(Layers, RmsNorm) {
    const std::int64_t n = 3, c = 5;
    std::vector<double> x = random_vector(n * c, 1), g = random_vector(c, 2), w = random_vector(n * c, 3);
    std::vector<double> y(n * c), inv(n);
    auto loss = [&] {
        rmsnorm_forward(n, c, x.data(), g.data(), y.data(), inv.data());
        return dot(w, y);
    };
    loss();
    std::vector<double> dx(n * c, 0.0), dg(c, 0.0);
    rmsnorm_backward(n, c, x.data(), g.data(), inv.data(), w.data(), dx.data(), dg.data());
    expect_close(dx, numeric_gradient(x, loss));
    expect_close(dg, numeric_gradient(g, loss));
}

TEST(Layers, Gelu) {
    std::vector<double> u = random_vector(20, 4, 2.0), w = random_vector(20, 5), y(20);
    auto loss = [&] {
        gelu_forward(20, u.data(), y.data());
        return dot(w, y);
    };
    std::vector<double> du = w;
    gelu_backward(20, u.data(), du.data());
    expect_close(du, numeric_gradient(u, loss));
    EXPECT_NEAR(gelu(1.0), 0.8411919906082768, 1e-12);  // the tanh form at 1
}

TEST(Layers, CrossEntropy) {
    const std::int64_t n = 4, v = 7;
    std::vector<double> logits = random_vector(n * v, 6, 3.0);
    std::vector<std::int32_t> targets = {0, 6, 3, 3};
    const double scale = 0.25;
    auto loss = [&] {
        std::vector<double> copy = logits;
        return scale * cross_entropy(n, v, copy.data(), targets.data(), scale);
    };
    std::vector<double> grad = logits;
    const double value = cross_entropy(n, v, grad.data(), targets.data(), scale);
    expect_close(grad, numeric_gradient(logits, loss));
    // Uniform logits: log v per token.
    std::vector<double> flat(n * v, 0.5);
    EXPECT_NEAR(cross_entropy(n, v, flat.data(), targets.data(), 1.0), 4 * std::log(7.0), 1e-12);
    EXPECT_GT(value, 0);
}

TEST(Layers, EmbeddingAndGemm) {
    const std::int64_t n = 4, c = 3, vocab = 5;
    std::vector<double> table = random_vector(vocab * c, 7), w = random_vector(n * c, 8), x(n * c);
    std::vector<std::int32_t> tokens = {1, 4, 1, 0};
    auto loss = [&] {
        embedding_forward(n, c, table.data(), tokens.data(), x.data());
        return dot(w, x);
    };
    std::vector<double> dtable(vocab * c, 0.0);
    embedding_backward(n, c, tokens.data(), w.data(), dtable.data());
    expect_close(dtable, numeric_gradient(table, loss));

    // y = a b^T and its two gradients, through the same gemm calls the model makes.
    const std::int64_t m = 3, k = 4, p = 2;
    std::vector<double> a = random_vector(m * k, 9), b = random_vector(p * k, 10), wy = random_vector(m * p, 11),
                        y(m * p);
    auto product = [&] {
        gemm(false, true, m, p, k, 1.0, a.data(), b.data(), 0.0, y.data());
        return dot(wy, y);
    };
    std::vector<double> da(m * k), db(p * k);
    gemm(false, false, m, k, p, 1.0, wy.data(), b.data(), 0.0, da.data());  // dA = dY B
    gemm(true, false, p, k, m, 1.0, wy.data(), a.data(), 0.0, db.data());   // dB = dY^T A
    expect_close(da, numeric_gradient(a, product));
    expect_close(db, numeric_gradient(b, product));
}

}  // namespace
}  // namespace racesp::model
