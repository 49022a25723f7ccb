// Helpers for the racesp command tests: run the binary (under mpiexec for several ranks) in a
// scratch directory, and read or write HDF5 files with the plain serial C API.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "racesp/tensor.hpp"

namespace racesp::clitest {

namespace fs = std::filesystem;

struct Result {
    int code = -1;       // exit status of mpiexec (or of racesp with ranks == 0)
    std::string output;  // stdout and stderr together
    // Lines that start with "racesp: error:".
    std::vector<std::string> error_lines() const;
};

// Runs `racesp <args>` in `dir`: directly with ranks == 0, else under mpiexec -n ranks
// (one OpenMP thread per rank). Always under a timeout, so a hang fails the test.
Result racesp(int ranks, const std::string& args, const fs::path& dir, int timeout_s = 120);

// A fresh directory, removed with everything in it at the end of the test.
class ScratchDir {
public:
    ScratchDir();
    ~ScratchDir();
    const fs::path& path() const { return path_; }
    fs::path operator/(const std::string& name) const { return path_ / name; }
    // Names of every entry (temporary files included).
    std::vector<std::string> entries() const;

private:
    fs::path path_;
};

// The float32 values of a dataset (HDF5 converts), and its shape.
std::vector<float> read_floats(const fs::path& file, const std::string& dataset, Shape* shape = nullptr);
std::vector<std::uint64_t> dataset_dims(const fs::path& file, const std::string& dataset);
// Size in bytes of the dataset's element type.
std::size_t dataset_type_size(const fs::path& file, const std::string& dataset);
bool has_dataset(const fs::path& file, const std::string& dataset);

// Root attributes.
bool has_attribute(const fs::path& file, const std::string& name);
std::int64_t int_attribute(const fs::path& file, const std::string& name);
std::uint64_t uint_attribute(const fs::path& file, const std::string& name);
double double_attribute(const fs::path& file, const std::string& name);
std::string string_attribute(const fs::path& file, const std::string& name);

// Element types for write_dataset.
enum class FileType { float32, float64, float16, int32 };
// Writes (creating or appending to `file`) a dataset with `dims` from double values.
void write_dataset(const fs::path& file, const std::string& name, const std::vector<std::uint64_t>& dims,
                   const std::vector<double>& values, FileType type);

// Largest |a - b| over max(|b|) (0 when both are empty); throws if sizes differ.
double relative_error(const std::vector<float>& a, const std::vector<float>& b);

}  // namespace racesp::clitest
