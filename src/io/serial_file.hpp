// Whole small HDF5 files written by one rank and read by each rank on its own (token files'
// metadata, checkpoints): plain serial HDF5 calls, no MPI-IO. Errors are InputError with one
// line; the callers turn them into collective errors (failure.hpp).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "hdf5_util.hpp"

namespace racesp::io::detail {

// Opens `path` read-only; `what` names the file in messages ("token file", "checkpoint").
// Errors: missing, a directory, unreadable, not HDF5.
Handle open_read_only(const std::string& path, const std::string& what);

// A new file under a hidden temporary name beside `path`; commit() closes it and renames it
// to `path` (replacing it). Destroyed without commit(), it removes the temporary file.
class SerialOutput {
public:
    explicit SerialOutput(const std::string& path);
    ~SerialOutput();
    SerialOutput(const SerialOutput&) = delete;
    SerialOutput& operator=(const SerialOutput&) = delete;
    hid_t file() const { return file_.get(); }
    void commit();

private:
    std::string path_, tmp_;
    Handle file_;
    bool committed_ = false;
};

// A 1-D dataset of `count` elements from memory of `memory_type`, stored as `file_type`,
// chunked when large; '/' in `name` creates groups.
void write_array(hid_t file, const std::string& name, hid_t file_type, hid_t memory_type, const void* data,
                 std::int64_t count);

// Root (or object) attributes.
void write_attribute(hid_t object, const std::string& name, std::int64_t value);
void write_attribute(hid_t object, const std::string& name, double value);
void write_attribute(hid_t object, const std::string& name, const std::string& value);
void write_attribute(hid_t object, const std::string& name, const std::vector<std::string>& values);
void write_attribute(hid_t object, const std::string& name, const std::vector<std::int64_t>& values);

std::optional<std::int64_t> read_int_attribute(hid_t object, const std::string& name);
std::optional<std::string> read_string_attribute(hid_t object, const std::string& name);

}  // namespace racesp::io::detail
