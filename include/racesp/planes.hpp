// Random hyperplanes of the soft hash (DESIGN.md §1). Each entry is a pure function of
// (seed, head, table, plane, dim): SplitMix64 counters feeding Box–Muller in double precision,
// rounded once to float, so every rank, compiler and device gets the same planes with no
// communication. The GPU copies the host's planes rather than regenerating them.
#pragma once

#include <cstdint>
#include <vector>

#include "racesp/config.hpp"

namespace racesp {

// One N(0,1) entry of plane `plane` of table `table` for head `head`.
float plane_entry(std::uint64_t seed, std::int64_t head, int table, int plane, std::int64_t dim);

// All planes, float32 [heads, L, P, D]. With share_planes every head gets head 0's planes.
class Planes {
public:
    Planes(const AttentionConfig& config, std::int64_t heads, std::int64_t dim);

    std::int64_t heads() const { return heads_; }
    std::int64_t dim() const { return dim_; }
    int tables() const { return tables_; }
    int planes_per_table() const { return planes_; }
    // The L*P*D block of head h: table l, plane p, dim d at [(l * P + p) * D + d].
    const float* head(std::int64_t h) const { return values_.data() + h * tables_ * planes_ * dim_; }
    const std::vector<float>& values() const { return values_; }

private:
    std::int64_t heads_, dim_;
    int tables_, planes_;
    std::vector<float> values_;
};

}  // namespace racesp
