// A forward-mode dual number: value and one directional derivative, propagated exactly by the
// chain rule. The float64 reference is a template on its scalar so that running it on Dual gives
// exact derivatives of the reference forward, independent of the library's hand-written backward.
#pragma once

#include <cmath>

namespace racesp::test {

struct Dual {
    double v = 0;  // value
    double d = 0;  // derivative along the seeded direction

    constexpr Dual() = default;
    constexpr Dual(double value, double derivative = 0) : v(value), d(derivative) {}

    Dual& operator+=(const Dual& o) { v += o.v; d += o.d; return *this; }
    Dual& operator-=(const Dual& o) { v -= o.v; d -= o.d; return *this; }
    Dual& operator*=(const Dual& o) { d = d * o.v + v * o.d; v *= o.v; return *this; }
    Dual& operator/=(const Dual& o) { d = (d * o.v - v * o.d) / (o.v * o.v); v /= o.v; return *this; }
};

inline Dual operator+(Dual a, const Dual& b) { return a += b; }
inline Dual operator-(Dual a, const Dual& b) { return a -= b; }
inline Dual operator*(Dual a, const Dual& b) { return a *= b; }
inline Dual operator/(Dual a, const Dual& b) { return a /= b; }
inline Dual operator-(const Dual& a) { return {-a.v, -a.d}; }

inline Dual tanh(const Dual& a) {
    const double t = std::tanh(a.v);
    return {t, (1 - t * t) * a.d};
}
inline Dual exp(const Dual& a) {
    const double e = std::exp(a.v);
    return {e, e * a.d};
}

// Comparisons look at values only (used to pick the softmax shift, which does not change the
// result or its derivative).
inline bool operator<(const Dual& a, const Dual& b) { return a.v < b.v; }

inline double value(double x) { return x; }
inline double value(const Dual& x) { return x.v; }
inline double derivative(double) { return 0; }
inline double derivative(const Dual& x) { return x.d; }

}  // namespace racesp::test
