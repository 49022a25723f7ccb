// The RACE attention configuration shared by every part of RaceSP (DESIGN.md §1).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace racesp {

enum class Normalization {
    kernel,  // o_i = sum_l phi_l(q_i).B_l / sum_l phi_l(q_i).A_l
    bucket,  // o_i = (1/L) sum_l sum_r phi_l(q_i)[r] B_l[r] / (A_l[r] + eps)
};

Normalization parse_normalization(std::string_view name);  // throws ConfigError
std::string_view to_string(Normalization n);

struct AttentionConfig {
    int tables = 4;         // L, hash tables
    int planes = 4;         // P, hyperplanes per table; R = 2^P buckets
    double beta = 1.0;      // softmax temperature of the soft hash
    double eps = 1e-6;      // bucket normalization: B / (A + eps)
    Normalization normalization = Normalization::kernel;
    bool causal = false;
    std::uint64_t seed = 0;
    bool share_planes = false;  // one set of planes for every head

    int buckets() const { return 1 << planes; }           // R
    int features() const { return tables * buckets(); }   // M = L * R

    // Throws ConfigError naming the first bad value.
    void validate() const;
};

}  // namespace racesp
