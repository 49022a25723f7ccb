#include "racesp/config.hpp"

#include <cmath>
#include <string>

#include "racesp/errors.hpp"
#include "racesp/tensor.hpp"

namespace racesp {

Normalization parse_normalization(std::string_view name) {
    if (name == "kernel") return Normalization::kernel;
    if (name == "bucket") return Normalization::bucket;
    throw ConfigError("normalization must be 'kernel' or 'bucket', got '" + std::string(name) + "'");
}

std::string_view to_string(Normalization n) {
    return n == Normalization::kernel ? "kernel" : "bucket";
}

void AttentionConfig::validate() const {
    if (planes < 1 || planes > 10)
        throw ConfigError("planes (P) must be in 1..10, got " + std::to_string(planes));
    if (tables < 1) throw ConfigError("tables (L) must be at least 1, got " + std::to_string(tables));
    if (!(beta > 0) || !std::isfinite(beta))
        throw ConfigError("beta must be a finite number > 0, got " + std::to_string(beta));
    if (!(eps >= 0) || !std::isfinite(eps))
        throw ConfigError("eps must be a finite number >= 0, got " + std::to_string(eps));
}

std::string Shape::str() const {
    return "[" + std::to_string(batch) + ", " + std::to_string(tokens) + ", " + std::to_string(heads) +
           ", " + std::to_string(dim) + "]";
}

}  // namespace racesp
