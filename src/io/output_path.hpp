// File-system checks for output files, run on rank 0 (result_writer.cpp shares them).
#pragma once

#include <string>
#include <vector>

namespace racesp::io::detail {

// Why `output` may not be written, in one line; empty when it may.
std::string output_problem(const std::string& output, const std::vector<std::string>& inputs, bool overwrite);

// Creates a new, empty, hidden file beside `output` (".<name>.racesp-tmp-XXXXXX", with the
// permissions a new file gets from the umask) and sets `tmp_path`; returns why it could not,
// or empty.
std::string create_temporary(const std::string& output, std::string& tmp_path);

}  // namespace racesp::io::detail
