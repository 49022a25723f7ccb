#include "racesp/state.hpp"

#include "racesp/errors.hpp"

namespace racesp {

State::State(std::int64_t batch, std::int64_t heads, std::int64_t features, std::int64_t dim)
    : batch_(batch), heads_(heads), features_(features), dim_(dim),
      data_(static_cast<std::size_t>(batch * heads * features * (dim + 1)), 0.0) {}

bool State::same_shape(const State& other) const {
    return batch_ == other.batch_ && heads_ == other.heads_ && features_ == other.features_ &&
           dim_ == other.dim_;
}

State& State::operator+=(const State& other) {
    if (!same_shape(other)) throw ShapeError("cannot add RACE states of different shapes");
    for (std::size_t i = 0; i < data_.size(); ++i) data_[i] += other.data_[i];
    return *this;
}

}  // namespace racesp
