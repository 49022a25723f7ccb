// Error measures between library results (float) and float64 references.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

namespace racesp::test {

// ||got - ref||_2 / ||ref||_2; NaN anywhere in got gives +inf. `floor` bounds the denominator
// from below for references that vanish (e.g. dq of a single token under `kernel`).
template <class A, class B>
double relative_error(const std::vector<A>& got, const std::vector<B>& ref, double floor = 0) {
    double diff = 0, norm = 0;
    for (std::size_t e = 0; e < ref.size(); ++e) {
        const double g = static_cast<double>(got[e]), r = static_cast<double>(ref[e]);
        if (!std::isfinite(g)) return std::numeric_limits<double>::infinity();
        diff += (g - r) * (g - r);
        norm += r * r;
    }
    return std::sqrt(diff) / std::max(std::sqrt(norm), floor);
}

// max_e |got - ref| / max_e |ref|: every element, judged on the scale of the whole tensor.
template <class A, class B>
double max_relative_error(const std::vector<A>& got, const std::vector<B>& ref, double floor = 0) {
    double diff = 0, scale = 0;
    for (std::size_t e = 0; e < ref.size(); ++e) {
        const double g = static_cast<double>(got[e]), r = static_cast<double>(ref[e]);
        if (!std::isfinite(g)) return std::numeric_limits<double>::infinity();
        diff = std::max(diff, std::abs(g - r));
        scale = std::max(scale, std::abs(r));
    }
    return diff / std::max(scale, floor);
}

template <class A>
double l2_norm(const std::vector<A>& x) {
    double s = 0;
    for (const auto& e : x) s += static_cast<double>(e) * static_cast<double>(e);
    return std::sqrt(s);
}

}  // namespace racesp::test
