// The token-local layers of the model, forward and backward, written out by hand. Templates on
// the element type so that the tests can check the gradients in double precision against
// central finite differences; the model uses float. Rows are tokens: x is [n, c] row-major.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace racesp::model {

constexpr double rms_eps = 1e-6;

// Loops over rows run on OpenMP threads; sums over rows (dg, the loss) are taken in a fixed
// order afterwards, so results do not depend on the thread count or schedule.

// y = x / r * g with r = sqrt(mean(x^2) + eps) per row; stores 1/r per row for the backward.
template <class T>
void rmsnorm_forward(std::int64_t n, std::int64_t c, const T* x, const T* g, T* y, T* inv_rms) {
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) {
        const T* xi = x + i * c;
        double sum = 0;
        for (std::int64_t j = 0; j < c; ++j) sum += double(xi[j]) * double(xi[j]);
        const T inv = T(1.0 / std::sqrt(sum / double(c) + rms_eps));
        inv_rms[i] = inv;
        for (std::int64_t j = 0; j < c; ++j) y[i * c + j] = xi[j] * inv * g[j];
    }
}

// dx += dL/dx; dg += dL/dg. With a = g * dy: dx = a / r - x * sum(a * x) / (c r^3).
template <class T>
void rmsnorm_backward(std::int64_t n, std::int64_t c, const T* x, const T* g, const T* inv_rms, const T* dy, T* dx,
                      T* dg) {
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) {
        const T* xi = x + i * c;
        const T* dyi = dy + i * c;
        const T inv = inv_rms[i];
        double dot = 0;
        for (std::int64_t j = 0; j < c; ++j) dot += double(g[j] * dyi[j]) * double(xi[j]);
        const T coef = T(dot / double(c)) * inv * inv * inv;
        for (std::int64_t j = 0; j < c; ++j) dx[i * c + j] += g[j] * dyi[j] * inv - xi[j] * coef;
    }
    for (std::int64_t i = 0; i < n; ++i)
        for (std::int64_t j = 0; j < c; ++j) dg[j] += dy[i * c + j] * x[i * c + j] * inv_rms[i];
}

// GELU, tanh form: 0.5 u (1 + tanh(k (u + 0.044715 u^3))), k = sqrt(2/pi).
template <class T>
T gelu(T u) {
    const T k = T(0.7978845608028654);
    return T(0.5) * u * (T(1) + std::tanh(k * (u + T(0.044715) * u * u * u)));
}

template <class T>
T gelu_derivative(T u) {
    const T k = T(0.7978845608028654);
    const T t = std::tanh(k * (u + T(0.044715) * u * u * u));
    return T(0.5) * (T(1) + t) + T(0.5) * u * (T(1) - t * t) * k * (T(1) + T(3 * 0.044715) * u * u);
}

template <class T>
void gelu_forward(std::int64_t count, const T* u, T* y) {
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < count; ++i) y[i] = gelu(u[i]);
}

// du = dy * gelu'(u), in place over dy.
template <class T>
void gelu_backward(std::int64_t count, const T* u, T* dy) {
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < count; ++i) dy[i] *= gelu_derivative(u[i]);
}

// Cross-entropy of logits [n, v] against targets: returns the sum over rows of
// -log softmax(logits)[target] (in double) and overwrites logits with
// scale * (softmax - onehot), the gradient of scale * that sum.
template <class T>
double cross_entropy(std::int64_t n, std::int64_t v, T* logits, const std::int32_t* targets, double scale) {
    std::vector<double> row_loss(static_cast<std::size_t>(n));
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) {
        T* li = logits + i * v;
        T top = li[0];
        for (std::int64_t j = 1; j < v; ++j) top = li[j] > top ? li[j] : top;
        double sum = 0;
        for (std::int64_t j = 0; j < v; ++j) sum += std::exp(double(li[j] - top));
        const double log_sum = std::log(sum) + double(top);
        row_loss[static_cast<std::size_t>(i)] = log_sum - double(li[targets[i]]);
        for (std::int64_t j = 0; j < v; ++j) li[j] = T(std::exp(double(li[j]) - log_sum) * scale);
        li[targets[i]] -= T(scale);
    }
    double total = 0;
    for (double l : row_loss) total += l;
    return total;
}

// Rows of the embedding table [v, c] for tokens, and the gradient scattered back.
template <class T>
void embedding_forward(std::int64_t n, std::int64_t c, const T* table, const std::int32_t* tokens, T* x) {
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < n; ++i)
        for (std::int64_t j = 0; j < c; ++j) x[i * c + j] = table[std::int64_t(tokens[i]) * c + j];
}

template <class T>
void embedding_backward(std::int64_t n, std::int64_t c, const std::int32_t* tokens, const T* dx, T* dtable) {
    for (std::int64_t i = 0; i < n; ++i)
        for (std::int64_t j = 0; j < c; ++j) dtable[std::int64_t(tokens[i]) * c + j] += dx[i * c + j];
}

}  // namespace racesp::model
