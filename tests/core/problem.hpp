// Random test problems and thin wrappers that run the library on them.
#pragma once

#include <cstdint>
#include <vector>

#include "racesp/attention.hpp"

namespace racesp::test {

struct Problem {
    AttentionConfig config;
    Shape shape;
    std::vector<float> q, k, v, dout;  // [B, T, H, D]

    ConstTensor cq() const { return {q.data(), shape}; }
    ConstTensor ck() const { return {k.data(), shape}; }
    ConstTensor cv() const { return {v.data(), shape}; }
    ConstTensor cdout() const { return {dout.data(), shape}; }
};

// q and k entries are N(0, qk_scale^2 / D), so W x has a spread of about qk_scale whatever D
// is (tanh neither linear nor saturated everywhere); v and dout entries are N(0, 1).
Problem make_problem(const AttentionConfig& config, const Shape& shape, std::uint64_t seed,
                     double qk_scale = 1.0);

// n values N(0, 1), reproducible from the seed.
std::vector<double> random_normal(std::size_t n, std::uint64_t seed);

std::vector<float> library_forward(const Problem& p, const Planes& planes,
                                   const CpuOptions& options = {});

struct LibraryGradients {
    std::vector<float> dq, dk, dv;
    double dbeta = 0;
};
LibraryGradients library_backward(const Problem& p, const Planes& planes,
                                  const CpuOptions& options = {});

}  // namespace racesp::test
