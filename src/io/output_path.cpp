// Output path checks and temporary files (output_path.hpp).
#include "output_path.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

namespace racesp::io::detail {

namespace fs = std::filesystem;

namespace {

fs::path directory_of(const std::string& output) {
    fs::path dir = fs::absolute(fs::path(output)).parent_path();
    return dir.empty() ? fs::path("/") : dir;
}

}  // namespace

std::string output_problem(const std::string& output, const std::vector<std::string>& inputs, bool overwrite) {
    if (output.empty()) return "the output path is empty";
    std::error_code ec;
    fs::file_status st = fs::status(output, ec);
    if (ec && ec != std::errc::no_such_file_or_directory && ec != std::errc::not_a_directory)
        return "cannot access output '" + output + "': " + ec.message();
    const bool exists = fs::exists(st);

    // The same file by name (canonical paths: links, "..", relative paths) or by identity
    // (hard links): writing it would destroy the input.
    fs::path out_canonical = fs::weakly_canonical(output, ec);
    for (const std::string& in : inputs) {
        std::error_code e1, e2;
        fs::path in_canonical = fs::canonical(in, e1);
        bool same = !e1 && !ec && in_canonical == out_canonical;
        if (!same && exists && !e1) same = fs::equivalent(in, output, e2) && !e2;
        if (same) return "output '" + output + "' is the input file '" + in + "'; write the result to another file";
    }

    if (exists && fs::is_directory(st)) return "output '" + output + "' is a directory";
    if (exists && !overwrite) return "output '" + output + "' already exists (use --overwrite to replace it)";

    fs::path dir = directory_of(output);
    fs::file_status dst = fs::status(dir, ec);
    if (!fs::exists(dst)) return "output directory '" + dir.string() + "' does not exist";
    if (!fs::is_directory(dst)) return "output directory '" + dir.string() + "' is not a directory";
    // Whether a file can be created there (permissions, read-only or special file systems) is
    // only known by creating one.
    std::string probe;
    std::string problem = create_temporary(output, probe);
    if (!problem.empty()) return problem;
    fs::remove(probe, ec);
    return "";
}

std::string create_temporary(const std::string& output, std::string& tmp_path) {
    fs::path dir = directory_of(output);
    std::string name = fs::path(output).filename().string();
    std::string pattern = (dir / ("." + name + ".racesp-tmp-XXXXXX")).string();
    std::vector<char> buf(pattern.begin(), pattern.end());
    buf.push_back('\0');
    int fd = ::mkstemp(buf.data());
    if (fd < 0)
        return "cannot create a file in output directory '" + dir.string() + "': " + std::strerror(errno);
    // mkstemp makes the file private (0600); the result should get the usual permissions.
    mode_t mask = ::umask(0);
    ::umask(mask);
    ::fchmod(fd, 0666 & ~mask);
    ::close(fd);
    tmp_path = buf.data();
    return "";
}

}  // namespace racesp::io::detail
