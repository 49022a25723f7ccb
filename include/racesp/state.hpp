// RACE states: the only data that crosses ranks (DESIGN.md §3).
//
// For each batch entry and head, a matrix of M = L * 2^P rows and D + 1 columns in float64:
// the forward state S = [B | A] (bucket sums of values, then bucket counts) or its backward
// mirror U. Row m is feature m = table * R + bucket.
#pragma once

#include <cstdint>
#include <vector>

namespace racesp {

class State {
public:
    State() = default;
    State(std::int64_t batch, std::int64_t heads, std::int64_t features, std::int64_t dim);

    std::int64_t batch() const { return batch_; }
    std::int64_t heads() const { return heads_; }
    std::int64_t features() const { return features_; }  // M
    std::int64_t width() const { return dim_ + 1; }        // D + 1
    std::int64_t dim() const { return dim_; }              // D

    // The M x (D+1) block of batch entry b, head h.
    double* block(std::int64_t b, std::int64_t h) { return data_.data() + (b * heads_ + h) * block_size(); }
    const double* block(std::int64_t b, std::int64_t h) const {
        return data_.data() + (b * heads_ + h) * block_size();
    }
    std::int64_t block_size() const { return features_ * width(); }

    // The whole state as one contiguous buffer, for collectives.
    double* data() { return data_.data(); }
    const double* data() const { return data_.data(); }
    std::int64_t size() const { return static_cast<std::int64_t>(data_.size()); }

    State& operator+=(const State& other);  // throws ShapeError on mismatch
    bool same_shape(const State& other) const;

private:
    std::int64_t batch_ = 0, heads_ = 0, features_ = 0, dim_ = 0;
    std::vector<double> data_;
};

}  // namespace racesp
