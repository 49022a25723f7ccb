// The random configurations and shapes that the reference comparisons sweep: every P in 1..8,
// every L in 1..8, both normalisations, causal and not, shared and per-head planes, T = 1, odd T,
// D not a multiple of 8, B > 1 and H > 1.
#pragma once

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "racesp/config.hpp"
#include "racesp/tensor.hpp"

namespace racesp::test {

struct Case {
    AttentionConfig config;
    Shape shape;
    std::uint64_t seed = 0;
    double qk_scale = 1.0;
    std::string name;
};

inline std::ostream& operator<<(std::ostream& os, const Case& c) { return os << c.name; }

// gtest parameter names: the case name.
struct CaseName {
    template <class Info>
    std::string operator()(const Info& i) const { return i.param.name; }
};

// Cost in scalar operations of one pass of the reference over the whole problem.
inline double reference_pass_cost(const Case& c) {
    const double T = static_cast<double>(c.shape.tokens), D = static_cast<double>(c.shape.dim);
    const double L = c.config.tables, P = c.config.planes, R = c.config.buckets();
    const double features = 2 * T * L * (P * D + R * (P + 2));
    const double mixing = c.config.normalization == Normalization::kernel ? T * T * (L * R + D)
                                                                          : T * L * R * (D + 1) * 2;
    return static_cast<double>(c.shape.batch * c.shape.heads) * (features + mixing);
}

inline std::vector<Case> sweep_cases() {
    static const std::int64_t tokens[] = {1, 2, 3, 5, 7, 8, 11, 16};
    static const std::int64_t dims[] = {1, 2, 3, 5, 7, 8, 12, 17};
    static const double betas[] = {0.25, 0.5, 1.0, 2.0, 3.5};  // exact in float
    std::vector<Case> cases;
    for (int idx = 0; idx < 40; ++idx) {
        std::mt19937_64 gen(1000 + static_cast<std::uint64_t>(idx));
        auto pick = [&](auto& list) {
            return list[std::uniform_int_distribution<std::size_t>(0, std::size(list) - 1)(gen)];
        };
        Case c;
        c.config.causal = (idx & 1) != 0;
        c.config.normalization = ((idx >> 1) & 1) ? Normalization::bucket : Normalization::kernel;
        c.config.share_planes = ((idx >> 2) & 1) != 0;
        c.config.planes = 1 + (idx / 5) % 8;
        c.config.tables = 1 + (idx * 3) % 8;
        c.config.beta = pick(betas);
        c.config.eps = idx % 7 == 0 ? 0.25 : (idx % 11 == 5 ? 0.0 : 1e-6);
        c.config.seed = 77 + static_cast<std::uint64_t>(idx);
        c.shape = {1 + (idx % 3 == 0), idx % 10 == 3 ? 1 : pick(tokens), 1 + idx % 3, pick(dims)};
        // Keep the biggest feature spaces (P = 8: R = 256) on short, narrow problems.
        if (c.config.planes >= 7) {
            c.shape.tokens = std::min<std::int64_t>(c.shape.tokens, 7);
            c.shape.dim = std::min<std::int64_t>(c.shape.dim, 5);
            c.shape.heads = std::min<std::int64_t>(c.shape.heads, 2);
        }
        c.seed = 5000 + static_cast<std::uint64_t>(idx);
        c.qk_scale = 0.5 + 0.25 * (idx % 7);
        cases.push_back(c);
    }
    // A few longer sequences, checked through directional derivatives.
    for (int idx = 0; idx < 4; ++idx) {
        Case c;
        c.config.causal = (idx & 1) != 0;
        c.config.normalization = ((idx >> 1) & 1) ? Normalization::bucket : Normalization::kernel;
        c.config.planes = 3 + idx;
        c.config.tables = 2 + idx;
        c.config.beta = 1.5;
        c.config.seed = 900 + static_cast<std::uint64_t>(idx);
        c.shape = {2, 67 + 30 * idx, 2, 13 + 10 * idx};
        c.seed = 9000 + static_cast<std::uint64_t>(idx);
        c.qk_scale = 1.5;
        cases.push_back(c);
    }
    for (std::size_t i = 0; i < cases.size(); ++i) {
        const Case& c = cases[i];
        std::ostringstream name;
        name << "c" << i << "_" << to_string(c.config.normalization)
             << (c.config.causal ? "_causal" : "_full") << (c.config.share_planes ? "_shared" : "")
             << "_P" << c.config.planes << "_L" << c.config.tables << "_B" << c.shape.batch << "_T"
             << c.shape.tokens << "_H" << c.shape.heads << "_D" << c.shape.dim;
        cases[i].name = name.str();
    }
    return cases;
}

}  // namespace racesp::test
