// Checkpoint files of racesp train: named float32 arrays (parameters and optimiser moments,
// e.g. "params/block0.wqkv", "adam_m/...") and root attributes (integers and strings: step,
// data position, the full configuration as JSON, ...). Written by one rank under a temporary
// name and renamed when complete; read by every rank on its own. Errors are InputError with
// one line; the caller makes them collective.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace racesp::io {

namespace detail {
class Handle;
}

struct Checkpoint {
    std::vector<std::pair<std::string, std::vector<float>>> arrays;
    std::vector<std::pair<std::string, std::int64_t>> integers;
    std::vector<std::pair<std::string, std::string>> texts;
};

// Local call (one rank): writes `path` completely or not at all.
void write_checkpoint(const std::string& path, const Checkpoint& checkpoint);

class CheckpointReader {
public:
    // Errors: missing, not HDF5 (a truncated or damaged file), unreadable.
    explicit CheckpointReader(const std::string& path);
    ~CheckpointReader();
    CheckpointReader(const CheckpointReader&) = delete;
    CheckpointReader& operator=(const CheckpointReader&) = delete;

    // Errors: missing, not `expected` elements, unreadable.
    std::vector<float> array(const std::string& name, std::int64_t expected) const;
    std::int64_t integer(const std::string& name) const;
    std::string text(const std::string& name) const;

private:
    std::string path_;
    std::unique_ptr<detail::Handle> file_;
};

}  // namespace racesp::io
